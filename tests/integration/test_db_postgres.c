/* test_db_postgres.c: the postgres driver against a real server (run under with-postgres). */
#include <setjmp.h>
#include <stdbool.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <libpq-fe.h>

#include "db.h"
#include "rotor.h"
#include "util.h"

static char admin_dsn[512];
static char tcp_fmt[512];

typedef struct {
    uv_loop_t loop;
    int calls;
    int status;
    long count;
    char reason[512];
} ctx_t;

static const char *env(const char *name)
{
    const char *v = getenv(name);
    return v ? v : "";
}

/* Blocking admin access is fine in a test. */
static void admin_exec(const char *sql)
{
    PGconn *pg = PQconnectdb(admin_dsn);
    assert_int_equal(PQstatus(pg), CONNECTION_OK);
    PGresult *res = PQexec(pg, sql);
    if (PQresultStatus(res) != PGRES_COMMAND_OK && PQresultStatus(res) != PGRES_TUPLES_OK)
        fail_msg("%s: %s", sql, PQerrorMessage(pg));
    PQclear(res);
    PQfinish(pg);
}

static char *admin_value(const char *sql, const char *param)
{
    PGconn *pg = PQconnectdb(admin_dsn);
    assert_int_equal(PQstatus(pg), CONNECTION_OK);
    PGresult *res = PQexecParams(pg, sql, 1, NULL, &param, NULL, NULL, 0);
    assert_int_equal(PQresultStatus(res), PGRES_TUPLES_OK);
    assert_int_equal(PQntuples(res), 1);
    char *v = util_strdup(PQgetisnull(res, 0, 0) ? "<null>" : PQgetvalue(res, 0, 0));
    PQclear(res);
    PQfinish(pg);
    return v;
}

static PGconn *login_tcp(const char *role, const char *password)
{
    char dsn[768];
    snprintf(dsn, sizeof dsn, tcp_fmt, role, password);
    return PQconnectdb(dsn);
}

static int group_setup(void **state)
{
    (void)state;
    snprintf(admin_dsn, sizeof admin_dsn, "host=%s port=%s user=postgres dbname=postgres",
             env("PGHOST"), env("PGPORT"));
    snprintf(tcp_fmt, sizeof tcp_fmt,
             "host=127.0.0.1 port=%s dbname=postgres user=%%s password=%%s", env("PGPORT"));
    /* Every statement of the driver's sessions reaches the server log, which the tests read to
     * prove that no plaintext password is ever sent. */
    admin_exec("ALTER ROLE postgres SET log_statement = 'all'");
    admin_exec("CREATE ROLE readers NOLOGIN; CREATE ROLE writers NOLOGIN;"
               "CREATE ROLE app_blue LOGIN IN ROLE readers;"
               "CREATE ROLE app_green NOLOGIN IN ROLE readers;"
               "CREATE ROLE app_red NOLOGIN IN ROLE writers;"
               "CREATE ROLE app_both NOLOGIN IN ROLE readers, writers;"
               "CREATE ROLE app_off NOLOGIN IN ROLE readers;"
               "CREATE ROLE app_sess LOGIN PASSWORD 'sess-pw-1';"
               "CREATE ROLE \"app \"\"odd\" NOLOGIN");
    return 0;
}

static void on_done(void *arg, int status, const char *reason, long count)
{
    ctx_t *x = arg;
    x->calls++;
    x->status = status;
    x->count = count;
    snprintf(x->reason, sizeof x->reason, "%s", reason ? reason : "");
}

static void ctx_init(ctx_t *x)
{
    memset(x, 0, sizeof *x);
    x->status = 1;
    assert_int_equal(uv_loop_init(&x->loop), 0);
}

