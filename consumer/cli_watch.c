/* cli_watch.c: `rotor watch ID`: follows a rotation; on a terminal a live view with one line per
 * stage redrawn in place, otherwise one plain line per history entry. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "util.h"

typedef enum { VIEW_PENDING = 0, VIEW_RUNNING, VIEW_WAITING, VIEW_DONE, VIEW_FAILED } cli_view_t;

typedef struct {
    cli_view_t view;
    int attempt;
    int64_t duration_ms;
    char error[160];
} cli_stage_line_t;

typedef struct {
    cli_stage_line_t stages[STAGE__COUNT];
    bool rollback_seen; /* rollback gets a line only when it happens */
    char header[256];
    int drawn; /* lines on screen from the last draw */
    char last[4096];
} cli_live_t;

/* History outcomes are words such as started, completed, failed; read them by their stem so that
 * a new wording ("retrying", "timed-out") still lands on the right marker. */
static cli_view_t cli_outcome_view(const char *outcome)
{
    static const struct {
        const char *stem;
        cli_view_t view;
    } stems[] = {
        {"fail", VIEW_FAILED},    {"error", VIEW_FAILED}, {"timed", VIEW_FAILED},
        {"timeout", VIEW_FAILED}, {"wait", VIEW_WAITING}, {"complet", VIEW_DONE},
        {"done", VIEW_DONE},      {"succeed", VIEW_DONE}, {"approved", VIEW_DONE},
        {"skip", VIEW_DONE},      {"ok", VIEW_DONE},
    };
    for (size_t i = 0; i < sizeof stems / sizeof stems[0]; i++)
        if (strstr(outcome, stems[i].stem))
            return stems[i].view;
    return VIEW_RUNNING;
}

static void cli_live_hist(void *arg, const cli_hist_t *h)
{
    cli_live_t *lv = arg;
    rotor_stage_t st;
    if (rotor_stage_parse(h->stage, &st) != 0)
        return; /* rotation-level lines (absorbed requests, decisions) have no stage marker */
    cli_stage_line_t *l = &lv->stages[st];
    l->view = cli_outcome_view(h->outcome);
    if (h->attempt > 0)
        l->attempt = h->attempt;
    l->duration_ms = h->duration_ms;
    util_strlcpy(l->error, h->error, sizeof l->error);
    if (st == STAGE_ROLLBACK)
        lv->rollback_seen = true;
}

static size_t cli_live_line(const cli_stage_line_t *l, rotor_stage_t st, char *buf, size_t len)
{
    char extra[200] = "";
    const char *mark = "  pending";
    if (l->view == VIEW_RUNNING) {
        mark = "> running";
        snprintf(extra, sizeof extra, " (attempt %d)", l->attempt > 0 ? l->attempt : 1);
    } else if (l->view == VIEW_WAITING) {
        mark = "> waiting";
    } else if (l->view == VIEW_DONE) {
        mark = "+ done";
        if (l->duration_ms >= 0) {
            char d[32];
            util_format_duration((uint64_t)l->duration_ms, d, sizeof d);
            snprintf(extra, sizeof extra, " in %s", d);
        }
    } else if (l->view == VIEW_FAILED) {
        mark = "x failed";
        snprintf(extra, sizeof extra, "%s%s", l->error[0] ? ": " : "", l->error);
    }
    int n = snprintf(buf, len, "  %-9s %s%s\n", rotor_stage_name(st), mark, extra);
    return n < 0 ? 0 : (size_t)n < len ? (size_t)n : len - 1;
}

static void cli_live_row(void *arg, const cli_rot_t *r)
{
    cli_live_t *lv = arg;
    cli_stage_line_t *cur = &lv->stages[r->r.stage];
    /* The row knows an attempt has started before its history line says so. */
    if (journal_status_open(r->r.status) && cur->view == VIEW_PENDING) {
        cur->view = r->r.status == RS_WAITING ? VIEW_WAITING : VIEW_RUNNING;
        cur->attempt = r->r.attempt;
    }
    snprintf(lv->header, sizeof lv->header, "rotation %s (%s): %s at %s", r->r.id, r->r.secret,
             journal_status_name(r->r.status), rotor_stage_name(r->r.stage));
    char screen[sizeof lv->last];
    size_t off = (size_t)snprintf(screen, sizeof screen, "%s\n", lv->header);
    int lines = 1;
    int last = lv->rollback_seen ? STAGE_ROLLBACK : STAGE_RETIRE;
    for (int st = STAGE_PREPARE; st <= last && off < sizeof screen; st++, lines++)
        off += cli_live_line(&lv->stages[st], (rotor_stage_t)st, screen + off, sizeof screen - off);
    if (strcmp(screen, lv->last) == 0)
        return;
    /* Back to the top of the previous drawing, then overwrite every line of it. */
    if (lv->drawn)
        printf("\033[%dA", lv->drawn);
    for (char *line = screen, *nl; (nl = strchr(line, '\n')); line = nl + 1)
        printf("\r\033[2K%.*s\n", (int)(nl - line), line);
    fflush(stdout);
    lv->drawn = lines;
    memcpy(lv->last, screen, sizeof lv->last);
}

int cli_watch(cli_ctx_t *ctx, int argc, char **argv)
{
    static const struct option opts[] = {{"timeout", required_argument, NULL, 't'},
                                         {"until", required_argument, NULL, 'u'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    uint64_t timeout_ms = 0;
    int ch;
    optind = 0;
    while ((ch = getopt_long(argc, argv, "t:u:h", opts, NULL)) != -1) {
        if (ch == 'h')
            return CLI_HELP;
        if (ch == 'u') {
            if (cli_set_until(argv[0], optarg) != 0)
                return CLI_USAGE;
            continue;
        }
        if (ch != 't' || cli_parse_timeout(argv[0], optarg, &timeout_ms) != 0)
            return CLI_USAGE;
    }
    if (argc - optind != 1) {
        fprintf(stderr, "%s: expected exactly one rotation ID\n", argv[0]);
        return CLI_USAGE;
    }
    const rotor_config_t *cfg = cli_config(ctx);
    PGconn *c = NULL;
    if (!cfg || cli_journal_open(cfg, false, &c, NULL) != 0)
        return CLI_EXIT_ERROR;
    cli_rot_t rot;
    int rc = cli_rot_lookup(c, argv[optind], &rot);
    if (rc == 0 && isatty(STDOUT_FILENO)) {
        cli_live_t *lv = util_calloc(1, sizeof *lv);
        for (int i = 0; i < STAGE__COUNT; i++)
            lv->stages[i].duration_ms = -1;
        cli_follow_cb_t cb = {cli_live_hist, cli_live_row, lv};
        rc = cli_follow(c, rot.r.id, 0, 0, timeout_ms, &cb);
        free(lv);
    } else if (rc == 0) {
        rc = cli_follow(c, rot.r.id, 0, 0, timeout_ms, &cli_follow_plain);
    }
    PQfinish(c);
    return rc;
}
