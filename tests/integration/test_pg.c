/* test_pg.c: pg.c against a real PostgreSQL (run under tests/support/with-postgres). */
#include <setjmp.h>
#include <stdbool.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <arpa/inet.h>
#include <cmocka.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "pg.h"
#include "rotor.h"

typedef struct {
    uv_loop_t loop;
    pgc_conn_t *conn;
    int connect_calls;
    int connect_status;
    int results[16]; /* status per query, in callback order */
    char values[16][64];
    int order[16];
    int nresults;
    int ticks;
    uv_timer_t timer;
} ctx_t;

static const char *env(const char *name)
{
    const char *v = getenv(name);
    return v ? v : "";
}

static void on_connect(pgc_conn_t *c, int status, void *arg)
{
    ctx_t *x = arg;
    (void)c;
    x->connect_calls++;
    x->connect_status = status;
}

/* Each query's callback argument: records which query completed, in what order. */
typedef struct {
    ctx_t *x;
    int tag;
} qarg_t;

static void on_result(pgc_conn_t *c, PGresult *res, int status, void *arg)
{
    qarg_t *a = arg;
    ctx_t *x = a->x;
    (void)c;
    int i = x->nresults++;
    x->results[i] = status;
    x->order[i] = a->tag;
    x->values[i][0] = '\0';
    if (status == 0 && res && PQntuples(res) > 0 && PQnfields(res) > 0) {
        const char *v = PQgetisnull(res, 0, 0) ? "<null>" : PQgetvalue(res, 0, 0);
        snprintf(x->values[i], sizeof x->values[i], "%s", v);
        for (int f = 1; f < PQnfields(res); f++) {
            size_t n = strlen(x->values[i]);
            snprintf(x->values[i] + n, sizeof x->values[i] - n, "|%s",
                     PQgetisnull(res, 0, f) ? "<null>" : PQgetvalue(res, 0, f));
        }
    }
}

static void ctx_init(ctx_t *x)
{
    memset(x, 0, sizeof *x);
    assert_int_equal(uv_loop_init(&x->loop), 0);
    x->connect_status = 1;
}

