/* test_http.c: http.c against a real HTTPS server (tests/support/https_server.py, own CA). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "http.h"
#include "metrics.h"
#include "rotor.h"
#include "testsrv.h"

/* The server and its CA, shared by every test of the group. */
static struct {
    char dir[64];
    char ca[128];
    testsrv_t server;
} srv;

static int server_start(void **state)
{
    (void)state;
    char portfile[128];
    snprintf(srv.dir, sizeof srv.dir, "/tmp/rotor-http.XXXXXX");
    if (!mkdtemp(srv.dir) || testsrv_make_ca(srv.dir, "vault.test.example") != 0)
        return -1;
    snprintf(srv.ca, sizeof srv.ca, "%s/ca.pem", srv.dir);
    snprintf(portfile, sizeof portfile, "%s/port", srv.dir);
    return testsrv_start(&srv.server, "https_server.py", srv.dir, portfile);
}

static int server_stop(void **state)
{
    (void)state;
    char cmd[128];
    testsrv_stop(&srv.server);
    snprintf(cmd, sizeof cmd, "rm -rf %s", srv.dir);
    return system(cmd) == 0 ? 0 : -1;
}

static void url_of(char *buf, size_t len, const char *path)
{
    snprintf(buf, len, "https://127.0.0.1:%d%s", srv.server.port, path);
}

/* What a request got back, copied out of the callback (its strings are borrowed). */
typedef struct {
    int done;
    int status;
    long http;
    char *body;
    char *www_auth, *retry_after, *retry_ms, *xms_retry_ms, *ctype, *location, *error;
    uint64_t retry_delay; /* http_retry_after_ms at arrival */
    uint64_t elapsed_ms;
    uint64_t started;
    uv_loop_t *loop;
} result_t;

static char *dup_or_null(const char *s)
{
    return s ? strdup(s) : NULL;
}

static void result_free(result_t *r)
{
    free(r->body);
    free(r->www_auth);
    free(r->retry_after);
    free(r->retry_ms);
    free(r->xms_retry_ms);
    free(r->ctype);
    free(r->location);
    free(r->error);
}

static void on_result(void *arg, int status, const http_response_t *res)
{
    result_t *r = arg;
    assert_non_null(res);
    r->done++;
    r->status = status;
    r->http = res->status;
    r->body = strdup(res->body ? res->body : "");
    r->www_auth = dup_or_null(res->www_authenticate);
    r->retry_after = dup_or_null(res->retry_after);
    r->retry_ms = dup_or_null(res->retry_after_ms);
    r->xms_retry_ms = dup_or_null(res->x_ms_retry_after_ms);
    r->ctype = dup_or_null(res->content_type);
    r->location = dup_or_null(res->location);
    r->error = dup_or_null(res->error);
    r->retry_delay = http_retry_after_ms(res, 0);
    r->elapsed_ms = uv_now(r->loop) - r->started;
}

typedef struct {
    uv_loop_t loop;
    http_t *http;
} fixture_t;

static int fx_setup(void **state)
{
    fixture_t *f = calloc(1, sizeof *f);
    uv_loop_init(&f->loop);
    if (http_init(&f->loop, &f->http) != 0)
        return -1;
    *state = f;
    return 0;
}

static int fx_teardown(void **state)
{
    fixture_t *f = *state;
    http_close(f->http);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&f->loop), 0);
    free(f);
    return 0;
}

static void send_into(fixture_t *f, const http_request_t *req, result_t *r)
{
    memset(r, 0, sizeof *r);
    r->loop = &f->loop;
    uv_update_time(&f->loop);
    r->started = uv_now(&f->loop);
    assert_int_equal(http_send(f->http, req, on_result, r, NULL), 0);
}

/* Sends one request and runs the loop until its callback ran. */
static void run_one(fixture_t *f, const http_request_t *req, result_t *r)
{
    send_into(f, req, r);
    while (!r->done)
        uv_run(&f->loop, UV_RUN_ONCE);
    assert_int_equal(r->done, 1);
}

/* Queues scripted answers for path on the server (through http.c itself). */
static void script(fixture_t *f, const char *path, const char *responses_json)
{
    char url[128], body[2048];
    url_of(url, sizeof url, "/_script");
    snprintf(body, sizeof body, "{\"path\":\"%s\",\"responses\":%s}", path, responses_json);
    http_request_t req = {
        .method = "POST", .url = url, .body = body, .body_len = strlen(body), .ca_file = srv.ca};
    result_t r;
    run_one(f, &req, &r);
    assert_int_equal(r.status, 0);
    assert_int_equal(r.http, 200);
    result_free(&r);
}

