/* test_relay.c: relay.c between a real journal (PostgreSQL) and a real producer (the embedded
 * broker), with the delivery reports held back by the test and released when it chooses: how
 * many statements mark a burst of reports, what a failed report does to the later rows of its
 * key, and what a report with a permanent error does to its row. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <inttypes.h>
#include <libpq-fe.h>
#include <librdkafka/rdkafka.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "broker.h"
#include "journal.h"
#include "kafka.h"
#include "log.h"
#include "relay.h"
#include "rotor.h"
#include "util.h"

#define MAX_REPORTS 1024

typedef struct {
    intptr_t id;
} report_t;

typedef struct {
    uv_loop_t loop;
    uv_timer_t guard; /* wakes uv_run so run_until can look at the clock */
    kafka_callbacks_t cbs;
    kafka_t *k;
    journal_t *j;
    relay_t *relay;
    PGconn *pg; /* the test's own view of the journal (blocking: test code, not the loop's) */
    report_t held[MAX_REPORTS];
    int nheld;
    bool opened, open_failed, closed;
    int added;
} ctx_t;

typedef struct {
    rotor_config_t cfg;
    broker_t *broker;
    char dir[64];
    char bootstrap_file[128];
} fixture_t;

static int setup(void **state)
{
    fixture_t *f = util_calloc(1, sizeof *f);
    snprintf(f->dir, sizeof f->dir, "/tmp/rotor-relay-test.XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->bootstrap_file, sizeof f->bootstrap_file, "%s/run/bootstrap", f->dir);
    f->cfg.kafka.brokers = "embedded";
    f->cfg.kafka.group = "rotor-relay-test";
    f->cfg.kafka.topic_commands = "rotor.commands";
    f->cfg.kafka.topic_events = "rotor.events";
    f->cfg.kafka.topic_deadletter = "rotor.deadletter";
    f->cfg.kafka.bootstrap_file = f->bootstrap_file;
    f->cfg.kafka.partitions = 3;
    f->cfg.kafka.max_message_bytes = 1 << 20;
    char err[256] = "";
    if (broker_start(&f->cfg, &f->broker, err, sizeof err))
        fail_msg("broker_start: %s", err);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture_t *f = *state;
    broker_stop(f->broker);
    char path[160];
    snprintf(path, sizeof path, "%s/run", f->dir);
    rmdir(path);
    rmdir(f->dir);
    free(f);
    assert_int_equal(rd_kafka_wait_destroyed(5000), 0);
    return 0;
}

/* ---- callbacks ---- */

static void on_message(kafka_t *k, kafka_msg_t *msg, void *arg)
{
    (void)arg;
    kafka_msg_done(k, msg);
}

/* Every report is held until the test releases it. */
static void on_delivery(kafka_t *k, void *opaque, int err, const char *reason, void *arg)
{
    (void)k;
    (void)reason;
    ctx_t *c = arg;
    assert_int_equal(err, 0); /* the embedded broker takes everything */
    assert_true(c->nheld < MAX_REPORTS);
    c->held[c->nheld++].id = (intptr_t)opaque;
}

static void on_rebalance(kafka_t *k, const int32_t *parts, int n, int assigned, void *arg)
{
    (void)k, (void)parts, (void)n, (void)assigned, (void)arg;
}

static void on_kafka_closed(kafka_t *k, void *arg)
{
    (void)k;
    ctx_t *c = arg;
    c->closed = true;
}

static void on_open(journal_t *j, int status, const char *reason, void *arg)
{
    (void)j;
    ctx_t *c = arg;
    if (status != 0) {
        print_message("journal_open: %s\n", reason ? reason : "?");
        c->open_failed = true;
    }
    c->opened = true;
}

static void on_added(void *arg, int status)
{
    ctx_t *c = arg;
    assert_int_equal(status, 0);
    c->added++;
}

static void on_guard(uv_timer_t *t)
{
    (void)t;
}

/* ---- helpers ---- */

static bool run_until(ctx_t *c, bool (*cond)(ctx_t *), uint64_t timeout_ms)
{
    uint64_t end = uv_now(&c->loop) + timeout_ms;
    while (!cond(c) && uv_now(&c->loop) < end)
        uv_run(&c->loop, UV_RUN_ONCE);
    return cond(c);
}

static bool is_open(ctx_t *c)
{
    return c->opened;
}

static bool is_closed(ctx_t *c)
{
    return c->closed;
}

static int want;
static bool held_enough(ctx_t *c)
{
    return c->nheld >= want;
}

static bool rows_added(ctx_t *c)
{
    return c->added >= want;
}

static long long sql_int(ctx_t *c, const char *sql)
{
    PGresult *res = PQexec(c->pg, sql);
    if (PQresultStatus(res) != PGRES_TUPLES_OK && PQresultStatus(res) != PGRES_COMMAND_OK)
        fail_msg("%s: %s", sql, PQerrorMessage(c->pg));
    long long v = 0;
    if (PQntuples(res) > 0) {
        const char *t = PQgetvalue(res, 0, 0);
        v = strcmp(t, "t") == 0 ? 1 : atoll(t); /* a boolean as 1 or 0 */
    }
    PQclear(res);
    return v;
}

static const char *sql_cond;
static bool sql_true(ctx_t *c)
{
    return sql_int(c, sql_cond) != 0;
}

static void run_until_sql(ctx_t *c, const char *sql, uint64_t timeout_ms)
{
    sql_cond = sql;
    if (!run_until(c, sql_true, timeout_ms))
        fail_msg("timed out waiting for: %s", sql);
}

/* Starts journal (migrated), producer and the statement counter; rows are added after. */
static void ctx_start(ctx_t *c, fixture_t *f)
{
    memset(c, 0, sizeof *c);
    log_init(LOG_WARN, NULL);
    assert_int_equal(uv_loop_init(&c->loop), 0);
    uv_timer_init(&c->loop, &c->guard);
    uv_timer_start(&c->guard, on_guard, 10, 10);
    assert_int_equal(journal_open(&c->loop, "", "relay-test", on_open, c, &c->j), 0);
    assert_true(run_until(c, is_open, 30000));
    assert_false(c->open_failed);
    c->pg = PQconnectdb("");
    assert_int_equal(PQstatus(c->pg), CONNECTION_OK);
    /* A fresh outbox per test, and a count of the statements that mark rows sent. */
    sql_int(c, "TRUNCATE rotor.outbox");
    sql_int(c, "CREATE TABLE IF NOT EXISTS public.marks (n int NOT NULL)");
    sql_int(c, "TRUNCATE public.marks");
    sql_int(c, "INSERT INTO public.marks VALUES (0)");
    sql_int(c, "CREATE OR REPLACE FUNCTION public.count_marks() RETURNS trigger LANGUAGE plpgsql"
               " AS $$ BEGIN UPDATE public.marks SET n = n + 1; RETURN NULL; END $$");
    sql_int(c, "DROP TRIGGER IF EXISTS count_marks ON rotor.outbox");
    sql_int(c, "CREATE TRIGGER count_marks AFTER UPDATE OF sent_at ON rotor.outbox"
               " FOR EACH STATEMENT EXECUTE FUNCTION public.count_marks()");
    c->cbs = (kafka_callbacks_t){on_message, on_delivery, on_rebalance, on_kafka_closed, c};
    char err[256] = "";
    if (kafka_start(&c->loop, &f->cfg, broker_bootstrap(f->broker), &c->cbs, &c->k, err,
                    sizeof err))
        fail_msg("kafka_start: %s", err);
}

/* Rows key_i / value_i, in this order (ids ascending), in one statement. */
static void add_rows(ctx_t *c, int n, const char *const *keys)
{
    size_t cap = (size_t)n * 96 + 8, used = 0;
    char *arr = util_malloc(cap);
    used += (size_t)snprintf(arr, cap, "[");
    for (int i = 0; i < n; i++)
        used += (size_t)snprintf(arr + used, cap - used,
                                 "%s{\"topic\":\"rotor.events\",\"key\":\"%s\",\"value\":\"v%d\","
                                 "\"headers\":{}}",
                                 i ? "," : "", keys ? keys[i] : "k", i);
    snprintf(arr + used, cap - used, "]");
    int before = c->added;
    assert_int_equal(journal_outbox_add(c->j, arr, on_added, c), 0);
    free(arr);
    want = before + 1;
    assert_true(run_until(c, rows_added, 10000));
}

static void start_relay(ctx_t *c)
{
    assert_int_equal(relay_start(&c->loop, c->j, c->k, &c->relay), 0);
}

/* Hands the held reports to the relay, all in one go (as one produce response would), with err
 * for the row id `fail_id`. */
static void release(ctx_t *c, int64_t fail_id, int err)
{
    int n = c->nheld;
    c->nheld = 0;
    for (int i = 0; i < n; i++) {
        int64_t id = c->held[i].id;
        relay_delivered(c->relay, (void *)(intptr_t)id, id == fail_id ? err : 0,
                        id == fail_id ? "test failure" : NULL);
    }
}

static void ctx_stop(ctx_t *c)
{
    kafka_stop(c->k, 10000);
    assert_true(run_until(c, is_closed, 15000));
    relay_stop(c->relay);
    journal_close(c->j);
    kafka_free(c->k);
    PQfinish(c->pg);
    uv_close((uv_handle_t *)&c->guard, NULL);
    uv_run(&c->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&c->loop), 0);
}

