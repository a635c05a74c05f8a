/* test_probe.c: http and sql probes against scripted servers (probe_server.py over HTTP,
 * https_server.py over HTTPS with its own CA) and the private PostgreSQL of with-postgres. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <curl/curl.h>
#include <jansson.h>
#include <libpq-fe.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include "http.h"
#include "probe.h"
#include "rotor.h"
#include "secret.h"
#include "testsrv.h"

#define PROBE_ROLE "probe_user"
#define PROBE_PASSWORD "probe-right-pw-1"

static struct {
    char dir[64];
    char ca[128];
    testsrv_t plain, tls;
    char admin_dsn[512];
} g;

/* One test's loop, http client and probe outcome. */
typedef struct {
    uv_loop_t loop;
    http_t *http;
    int calls;
    int status;
    char reason[2048];
    uint64_t started, elapsed_ms;
    probe_req_t *req;
    uv_timer_t cancel_timer;
} fx_t;

/* Blocking admin access is fine in a test. */
static int admin_exec(const char *sql)
{
    PGconn *pg = PQconnectdb(g.admin_dsn);
    int ok = PQstatus(pg) == CONNECTION_OK;
    PGresult *res = ok ? PQexec(pg, sql) : NULL;
    ok = ok && PQresultStatus(res) == PGRES_COMMAND_OK;
    if (!ok)
        fprintf(stderr, "%s: %s", sql, PQerrorMessage(pg));
    PQclear(res);
    PQfinish(pg);
    return ok ? 0 : -1;
}

static int group_setup(void **state)
{
    (void)state;
    char port_plain[128], port_tls[128];
    snprintf(g.admin_dsn, sizeof g.admin_dsn, "host=%s port=%s user=postgres dbname=postgres",
             getenv("PGHOST") ? getenv("PGHOST") : "", getenv("PGPORT") ? getenv("PGPORT") : "");
    if (admin_exec("CREATE ROLE " PROBE_ROLE " LOGIN PASSWORD '" PROBE_PASSWORD "'") != 0)
        return -1;
    snprintf(g.dir, sizeof g.dir, "/tmp/rotor-probe.XXXXXX");
    if (!mkdtemp(g.dir) || testsrv_make_ca(g.dir, NULL) != 0)
        return -1;
    snprintf(g.ca, sizeof g.ca, "%s/ca.pem", g.dir);
    snprintf(port_plain, sizeof port_plain, "%s/port-plain", g.dir);
    snprintf(port_tls, sizeof port_tls, "%s/port-tls", g.dir);
    if (testsrv_start(&g.plain, "probe_server.py", NULL, port_plain) != 0)
        return -1;
    return testsrv_start(&g.tls, "https_server.py", g.dir, port_tls);
}

static int group_teardown(void **state)
{
    (void)state;
    char cmd[128];
    testsrv_stop(&g.plain);
    testsrv_stop(&g.tls);
    snprintf(cmd, sizeof cmd, "rm -rf %s", g.dir);
    return system(cmd) == 0 ? 0 : -1;
}

/* ---- control requests to the scripted servers (blocking libcurl: outside the loop) ---- */

typedef struct {
    char *buf;
    size_t len;
} buf_t;

static size_t on_body(char *p, size_t size, size_t n, void *arg)
{
    buf_t *b = arg;
    b->buf = realloc(b->buf, b->len + size * n + 1);
    memcpy(b->buf + b->len, p, size * n);
    b->len += size * n;
    b->buf[b->len] = '\0';
    return size * n;
}

/* POSTs body (or GETs when NULL) to a control path; returns the answer, caller frees. */
static char *control(const testsrv_t *s, const char *path, const char *body)
{
    char url[256];
    buf_t b = {0};
    snprintf(url, sizeof url, "%s%s", s->base, path);
    CURL *e = curl_easy_init();
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_CAINFO, g.ca);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, &b);
    if (body)
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, body);
    assert_int_equal(curl_easy_perform(e), CURLE_OK);
    long status = 0;
    curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
    assert_int_equal(status, 200);
    curl_easy_cleanup(e);
    return b.buf;
}

static void script(const testsrv_t *s, const char *path, const char *responses_json)
{
    char body[4096];
    snprintf(body, sizeof body, "{\"path\":\"%s\",\"responses\":%s}", path, responses_json);
    free(control(s, "/_script", body));
}