static void ctx_finish(ctx_t *x)
{
    if (x->conn)
        pgc_close(x->conn);
    x->conn = NULL;
    assert_int_equal(uv_run(&x->loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(uv_loop_close(&x->loop), 0);
}

static void connect_kv(ctx_t *x, const char *host, const char *port)
{
    const char *kw[] = {"host", "port", "user", "dbname", NULL};
    const char *val[] = {host, port, "postgres", "postgres", NULL};
    assert_int_equal(pgc_connect(&x->loop, kw, val, on_connect, x, &x->conn), 0);
    /* The callback never runs from within pgc_connect. */
    assert_int_equal(x->connect_calls, 0);
    uv_run(&x->loop, UV_RUN_DEFAULT);
    assert_int_equal(x->connect_calls, 1);
}

static void query_one(ctx_t *x, const char *sql, qarg_t *a)
{
    assert_int_equal(pgc_query(x->conn, sql, 0, NULL, on_result, a), 0);
    uv_run(&x->loop, UV_RUN_DEFAULT);
}

/* The hostaddr libpq was given: proves the name was resolved before libpq saw it. */
static const char *given_hostaddr(pgc_conn_t *c, char *buf, size_t len)
{
    PQconninfoOption *opts = PQconninfo(pgc_raw(c));
    snprintf(buf, len, "<none>");
    for (PQconninfoOption *o = opts; o && o->keyword; o++)
        if (strcmp(o->keyword, "hostaddr") == 0 && o->val)
            snprintf(buf, len, "%s", o->val);
    PQconninfoFree(opts);
    return buf;
}

static void expect_server_addr(const char *host, const char *want, const char *hostaddr)
{
    ctx_t x;
    ctx_init(&x);
    connect_kv(&x, host, env("PGPORT"));
    assert_int_equal(x.connect_status, 0);
    assert_true(pgc_ok(x.conn));
    /* At rest the poll is stopped, so nothing keeps the loop alive. */
    assert_int_equal(uv_loop_alive(&x.loop), 0);
    qarg_t a = {&x, 0};
    query_one(&x, "select coalesce(host(inet_server_addr()), 'socket')", &a);
    assert_int_equal(x.nresults, 1);
    assert_int_equal(x.results[0], 0);
    assert_string_equal(x.values[0], want);
    char buf[128];
    assert_string_equal(given_hostaddr(x.conn, buf, sizeof buf), hostaddr);
    ctx_finish(&x);
}

static void test_connect_socket(void **state)
{
    (void)state;
    expect_server_addr(env("PGHOST"), "socket", "<none>");
}

static void test_connect_tcp(void **state)
{
    (void)state;
    expect_server_addr("127.0.0.1", "127.0.0.1", "<none>");
}

static void test_connect_localhost(void **state)
{
    (void)state;
    expect_server_addr("localhost", "127.0.0.1", "127.0.0.1");
}

/* A DSN whose host is a name inside an expanded dbname; the first host of the list refuses, so
 * libpq moves to a new socket during the connection. */
static void test_connect_dsn_multihost(void **state)
{
    (void)state;
    ctx_t x;
    ctx_init(&x);
    char dsn[256];
    snprintf(dsn, sizeof dsn, "postgresql://postgres@localhost:1,localhost:%s/postgres",
             env("PGPORT"));
    assert_int_equal(pgc_connect_dsn(&x.loop, dsn, on_connect, &x, &x.conn), 0);
    uv_run(&x.loop, UV_RUN_DEFAULT);
    assert_int_equal(x.connect_calls, 1);
    assert_int_equal(x.connect_status, 0);
    qarg_t a = {&x, 0};
    query_one(&x, "select inet_server_port()::text", &a);
    assert_int_equal(x.results[0], 0);
    assert_string_equal(x.values[0], env("PGPORT"));
    char buf[128];
    assert_string_equal(given_hostaddr(x.conn, buf, sizeof buf), "127.0.0.1,127.0.0.1");
    ctx_finish(&x);
}

static void test_connect_refused(void **state)
{
    (void)state;
    ctx_t x;
    ctx_init(&x);
    const char *kw[] = {"host", "port", "user", "dbname", NULL};
    const char *val[] = {"127.0.0.1", "1", "postgres", "postgres", NULL};
    assert_int_equal(pgc_connect(&x.loop, kw, val, on_connect, &x, &x.conn), 0);
    qarg_t a = {&x, 0};
    /* Queued while connecting: fails with the connection. */
    assert_int_equal(pgc_query(x.conn, "select 1", 0, NULL, on_result, &a), 0);
    uv_run(&x.loop, UV_RUN_DEFAULT);
    assert_int_equal(x.connect_calls, 1);
    assert_int_equal(x.connect_status, ROTOR_EDB);
    assert_int_equal(x.nresults, 1);
    assert_int_equal(x.results[0], ROTOR_EDB);
    assert_false(pgc_ok(x.conn));
    assert_non_null(strstr(pgc_error(x.conn), "refused"));
    assert_true(pgc_query(x.conn, "select 1", 0, NULL, on_result, &a) < 0);
    ctx_finish(&x);
}

static void test_connect_bad_option(void **state)
{
    (void)state;
    ctx_t x;
    ctx_init(&x);
    assert_int_equal(pgc_connect_dsn(&x.loop, "nosuchoption=1", on_connect, &x, &x.conn), 0);
    assert_int_equal(x.connect_calls, 0);
    uv_run(&x.loop, UV_RUN_DEFAULT);
    assert_int_equal(x.connect_calls, 1);
    assert_int_equal(x.connect_status, ROTOR_EDB);
    /* libpq's word for it stays; the quoted token, which could be a password, does not. */
    assert_non_null(strstr(pgc_error(x.conn), "invalid connection option \"***\""));
    assert_null(strstr(pgc_error(x.conn), "nosuchoption"));
    ctx_finish(&x);
}

/* Connects with dsn (only the given keywords and values when kw is set) and returns the error. */
static void expect_connect_error(const char *dsn, const char *const *kw, const char *const *val,
                                 const char *secret, const char *want)
{
    ctx_t x;
    ctx_init(&x);
    if (kw)
        assert_int_equal(pgc_connect(&x.loop, kw, val, on_connect, &x, &x.conn), 0);
    else
        assert_int_equal(pgc_connect_dsn(&x.loop, dsn, on_connect, &x, &x.conn), 0);
    uv_run(&x.loop, UV_RUN_DEFAULT);
    assert_int_equal(x.connect_calls, 1);
    assert_int_equal(x.connect_status, ROTOR_EDB);
    const char *err = pgc_error(x.conn);
    if (strstr(err, secret))
        fail_msg("the error of %s shows \"%s\": %s", dsn ? dsn : "keywords", secret, err);
    if (!strstr(err, want))
        fail_msg("the error of %s does not say \"%s\": %s", dsn ? dsn : "keywords", want, err);
    ctx_finish(&x);
}

/* Issue 8: libpq's connect-phase messages quote what they read from the conninfo, and pgc_error
 * goes on into the journal, the events and the logs. None of these DSNs reaches pg.c through the
 * config (config_dsn refuses the malformed ones), but one built at run time (an Entra token
 * appended to the admin DSN) or handed to pg.c by other code could. */
static void test_connect_error_never_shows_secret(void **state)
{
    (void)state;
    /* The parser quotes the token it stumbles on. */
    expect_connect_error("postgresql://u:s3cr%ZZet@h/db", NULL, NULL, "s3cr",
                         "invalid percent-encoded token: \"***\"");
    expect_connect_error("host=/tmp s3cretX user=x", NULL, NULL, "s3cretX",
                         "missing \"=\" after \"***\"");
    /* A password with a space, unquoted: the second half is a word without "=". */
    expect_connect_error("host=/tmp password=abc s3cretY", NULL, NULL, "s3cretY",
                         "missing \"=\" after \"***\"");
    expect_connect_error("host=/tmp password='s3cretZ", NULL, NULL, "s3cretZ",
                         "unterminated quoted string");
    /* Parsed, but a "/" in the URI's password made its first half the port. */
    expect_connect_error("postgresql://u:s3cretP/rest@127.0.0.1/db", NULL, NULL, "s3cretP",
                         "for connection option \"port\"");
    /* Parsed, but an "@" in the URI's password made its second half part of the host name. */
    expect_connect_error("postgresql://u:p@ss4cret@127.0.0.1/db", NULL, NULL, "ss4cret",
                         "could not translate host name \"***\"");
    /* A password is blotted out even where libpq's own lines would keep it. */
    const char *kw[] = {"host", "port", "user", "password", "dbname", NULL};
    const char *val[] = {env("PGHOST"), env("PGPORT"), "s3cretU", "s3cretU", "postgres", NULL};
    expect_connect_error(NULL, kw, val, "s3cretU", "failed for user \"***\"");
    char dsn[512];
    snprintf(dsn, sizeof dsn, "host=%s port=%s user=s3cretV password=s3cretV dbname=postgres",
             env("PGHOST"), env("PGPORT"));
    expect_connect_error(dsn, NULL, NULL, "s3cretV", "failed for user \"***\"");
}

/* What an operator needs stays: the host or socket tried, the server's answer, names in it. */
static void test_connect_error_keeps_host_and_answer(void **state)
{
    (void)state;
    const char *kw[] = {"host", "port", "user", "password", "dbname", NULL};
    const char *val[] = {env("PGHOST"), env("PGPORT"), "nosuchrole", "pw-s3cret", "postgres", NULL};
    expect_connect_error(NULL, kw, val, "pw-s3cret",
                         "FATAL:  password authentication failed for user \"nosuchrole\"");
    expect_connect_error("host=127.0.0.1 port=1 user=x password=pw-s3cret", NULL, NULL, "pw-s3cret",
                         "Connection refused");
    expect_connect_error("host=no-such-host.invalid user=x password=pw-s3cret", NULL, NULL,
                         "pw-s3cret", "could not translate host name \"no-such-host.invalid\"");
}

static void test_redact_error_is_pure(void **state)
{
    (void)state;
    const char *kw[] = {"dbname", "password", NULL};
    const char *val[] = {"postgresql://u:inner-s3cret@h/db", "outer-s3cret", NULL};
    char *m = pgc_redact_error("a \"x\" b \"=\" c \"\" d \"unterminated inner-s3cret\n"
                               "connection to server at \"h\" (1.2.3.4), port 5432 failed: "
                               "FATAL:  no \"outer-s3cret\" or \"inner-s3cret\" for \"u\"\n",
                               kw, val);
    assert_string_equal(m, "a \"***\" b \"=\" c \"***\" d \"***\n"
                           "connection to server at \"h\" (1.2.3.4), port 5432 failed: "
                           "FATAL:  no \"***\" or \"***\" for \"u\"\n");
    free(m);
    /* The longest output for its length: lone quotes, one a line. */
    m = pgc_redact_error("\"\n\"\n\"", NULL, NULL);
    assert_string_equal(m, "\"***\n\"***\n\"***");
    free(m);
    m = pgc_redact_error("\"", NULL, NULL);
    assert_string_equal(m, "\"***");
    free(m);
    m = pgc_redact_error(NULL, NULL, NULL);
    assert_string_equal(m, "");
    free(m);
}

static void test_queue_order_and_params(void **state)
{
    (void)state;
    ctx_t x;
    ctx_init(&x);
    const char *kw[] = {"host", "port", "user", "dbname", NULL};
    const char *val[] = {env("PGHOST"), env("PGPORT"), "postgres", "postgres", NULL};
    assert_int_equal(pgc_connect(&x.loop, kw, val, on_connect, &x, &x.conn), 0);
    /* Queued before the connection is up; they must run in order, one at a time. */
    qarg_t a[4] = {{&x, 0}, {&x, 1}, {&x, 2}, {&x, 3}};
    const char *p1[] = {"a'b", NULL};
    assert_int_equal(
        pgc_query(x.conn, "select $1::text, $2::text is null", 2, p1, on_result, &a[0]), 0);
    assert_int_equal(pgc_query(x.conn, "select pg_sleep(0.05), 'slow'", 0, NULL, on_result, &a[1]),
                     0);
    const char *p2[] = {"41"};
    assert_int_equal(pgc_query(x.conn, "select $1::int + 1", 1, p2, on_result, &a[2]), 0);
    assert_int_equal(pgc_query(x.conn, "select 'd'", 0, NULL, on_result, &a[3]), 0);
    assert_int_equal(pgc_pending(x.conn), 4);
    uv_run(&x.loop, UV_RUN_DEFAULT);
    assert_int_equal(x.connect_status, 0);
    assert_int_equal(x.nresults, 4);
    for (int i = 0; i < 4; i++) {
        assert_int_equal(x.order[i], i);
        assert_int_equal(x.results[i], 0);
    }
    assert_string_equal(x.values[0], "a'b|t");
    assert_string_equal(x.values[1], "|slow");
    assert_string_equal(x.values[2], "42");
    assert_string_equal(x.values[3], "d");
    assert_int_equal(pgc_pending(x.conn), 0);
    ctx_finish(&x);
}

static void test_sql_error_then_ok(void **state)
{
    (void)state;
    ctx_t x;
    ctx_init(&x);
    connect_kv(&x, env("PGHOST"), env("PGPORT"));
    qarg_t a[2] = {{&x, 0}, {&x, 1}};
    assert_int_equal(pgc_query(x.conn, "select 1/0", 0, NULL, on_result, &a[0]), 0);
    assert_int_equal(pgc_query(x.conn, "select 2", 0, NULL, on_result, &a[1]), 0);
    uv_run(&x.loop, UV_RUN_DEFAULT);
    assert_int_equal(x.nresults, 2);
    assert_int_equal(x.results[0], ROTOR_EDB);
    assert_non_null(strstr(pgc_error(x.conn), "division by zero"));
    assert_int_equal(x.results[1], 0);
    assert_string_equal(x.values[1], "2");
    assert_true(pgc_ok(x.conn));
    ctx_finish(&x);
}

/* The server ends the session mid-query: the query and everything queued behind it fail. */
static void test_broken_connection(void **state)
{
    (void)state;
    ctx_t x;
    ctx_init(&x);
    connect_kv(&x, env("PGHOST"), env("PGPORT"));
    qarg_t a[3] = {{&x, 0}, {&x, 1}, {&x, 2}};
    assert_int_equal(pgc_query(x.conn, "select pg_terminate_backend(pg_backend_pid())", 0, NULL,
                               on_result, &a[0]),
                     0);
    assert_int_equal(pgc_query(x.conn, "select 1", 0, NULL, on_result, &a[1]), 0);
    assert_int_equal(pgc_query(x.conn, "select 2", 0, NULL, on_result, &a[2]), 0);
    uv_run(&x.loop, UV_RUN_DEFAULT);
    assert_int_equal(x.nresults, 3);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(x.order[i], i);
        assert_int_equal(x.results[i], ROTOR_EDB);
    }
    assert_false(pgc_ok(x.conn));
    ctx_finish(&x);
}

static void test_close_cancels_while_connecting(void **state)
{
    (void)state;
    ctx_t x;
    ctx_init(&x);
    const char *kw[] = {"host", "port", "user", "dbname", NULL};
    const char *val[] = {"localhost", env("PGPORT"), "postgres", "postgres", NULL};
    assert_int_equal(pgc_connect(&x.loop, kw, val, on_connect, &x, &x.conn), 0);
    qarg_t a[3] = {{&x, 0}, {&x, 1}, {&x, 2}};
    for (int i = 0; i < 3; i++)
        assert_int_equal(pgc_query(x.conn, "select 1", 0, NULL, on_result, &a[i]), 0);
    pgc_close(x.conn);
    x.conn = NULL;
    uv_run(&x.loop, UV_RUN_DEFAULT);
    assert_int_equal(x.connect_calls, 1);
    assert_int_equal(x.connect_status, ROTOR_ECANCELED);
    assert_int_equal(x.nresults, 3);
    for (int i = 0; i < 3; i++)
        assert_int_equal(x.results[i], ROTOR_ECANCELED);
    ctx_finish(&x);
}

static void close_later(uv_timer_t *t)
{
    ctx_t *x = t->data;
    /* The first query is on the wire, the others are queued. */
    assert_int_equal(pgc_pending(x->conn), 3);
    pgc_close(x->conn);
    x->conn = NULL;
    uv_close((uv_handle_t *)t, NULL);
}

static void test_close_cancels_in_flight_and_queued(void **state)
{
    (void)state;
    ctx_t x;
    ctx_init(&x);
    connect_kv(&x, "127.0.0.1", env("PGPORT"));
    qarg_t a[3] = {{&x, 0}, {&x, 1}, {&x, 2}};
    assert_int_equal(pgc_query(x.conn, "select pg_sleep(5)", 0, NULL, on_result, &a[0]), 0);
    assert_int_equal(pgc_query(x.conn, "select 1", 0, NULL, on_result, &a[1]), 0);
    assert_int_equal(pgc_query(x.conn, "select 2", 0, NULL, on_result, &a[2]), 0);
    uv_timer_init(&x.loop, &x.timer);
    x.timer.data = &x;
    uv_timer_start(&x.timer, close_later, 50, 0);
    uint64_t t0 = uv_hrtime();
    uv_run(&x.loop, UV_RUN_DEFAULT);
    /* Closing does not wait for the server to finish the sleep. */
    assert_true(uv_hrtime() - t0 < 4000 * 1000000ull);
    assert_int_equal(x.nresults, 3);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(x.order[i], i);
        assert_int_equal(x.results[i], ROTOR_ECANCELED);
    }
    ctx_finish(&x);
}

