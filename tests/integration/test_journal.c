/* test_journal.c: journal_secrets, the schedule's one-statement read of every secret, against a
 * real journal: secrets met for the first time are registered, secrets met before are reported
 * unchanged (their active slot is not rewritten), every answer row names its secret by index, and
 * names are passed as an array literal that quotes what they hold. And commands applied once per
 * event id: journal_update_command and journal_note refuse an id applied to the rotation before
 * (ROTOR_EALREADY, nothing written), even when the row is back in the state the first copy
 * found; journal_command_applied tells a copy from a command never applied. And a statement that
 * waits on a lock longer than the journal's deadline is canceled by the server too, not left
 * waiting there after the client gave up. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include <libpq-fe.h>

#include "journal.h"
#include "util.h"

#define NSECRETS 4

typedef struct {
    uv_loop_t loop;
    uv_timer_t guard; /* wakes uv_run so run_until can give up */
    journal_t *j;
    bool done;
    int status;
    rotor_slot_t active;
    int64_t first, last;
    int nrows;
    journal_secret_row_t rows[NSECRETS];
    int64_t epoch;
    bool applied;
    journal_rot_t found;
} ctx_t;

static void on_guard(uv_timer_t *t)
{
    (void)t;
}

static void run_until(ctx_t *x)
{
    uint64_t end = uv_now(&x->loop) + 20000;
    while (!x->done && uv_now(&x->loop) < end)
        uv_run(&x->loop, UV_RUN_ONCE);
    assert_true(x->done);
    x->done = false;
}

static void on_open(journal_t *j, int status, const char *reason, void *arg)
{
    (void)j;
    ctx_t *x = arg;
    if (status != 0)
        fail_msg("journal_open: %s", reason ? reason : "?");
    x->done = true;
}

static void on_secret(void *arg, int status, rotor_slot_t active, int64_t first, int64_t last)
{
    ctx_t *x = arg;
    x->status = status;
    x->active = active;
    x->first = first;
    x->last = last;
    x->done = true;
}

static void on_secrets(void *arg, int status, const journal_secret_row_t *rows, int n)
{
    ctx_t *x = arg;
    x->status = status;
    x->nrows = n;
    assert_true(n <= NSECRETS);
    memset(x->rows, 0, sizeof x->rows);
    for (int i = 0; i < n; i++) {
        assert_true(rows[i].index >= 0 && rows[i].index < NSECRETS);
        x->rows[rows[i].index] = rows[i];
        x->rows[rows[i].index].index = 1; /* seen */
    }
    x->done = true;
}