/* How many requests the server saw whose path (with query) starts with prefix. */
static size_t requests_to(const testsrv_t *s, const char *prefix)
{
    char *text = control(s, "/_requests", NULL);
    json_t *all = json_loads(text, 0, NULL);
    free(text);
    assert_non_null(all);
    size_t i, count = 0;
    json_t *rec;
    json_array_foreach(all, i, rec)
    {
        const char *path = json_string_value(json_object_get(rec, "path"));
        if (path && strncmp(path, prefix, strlen(prefix)) == 0)
            count++;
    }
    json_decref(all);
    return count;
}

/* ---- fixture ---- */

static int fx_setup(void **state)
{
    fx_t *f = calloc(1, sizeof *f);
    if (!f || uv_loop_init(&f->loop) != 0 || http_init(&f->loop, &f->http) != 0)
        return -1;
    f->status = 1;
    free(control(&g.plain, "/_reset", "{}"));
    free(control(&g.tls, "/_reset", "{}"));
    *state = f;
    return 0;
}

static int fx_teardown(void **state)
{
    fx_t *f = *state;
    http_close(f->http);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    int rc = uv_loop_close(&f->loop);
    free(f);
    return rc == 0 ? 0 : -1;
}

static void on_probe(void *arg, int status, const char *reason)
{
    fx_t *f = arg;
    f->calls++;
    f->status = status;
    f->elapsed_ms = uv_now(&f->loop) - f->started;
    snprintf(f->reason, sizeof f->reason, "%s", reason ? reason : "");
}

/* Runs the loop until the probe's callback ran; checks it ran exactly once, and not early. */
static void fx_wait(fx_t *f)
{
    assert_int_equal(f->calls, 0);
    while (f->calls == 0)
        uv_run(&f->loop, UV_RUN_ONCE);
    uv_run(&f->loop, UV_RUN_NOWAIT);
    assert_int_equal(f->calls, 1);
}

static void run_probes(fx_t *f, const cfg_probe_t *probes, size_t n, const probe_sql_t *sql)
{
    uv_update_time(&f->loop);
    f->started = uv_now(&f->loop);
    assert_int_equal(probe_run(&f->loop, f->http, probes, n, sql, on_probe, f, &f->req), 0);
    fx_wait(f);
}

static void watch_probes(fx_t *f, const cfg_probe_t *probes, size_t n, uint64_t duration_ms)
{
    uv_update_time(&f->loop);
    f->started = uv_now(&f->loop);
    assert_int_equal(probe_watch(&f->loop, f->http, probes, n, duration_ms, on_probe, f, &f->req),
                     0);
    fx_wait(f);
}

/* An http probe of path on server s; url must outlive the probe. */
static cfg_probe_t http_probe(const testsrv_t *s, const char *path, char *url, size_t len)
{
    snprintf(url, len, "%s%s", s->base, path);
    return (cfg_probe_t){
        .kind = PROBE_HTTP, .url = url, .successes = 1, .timeout_ms = 2000, .interval_ms = 20};
}

/* ---- tests ---- */

static void test_http_passes_on_200(void **state)
{
    fx_t *f = *state;
    char url[256];
    cfg_probe_t p = http_probe(&g.plain, "/echo/ok", url, sizeof url);
    run_probes(f, &p, 1, NULL);
    assert_int_equal(f->status, 0);
    assert_string_equal(f->reason, "");
    assert_int_equal(requests_to(&g.plain, "/echo/ok"), 1);
}

static void test_http_needs_consecutive_successes(void **state)
{
    fx_t *f = *state;
    char url[256];
    script(&g.plain, "/flaky",
           "[{\"status\":503},{\"status\":503},{\"status\":503},{\"status\":200},"
           "{\"status\":200},{\"status\":503}]");
    cfg_probe_t p = http_probe(&g.plain, "/flaky", url, sizeof url);
    p.successes = 2;
    run_probes(f, &p, 1, NULL);
    assert_int_equal(f->status, 0);
    /* Three failures, then the two 200s in a row; the trailing 503 is never asked for. */
    assert_int_equal(requests_to(&g.plain, "/flaky"), 5);
}

static void test_http_failure_resets_the_count(void **state)
{
    fx_t *f = *state;
    char url[256];
    /* Two successes in total by the fifth try, but not in a row until the sixth. */
    script(&g.plain, "/reset",
           "[{\"status\":503},{\"status\":200},{\"status\":503},{\"status\":503},"
           "{\"status\":200},{\"status\":200}]");
    cfg_probe_t p = http_probe(&g.plain, "/reset", url, sizeof url);
    p.successes = 2;
    run_probes(f, &p, 1, NULL);
    assert_int_equal(f->status, 0);
    assert_int_equal(requests_to(&g.plain, "/reset"), 6);
}