static void tick(uv_timer_t *t)
{
    ((ctx_t *)t->data)->ticks++;
}

static void on_sleep_done(pgc_conn_t *c, PGresult *res, int status, void *arg)
{
    qarg_t *a = arg;
    on_result(c, res, status, arg);
    uv_timer_stop(&a->x->timer);
}

static void test_long_query_does_not_block(void **state)
{
    (void)state;
    ctx_t x;
    ctx_init(&x);
    connect_kv(&x, env("PGHOST"), env("PGPORT"));
    uv_timer_init(&x.loop, &x.timer);
    x.timer.data = &x;
    uv_timer_start(&x.timer, tick, 10, 10);
    qarg_t a = {&x, 0};
    assert_int_equal(pgc_query(x.conn, "select pg_sleep(0.3)", 0, NULL, on_sleep_done, &a), 0);
    uv_run(&x.loop, UV_RUN_DEFAULT);
    assert_int_equal(x.nresults, 1);
    assert_int_equal(x.results[0], 0);
    assert_true(x.ticks >= 10);
    uv_close((uv_handle_t *)&x.timer, NULL);
    ctx_finish(&x);
}

/* A server that accepts and never answers (a partition that blackholes): the connection attempt
 * is given up at its deadline, and the queries queued behind it fail; without a deadline it would
 * wait forever, since libpq's connect_timeout does not apply to PQconnectPoll. */