/* Runs the loop dry and checks the callback ran exactly once and nothing was left open. */
static void ctx_run(ctx_t *x)
{
    assert_int_equal(x->calls, 0);
    assert_int_equal(uv_run(&x->loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(x->calls, 1);
    db_close_idle(&x->loop);
    uv_run(&x->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&x->loop), 0);
}

static void check_roles(ctx_t *x, const char *active, const char *standby)
{
    db_req_t *req;
    ctx_init(x);
    assert_int_equal(db_check_roles(&x->loop, admin_dsn, active, standby, on_done, x, &req), 0);
    ctx_run(x);
}

static void test_check_roles_ok(void **state)
{
    (void)state;
    ctx_t x;
    check_roles(&x, "app_blue", "app_green");
    assert_int_equal(x.status, 0);
    assert_string_equal(x.reason, "");
}

static void test_check_roles_missing(void **state)
{
    (void)state;
    ctx_t x;
    check_roles(&x, "app_blue", "app_nope");
    assert_int_equal(x.status, ROTOR_ENOTFOUND);
    assert_string_equal(x.reason, "role app_nope does not exist");
    check_roles(&x, "app_gone", "app_green");
    assert_int_equal(x.status, ROTOR_ENOTFOUND);
    assert_string_equal(x.reason, "role app_gone does not exist");
}

static void test_check_roles_memberships(void **state)
{
    (void)state;
    ctx_t x;
    check_roles(&x, "app_blue", "app_red");
    assert_int_equal(x.status, ROTOR_EFAIL);
    assert_string_equal(x.reason, "role app_red is not a member of: readers; "
                                  "role app_red is a member of extra: writers");
    check_roles(&x, "app_blue", "app_both");
    assert_int_equal(x.status, ROTOR_EFAIL);
    assert_string_equal(x.reason, "role app_both is a member of extra: writers");
    check_roles(&x, "app_blue", "app_sess");
    assert_int_equal(x.status, ROTOR_EFAIL);
    assert_string_equal(x.reason, "role app_sess is not a member of: readers");
}

static void test_check_roles_active_nologin(void **state)
{
    (void)state;
    ctx_t x;
    check_roles(&x, "app_off", "app_green");
    assert_int_equal(x.status, ROTOR_EFAIL);
    assert_string_equal(x.reason, "active role app_off cannot log in");
}

static void test_admin_connect_failure(void **state)
{
    (void)state;
    ctx_t x;
    db_req_t *req;
    ctx_init(&x);
    assert_int_equal(db_set_nologin(&x.loop, "host=127.0.0.1 port=1 user=postgres", "app_green",
                                    on_done, &x, &req),
                     0);
    ctx_run(&x);
    assert_int_equal(x.status, ROTOR_EDB);
    assert_non_null(strstr(x.reason, "set-nologin: cannot connect"));
}

static char *read_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = util_calloc(1, (size_t)n + 1);
    assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    return buf;
}

static void set_password(const char *role, const char *pw, int64_t until, int *status)
{
    ctx_t x;
    db_req_t *req;
    ctx_init(&x);
    rotor_secret_t *s = secret_from(pw, strlen(pw));
    assert_int_equal(db_set_password(&x.loop, admin_dsn, role, s, until, on_done, &x, &req), 0);
    secret_free(s);
    ctx_run(&x);
    *status = x.status;
}

static void test_set_password_then_login(void **state)
{
    (void)state;
    const char *pw = "Plain-Text-Not-In-Sql-7f3a";
    int64_t until = (util_now_ms() / 1000 + 86400) * 1000 + 250;
    PGconn *pg = login_tcp("app_green", pw);
    assert_int_not_equal(PQstatus(pg), CONNECTION_OK);
    PQfinish(pg);

    int status;
    set_password("app_green", pw, until, &status);
    assert_int_equal(status, 0);

    pg = login_tcp("app_green", pw);
    if (PQstatus(pg) != CONNECTION_OK)
        fail_msg("login: %s", PQerrorMessage(pg));
    PQfinish(pg);

    char *v = admin_value("SELECT (extract(epoch FROM rolvaliduntil) * 1000)::bigint::text "
                          "FROM pg_roles WHERE rolname = $1",
                          "app_green");
    assert_int_equal(strtoll(v, NULL, 10), until);
    free(v);
    v = admin_value("SELECT rolpassword FROM pg_authid WHERE rolname = $1", "app_green");
    assert_memory_equal(v, "SCRAM-SHA-256$", 14);
    free(v);
    v = admin_value("SELECT rolcanlogin::text FROM pg_roles WHERE rolname = $1", "app_green");
    assert_string_equal(v, "true");
    free(v);

    char *log = read_file(env("ROTOR_PG_LOG"));
    bool sent_verifier =
        strstr(log, "ALTER ROLE \"app_green\" WITH LOGIN PASSWORD 'SCRAM-SHA-256$") != NULL;
    bool sent_plaintext = strstr(log, pw) != NULL;
    free(log);
    assert_true(sent_verifier);
    assert_false(sent_plaintext);
}