static void test_http_gives_up_after_tries(void **state)
{
    fx_t *f = *state;
    char url[256], want[512];
    script(&g.plain, "/down",
           "[{\"status\":503},{\"status\":503},{\"status\":503},{\"status\":503},"
           "{\"status\":503},{\"status\":503},{\"status\":503}]");
    cfg_probe_t p = http_probe(&g.plain, "/down", url, sizeof url);
    run_probes(f, &p, 1, NULL);
    assert_int_equal(f->status, ROTOR_EFAIL);
    snprintf(want, sizeof want, "probe GET %s: got 503 (expected 200) after 5 tries", url);
    assert_string_equal(f->reason, want);
    assert_int_equal(requests_to(&g.plain, "/down"), 5);
}

static void test_http_body_contains(void **state)
{
    fx_t *f = *state;
    char url[256];
    /* /echo answers the request as JSON, so it holds the method but never "ready". */
    cfg_probe_t p = http_probe(&g.plain, "/echo/body", url, sizeof url);
    p.body_contains = "\"method\": \"GET\"";
    run_probes(f, &p, 1, NULL);
    assert_int_equal(f->status, 0);

    f->calls = 0;
    p.body_contains = "ready";
    p.interval_ms = 1;
    run_probes(f, &p, 1, NULL);
    assert_int_equal(f->status, ROTOR_EFAIL);
    assert_non_null(strstr(f->reason, ": got 200 without \"ready\" in the body after 5 tries"));
}

static void test_http_expect(void **state)
{
    fx_t *f = *state;
    char url[256];
    int only_204[] = {204};
    cfg_probe_t p = http_probe(&g.plain, "/echo/expect", url, sizeof url);
    p.expect = only_204;
    p.nexpect = 1;
    p.interval_ms = 1;
    run_probes(f, &p, 1, NULL);
    assert_int_equal(f->status, ROTOR_EFAIL);
    assert_non_null(strstr(f->reason, ": got 200 (expected 204) after 5 tries"));

    int either[] = {204, 200};
    p.expect = either;
    p.nexpect = 2;
    f->calls = 0;
    run_probes(f, &p, 1, NULL);
    assert_int_equal(f->status, 0);
}

static void test_http_timeout_is_a_failure(void **state)
{
    fx_t *f = *state;
    char url[256], want[512];
    /* The slow answer times out and counts as a failed try; the next one passes. */
    script(&g.plain, "/late", "[{\"status\":200,\"delay_ms\":1500},{\"status\":200}]");
    cfg_probe_t p = http_probe(&g.plain, "/late", url, sizeof url);
    p.timeout_ms = 200;
    run_probes(f, &p, 1, NULL);
    assert_int_equal(f->status, 0);
    assert_int_equal(requests_to(&g.plain, "/late"), 2);
    assert_true(f->elapsed_ms >= 200);

    cfg_probe_t slow = http_probe(&g.plain, "/slow?ms=1500", url, sizeof url);
    slow.timeout_ms = 100;
    slow.interval_ms = 1;
    f->calls = 0;
    run_probes(f, &slow, 1, NULL);
    assert_int_equal(f->status, ROTOR_EFAIL);
    snprintf(want, sizeof want, "probe GET %s: timed out after 100ms after 5 tries", url);
    assert_string_equal(f->reason, want);
}

static void test_http_connection_refused(void **state)
{
    fx_t *f = *state;
    /* A port that was free a moment ago: nothing listens there. */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof a;
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &alen), 0);
    close(fd);
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/healthz", ntohs(a.sin_port));
    cfg_probe_t p = {.kind = PROBE_HTTP, .url = url, .successes = 1, .interval_ms = 1};
    run_probes(f, &p, 1, NULL);
    assert_int_equal(f->status, ROTOR_EFAIL);
    /* curl's words for a refused connection, without its "after 0 ms" beside our count. */
    char want[256];
    snprintf(want, sizeof want, "probe GET %s: Failed to connect to 127.0.0.1 port %d: ", url,
             ntohs(a.sin_port));
    assert_memory_equal(f->reason, want, strlen(want));
    assert_null(strstr(f->reason, " ms"));
    assert_non_null(strstr(f->reason, " after 5 tries"));
}

