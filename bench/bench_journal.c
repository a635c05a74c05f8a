/* bench_journal.c: what one journal transition costs. journal_update (compare-and-set UPDATE with
 * its history and outbox CTEs, one statement) against a baseline plain single-row UPDATE, both on
 * the same loop through pg.c, one request in flight at a time. Needs PostgreSQL: run it under
 * tests/support/with-postgres (libpq reads PGHOST, PGPORT, PGUSER from the environment). */
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "bench_common.h"
#include "journal.h"
#include "pg.h"
#include "util.h"

#define ROUNDS 4 /* baseline and subject alternate, so drift in the server hits both */

typedef struct {
    bool done;
    int status;
    int64_t epoch; /* of journal_claim */
} waiter_t;

static void wait_for(uv_loop_t *loop, waiter_t *w, const char *what)
{
    while (!w->done)
        uv_run(loop, UV_RUN_ONCE);
    if (w->status != 0) {
        fprintf(stderr, "bench_journal: %s failed: %d\n", what, w->status);
        exit(1);
    }
    w->done = false;
}

static void on_open(journal_t *j, int status, const char *reason, void *arg)
{
    (void)j;
    waiter_t *w = arg;
    if (status != 0)
        fprintf(stderr, "bench_journal: journal_open: %s\n", reason ? reason : "?");
    w->status = status;
    w->done = true;
}

static void on_secret(void *arg, int status, rotor_slot_t active, int64_t first, int64_t last)
{
    (void)active, (void)first, (void)last;
    waiter_t *w = arg;
    w->status = status;
    w->done = true;
}

static void on_claimed(void *arg, int status, int64_t epoch)
{
    waiter_t *w = arg;
    w->status = status;
    w->epoch = epoch;
    w->done = true;
}

static void on_done(void *arg, int status)
{
    waiter_t *w = arg;
    w->status = status;
    w->done = true;
}

static void on_connect(pgc_conn_t *c, int status, void *arg)
{
    (void)c;
    on_done(arg, status);
}

static void on_result(pgc_conn_t *c, PGresult *res, int status, void *arg)
{
    (void)c;
    /* The baseline must touch its row, or it would measure a cheaper no-op. */
    if (status == 0 && res && PQresultStatus(res) == PGRES_COMMAND_OK && PQcmdTuples(res)[0] &&
        strcmp(PQcmdTuples(res), "0") == 0)
        status = -1;
    on_done(arg, status);
}

/* A realistic outbox payload: one stage.completed event, as the engine queues per transition. */
static char *outbox_json(const char *secret)
{
    char *path = bench_source_path("events/examples/stage.completed.json");
    json_error_t err;
    json_t *ev = json_load_file(path, 0, &err);
    free(path);
    if (!ev) {
        fprintf(stderr, "bench_journal: %s (set ROTOR_SOURCE_DIR)\n", err.text);
        exit(1);
    }
    char *value = json_dumps(ev, JSON_COMPACT);
    json_t *rows =
        json_pack("[{s:s, s:s, s:s, s:{s:s}}]", "topic", "rotor.events", "key", secret, "value",
                  value, "headers", "content-type", "application/cloudevents+json");
    char *out = json_dumps(rows, JSON_COMPACT);
    json_decref(rows);
    json_decref(ev);
    free(value);
    return out;
}

static const char history_json[] =
    "{\"trigger\":\"manual\",\"actor\":\"bench\",\"stage\":\"set-db\",\"outcome\":\"completed\","
    "\"attempt\":1,\"duration_ms\":12}";

static void setup_rotation(uv_loop_t *loop, journal_t *j, waiter_t *w, journal_rot_t *r)
{
    memset(r, 0, sizeof *r);
    char uuid[37];
    util_uuid4(uuid);
    util_strlcpy(r->id, uuid, sizeof r->id);
    snprintf(r->secret, sizeof r->secret, "bench-%s", uuid);
    r->stage = STAGE_SET_DB;
    r->status = RS_RUNNING;
    r->seq = 1;
    r->attempt = 1;
    r->from_slot = SLOT_BLUE;
    r->to_slot = SLOT_GREEN;
    util_strlcpy(r->trigger, "manual", sizeof r->trigger);
    r->next_at_ms = util_now_ms();
    if (journal_secret(j, r->secret, SLOT_BLUE, on_secret, w) != 0)
        exit(1);
    wait_for(loop, w, "journal_secret");
    /* Rotation writes are fenced: claim a partition first, as a daemon does on assignment. */
    if (journal_claim(j, 0, 1, 0, on_claimed, w) != 0)
        exit(1);
    wait_for(loop, w, "journal_claim");
    r->fence = (journal_fence_t){.part = 0, .nparts = 1, .epoch = w->epoch};
    if (journal_create(j, r, history_json, NULL, on_done, w) != 0)
        exit(1);
    wait_for(loop, w, "journal_create");
}