static void test_connect_deadline_on_silent_server(void **state)
{
    (void)state;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof sa;
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    assert_int_equal(listen(fd, 4), 0); /* the kernel accepts; nobody answers */
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    char port[16];
    snprintf(port, sizeof port, "%d", ntohs(sa.sin_port));
    ctx_t x;
    ctx_init(&x);
    const char *kw[] = {"host", "port", "user", "dbname", NULL};
    const char *val[] = {"127.0.0.1", port, "postgres", "postgres", NULL};
    assert_int_equal(pgc_connect(&x.loop, kw, val, on_connect, &x, &x.conn), 0);
    pgc_set_deadlines(x.conn, 200, 0);
    qarg_t a = {&x, 0};
    assert_int_equal(pgc_query(x.conn, "select 1", 0, NULL, on_result, &a), 0);
    uv_run(&x.loop, UV_RUN_DEFAULT);
    assert_int_equal(x.connect_calls, 1);
    assert_int_equal(x.connect_status, ROTOR_EDB);
    assert_int_equal(x.nresults, 1);
    assert_int_equal(x.results[0], ROTOR_EDB);
    assert_false(pgc_ok(x.conn));
    assert_non_null(strstr(pgc_error(x.conn), "no answer from the server"));
    ctx_finish(&x);
    close(fd);
}