static void test_secrets_in_one_statement(void **state)
{
    (void)state;
    ctx_t x;
    memset(&x, 0, sizeof x);
    uv_loop_init(&x.loop);
    uv_timer_init(&x.loop, &x.guard);
    uv_timer_start(&x.guard, on_guard, 50, 50);
    assert_int_equal(journal_open(&x.loop, "", "journal-test", on_open, &x, &x.j), 0);
    run_until(&x);

    char id[37], names[NSECRETS][96];
    util_uuid4(id);
    snprintf(names[0], sizeof names[0], "known-%s", id);
    snprintf(names[1], sizeof names[1], "new-%s", id);
    /* config.c allows none of these characters; the array literal must carry them anyway */
    snprintf(names[2], sizeof names[2], "odd \"q\" \\b,{c} %s", id);
    snprintf(names[3], sizeof names[3], "NULL-%s", id);
    const char *np[NSECRETS] = {names[0], names[1], names[2], names[3]};
    rotor_slot_t active[NSECRETS] = {SLOT_BLUE, SLOT_GREEN, SLOT_BLUE, SLOT_BLUE};

    /* met before, with green active: the batch's blue must not replace it */
    assert_int_equal(journal_secret(x.j, names[0], SLOT_GREEN, on_secret, &x), 0);
    run_until(&x);
    assert_int_equal(x.status, 0);
    int64_t known_first = x.first;

    assert_int_equal(journal_secrets(x.j, np, active, NSECRETS, on_secrets, &x), 0);
    run_until(&x);
    assert_int_equal(x.status, 0);
    assert_int_equal(x.nrows, NSECRETS);
    for (int i = 0; i < NSECRETS; i++) {
        assert_int_equal(x.rows[i].index, 1);
        assert_true(x.rows[i].first_seen_ms > 0);
        assert_int_equal(x.rows[i].last_rotated_ms, 0);
    }
    assert_true(x.rows[0].first_seen_ms == known_first);
    int64_t odd_first = x.rows[2].first_seen_ms;

    /* registered under the names given, with the slots given */
    assert_int_equal(journal_secret(x.j, names[2], SLOT_GREEN, on_secret, &x), 0);
    run_until(&x);
    assert_int_equal(x.status, 0);
    assert_int_equal(x.active, SLOT_BLUE);
    assert_true(x.first == odd_first);
    assert_int_equal(journal_secret(x.j, names[1], SLOT_BLUE, on_secret, &x), 0);
    run_until(&x);
    assert_int_equal(x.active, SLOT_GREEN);
    assert_int_equal(journal_secret(x.j, names[0], SLOT_BLUE, on_secret, &x), 0);
    run_until(&x);
    assert_int_equal(x.active, SLOT_GREEN);

    /* a second round reports the same rows, registering nothing again */
    assert_int_equal(journal_secrets(x.j, np + 1, active + 1, NSECRETS - 1, on_secrets, &x), 0);
    run_until(&x);
    assert_int_equal(x.status, 0);
    assert_int_equal(x.nrows, NSECRETS - 1);
    assert_true(x.rows[1].first_seen_ms == odd_first); /* index 1 of the three: names[2] */

    journal_close(x.j);
    uv_close((uv_handle_t *)&x.guard, NULL);
    uv_run(&x.loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&x.loop), 0);
}

static void on_done(void *arg, int status)
{
    ctx_t *x = arg;
    x->status = status;
    x->done = true;
}

static void on_claimed(void *arg, int status, int64_t epoch)
{
    ctx_t *x = arg;
    x->status = status;
    x->epoch = epoch;
    x->done = true;
}

static void on_applied(void *arg, int status, bool applied)
{
    ctx_t *x = arg;
    x->status = status;
    x->applied = applied;
    x->done = true;
}

static void on_found(void *arg, int status, const journal_rot_t *rows, int n)
{
    ctx_t *x = arg;
    x->status = status;
    assert_int_equal(n, 1);
    x->found = rows[0];
    x->done = true;
}

/* Writes r (status st) as the command event_id (NULL: a stage's own write); bumps r->seq when
 * written. Returns the write's status. */
static int decide(ctx_t *x, journal_rot_t *r, journal_status_t st, const char *event_id)
{
    char hist[256];
    snprintf(hist, sizeof hist,
             "{\"trigger\":\"manual\",\"stage\":\"prepare\",\"outcome\":\"%s\","
             "\"attempt\":1%s%s%s}",
             event_id ? "retry" : "failed", event_id ? ",\"request_id\":\"" : "",
             event_id ? event_id : "", event_id ? "\"" : "");
    r->status = st;
    assert_int_equal(
        journal_update_command(x->j, r, event_id, "rotation.retry", hist, NULL, on_done, x), 0);
    run_until(x);
    if (x->status == 0)
        r->seq++;
    return x->status;
}

static void on_by_request(void *arg, int status, const journal_rot_t *rows, int n)
{
    ctx_t *x = arg;
    (void)rows;
    x->status = status;
    x->nrows = n;
    x->done = true;
}

/* Rows journal_by_request finds for request_id: 0 or 1. */
static int by_request(ctx_t *x, const char *request_id)
{
    assert_int_equal(journal_by_request(x->j, request_id, on_by_request, x), 0);
    run_until(x);
    assert_int_equal(x->status, 0);
    return x->nrows;
}