static json_t *echo_of(const result_t *r)
{
    json_error_t err;
    json_t *j = json_loads(r->body, 0, &err);
    assert_non_null(j);
    return j;
}

static void test_methods_and_bodies(void **state)
{
    fixture_t *f = *state;
    const char *methods[] = {"GET", "PUT", "PATCH", "POST", "DELETE"};
    const char *hdrs[] = {"X-Rotor-Test: yes", "Content-Type: application/json", NULL};
    char url[128];
    url_of(url, sizeof url, "/echo/m");
    for (size_t i = 0; i < sizeof methods / sizeof *methods; i++) {
        char body[64];
        snprintf(body, sizeof body, "{\"value\":\"pw-%zu\"}", i);
        int has_body = strcmp(methods[i], "GET") != 0 && strcmp(methods[i], "DELETE") != 0;
        http_request_t req = {.method = methods[i],
                              .url = url,
                              .headers = hdrs,
                              .body = has_body ? body : NULL,
                              .body_len = has_body ? strlen(body) : 0,
                              .ca_file = srv.ca};
        result_t r;
        run_one(f, &req, &r);
        assert_int_equal(r.status, 0);
        assert_int_equal(r.http, 200);
        assert_null(r.error);
        assert_string_equal(r.ctype, "application/json");
        json_t *j = echo_of(&r);
        assert_string_equal(json_string_value(json_object_get(j, "method")), methods[i]);
        json_t *h = json_object_get(j, "headers");
        assert_string_equal(json_string_value(json_object_get(h, "x-rotor-test")), "yes");
        assert_null(json_object_get(h, "expect"));
        assert_string_equal(json_string_value(json_object_get(j, "body")), has_body ? body : "");
        json_decref(j);
        result_free(&r);
    }
}

static void test_empty_put_sends_length(void **state)
{
    fixture_t *f = *state;
    char url[128];
    url_of(url, sizeof url, "/echo/empty");
    http_request_t req = {.method = "PUT", .url = url, .ca_file = srv.ca};
    result_t r;
    run_one(f, &req, &r);
    assert_int_equal(r.status, 0);
    json_t *j = echo_of(&r);
    assert_string_equal(json_string_value(json_object_get(j, "method")), "PUT");
    json_t *h = json_object_get(j, "headers");
    assert_string_equal(json_string_value(json_object_get(h, "content-length")), "0");
    json_decref(j);
    result_free(&r);
}

static void test_response_headers(void **state)
{
    fixture_t *f = *state;
    script(f, "/hdr",
           "[{\"status\":401,\"headers\":{\"WWW-Authenticate\":\"Bearer "
           "authorization=\\\"https://login.example/tenant-1\\\", "
           "resource=\\\"https://vault.azure.net\\\"\",\"RETRY-AFTER\":\"7\","
           "\"Location\":\"https://x.example/"
           "next\"},\"json\":{\"error\":{\"code\":\"Unauthorized\"}}},"
           "{\"status\":429,\"headers\":{\"retry-after\":\"7\",\"Retry-After-Ms\":\"1500\"}},"
           "{\"status\":429,\"headers\":{\"retry-after\":\"7\",\"X-MS-Retry-After-Ms\":\"250\"}},"
           "{\"status\":503,\"headers\":{\"Retry-After\":\"Thu, 01 Jan 1970 00:00:30 GMT\"}}]");
    char url[128];
    url_of(url, sizeof url, "/hdr");
    http_request_t req = {.method = "GET", .url = url, .ca_file = srv.ca};
    result_t r;

    run_one(f, &req, &r);
    assert_int_equal(r.status, 0);
    assert_int_equal(r.http, 401);
    assert_string_equal(r.www_auth, "Bearer authorization=\"https://login.example/tenant-1\", "
                                    "resource=\"https://vault.azure.net\"");
    assert_string_equal(r.retry_after, "7");
    assert_string_equal(r.location, "https://x.example/next");
    assert_null(r.retry_ms);
    assert_int_equal(r.retry_delay, 7000);
    assert_non_null(strstr(r.body, "Unauthorized"));
    result_free(&r);

    run_one(f, &req, &r);
    assert_int_equal(r.http, 429);
    assert_string_equal(r.retry_ms, "1500");
    assert_null(r.www_auth);
    assert_int_equal(r.retry_delay, 1500);
    result_free(&r);

    run_one(f, &req, &r);
    assert_string_equal(r.xms_retry_ms, "250");
    assert_int_equal(r.retry_delay, 250);
    result_free(&r);

    /* The date form, measured against now = 0 (the epoch) in on_result. */
    run_one(f, &req, &r);
    assert_int_equal(r.http, 503);
    assert_string_equal(r.retry_after, "Thu, 01 Jan 1970 00:00:30 GMT");
    assert_int_equal(r.retry_delay, 30000);
    result_free(&r);
}