static void test_set_password_quotes_identifier(void **state)
{
    (void)state;
    const char *pw = "odd-role-pw";
    int status;
    set_password("app \"odd", pw, util_now_ms() + 3600 * 1000, &status);
    assert_int_equal(status, 0);
    char *v = admin_value("SELECT rolcanlogin::text FROM pg_roles WHERE rolname = $1", "app \"odd");
    assert_string_equal(v, "true");
    free(v);
}

/* Issue 8: set_password_send can fail inside the call (here: libpq refuses to escape a role
 * name that ends in half a UTF-8 character, as a Latin-1 name does), which reports and frees the
 * request; hash_done then used the request's verifier after the free. Under ASan (build-asan)
 * that was a heap-use-after-free; now it is one failed callback, and nothing is left open. */
static void test_set_password_fails_inside_send(void **state)
{
    (void)state;
    ctx_t x;
    db_req_t *req;
    ctx_init(&x);
    rotor_secret_t *s = secret_from("any-password", 12);
    assert_int_equal(db_set_password(&x.loop, admin_dsn, "caf\xe9", s, util_now_ms() + 3600000,
                                     on_done, &x, &req),
                     0);
    secret_free(s);
    ctx_run(&x);
    assert_int_equal(x.status, ROTOR_EDB);
    if (!strstr(x.reason, "set-password: cannot quote"))
        fail_msg("reason: %s", x.reason);
}

static void verify(const char *role, const char *pw, const char *probe, ctx_t *x)
{
    db_req_t *req;
    ctx_init(x);
    rotor_secret_t *s = secret_from(pw, strlen(pw));
    assert_int_equal(db_verify_login(&x->loop, admin_dsn, role, s, probe, on_done, x, &req), 0);
    secret_free(s);
    ctx_run(x);
}

static void test_verify_login(void **state)
{
    (void)state;
    int status;
    set_password("app_green", "verify-me-42", util_now_ms() + 3600 * 1000, &status);
    assert_int_equal(status, 0);
    ctx_t x;
    verify("app_green", "verify-me-42", "select 1", &x);
    assert_int_equal(x.status, 0);

    verify("app_green", "wrong-password-99", "select 1", &x);
    assert_int_equal(x.status, ROTOR_EDB);
    assert_non_null(strstr(x.reason, "login as app_green failed"));
    assert_non_null(strstr(x.reason, "password authentication failed"));
    assert_null(strstr(x.reason, "wrong-password-99"));

    verify("app_green", "verify-me-42", "select * from no_such_table", &x);
    assert_int_equal(x.status, ROTOR_EDB);
    assert_non_null(strstr(x.reason, "no_such_table"));
}

/* Review of issue 8: set-db's later attempt skips its ALTER ROLE when the new password logs in
 * (stage.c on_setdb_checked). A server that lets the role in without asking for a password (here
 * the superuser, trust in with-postgres's pg_hba, as the official image's 127.0.0.1 line is)
 * accepts any password, so verify says whether the password was asked for: 1 for a SCRAM
 * login, 0 for a trusted one. Without it count was 0 for both, and set-db took a trusted login
 * for proof that the password was set. */
static void test_verify_login_says_password_used(void **state)
{
    (void)state;
    int status;
    set_password("app_green", "asked-for-42", util_now_ms() + 3600 * 1000, &status);
    assert_int_equal(status, 0);
    ctx_t x;
    verify("app_green", "asked-for-42", "select 1", &x);
    assert_int_equal(x.status, 0);
    assert_int_equal(x.count, 1);

    verify("postgres", "any-password-at-all", "select 1", &x);
    assert_int_equal(x.status, 0); /* trust: in with a password never set */
    assert_int_equal(x.count, 0);
}

static void test_set_nologin(void **state)
{
    (void)state;
    int status;
    set_password("app_green", "about-to-retire", util_now_ms() + 3600 * 1000, &status);
    assert_int_equal(status, 0);
    ctx_t x;
    db_req_t *req;
    ctx_init(&x);
    assert_int_equal(db_set_nologin(&x.loop, admin_dsn, "app_green", on_done, &x, &req), 0);
    ctx_run(&x);
    assert_int_equal(x.status, 0);
    char *v = admin_value("SELECT rolcanlogin::text FROM pg_roles WHERE rolname = $1", "app_green");
    assert_string_equal(v, "false");
    free(v);
}

/* A later attempt of retire or rollback asks first (stage.c set_nologin): 1 while the role can
 * log in, 0 once NOLOGIN (and for a role that does not exist). */