static bool applied(ctx_t *x, const char *id, const char *event_id)
{
    assert_int_equal(journal_command_applied(x->j, id, event_id, on_applied, x), 0);
    run_until(x);
    assert_int_equal(x->status, 0);
    return x->applied;
}

static int note(ctx_t *x, const char *id, const char *event_id, const char *request_id)
{
    char hist[256];
    snprintf(hist, sizeof hist,
             "{\"trigger\":\"manual\",\"stage\":\"deploy\",\"outcome\":"
             "\"pipeline-completed\",\"attempt\":1,\"request_id\":\"%s\"}",
             request_id);
    assert_int_equal(journal_note(x->j, id, event_id, "stage.completed", hist, NULL, on_done, x),
                     0);
    run_until(x);
    return x->status;
}

static void test_commands_applied_once(void **state)
{
    (void)state;
    ctx_t x;
    memset(&x, 0, sizeof x);
    uv_loop_init(&x.loop);
    uv_timer_init(&x.loop, &x.guard);
    uv_timer_start(&x.guard, on_guard, 50, 50);
    assert_int_equal(journal_open(&x.loop, "", "journal-test", on_open, &x, &x.j), 0);
    run_until(&x);

    /* a claim to write under (a partition of its own, under a count no other test exceeds) */
    assert_int_equal(journal_claim(x.j, 63, 64, 0, on_claimed, &x), 0);
    run_until(&x);
    assert_int_equal(x.status, 0);
    journal_rot_t r;
    memset(&r, 0, sizeof r);
    util_uuid4(r.id);
    snprintf(r.secret, sizeof r.secret, "cmd-%s", r.id);
    r.stage = STAGE_PREPARE;
    r.status = RS_FAILED;
    r.seq = 1;
    r.attempt = 1;
    r.to_slot = SLOT_GREEN;
    util_strlcpy(r.trigger, "manual", sizeof r.trigger);
    r.next_at_ms = util_now_ms();
    r.fence = (journal_fence_t){.part = 63, .nparts = 64, .epoch = x.epoch};
    assert_int_equal(journal_secret(x.j, r.secret, SLOT_BLUE, on_secret, &x), 0);
    run_until(&x);
    assert_int_equal(journal_create(x.j, &r, NULL, NULL, on_done, &x), 0);
    run_until(&x);
    assert_int_equal(x.status, 0);

    /* a retry, then the rotation fails again: the state the retry was applied in */
    assert_false(applied(&x, r.id, "retry-1"));
    assert_int_equal(decide(&x, &r, RS_PENDING, "retry-1"), 0);
    assert_true(applied(&x, r.id, "retry-1"));
    assert_int_equal(decide(&x, &r, RS_FAILED, NULL), 0);
    /* its copy is refused, and changes nothing */
    int seq = r.seq;
    assert_int_equal(decide(&x, &r, RS_PENDING, "retry-1"), ROTOR_EALREADY);
    assert_int_equal(journal_find(x.j, r.id, on_found, &x), 0);
    run_until(&x);
    assert_int_equal(x.found.status, RS_FAILED);
    assert_int_equal(x.found.seq, seq);
    /* a stale seq without a copy is a conflict, as before */
    r.seq--;
    assert_int_equal(decide(&x, &r, RS_PENDING, "retry-2"), ROTOR_ECONFLICT);
    r.seq++;
    assert_false(applied(&x, r.id, "retry-2"));
    /* another retry is a new command */
    assert_int_equal(decide(&x, &r, RS_PENDING, "retry-2"), 0);
    /* the same id for another rotation is not that rotation's command */
    char other[37];
    util_uuid4(other);
    assert_false(applied(&x, other, "retry-1"));

    /* Review of issue 8: a decision's id, now on its history line, is no request's: a request
     * that happens to carry the same id (another producer's id space) is not "already applied"
     * (journal_by_request found the retry's line and the request was dropped); nor is a
     * pipeline's answer's (below) */
    assert_int_equal(by_request(&x, "retry-1"), 0);

    /* a pipeline's answer is noted once */
    assert_int_equal(note(&x, r.id, "answer-1", "answer-1"), 0);
    assert_int_equal(note(&x, r.id, "answer-1", "answer-1"), ROTOR_EALREADY);
    assert_true(applied(&x, r.id, "answer-1"));
    /* one noted before rotor.commands (only its history line names it) counts as applied */
    assert_int_equal(note(&x, r.id, NULL, "answer-0"), 0);
    assert_true(applied(&x, r.id, "answer-0"));
    assert_int_equal(note(&x, r.id, "answer-0", "answer-0"), ROTOR_EALREADY);
    assert_int_equal(by_request(&x, "answer-1"), 0);

    journal_close(x.j);
    uv_close((uv_handle_t *)&x.guard, NULL);
    uv_run(&x.loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&x.loop), 0);
}