static void test_retry_after_parsing(void **state)
{
    (void)state;
    http_response_t res = {0};
    assert_int_equal(http_retry_after_ms(&res, 0), 0);
    res.retry_after = "120";
    assert_int_equal(http_retry_after_ms(&res, 0), 120000);
    res.retry_after = " 3 ";
    assert_int_equal(http_retry_after_ms(&res, 0), 3000);
    /* 784111777 is Sun, 06 Nov 1994 08:49:37 GMT. */
    res.retry_after = "Sun, 06 Nov 1994 08:49:37 GMT";
    assert_int_equal(http_retry_after_ms(&res, 784111777000LL - 45500), 45500);
    assert_int_equal(http_retry_after_ms(&res, 784111777000LL + 1000), 0); /* in the past */
    res.retry_after = "soon";
    assert_int_equal(http_retry_after_ms(&res, 0), 0);
    res.retry_after = "-5";
    assert_int_equal(http_retry_after_ms(&res, 0), 0);
    res.retry_after = "10";
    res.x_ms_retry_after_ms = "400";
    assert_int_equal(http_retry_after_ms(&res, 0), 400);
    res.retry_after_ms = "90";
    assert_int_equal(http_retry_after_ms(&res, 0), 90);
    res.retry_after_ms = "junk"; /* an unreadable hint falls through to the next one */
    assert_int_equal(http_retry_after_ms(&res, 0), 400);
}

static void test_tls_verification(void **state)
{
    fixture_t *f = *state;
    char url[128], pin[128];
    url_of(url, sizeof url, "/echo/tls");
    http_request_t req = {.method = "GET", .url = url}; /* system store: our CA is unknown */
    result_t r;
    run_one(f, &req, &r);
    assert_int_equal(r.status, ROTOR_EFAIL);
    assert_int_equal(r.http, 0);
    assert_non_null(r.error);
    assert_non_null(strcasestr(r.error, "certificate"));
    result_free(&r);

    /* Trusted CA, but a host name the certificate does not carry. */
    snprintf(url, sizeof url, "https://other.test.example:%d/echo/tls", srv.server.port);
    snprintf(pin, sizeof pin, "other.test.example:%d:127.0.0.1", srv.server.port);
    http_request_t req2 = {.method = "GET", .url = url, .ca_file = srv.ca, .resolve = pin};
    run_one(f, &req2, &r);
    assert_int_equal(r.status, ROTOR_EFAIL);
    assert_non_null(strcasestr(r.error, "certificate"));
    result_free(&r);
}

static void test_resolve_pin(void **state)
{
    fixture_t *f = *state;
    char url[128], pin[128];
    snprintf(url, sizeof url, "https://vault.test.example:%d/echo/pinned", srv.server.port);
    snprintf(pin, sizeof pin, "vault.test.example:%d:127.0.0.1", srv.server.port);
    http_request_t req = {.method = "GET", .url = url, .ca_file = srv.ca, .resolve = pin};
    result_t r;
    run_one(f, &req, &r);
    assert_int_equal(r.status, 0);
    assert_int_equal(r.http, 200);
    json_t *j = echo_of(&r);
    char host[64];
    snprintf(host, sizeof host, "vault.test.example:%d", srv.server.port);
    assert_string_equal(json_string_value(json_object_get(json_object_get(j, "headers"), "host")),
                        host);
    json_decref(j);
    result_free(&r);
}

static void test_timeout(void **state)
{
    fixture_t *f = *state;
    char url[128];
    url_of(url, sizeof url, "/slow?ms=3000");
    http_request_t req = {.method = "GET", .url = url, .ca_file = srv.ca, .timeout_ms = 300};
    result_t r;
    run_one(f, &req, &r);
    assert_int_equal(r.status, ROTOR_ETIMEOUT);
    assert_non_null(r.error);
    assert_true(r.elapsed_ms >= 250);
    assert_true(r.elapsed_ms < 2500);
    result_free(&r);
}

static void test_dropped_connection(void **state)
{
    fixture_t *f = *state;
    /* Twice: curl retries once by itself when a reused connection dies before answering. */
    script(f, "/drop", "[{\"drop\":true},{\"drop\":true}]");
    char url[128];
    url_of(url, sizeof url, "/drop");
    http_request_t req = {.method = "GET", .url = url, .ca_file = srv.ca};
    result_t r;
    run_one(f, &req, &r);
    assert_int_equal(r.status, ROTOR_EFAIL);
    assert_int_equal(r.http, 0);
    assert_non_null(r.error);
    result_free(&r);
}