static void test_can_login(void **state)
{
    (void)state;
    int status;
    set_password("app_green", "can-login-42", util_now_ms() + 3600 * 1000, &status);
    assert_int_equal(status, 0);
    const char *roles[] = {"app_green", "app_green", "no_such_role"};
    const long want[] = {1, 0, 0};
    for (int i = 0; i < 3; i++) {
        ctx_t x;
        db_req_t *req;
        if (i == 1) {
            ctx_init(&x);
            assert_int_equal(db_set_nologin(&x.loop, admin_dsn, "app_green", on_done, &x, &req), 0);
            ctx_run(&x);
            assert_int_equal(x.status, 0);
        }
        ctx_init(&x);
        assert_int_equal(db_can_login(&x.loop, admin_dsn, roles[i], on_done, &x, &req), 0);
        ctx_run(&x);
        assert_int_equal(x.status, 0);
        assert_int_equal(x.count, want[i]);
    }
}

static void test_end_sessions(void **state)
{
    (void)state;
    PGconn *sess = login_tcp("app_sess", "sess-pw-1");
    assert_int_equal(PQstatus(sess), CONNECTION_OK);
    ctx_t x;
    db_req_t *req;
    ctx_init(&x);
    assert_int_equal(db_end_sessions(&x.loop, admin_dsn, "app_sess", on_done, &x, &req), 0);
    ctx_run(&x);
    assert_int_equal(x.status, 0);
    assert_int_equal(x.count, 1);
    PGresult *res = PQexec(sess, "select 1");
    assert_int_not_equal(PQresultStatus(res), PGRES_TUPLES_OK);
    PQclear(res);
    PQfinish(sess);

    /* Nothing left to end. */
    ctx_init(&x);
    assert_int_equal(db_end_sessions(&x.loop, admin_dsn, "app_sess", on_done, &x, &req), 0);
    ctx_run(&x);
    assert_int_equal(x.status, 0);
    assert_int_equal(x.count, 0);
}