static void test_https_with_test_ca(void **state)
{
    fx_t *f = *state;
    char url[256];
    cfg_probe_t p = http_probe(&g.tls, "/echo/tls", url, sizeof url);
    p.ca_file = g.ca;
    run_probes(f, &p, 1, NULL);
    assert_int_equal(f->status, 0);
    assert_int_equal(requests_to(&g.tls, "/echo/tls"), 1);

    /* The system store does not know the test CA: TLS is verified, never skipped. */
    p.ca_file = NULL;
    p.interval_ms = 1;
    f->calls = 0;
    run_probes(f, &p, 1, NULL);
    assert_int_equal(f->status, ROTOR_EFAIL);
    assert_non_null(strstr(f->reason, "certificate"));
    assert_int_equal(requests_to(&g.tls, "/echo/tls"), 1);
}

static void test_probes_run_concurrently(void **state)
{
    fx_t *f = *state;
    char u1[256], u2[256], u3[256];
    cfg_probe_t p[3] = {
        http_probe(&g.plain, "/echo/a?delay_ms=1500", u1, sizeof u1),
        http_probe(&g.plain, "/echo/b?delay_ms=1500", u2, sizeof u2),
        http_probe(&g.tls, "/echo/c?delay_ms=1500", u3, sizeof u3),
    };
    p[2].ca_file = g.ca;
    run_probes(f, p, 3, NULL);
    assert_int_equal(f->status, 0);
    /* One after another would take 4.5 s; the margin is for a loaded machine. */
    assert_true(f->elapsed_ms >= 1500);
    assert_true(f->elapsed_ms < 3500);

    /* One failing probe fails the list, and the reason names it. */
    script(&g.plain, "/bad",
           "[{\"status\":500},{\"status\":500},{\"status\":500},"
           "{\"status\":500},{\"status\":500}]");
    char u4[256];
    p[1] = http_probe(&g.plain, "/bad", u4, sizeof u4);
    f->calls = 0;
    run_probes(f, p, 3, NULL);
    assert_int_equal(f->status, ROTOR_EFAIL);
    char want[512];
    snprintf(want, sizeof want, "probe GET %s: got 500 (expected 200) after 5 tries", u4);
    assert_string_equal(f->reason, want);
}

static void test_sql_probe(void **state)
{
    fx_t *f = *state;
    cfg_probe_t p = {.kind = PROBE_SQL, .successes = 1, .timeout_ms = 5000, .interval_ms = 1};
    rotor_secret_t *right = secret_from(PROBE_PASSWORD, strlen(PROBE_PASSWORD));
    probe_sql_t sql = {.dsn = g.admin_dsn, .role = PROBE_ROLE, .password = right, .query = NULL};
    run_probes(f, &p, 1, &sql);
    secret_free(right);
    assert_int_equal(f->status, 0);

    const char *wrong_pw = "probe-wrong-pw-2";
    rotor_secret_t *wrong = secret_from(wrong_pw, strlen(wrong_pw));
    sql.password = wrong;
    f->calls = 0;
    run_probes(f, &p, 1, &sql);
    secret_free(wrong);
    assert_int_equal(f->status, ROTOR_EFAIL);
    assert_memory_equal(f->reason, "probe sql as " PROBE_ROLE ": ", 13 + strlen(PROBE_ROLE) + 2);
    assert_non_null(strstr(f->reason, "password authentication failed"));
    assert_non_null(strstr(f->reason, "after 5 tries"));
    assert_null(strstr(f->reason, wrong_pw));

    /* A failing query fails the probe too, even when the login works. */
    right = secret_from(PROBE_PASSWORD, strlen(PROBE_PASSWORD));
    sql.password = right;
    sql.query = "select * from no_such_table";
    f->calls = 0;
    run_probes(f, &p, 1, &sql);
    secret_free(right);
    assert_int_equal(f->status, ROTOR_EFAIL);
    assert_non_null(strstr(f->reason, "no_such_table"));
}

