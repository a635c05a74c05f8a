/* cli_decide.c: `rotor approve|reject|retry|abort ID`: an operator's decision about a rotation,
 * checked against the journal and sent to the daemon as a command event. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "util.h"

/* One decision: its event, its free-text field (or NULL) and when it makes sense. */
typedef struct {
    const char *event_type;
    const char *text_key; /* "comment", "reason" or NULL: also the option's name */
    bool gated;           /* approve, reject: the event names the gate it decides (--gate) */
    /* NULL when rot allows the decision, else why not (for "rotation X is ...: <why>"). */
    const char *(*refuse)(const journal_rot_t *r);
} cli_decision_t;

typedef struct {
    const char *id;
    const char *by;
    const char *text;
    const char *gate; /* --gate, or NULL: the gate the rotation waits at */
    bool wait;
    uint64_t timeout_ms;
} cli_decide_opts_t;

static const char *cli_refuse_unless_waiting(const journal_rot_t *r)
{
    return r->status == RS_WAITING && r->stage == STAGE_APPROVE ? NULL
                                                                : "it is not waiting for approval";
}

static const char *cli_refuse_unless_failed(const journal_rot_t *r)
{
    return r->status == RS_FAILED ? NULL : "only a failed rotation can be retried";
}

static const char *cli_refuse_if_terminal(const journal_rot_t *r)
{
    return journal_status_open(r->status) ? NULL : "it has already ended";
}

/* The approval gate a rotation waiting at stage approve waits at (as the daemon tells it in
 * rotation.awaiting-approval): before the swap, or before retire once swapped. */
static const char *cli_waiting_gate(const journal_rot_t *r)
{
    return r->swapped ? "retire" : "swap";
}

static const cli_decision_t cli_approve_d = {"rotation.approved", "comment", true,
                                             cli_refuse_unless_waiting};
static const cli_decision_t cli_reject_d = {"rotation.rejected", "reason", true,
                                            cli_refuse_unless_waiting};
static const cli_decision_t cli_retry_d = {"rotation.retry", NULL, false, cli_refuse_unless_failed};
static const cli_decision_t cli_abort_d = {"rotation.abort", "reason", false,
                                           cli_refuse_if_terminal};

static int cli_decide_parse(const cli_decision_t *d, int argc, char **argv, cli_decide_opts_t *o)
{
    /* The text option is --comment or --reason depending on the decision; retry has none.
     * Only approve and reject take --gate. */
    struct option opts[8] = {
        {"by", required_argument, NULL, 'b'},      {"wait", no_argument, NULL, 'w'},
        {"timeout", required_argument, NULL, 't'}, {"help", no_argument, NULL, 'h'},
        {"until", required_argument, NULL, 'u'},
    };
    int nopts = 5;
    if (d->gated)
        opts[nopts++] = (struct option){"gate", required_argument, NULL, 'g'};
    if (d->text_key)
        opts[nopts++] = (struct option){d->text_key, required_argument, NULL, 'x'};
    int ch;
    optind = 0;
    while ((ch = getopt_long(argc, argv, "b:wt:u:h", opts, NULL)) != -1) {
        int w = cli_wait_option(ch, argv[0], optarg, &o->wait, &o->timeout_ms);
        if (w != 0) {
            if (w < 0)
                return w;
            continue;
        }
        switch (ch) {
        case 'b':
            o->by = optarg;
            break;
        case 'x':
            o->text = optarg;
            break;
        case 'g':
            if (strcmp(optarg, "swap") != 0 && strcmp(optarg, "retire") != 0) {
                fprintf(stderr, "%s: --gate must be swap or retire\n", argv[0]);
                return CLI_USAGE;
            }
            o->gate = optarg;
            break;
        case 'h':
            return CLI_HELP;
        default:
            return CLI_USAGE;
        }
    }
    if (argc - optind != 1) {
        fprintf(stderr, "%s: expected exactly one rotation ID\n", argv[0]);
        return CLI_USAGE;
    }
    o->id = argv[optind];
    if (o->by && (!*o->by || strlen(o->by) > CLI_BY_MAX)) {
        fprintf(stderr, "%s: --by must be 1 to %d bytes\n", argv[0], CLI_BY_MAX);
        return CLI_USAGE;
    }
    if (o->text && strlen(o->text) > CLI_TEXT_MAX) {
        fprintf(stderr, "%s: --%s is longer than %d bytes\n", argv[0], d->text_key, CLI_TEXT_MAX);
        return CLI_USAGE;
    }
    return 0;
}