static void test_cancel_pending(void **state)
{
    (void)state;
    ctx_t x;
    db_req_t *req;
    ctx_init(&x);
    assert_int_equal(db_check_roles(&x.loop, admin_dsn, "app_blue", "app_green", on_done, &x, &req),
                     0);
    db_cancel(req);
    assert_int_equal(x.calls, 1);
    assert_int_equal(x.status, ROTOR_ECANCELED);
    assert_int_equal(uv_run(&x.loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(x.calls, 1);
    db_close_idle(&x.loop);
    uv_run(&x.loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&x.loop), 0);
}

typedef struct {
    ctx_t *x;
    db_req_t *req;
} cancel_t;

static void cancel_later(uv_timer_t *t)
{
    cancel_t *c = t->data;
    if (c->x->calls == 0)
        db_cancel(c->req);
    uv_close((uv_handle_t *)t, NULL);
}

/* Cancels set-password at successive points of its life (connecting, hashing on the threadpool,
 * query in flight, done): the callback runs exactly once whatever the moment. The cancel moment
 * moves in steps of 1/32 of a first, uncanceled call; the sweep runs on past 40 steps until a call
 * completes, since a loaded machine (CI runs tests in parallel) can make later calls slower than
 * the first. A spin ends when the call completes, so a late enough step always completes. */
static void test_cancel_set_password_anytime(void **state)
{
    (void)state;
    uint64_t t0 = uv_hrtime();
    int status;
    set_password("app_off", "cancel-me", util_now_ms() + 60000, &status);
    assert_int_equal(status, 0);
    uint64_t full_us = (uv_hrtime() - t0) / 1000;
    int canceled = 0, completed = 0;
    for (int step = 0; step <= 40 || (completed == 0 && step <= 32 * 20); step++) {
        ctx_t x;
        ctx_init(&x);
        rotor_secret_t *s = secret_from("cancel-me", 9);
        cancel_t c = {&x, NULL};
        assert_int_equal(db_set_password(&x.loop, admin_dsn, "app_off", s, util_now_ms() + 60000,
                                         on_done, &x, &c.req),
                         0);
        secret_free(s);
        uv_timer_t t;
        uv_timer_init(&x.loop, &t);
        t.data = &c;
        /* Finer than a timer's millisecond: spin the loop, then cancel from a 0 ms timer. */
        uint64_t until = uv_hrtime() + full_us * (uint64_t)step * 1000 / 32;
        while (uv_hrtime() < until && x.calls == 0)
            uv_run(&x.loop, UV_RUN_NOWAIT);
        uv_timer_start(&t, cancel_later, 0, 0);
        assert_int_equal(uv_run(&x.loop, UV_RUN_DEFAULT), 0);
        assert_int_equal(x.calls, 1);
        assert_true(x.status == 0 || x.status == ROTOR_ECANCELED);
        canceled += x.status == ROTOR_ECANCELED;
        completed += x.status == 0;
        db_close_idle(&x.loop);
        uv_run(&x.loop, UV_RUN_DEFAULT);
        assert_int_equal(uv_loop_close(&x.loop), 0);
    }
    assert_true(canceled > 0);
    assert_true(completed > 0);
    admin_exec("ALTER ROLE app_off NOLOGIN");
}

/* Pids of the other sessions of postgres (the pool's idle connections), as "pid,pid,...". */
static char *pool_pids(void)
{
    return admin_value("SELECT coalesce(string_agg(pid::text, ',' ORDER BY pid), '')"
                       " FROM pg_stat_activity WHERE backend_type = 'client backend'"
                       " AND pid <> pg_backend_pid() AND usename = $1",
                       "postgres");
}

static int count_pids(const char *list)
{
    int n = *list ? 1 : 0;
    for (const char *p = list; *p; p++)
        n += *p == ',';
    return n;
}

/* Admin operations share a few kept connections: a burst of 20 opens at most 8, the next burst
 * opens none, and connections the server closed while idle are replaced without a failure. */
static void test_admin_pool(void **state)
{
    (void)state;
    ctx_t x;
    ctx_init(&x);
    db_req_t *req;
    for (int i = 0; i < 20; i++)
        assert_int_equal(
            db_check_roles(&x.loop, admin_dsn, "app_blue", "app_green", on_done, &x, &req), 0);
    assert_int_equal(uv_run(&x.loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(x.calls, 20);
    assert_int_equal(x.status, 0);
    char *first = pool_pids();
    for (int i = 0; i < 20; i++)
        assert_int_equal(
            db_check_roles(&x.loop, admin_dsn, "app_blue", "app_green", on_done, &x, &req), 0);
    assert_int_equal(uv_run(&x.loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(x.calls, 40);
    assert_int_equal(x.status, 0);
    char *second = pool_pids();
    assert_true(count_pids(second) >= 1);
    assert_true(count_pids(second) <= 8);
    /* every session after the second burst was already there after the first */
    for (const char *p = second; *p;) {
        size_t n = strcspn(p, ",");
        char pid[16];
        snprintf(pid, sizeof pid, "%.*s", (int)n, p);
        char needle[24], hay[4096];
        snprintf(needle, sizeof needle, ",%s,", pid);
        snprintf(hay, sizeof hay, ",%s,", first);
        assert_non_null(strstr(hay, needle));
        p += n + (p[n] == ',');
    }
    free(first);
    free(second);
    /* the server ends the idle sessions: the next operations still succeed */
    admin_exec("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
               " WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
               " AND usename = 'postgres'");
    /* read-only checks: three ALTER ROLE of one role at once would race in the catalog
     * ("tuple concurrently updated"), which is not what this tests */
    for (int i = 0; i < 3; i++)
        assert_int_equal(
            db_check_roles(&x.loop, admin_dsn, "app_blue", "app_green", on_done, &x, &req), 0);
    assert_int_equal(uv_run(&x.loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(x.calls, 43);
    if (x.status != 0)
        fail_msg("after the server ended the idle sessions: %s", x.reason);
    db_close_idle(&x.loop);
    uv_run(&x.loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&x.loop), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_check_roles_ok),
        cmocka_unit_test(test_check_roles_missing),
        cmocka_unit_test(test_check_roles_memberships),
        cmocka_unit_test(test_check_roles_active_nologin),
        cmocka_unit_test(test_admin_connect_failure),
        cmocka_unit_test(test_set_password_then_login),
        cmocka_unit_test(test_set_password_quotes_identifier),
        cmocka_unit_test(test_set_password_fails_inside_send),
        cmocka_unit_test(test_verify_login),
        cmocka_unit_test(test_verify_login_says_password_used),
        cmocka_unit_test(test_set_nologin),
        cmocka_unit_test(test_can_login),
        cmocka_unit_test(test_end_sessions),
        cmocka_unit_test(test_cancel_pending),
        cmocka_unit_test(test_cancel_set_password_anytime),
        cmocka_unit_test(test_admin_pool),
    };
    return cmocka_run_group_tests(tests, group_setup, NULL);
}
