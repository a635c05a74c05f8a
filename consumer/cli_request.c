/* cli_request.c: `rotor request SECRET`: asks the daemon (through Kafka) to rotate a secret. */
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "util.h"

typedef struct {
    const char *secret;
    const char *reason;
    bool wait;
    uint64_t timeout_ms;
} cli_request_opts_t;

static int cli_request_parse(int argc, char **argv, cli_request_opts_t *o)
{
    static const struct option opts[] = {
        {"reason", required_argument, NULL, 'r'},  {"wait", no_argument, NULL, 'w'},
        {"timeout", required_argument, NULL, 't'}, {"until", required_argument, NULL, 'u'},
        {"help", no_argument, NULL, 'h'},          {NULL, 0, NULL, 0},
    };
    int ch;
    optind = 0;
    while ((ch = getopt_long(argc, argv, "r:wt:u:h", opts, NULL)) != -1) {
        int w = cli_wait_option(ch, argv[0], optarg, &o->wait, &o->timeout_ms);
        if (w != 0) {
            if (w < 0)
                return w;
            continue;
        }
        switch (ch) {
        case 'r':
            o->reason = optarg;
            break;
        case 'h':
            return CLI_HELP;
        default:
            return CLI_USAGE;
        }
    }
    if (argc - optind != 1) {
        fprintf(stderr, "%s: expected exactly one SECRET\n", argv[0]);
        return CLI_USAGE;
    }
    o->secret = argv[optind];
    if (o->reason && strlen(o->reason) > CLI_TEXT_MAX) {
        fprintf(stderr, "%s: --reason is longer than %d bytes\n", argv[0], CLI_TEXT_MAX);
        return CLI_USAGE;
    }
    return 0;
}

int cli_request(cli_ctx_t *ctx, int argc, char **argv)
{
    cli_request_opts_t o = {0};
    int rc = cli_request_parse(argc, argv, &o);
    if (rc)
        return rc;
    const rotor_config_t *cfg = cli_config(ctx);
    if (!cfg)
        return CLI_EXIT_ERROR;
    if (!config_secret(cfg, o.secret)) {
        fprintf(stderr, "rotor: \"%s\" is not a secret configured in %s\n", o.secret, cfg->path);
        return CLI_EXIT_ERROR;
    }
    char who[320], id[128];
    cli_whoami(who, sizeof who);
    json_t *data =
        json_pack("{s:s, s:s, s:s}", "secret", o.secret, "requested_by", who, "trigger", "manual");
    if (o.reason) {
        /* json_string is NULL for invalid UTF-8 (argv in a Latin-1 terminal): the reason would
         * be dropped without a word */
        char reason[1025]; /* the journal's request reason */
        util_utf8_sanitize(reason, sizeof reason, o.reason);
        json_object_set_new(data, "reason", json_string(reason));
    }
    if (cli_publish(cfg, "rotation.requested", o.secret, data, id, sizeof id) != 0)
        return CLI_EXIT_ERROR;
    printf("%s\n", id);
    fflush(stdout);
    return o.wait ? cli_wait_request(cfg, id, o.timeout_ms) : CLI_EXIT_OK;
}