/* A query the server leaves unanswered past the deadline (here a sleep; in life a connection a
 * firewall stopped forwarding) fails, with those queued behind it, and the connection is given
 * up; a query within its deadline is not touched. */
static void test_query_deadline(void **state)
{
    (void)state;
    ctx_t x;
    ctx_init(&x);
    connect_kv(&x, "127.0.0.1", env("PGPORT"));
    pgc_set_deadlines(x.conn, 0, 2000);
    qarg_t a[3] = {{&x, 0}, {&x, 1}, {&x, 2}};
    query_one(&x, "select pg_sleep(0.05)", &a[0]);
    assert_int_equal(x.nresults, 1);
    assert_int_equal(x.results[0], 0);
    pgc_set_deadlines(x.conn, 0, 200);
    assert_int_equal(pgc_query(x.conn, "select pg_sleep(30)", 0, NULL, on_result, &a[1]), 0);
    assert_int_equal(pgc_query(x.conn, "select 1", 0, NULL, on_result, &a[2]), 0);
    uv_run(&x.loop, UV_RUN_DEFAULT);
    assert_int_equal(x.nresults, 3);
    assert_int_equal(x.results[1], ROTOR_EDB);
    assert_int_equal(x.results[2], ROTOR_EDB);
    assert_false(pgc_ok(x.conn));
    assert_non_null(strstr(pgc_error(x.conn), "no answer from the server in 200 ms to a query"));
    ctx_finish(&x);
}