static void setup_plain(uv_loop_t *loop, pgc_conn_t *c, waiter_t *w)
{
    static const char *const sql[] = {
        "CREATE TABLE IF NOT EXISTS bench_plain (id int PRIMARY KEY, n bigint NOT NULL,"
        " updated_at timestamptz NOT NULL DEFAULT now())",
        "INSERT INTO bench_plain (id, n) VALUES (1, 0) ON CONFLICT (id) DO NOTHING",
    };
    for (size_t i = 0; i < sizeof sql / sizeof sql[0]; i++) {
        if (pgc_query(c, sql[i], 0, NULL, on_result, w) != 0)
            exit(1);
        wait_for(loop, w, sql[i]);
    }
}

static uint64_t run_plain(uv_loop_t *loop, pgc_conn_t *c, waiter_t *w, long n)
{
    const char *params[] = {"1"};
    uint64_t t0 = bench_now_ns();
    for (long i = 0; i < n; i++) {
        if (pgc_query(c, "UPDATE bench_plain SET n = n + 1, updated_at = now() WHERE id = $1::int",
                      1, params, on_result, w) != 0)
            exit(1);
        wait_for(loop, w, "plain UPDATE");
    }
    return bench_now_ns() - t0;
}

static uint64_t run_journal(uv_loop_t *loop, journal_t *j, waiter_t *w, journal_rot_t *r,
                            const char *outbox, long n)
{
    uint64_t t0 = bench_now_ns();
    for (long i = 0; i < n; i++) {
        r->status = r->status == RS_RUNNING ? RS_PENDING : RS_RUNNING;
        if (journal_update(j, r, history_json, outbox, on_done, w) != 0)
            exit(1);
        wait_for(loop, w, "journal_update"); /* ROTOR_ECONFLICT would mean a lost CAS: fatal */
        r->seq++;
    }
    return bench_now_ns() - t0;
}

int main(int argc, char **argv)
{
    bench_opts_t o;
    bench_parse_args(argc, argv, 2000, &o);
    const char *dsn = getenv("ROTOR_BENCH_DSN") ? getenv("ROTOR_BENCH_DSN") : "";
    uv_loop_t loop;
    uv_loop_init(&loop);
    waiter_t w = {false, 0, 0};

    journal_t *j = NULL;
    if (journal_open(&loop, dsn, "bench", on_open, &w, &j) != 0)
        exit(1);
    wait_for(&loop, &w, "journal_open");
    pgc_conn_t *c = NULL;
    if (pgc_connect_dsn(&loop, dsn, on_connect, &w, &c) != 0)
        exit(1);
    wait_for(&loop, &w, "connect");

    journal_rot_t r;
    setup_rotation(&loop, j, &w, &r);
    setup_plain(&loop, c, &w);
    char *outbox = outbox_json(r.secret);

    long per = o.iterations / ROUNDS > 0 ? o.iterations / ROUNDS : 1;
    run_plain(&loop, c, &w, per / 10 + 1); /* warm-up: plans cached, pages in memory */
    run_journal(&loop, j, &w, &r, outbox, per / 10 + 1);
    uint64_t base = 0, subj = 0;
    for (int round = 0; round < ROUNDS; round++) {
        base += run_plain(&loop, c, &w, per);
        subj += run_journal(&loop, j, &w, &r, outbox, per);
    }
    bench_report("journal", "journal_update (CAS + history + outbox)", "plain 1-row UPDATE",
                 per * ROUNDS, subj, base);

    free(outbox);
    pgc_close(c);
    journal_close(j);
    uv_run(&loop, UV_RUN_DEFAULT);
    if (uv_loop_close(&loop) != 0) {
        fprintf(stderr, "bench_journal: loop not closed cleanly\n");
        return 1;
    }
    return 0;
}