typedef struct {
    http_req_t *req;
} cancel_ctx_t;

static void on_cancel_timer(uv_timer_t *t)
{
    cancel_ctx_t *c = t->data;
    http_cancel(c->req);
    uv_close((uv_handle_t *)t, NULL);
}

static void test_cancel(void **state)
{
    fixture_t *f = *state;
    char url[128];
    url_of(url, sizeof url, "/slow?ms=10000");
    http_request_t req = {.method = "GET", .url = url, .ca_file = srv.ca};

    /* Cancelled while in flight. */
    result_t r;
    cancel_ctx_t c;
    uv_timer_t t;
    memset(&r, 0, sizeof r);
    r.loop = &f->loop;
    uv_update_time(&f->loop);
    r.started = uv_now(&f->loop);
    assert_int_equal(http_send(f->http, &req, on_result, &r, &c.req), 0);
    assert_non_null(c.req);
    uv_timer_init(&f->loop, &t);
    t.data = &c;
    uv_timer_start(&t, on_cancel_timer, 100, 0);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_int_equal(r.done, 1);
    assert_int_equal(r.status, ROTOR_ECANCELED);
    assert_true(r.elapsed_ms < 5000); /* not the 10 s answer */
    result_free(&r);

    /* Cancelled before the loop ever ran it: the callback runs from within http_cancel. */
    http_req_t *hr;
    memset(&r, 0, sizeof r);
    r.loop = &f->loop;
    assert_int_equal(http_send(f->http, &req, on_result, &r, &hr), 0);
    assert_int_equal(r.done, 0);
    http_cancel(hr);
    assert_int_equal(r.done, 1);
    assert_int_equal(r.status, ROTOR_ECANCELED);
    result_free(&r);
    uv_run(&f->loop, UV_RUN_DEFAULT);
}

static double requests(const char *labels)
{
    double v = 0;
    return metrics_value("rotor_http_requests_total", labels, &v) == 0 ? v : 0;
}

/* Every request is counted once, by its service and what came of it: a status code, or why no
 * response came. A driver's retries are separate requests, so a 429 shows beside its 200. */
static void test_requests_counted(void **state)
{
    fixture_t *f = *state;
    metrics_reset();
    script(f, "/kv", "[{\"status\":429},{\"status\":200}]");
    metrics_reset(); /* the script's own POST is not part of what is counted below */
    char url[128];
    url_of(url, sizeof url, "/kv");
    http_request_t req = {.method = "GET", .url = url, .ca_file = srv.ca, .service = "keyvault"};
    result_t r;
    run_one(f, &req, &r);
    assert_int_equal(r.http, 429);
    result_free(&r);
    run_one(f, &req, &r);
    assert_int_equal(r.http, 200);
    result_free(&r);
    url_of(url, sizeof url, "/slow?ms=3000");
    http_request_t slow = {
        .method = "GET", .url = url, .ca_file = srv.ca, .timeout_ms = 200, .service = "probe"};
    run_one(f, &slow, &r);
    assert_int_equal(r.status, ROTOR_ETIMEOUT);
    result_free(&r);
    http_request_t unnamed = {.method = "GET", .url = url, .ca_file = srv.ca};
    http_req_t *hr;
    memset(&r, 0, sizeof r);
    r.loop = &f->loop;
    assert_int_equal(http_send(f->http, &unnamed, on_result, &r, &hr), 0);
    http_cancel(hr);
    result_free(&r);

    assert_true(requests("service=\"keyvault\",code=\"429\"") == 1);
    assert_true(requests("service=\"keyvault\",code=\"200\"") == 1);
    assert_true(requests("service=\"probe\",code=\"timeout\"") == 1);
    assert_true(requests("service=\"other\",code=\"canceled\"") == 1);
    char *text = metrics_render(NULL);
    assert_non_null(strstr(text, "# TYPE rotor_http_requests_total counter\n"));
    assert_non_null(
        strstr(text, "rotor_http_requests_total{code=\"200\",service=\"keyvault\"} 1\n"));
    free(text);
    metrics_reset();
}

static void on_stop(uv_timer_t *t)
{
    uv_stop(t->loop);
}

