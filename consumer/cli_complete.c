/* cli_complete.c: `rotor complete ID STAGE [--failed REASON]`: a pipeline's answer to rotor's
 * stage.requested (deploy kind external), sent to the daemon as stage.completed or
 * stage.failed on the commands topic. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "util.h"

#define CLI_ERROR_MAX 2048 /* the schema's maxLength for error */

typedef struct {
    const char *id;
    const char *stage;
    const char *failed; /* the reason, when the pipeline failed the stage */
    const char *by;
} cli_complete_opts_t;

static int cli_complete_parse(int argc, char **argv, cli_complete_opts_t *o)
{
    static const struct option opts[] = {
        {"failed", required_argument, NULL, 'f'},
        {"by", required_argument, NULL, 'b'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int ch;
    optind = 0;
    while ((ch = getopt_long(argc, argv, "f:b:h", opts, NULL)) != -1) {
        switch (ch) {
        case 'f':
            o->failed = optarg;
            break;
        case 'b':
            o->by = optarg;
            break;
        case 'h':
            return CLI_HELP;
        default:
            return CLI_USAGE;
        }
    }
    if (argc - optind != 2) {
        fprintf(stderr, "%s: expected a rotation ID and a STAGE\n", argv[0]);
        return CLI_USAGE;
    }
    o->id = argv[optind];
    o->stage = argv[optind + 1];
    rotor_stage_t st;
    if (rotor_stage_parse(o->stage, &st) != 0) {
        fprintf(stderr, "%s: unknown stage \"%s\"\n", argv[0], o->stage);
        return CLI_USAGE;
    }
    if (o->failed && (!*o->failed || strlen(o->failed) > CLI_ERROR_MAX)) {
        fprintf(stderr, "%s: --failed needs a reason of 1 to %d bytes\n", argv[0], CLI_ERROR_MAX);
        return CLI_USAGE;
    }
    return 0;
}

int cli_complete(cli_ctx_t *ctx, int argc, char **argv)
{
    cli_complete_opts_t o = {0};
    int rc = cli_complete_parse(argc, argv, &o);
    if (rc)
        return rc;
    const rotor_config_t *cfg = cli_config(ctx);
    if (!cfg)
        return CLI_EXIT_ERROR;
    PGconn *c = NULL;
    if (cli_journal_open(cfg, false, &c, NULL) != 0)
        return CLI_EXIT_ERROR;
    cli_rot_t rot;
    rc = cli_rot_lookup(c, o.id, &rot);
    PQfinish(c);
    if (rc != 0)
        return CLI_EXIT_ERROR;
    if (strcmp(rotor_stage_name(rot.r.stage), o.stage) != 0 || rot.r.status != RS_RUNNING) {
        fprintf(stderr, "rotor: rotation %s is %s at stage %s: nothing waits for %s\n", rot.r.id,
                journal_status_name(rot.r.status), rotor_stage_name(rot.r.stage), o.stage);
        return CLI_EXIT_ERROR;
    }
    char who[320], id[128];
    if (o.by)
        util_utf8_sanitize(who, sizeof who, o.by); /* argv in a Latin-1 terminal: json_pack fails */
    else
        cli_whoami(who, sizeof who);
    json_t *data = json_pack("{s:s, s:s, s:s, s:i}", "rotation_id", rot.r.id, "stage", o.stage,
                             "by", who, "attempt", rot.r.attempt);
    if (o.failed) {
        char error[1024];
        util_utf8_sanitize(error, sizeof error, o.failed);
        json_object_set_new(data, "error", json_string(error));
    }
    const char *type = o.failed ? "stage.failed" : "stage.completed";
    if (cli_publish(cfg, type, rot.r.secret, data, id, sizeof id) != 0)
        return CLI_EXIT_ERROR;
    printf("%s sent for rotation %s stage %s, event %s\n", type, rot.r.id, o.stage, id);
    return CLI_EXIT_OK;
}