static void test_bad_arguments(void **state)
{
    fx_t *f = *state;
    cfg_probe_t p = {.kind = PROBE_SQL, .successes = 1};
    probe_req_t *req = NULL;
    /* An sql probe needs credentials; a watch has none to give. */
    assert_int_equal(probe_run(&f->loop, f->http, &p, 1, NULL, on_probe, f, &req), ROTOR_EINVALID);
    assert_int_equal(probe_watch(&f->loop, f->http, &p, 1, 1000, on_probe, f, &req),
                     ROTOR_EINVALID);
    char url[64] = "http://127.0.0.1:1/";
    cfg_probe_t h = {.kind = PROBE_HTTP, .url = url};
    assert_int_equal(probe_run(&f->loop, NULL, &h, 1, NULL, on_probe, f, &req), ROTOR_EINVALID);
    assert_int_equal(f->calls, 0);
}

static void test_empty_list_passes_later(void **state)
{
    fx_t *f = *state;
    assert_int_equal(probe_run(&f->loop, f->http, NULL, 0, NULL, on_probe, f, &f->req), 0);
    fx_wait(f);
    assert_int_equal(f->status, 0);
}

static void test_watch_passes(void **state)
{
    fx_t *f = *state;
    char url[256];
    cfg_probe_t p = http_probe(&g.plain, "/echo/soak", url, sizeof url);
    p.interval_ms = 50;
    watch_probes(f, &p, 1, 1000);
    assert_int_equal(f->status, 0);
    assert_true(f->elapsed_ms >= 1000);
    assert_true(f->elapsed_ms < 3000);
    /* Tried all along, every interval: about 20 times in the second, never more (tries start
     * 50 ms apart), fewer only when answers are slow, as on a loaded machine. */
    size_t n = requests_to(&g.plain, "/echo/soak");
    assert_true(n >= 8 && n <= 22);
}

static void test_watch_fails_early(void **state)
{
    fx_t *f = *state;
    char url[256], want[512], resp[4096] = "[";
    for (int i = 0; i < 40; i++)
        strcat(resp, i < 4 ? "{\"status\":200}," : "{\"status\":500},");
    resp[strlen(resp) - 1] = ']';
    script(&g.plain, "/prod", resp);
    cfg_probe_t p = http_probe(&g.plain, "/prod", url, sizeof url);
    p.interval_ms = 50;
    watch_probes(f, &p, 1, 10000);
    assert_int_equal(f->status, ROTOR_EFAIL);
    snprintf(want, sizeof want, "probe GET %s: got 500 (expected 200) 5 times in a row", url);
    assert_string_equal(f->reason, want);
    assert_true(f->elapsed_ms < 2000);
    assert_int_equal(requests_to(&g.plain, "/prod"), 9);
}

static void on_cancel_timer(uv_timer_t *t)
{
    fx_t *f = t->data;
    probe_cancel(f->req);
    probe_cancel(f->req); /* still before the callback: a no-op */
    uv_close((uv_handle_t *)t, NULL);
}

static void cancel_after(fx_t *f, uint64_t ms)
{
    uv_timer_t *t = &f->cancel_timer;
    uv_timer_init(&f->loop, t);
    t->data = f;
    uv_timer_start(t, on_cancel_timer, ms, 0);
}

static void test_cancel(void **state)
{
    fx_t *f = *state;
    char url[256];
    cfg_probe_t p = http_probe(&g.plain, "/slow?ms=3000", url, sizeof url);
    p.timeout_ms = 5000;
    cancel_after(f, 100);
    run_probes(f, &p, 1, NULL);
    assert_int_equal(f->status, ROTOR_ECANCELED);
    assert_true(f->elapsed_ms < 2500); /* not the 3 s answer */

    cfg_probe_t soak = http_probe(&g.plain, "/echo/cancel", url, sizeof url);
    cancel_after(f, 100);
    f->calls = 0;
    watch_probes(f, &soak, 1, 60000);
    assert_int_equal(f->status, ROTOR_ECANCELED);
    assert_true(f->elapsed_ms < 2500); /* not the 60 s soak */
}

int main(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_http_passes_on_200, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_http_needs_consecutive_successes, fx_setup,
                                        fx_teardown),
        cmocka_unit_test_setup_teardown(test_http_failure_resets_the_count, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_http_gives_up_after_tries, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_http_body_contains, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_http_expect, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_http_timeout_is_a_failure, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_http_connection_refused, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_https_with_test_ca, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_probes_run_concurrently, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_sql_probe, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_bad_arguments, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_empty_list_passes_later, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_watch_passes, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_watch_fails_early, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_cancel, fx_setup, fx_teardown),
    };
    int rc = cmocka_run_group_tests(tests, group_setup, group_teardown);
    curl_global_cleanup();
    return rc;
}