static void test_close_cancels_pending(void **state)
{
    (void)state;
    uv_loop_t loop;
    http_t *h;
    uv_loop_init(&loop);
    assert_int_equal(http_init(&loop, &h), 0);
    char url[128];
    url_of(url, sizeof url, "/slow?ms=2000");
    http_request_t req = {.method = "GET", .url = url, .ca_file = srv.ca};
    result_t r[3];
    for (int i = 0; i < 3; i++) {
        memset(&r[i], 0, sizeof r[i]);
        r[i].loop = &loop;
        assert_int_equal(http_send(h, &req, on_result, &r[i], NULL), 0);
    }
    /* Let the connections open, so close has sockets and polls to tear down. */
    uv_timer_t t;
    uv_timer_init(&loop, &t);
    uv_timer_start(&t, on_stop, 200, 0);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_close((uv_handle_t *)&t, NULL);
    http_close(h);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(r[i].done, 1);
        assert_int_equal(r[i].status, ROTOR_ECANCELED);
        result_free(&r[i]);
    }
    assert_int_equal(http_send(h, &req, on_result, &r[0], NULL), ROTOR_ECANCELED);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
}

static void test_twenty_concurrent(void **state)
{
    fixture_t *f = *state;
    enum { N = 20 };
    result_t r[N];
    char url[N][128];
    http_request_t req[N];
    uv_update_time(&f->loop);
    uint64_t t0 = uv_now(&f->loop);
    for (int i = 0; i < N; i++) {
        char path[64];
        snprintf(path, sizeof path, "/echo/%d?delay_ms=500", i);
        url_of(url[i], sizeof url[i], path);
        req[i] = (http_request_t){.method = "GET", .url = url[i], .ca_file = srv.ca};
        send_into(f, &req[i], &r[i]);
    }
    uv_run(&f->loop, UV_RUN_DEFAULT);
    uint64_t total = uv_now(&f->loop) - t0;
    for (int i = 0; i < N; i++) {
        assert_int_equal(r[i].done, 1);
        assert_int_equal(r[i].status, 0);
        json_t *j = echo_of(&r[i]);
        char path[64];
        snprintf(path, sizeof path, "/echo/%d?delay_ms=500", i);
        assert_string_equal(json_string_value(json_object_get(j, "path")), path);
        json_decref(j);
        result_free(&r[i]);
    }
    /* One after the other they would take 10 s. */
    assert_true(total < 6000);
}

typedef struct {
    uv_timer_t timer;
    uint64_t last, max_gap;
    int ticks;
    result_t *r;
} ticker_t;

static void on_tick(uv_timer_t *t)
{
    ticker_t *k = t->data;
    uint64_t now = uv_now(t->loop);
    if (k->ticks++ && now - k->last > k->max_gap)
        k->max_gap = now - k->last;
    k->last = now;
    if (k->r->done)
        uv_close((uv_handle_t *)t, NULL);
}

static void test_loop_never_blocks(void **state)
{
    fixture_t *f = *state;
    char url[128];
    url_of(url, sizeof url, "/slow?ms=2000");
    http_request_t req = {.method = "GET", .url = url, .ca_file = srv.ca};
    result_t r;
    ticker_t k = {.r = &r};
    send_into(f, &req, &r);
    uv_timer_init(&f->loop, &k.timer);
    k.timer.data = &k;
    uv_timer_start(&k.timer, on_tick, 5, 5);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_int_equal(r.status, 0);
    assert_string_equal(r.body, "slow");
    assert_true(r.elapsed_ms >= 2000);
    /* 2 s at 5 ms a tick is 400 ticks; the loop must have kept turning throughout. A loop
     * blocked on the request would show one gap of 2 s; a loaded machine, far shorter ones. */
    assert_true(k.ticks >= 100);
    assert_true(k.max_gap < 1000);
    result_free(&r);
}

static void test_bad_arguments(void **state)
{
    fixture_t *f = *state;
    result_t r = {0};
    http_request_t req = {.method = "GET", .url = NULL};
    http_req_t *out = (http_req_t *)&r;
    assert_int_equal(http_send(f->http, &req, on_result, &r, &out), ROTOR_EINVALID);
    assert_null(out);
    assert_int_equal(r.done, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_methods_and_bodies, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_empty_put_sends_length, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_response_headers, fx_setup, fx_teardown),
        cmocka_unit_test(test_retry_after_parsing),
        cmocka_unit_test_setup_teardown(test_tls_verification, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_resolve_pin, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_timeout, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_dropped_connection, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_cancel, fx_setup, fx_teardown),
        cmocka_unit_test(test_close_cancels_pending),
        cmocka_unit_test_setup_teardown(test_twenty_concurrent, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_loop_never_blocks, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_bad_arguments, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_requests_counted, fx_setup, fx_teardown),
    };
    return cmocka_run_group_tests(tests, server_start, server_stop);
}