static void pq_ok(PGconn *pg, const char *sql, ExecStatusType want)
{
    PGresult *res = PQexec(pg, sql);
    if (PQresultStatus(res) != want)
        fail_msg("%s: %s", sql, PQresultErrorMessage(res));
    PQclear(res);
}

/* A journal write that waits on a lock (another replica's migration, VACUUM FULL) past the
 * journal's deadline fails; its backend must not stay waiting on the server, where it would hold
 * a connection and run the statement once the lock is gone. The deadlines are shortened here
 * (3 s per query, so a statement_timeout of 2.5 s). */
static void test_timed_out_statement_canceled_on_server(void **state)
{
    (void)state;
    ctx_t x;
    memset(&x, 0, sizeof x);
    uv_loop_init(&x.loop);
    uv_timer_init(&x.loop, &x.guard);
    uv_timer_start(&x.guard, on_guard, 50, 50);
    char instance[64], appname[80];
    util_uuid4(instance + snprintf(instance, sizeof instance, "lock-"));
    snprintf(appname, sizeof appname, "rotor/%s", instance);
    assert_int_equal(journal_open(&x.loop, "", instance, on_open, &x, &x.j), 0);
    journal_set_timeouts(x.j, 5000, 3000);
    run_until(&x);

    PGconn *pg = PQconnectdb("");
    assert_int_equal(PQstatus(pg), CONNECTION_OK);
    pq_ok(pg, "BEGIN", PGRES_COMMAND_OK);
    pq_ok(pg, "LOCK TABLE rotor.secrets IN ACCESS EXCLUSIVE MODE", PGRES_COMMAND_OK);

    char name[96];
    snprintf(name, sizeof name, "locked-%s", instance);
    assert_int_equal(journal_secret(x.j, name, SLOT_BLUE, on_secret, &x), 0);
    run_until(&x);
    assert_int_not_equal(x.status, 0);

    /* still holding the lock: no backend of the journal waits on it */
    const char *params[] = {appname};
    PGresult *res = PQexecParams(pg,
                                 "SELECT count(*) FROM pg_stat_activity"
                                 " WHERE application_name = $1 AND wait_event_type = 'Lock'",
                                 1, NULL, params, NULL, NULL, 0);
    assert_int_equal(PQresultStatus(res), PGRES_TUPLES_OK);
    assert_string_equal(PQgetvalue(res, 0, 0), "0");
    PQclear(res);
    pq_ok(pg, "ROLLBACK", PGRES_COMMAND_OK);
    PQfinish(pg);

    journal_close(x.j);
    uv_close((uv_handle_t *)&x.guard, NULL);
    uv_run(&x.loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&x.loop), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_secrets_in_one_statement),
        cmocka_unit_test(test_commands_applied_once),
        cmocka_unit_test(test_timed_out_statement_canceled_on_server),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