static uint64_t thread_cpu_ns(void)
{
    struct timespec ts;
    assert_int_equal(clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts), 0);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

#define SCRAM_ROLE "rotor_pg_scram"
#define SCRAM_PASSWORD "scram-test-pw-7f3a"
#define SCRAM_CONNECTS 8

/* The loop thread's CPU time for SCRAM_CONNECTS logins in a row on one loop, each closed after. */
static uint64_t loop_cpu_of_logins(const char *const *kw, const char *const *val)
{
    ctx_t y;
    ctx_init(&y);
    uint64_t t0 = thread_cpu_ns();
    for (int i = 0; i < SCRAM_CONNECTS; i++) {
        assert_int_equal(pgc_connect(&y.loop, kw, val, on_connect, &y, &y.conn), 0);
        uv_run(&y.loop, UV_RUN_DEFAULT);
        assert_int_equal(y.connect_calls, i + 1);
        if (y.connect_status != 0)
            fail_msg("login as %s failed: %s", val[2], pgc_error(y.conn));
        assert_true(pgc_ok(y.conn));
        pgc_close(y.conn);
        y.conn = NULL;
        uv_run(&y.loop, UV_RUN_DEFAULT);
    }
    uint64_t cpu = thread_cpu_ns() - t0;
    ctx_finish(&y);
    return cpu;
}

/* The SCRAM-SHA-256 client proof (a PBKDF2 of the password, milliseconds of CPU) is computed on
 * the threadpool, not on the loop: the loop thread's CPU time for several password logins (the
 * server's pg_hba demands scram-sha-256 of this role) exceeds that of as many trusted logins by
 * much less than the same number of PBKDF2 computations cost on it. A ratio of CPU times, not a
 * timing: the yardstick is one PQencryptPasswordConn (the same PBKDF2, same iteration count) on
 * this thread, this run. */