static long long first_id(ctx_t *c)
{
    return sql_int(c, "SELECT min(id) FROM rotor.outbox");
}

/* ---- tests ---- */

/* A burst of delivery reports (one produce response carries hundreds) is marked by one
 * statement: before, the first report of every burst was marked alone, then the rest. */
static void test_burst_marked_in_one_statement(void **state)
{
    ctx_t *c = util_calloc(1, sizeof *c);
    ctx_start(c, *state);
    add_rows(c, 300, NULL);
    start_relay(c);
    want = 300;
    assert_true(run_until(c, held_enough, 30000));
    release(c, 0, 0);
    run_until_sql(c, "SELECT count(*) = 0 FROM rotor.outbox WHERE sent_at IS NULL", 10000);
    assert_int_equal(sql_int(c, "SELECT n FROM public.marks"), 1);
    ctx_stop(c);
    free(c);
}

/* A (key k) fails to deliver, B (key k, after A) and C (key other) are delivered: C is marked,
 * B is not, and both A and B are sent again, A first. Marking B would let a crash before the
 * re-send leave the topic with B then A, the key's older event last. */
static void test_failed_row_holds_back_its_key(void **state)
{
    ctx_t *c = util_calloc(1, sizeof *c);
    ctx_start(c, *state);
    const char *keys[] = {"k", "k", "other"};
    add_rows(c, 3, keys);
    long long a = first_id(c), b = a + 1, other = a + 2;
    start_relay(c);
    want = 3;
    assert_true(run_until(c, held_enough, 30000));
    release(c, a, ROTOR_EKAFKA);
    char sql[160];
    snprintf(sql, sizeof sql, "SELECT sent_at IS NOT NULL FROM rotor.outbox WHERE id = %lld",
             other);
    run_until_sql(c, sql, 10000);
    assert_int_equal(sql_int(c, "SELECT count(*) FROM rotor.outbox WHERE sent_at IS NULL"), 2);
    /* The next tick sends A and B again, in that order. */
    want = 2;
    assert_true(run_until(c, held_enough, 10000));
    assert_int_equal(c->nheld, 2);
    assert_int_equal(c->held[0].id, a);
    assert_int_equal(c->held[1].id, b);
    release(c, 0, 0);
    run_until_sql(c, "SELECT count(*) = 0 FROM rotor.outbox WHERE sent_at IS NULL", 10000);
    ctx_stop(c);
    free(c);
}