/* Publishes the decision about r. Returns 0 or CLI_EXIT_ERROR. */
static int cli_decide_send(const rotor_config_t *cfg, const cli_decision_t *d,
                           const cli_decide_opts_t *o, const journal_rot_t *r)
{
    char who[320], id[128];
    if (o->by)
        util_utf8_sanitize(who, sizeof who,
                           o->by); /* argv in a Latin-1 terminal: json_pack fails */
    else
        cli_whoami(who, sizeof who);
    json_t *data = json_pack("{s:s, s:s}", "rotation_id", r->id, "by", who);
    if (d->gated)
        json_object_set_new(data, "gate", json_string(o->gate ? o->gate : cli_waiting_gate(r)));
    if (o->text && d->text_key) {
        char text[CLI_TEXT_MAX * 3 + 1]; /* U+FFFD for a byte that is not UTF-8: 3 bytes each */
        util_utf8_sanitize(text, sizeof text, o->text);
        json_object_set_new(data, d->text_key, json_string(text));
    }
    if (cli_publish(cfg, d->event_type, r->secret, data, id, sizeof id) != 0)
        return CLI_EXIT_ERROR;
    printf("%s sent for rotation %s (%s), event %s\n", d->event_type, r->id, r->secret, id);
    fflush(stdout);
    return 0;
}

static int cli_decide(cli_ctx_t *ctx, const cli_decision_t *d, int argc, char **argv)
{
    cli_decide_opts_t o = {0};
    int rc = cli_decide_parse(d, argc, argv, &o);
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
    const char *why = rc == 0 ? d->refuse(&rot.r) : NULL;
    char gate_why[64];
    if (!why && rc == 0 && d->gated && o.gate && strcmp(o.gate, cli_waiting_gate(&rot.r)) != 0) {
        /* the operator meant the other gate: the rotation is not where they think it is */
        snprintf(gate_why, sizeof gate_why, "it waits at gate %s, not %s", cli_waiting_gate(&rot.r),
                 o.gate);
        why = gate_why;
    }
    if (why) {
        fprintf(stderr, "rotor: rotation %s is %s at stage %s: %s\n", rot.r.id,
                journal_status_name(rot.r.status), rotor_stage_name(rot.r.stage), why);
        rc = CLI_EXIT_ERROR;
    }
    /* Follow only what happens after the decision: the history so far is known. */
    cli_hist_t *h = NULL;
    int64_t after = 0;
    int n = rc == 0 && o.wait ? cli_hist_read(c, rot.r.id, 0, &h) : 0;
    if (n < 0)
        rc = CLI_EXIT_ERROR;
    else if (n > 0)
        after = h[n - 1].id;
    free(h);
    if (rc == 0)
        rc = cli_decide_send(cfg, d, &o, &rot.r);
    if (rc == 0 && o.wait)
        rc = cli_follow(c, rot.r.id, after, rot.r.seq, o.timeout_ms, &cli_follow_plain);
    PQfinish(c);
    return rc;
}

int cli_approve(cli_ctx_t *ctx, int argc, char **argv)
{
    return cli_decide(ctx, &cli_approve_d, argc, argv);
}

int cli_reject(cli_ctx_t *ctx, int argc, char **argv)
{
    return cli_decide(ctx, &cli_reject_d, argc, argv);
}

int cli_retry(cli_ctx_t *ctx, int argc, char **argv)
{
    return cli_decide(ctx, &cli_retry_d, argc, argv);
}

int cli_abort(cli_ctx_t *ctx, int argc, char **argv)
{
    return cli_decide(ctx, &cli_abort_d, argc, argv);
}