static void test_scram_proof_off_the_loop(void **state)
{
    (void)state;
    ctx_t x;
    ctx_init(&x);
    connect_kv(&x, env("PGHOST"), env("PGPORT"));
    assert_int_equal(x.connect_status, 0);
    qarg_t a[3] = {{&x, 0}, {&x, 1}, {&x, 2}};
    query_one(&x, "drop role if exists " SCRAM_ROLE, &a[0]);
    /* with-postgres runs the server with password_encryption = scram-sha-256. */
    query_one(&x, "create role " SCRAM_ROLE " login password '" SCRAM_PASSWORD "'", &a[1]);
    query_one(
        &x,
        "select rolpassword like 'SCRAM-SHA-256$4096:%' from pg_authid where rolname = '" SCRAM_ROLE
        "'",
        &a[2]);
    assert_int_equal(x.results[0], 0);
    assert_int_equal(x.results[1], 0);
    assert_string_equal(x.values[2], "t");

    /* One PBKDF2 on this thread: the cheapest of three. */
    uint64_t pbkdf2 = UINT64_MAX;
    for (int i = 0; i < 3; i++) {
        uint64_t t0 = thread_cpu_ns();
        char *v =
            PQencryptPasswordConn(pgc_raw(x.conn), SCRAM_PASSWORD, SCRAM_ROLE, "scram-sha-256");
        uint64_t t = thread_cpu_ns() - t0;
        assert_non_null(v);
        PQfreemem(v);
        pbkdf2 = t < pbkdf2 ? t : pbkdf2;
    }

    /* Over TCP: pg_hba.conf's host line is scram-sha-256 for every role but postgres (trust). */
    const char *kw[] = {"host", "port", "user", "password", "dbname", NULL};
    const char *scram[] = {"127.0.0.1",    env("PGPORT"), SCRAM_ROLE,
                           SCRAM_PASSWORD, "postgres",    NULL};
    const char *trust[] = {"127.0.0.1", env("PGPORT"), "postgres", "", "postgres", NULL};
    uint64_t loop_trust = loop_cpu_of_logins(kw, trust);
    uint64_t loop_scram = loop_cpu_of_logins(kw, scram);
    uint64_t extra = loop_scram > loop_trust ? loop_scram - loop_trust : 0;
    print_message("loop thread CPU for %d logins: %llu us with SCRAM, %llu us trusted; "
                  "one PBKDF2: %llu us\n",
                  SCRAM_CONNECTS, (unsigned long long)(loop_scram / 1000),
                  (unsigned long long)(loop_trust / 1000), (unsigned long long)(pbkdf2 / 1000));
    /* On the loop, SCRAM would add at least SCRAM_CONNECTS PBKDF2s to the trusted logins' cost;
     * half of that leaves room for its two extra messages per login and for noise. */
    assert_true(extra < (uint64_t)SCRAM_CONNECTS * pbkdf2 / 2);

    query_one(&x, "drop role " SCRAM_ROLE, &a[0]);
    assert_int_equal(x.results[x.nresults - 1], 0);
    ctx_finish(&x);
}

/* A role whose SCRAM verifier asks for 500 000 PBKDF2 iterations: the client's proof takes about
 * 0.35 s on the threadpool (2.5 s in the sanitizer build), a step of the connect phase that is in
 * flight for long. The keys are not this password's: the login would fail, after the proof. */
#define SLOW_ROLE "rotor_pg_slow_scram"
#define SLOW_VERIFIER                                                                              \
    "SCRAM-SHA-256$500000:c2xvd3NhbHRzbG93c2FsdA==$"                                               \
    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="

typedef struct {
    ctx_t *x;
    int in_flight_seen; /* ticks that saw a connect step on the threadpool */
    bool close_then;
} slow_t;

/* Closes the connection (or just notes it) as soon as a connect step is on the threadpool
 * (pgc_raw is NULL exactly then). */
static void watch_step(uv_timer_t *t)
{
    slow_t *s = t->data;
    ctx_t *x = s->x;
    if (x->connect_calls == 0 && x->conn && !pgc_raw(x->conn)) {
        s->in_flight_seen++;
        if (s->close_then) {
            pgc_close(x->conn);
            x->conn = NULL;
        }
    }
    if (x->connect_calls > 0 || !x->conn)
        uv_close((uv_handle_t *)t, NULL);
}