/* A report with a permanent error (the broker's MSG_SIZE_TOO_LARGE) parks the row, and the rows
 * behind it, of the same key too, are marked sent; the row is not sent again. */
static void test_permanent_failure_parks_the_row(void **state)
{
    ctx_t *c = util_calloc(1, sizeof *c);
    ctx_start(c, *state);
    const char *keys[] = {"k", "k"};
    add_rows(c, 2, keys);
    long long a = first_id(c);
    start_relay(c);
    want = 2;
    assert_true(run_until(c, held_enough, 30000));
    release(c, a, -EMSGSIZE);
    char sql[200];
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM rotor.outbox WHERE id = %lld AND parked_at IS NOT NULL"
             " AND park_reason = 'test failure' AND sent_at IS NULL",
             a);
    run_until_sql(c, sql, 10000);
    snprintf(sql, sizeof sql, "SELECT sent_at IS NOT NULL FROM rotor.outbox WHERE id = %lld",
             a + 1);
    run_until_sql(c, sql, 10000);
    want = 1;
    run_until(c, held_enough, 2500); /* two ticks: nothing is sent again */
    assert_int_equal(c->nheld, 0);
    ctx_stop(c);
    free(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_burst_marked_in_one_statement),
        cmocka_unit_test(test_failed_row_holds_back_its_key),
        cmocka_unit_test(test_permanent_failure_parks_the_row),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