static void slow_login(bool close_in_flight, uint64_t deadline_ms, slow_t *s, ctx_t *x)
{
    ctx_init(x);
    connect_kv(x, env("PGHOST"), env("PGPORT"));
    qarg_t a[2] = {{x, 0}, {x, 1}};
    query_one(x, "drop role if exists " SLOW_ROLE, &a[0]);
    query_one(x, "create role " SLOW_ROLE " login password '" SLOW_VERIFIER "'", &a[1]);
    assert_int_equal(x->results[1], 0);
    pgc_close(x->conn);
    x->conn = NULL;
    uv_run(&x->loop, UV_RUN_DEFAULT);
    x->connect_calls = 0;

    const char *kw[] = {"host", "port", "user", "password", "dbname", NULL};
    const char *val[] = {"127.0.0.1", env("PGPORT"), SLOW_ROLE, "whatever", "postgres", NULL};
    assert_int_equal(pgc_connect(&x->loop, kw, val, on_connect, x, &x->conn), 0);
    if (deadline_ms)
        pgc_set_deadlines(x->conn, deadline_ms, 0);
    s->x = x;
    s->close_then = close_in_flight;
    uv_timer_init(&x->loop, &x->timer);
    x->timer.data = s;
    uv_timer_start(&x->timer, watch_step, 2, 2);
    uv_run(&x->loop, UV_RUN_DEFAULT);
    assert_int_equal(x->connect_calls, 1);
    assert_true(s->in_flight_seen > 0);
}

static void drop_slow_role(void)
{
    ctx_t x;
    ctx_init(&x);
    connect_kv(&x, env("PGHOST"), env("PGPORT"));
    qarg_t a = {&x, 0};
    query_one(&x, "drop role " SLOW_ROLE, &a);
    assert_int_equal(x.results[0], 0);
    ctx_finish(&x);
}

/* pgc_close while PQconnectPoll runs on the threadpool: the connect callback gets
 * ROTOR_ECANCELED at once, and the PGconn is finished and the handle freed only after the work
 * item has completed (the sanitizer build sees a use after free or a leak otherwise; uv_run
 * returning 0 in ctx_finish says every handle and request is done). */
static void test_close_while_connect_step_runs(void **state)
{
    (void)state;
    ctx_t x;
    slow_t s = {0};
    slow_login(true, 0, &s, &x);
    assert_int_equal(s.in_flight_seen, 1);
    assert_int_equal(x.connect_status, ROTOR_ECANCELED);
    ctx_finish(&x);
    drop_slow_role();
}

/* The connect deadline passes while a step runs on the threadpool: the attempt is given up at
 * once (the step's result is ignored when it comes), queued queries fail. */
static void test_connect_deadline_while_step_runs(void **state)
{
    (void)state;
    ctx_t x;
    slow_t s = {0};
    slow_login(false, 100, &s, &x);
    assert_int_equal(x.connect_status, ROTOR_EDB);
    assert_non_null(
        strstr(pgc_error(x.conn), "no answer from the server in 100 ms while connecting"));
    assert_false(pgc_ok(x.conn));
    qarg_t a = {&x, 5};
    assert_int_equal(pgc_query(x.conn, "select 1", 0, NULL, on_result, &a), ROTOR_EDB);
    ctx_finish(&x);
    drop_slow_role();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_connect_socket),
        cmocka_unit_test(test_connect_tcp),
        cmocka_unit_test(test_connect_localhost),
        cmocka_unit_test(test_connect_dsn_multihost),
        cmocka_unit_test(test_connect_refused),
        cmocka_unit_test(test_connect_bad_option),
        cmocka_unit_test(test_connect_error_never_shows_secret),
        cmocka_unit_test(test_connect_error_keeps_host_and_answer),
        cmocka_unit_test(test_redact_error_is_pure),
        cmocka_unit_test(test_queue_order_and_params),
        cmocka_unit_test(test_sql_error_then_ok),
        cmocka_unit_test(test_broken_connection),
        cmocka_unit_test(test_close_cancels_while_connecting),
        cmocka_unit_test(test_close_cancels_in_flight_and_queued),
        cmocka_unit_test(test_long_query_does_not_block),
        cmocka_unit_test(test_connect_deadline_on_silent_server),
        cmocka_unit_test(test_query_deadline),
        cmocka_unit_test(test_scram_proof_off_the_loop),
        cmocka_unit_test(test_close_while_connect_step_runs),
        cmocka_unit_test(test_connect_deadline_while_step_runs),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
