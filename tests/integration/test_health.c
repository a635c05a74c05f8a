/* test_health.c: the health endpoint over real HTTP: a curl client thread against the loop. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <curl/curl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include "health.h"
#include "log.h"
#include "metrics.h"
#include "rotor.h"

/* What one request got back. Assertions run on the main thread after the loop ends, because
 * cmocka's failure longjmp must not happen on the client thread. */
typedef struct {
    long status;
    char *body;
    size_t len;
    char ctype[128];
    char allow[64];
    long connects; /* new connections curl opened for this request */
} reply_t;

typedef struct fixture_s fixture_t;
typedef void (*client_fn)(fixture_t *f);

struct fixture_s {
    uv_loop_t loop;
    uv_async_t done;
    health_t *health;
    const char *host; /* "127.0.0.1" or "[::1]" for URLs */
    client_fn client;
    atomic_int ready;
    atomic_int stall_once;
    reply_t r[10];
};

static size_t on_body(char *p, size_t size, size_t n, void *arg)
{
    reply_t *r = arg;
    char *b = realloc(r->body, r->len + size * n + 1);
    if (!b)
        return 0;
    memcpy(b + r->len, p, size * n);
    r->len += size * n;
    b[r->len] = '\0';
    r->body = b;
    return size * n;
}

static size_t on_header(char *p, size_t size, size_t n, void *arg)
{
    reply_t *r = arg;
    size_t len = size * n;
    if (len > 6 && strncasecmp(p, "Allow:", 6) == 0)
        snprintf(r->allow, sizeof r->allow, "%.*s", (int)(len - 6), p + 6);
    return len;
}

/* Blocking on purpose: this runs on the client thread, never on the loop. c may carry a
 * connection from an earlier request. */
static void perform(fixture_t *f, CURL *c, reply_t *r, const char *method, const char *path)
{
    char url[128];
    snprintf(url, sizeof url, "http://%s:%d%s", f->host, health_port(f->health), path);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 10000L);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, r);
    if (strcmp(method, "POST") == 0)
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, "x=1");
    else if (strcmp(method, "GET") != 0)
        curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    if (curl_easy_perform(c) == CURLE_OK) {
        char *ct = NULL;
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r->status);
        curl_easy_getinfo(c, CURLINFO_CONTENT_TYPE, &ct);
        curl_easy_getinfo(c, CURLINFO_NUM_CONNECTS, &r->connects);
        snprintf(r->ctype, sizeof r->ctype, "%s", ct ? ct : "");
    }
    if (!r->body)
        r->body = strdup("");
}

static void request(fixture_t *f, reply_t *r, const char *method, const char *path)
{
    CURL *c = curl_easy_init();
    perform(f, c, r, method, path);
    curl_easy_cleanup(c);
}

static int ready_cb(void *arg, const char **reason)
{
    fixture_t *f = arg;
    if (atomic_exchange(&f->stall_once, 0))
        uv_sleep(1200); /* simulates a callback that blocks the loop */
    if (atomic_load(&f->ready))
        return 1;
    *reason = "journal not connected";
    return 0;
}

static void on_done(uv_async_t *a)
{
    fixture_t *f = a->data;
    health_stop(f->health);
    uv_close((uv_handle_t *)a, NULL);
}

static void *client_main(void *arg)
{
    fixture_t *f = arg;
    f->client(f);
    uv_async_send(&f->done);
    return NULL;
}

/* Starts the endpoint on listen, runs client on a thread while the loop serves, then checks the
 * loop closes with nothing left open. */
static void run_with_client(fixture_t *f, const char *listen, const char *host, client_fn client)
{
    pthread_t t;
    f->host = host;
    f->client = client;
    assert_int_equal(uv_loop_init(&f->loop), 0);
    assert_int_equal(health_start(&f->loop, listen, ready_cb, f, &f->health), 0);
    assert_true(health_port(f->health) > 0);
    assert_int_equal(uv_async_init(&f->loop, &f->done, on_done), 0);
    f->done.data = f;
    assert_int_equal(pthread_create(&t, NULL, client_main, f), 0);
    assert_int_equal(uv_run(&f->loop, UV_RUN_DEFAULT), 0);
    pthread_join(t, NULL);
    assert_int_equal(uv_loop_close(&f->loop), 0);
}

static double sample(const char *text, const char *series)
{
    char needle[128];
    snprintf(needle, sizeof needle, "\n%s ", series);
    const char *p = strstr(text, needle);
    assert_non_null(p);
    return strtod(p + strlen(needle), NULL);
}

static void client_routes(fixture_t *f)
{
    request(f, &f->r[0], "GET", "/healthz");
    request(f, &f->r[1], "GET", "/readyz");
    atomic_store(&f->ready, 0);
    request(f, &f->r[2], "GET", "/readyz");
    request(f, &f->r[3], "GET", "/metrics");
    request(f, &f->r[4], "GET", "/nope");
    request(f, &f->r[5], "POST", "/healthz");
    request(f, &f->r[6], "DELETE", "/metrics");
    request(f, &f->r[7], "GET", "/healthz?probe=1");
}

static void test_routes(void **state)
{
    fixture_t *f = *state;
    atomic_store(&f->ready, 1);
    metrics_count("rotor_test_rotations_total", "Rotations seen by the test.",
                  "secret=\"pg\"blue\\x\nz\",stage=\"set-db\"", 3);
    run_with_client(f, "127.0.0.1:0", "127.0.0.1", client_routes);

    assert_int_equal(f->r[0].status, 200);
    assert_string_equal(f->r[0].body, "ok\n");
    assert_int_equal(f->r[1].status, 200);
    assert_string_equal(f->r[1].body, "ready\n");
    assert_int_equal(f->r[2].status, 503);
    assert_string_equal(f->r[2].body, "journal not connected\n");

    assert_int_equal(f->r[3].status, 200);
    assert_string_equal(f->r[3].ctype, "text/plain; version=0.0.4");
    const char *m = f->r[3].body;
    assert_non_null(strstr(m, "# TYPE rotor_test_rotations_total counter\n"));
    assert_non_null(strstr(m, "# TYPE rotor_up gauge\n"));
    assert_non_null(strstr(m, "# TYPE rotor_loop_lag_seconds gauge\n"));
    assert_non_null(strstr(m, "rotor_build_info{libcurl=\""));
    assert_non_null(strstr(m, ",version=\"" ROTOR_VERSION "\"} 1\n"));
    assert_non_null(strstr(m, "rotor_test_rotations_total{secret=\"pg\\\"blue\\\\x\\nz\","
                              "stage=\"set-db\"} 3\n"));
    assert_true(sample(m, "rotor_up") == 1.0);
    /* Families in name order, so scrapes diff cleanly. */
    assert_true(strstr(m, "# TYPE rotor_loop_lag_seconds") < strstr(m, "# TYPE rotor_test_"));
    assert_true(strstr(m, "# TYPE rotor_test_") < strstr(m, "# TYPE rotor_up"));

    assert_int_equal(f->r[4].status, 404);
    assert_int_equal(f->r[5].status, 405);
    assert_non_null(strstr(f->r[5].allow, "GET"));
    assert_int_equal(f->r[6].status, 405);
    assert_int_equal(f->r[7].status, 200);
}

static void client_stall(fixture_t *f)
{
    request(f, &f->r[0], "GET", "/metrics");
    atomic_store(&f->stall_once, 1);
    request(f, &f->r[1], "GET", "/readyz");
    request(f, &f->r[2], "GET", "/metrics");
}

/* A loop blocked for 1.2 s must show as lag on the next scrape: the iteration that stalled ends
 * before the loop reads the next request, and its hold is the largest since the last scrape. */
static void test_loop_lag(void **state)
{
    fixture_t *f = *state;
    atomic_store(&f->ready, 1);
    run_with_client(f, "127.0.0.1:0", "127.0.0.1", client_stall);
    assert_int_equal(f->r[0].status, 200);
    assert_true(sample(f->r[0].body, "rotor_loop_lag_seconds") < 0.5);
    assert_int_equal(f->r[1].status, 200);
    assert_int_equal(f->r[2].status, 200);
    assert_true(sample(f->r[2].body, "rotor_loop_lag_seconds") >= 0.5);
    /* Every iteration's hold goes to the histogram too: the stall is one observation above a
     * second, while the iterations before it stayed under one. */
    const char *m = f->r[2].body;
    double below_1s = sample(m, "rotor_loop_delay_seconds_bucket{le=\"1\"}");
    double all = sample(m, "rotor_loop_delay_seconds_count");
    assert_true(all >= 1);
    assert_non_null(strstr(m, "# TYPE rotor_loop_delay_seconds histogram\n"));
    assert_true(sample(m, "rotor_loop_delay_seconds_bucket{le=\"+Inf\"}") == all);
    assert_true(below_1s == all - 1);
    assert_true(sample(m, "rotor_loop_delay_seconds_sum") >= 1.0);
}

static void client_idle(fixture_t *f)
{
    request(f, &f->r[0], "GET", "/metrics");
    uv_sleep(1300); /* on the client thread: the loop waits in epoll meanwhile */
    request(f, &f->r[1], "GET", "/metrics");
}

/* A loop asleep in epoll is not lagging: 1.3 s without an event adds no hold above a second and
 * the lag gauge stays low (a periodic timer's lateness would not tell the two apart either, but
 * this is what replaced it, so it must not count waiting as holding). */
static void test_idle_is_not_lag(void **state)
{
    fixture_t *f = *state;
    atomic_store(&f->ready, 1);
    run_with_client(f, "127.0.0.1:0", "127.0.0.1", client_idle);
    assert_int_equal(f->r[0].status, 200);
    assert_int_equal(f->r[1].status, 200);
    const char *a = f->r[0].body, *b = f->r[1].body;
    assert_true(sample(b, "rotor_loop_lag_seconds") < 0.5);
    double above_1s_a = sample(a, "rotor_loop_delay_seconds_count") -
                        sample(a, "rotor_loop_delay_seconds_bucket{le=\"1\"}");
    double above_1s_b = sample(b, "rotor_loop_delay_seconds_count") -
                        sample(b, "rotor_loop_delay_seconds_bucket{le=\"1\"}");
    assert_true(above_1s_b == above_1s_a);
    assert_true(sample(b, "rotor_loop_delay_seconds_sum") -
                    sample(a, "rotor_loop_delay_seconds_sum") <
                0.5);
}

static void client_healthz(fixture_t *f)
{
    request(f, &f->r[0], "GET", "/healthz");
}

static void client_keepalive(fixture_t *f)
{
    CURL *c = curl_easy_init();
    perform(f, c, &f->r[0], "GET", "/healthz");
    perform(f, c, &f->r[1], "GET", "/metrics");
    perform(f, c, &f->r[2], "GET", "/readyz");
    curl_easy_cleanup(c);
}

/* Scrapers and kubelet probes reuse connections: answers must keep HTTP/1.1 connections open. */
static void test_keepalive(void **state)
{
    fixture_t *f = *state;
    atomic_store(&f->ready, 1);
    run_with_client(f, "127.0.0.1:0", "127.0.0.1", client_keepalive);
    assert_int_equal(f->r[0].status, 200);
    assert_int_equal(f->r[0].connects, 1);
    assert_int_equal(f->r[1].status, 200);
    assert_int_equal(f->r[1].connects, 0);
    assert_int_equal(f->r[2].status, 200);
    assert_string_equal(f->r[2].body, "ready\n");
    assert_int_equal(f->r[2].connects, 0);
}

static void test_all_ipv4(void **state)
{
    fixture_t *f = *state;
    run_with_client(f, ":0", "127.0.0.1", client_healthz);
    assert_int_equal(f->r[0].status, 200);
    assert_string_equal(f->r[0].body, "ok\n");
}

static void test_ipv6(void **state)
{
    fixture_t *f = *state;
    /* Containers without IPv6 loopback cannot run this one. */
    int s = socket(AF_INET6, SOCK_STREAM, 0);
    struct sockaddr_in6 a = {.sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT};
    int ok = s >= 0 && bind(s, (struct sockaddr *)&a, sizeof a) == 0;
    if (s >= 0)
        close(s);
    if (!ok)
        skip();
    run_with_client(f, "[::1]:0", "[::1]", client_healthz);
    assert_int_equal(f->r[0].status, 200);
}

static void test_bad_listen(void **state)
{
    (void)state;
    const char *bad[] = {"",          "9464",      "127.0.0.1",   "127.0.0.1:",
                         "host:9464", "1.2.3.4:x", "1.2.3:9464",  "127.0.0.1:65536",
                         "[::1:9464", "[::1]9464", "[1.2.3.4]:1", "127.0.0.1:123456"};
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        health_t *h = NULL;
        assert_int_equal(health_start(&loop, bad[i], NULL, NULL, &h), ROTOR_ECONFIG);
        assert_null(h);
    }
    assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(uv_loop_close(&loop), 0);
}

static void test_port_in_use(void **state)
{
    (void)state;
    uv_loop_t loop;
    health_t *a = NULL, *b = NULL;
    char listen[32];
    assert_int_equal(uv_loop_init(&loop), 0);
    assert_int_equal(health_start(&loop, "127.0.0.1:0", NULL, NULL, &a), 0);
    snprintf(listen, sizeof listen, "127.0.0.1:%d", health_port(a));
    assert_true(health_start(&loop, listen, NULL, NULL, &b) < 0);
    assert_null(b);
    health_stop(a);
    assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(uv_loop_close(&loop), 0);
}

/* The fixture lives in cmocka's state so a failed assertion still frees it. */
static int setup(void **state)
{
    *state = calloc(1, sizeof(fixture_t));
    return *state ? 0 : -1;
}

static int teardown(void **state)
{
    fixture_t *f = *state;
    for (size_t i = 0; f && i < sizeof f->r / sizeof f->r[0]; i++)
        free(f->r[i].body);
    free(f);
    metrics_reset();
    return 0;
}

int main(void)
{
    FILE *devnull = fopen("/dev/null", "w");
    log_init(LOG_ERROR, devnull); /* MHD's bind failure in test_port_in_use is expected */
    curl_global_init(CURL_GLOBAL_DEFAULT);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_routes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_loop_lag, setup, teardown),
        cmocka_unit_test_setup_teardown(test_idle_is_not_lag, setup, teardown),
        cmocka_unit_test_setup_teardown(test_keepalive, setup, teardown),
        cmocka_unit_test_setup_teardown(test_all_ipv4, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ipv6, setup, teardown),
        cmocka_unit_test_teardown(test_bad_listen, teardown),
        cmocka_unit_test_teardown(test_port_in_use, teardown),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    curl_global_cleanup();
    if (devnull)
        fclose(devnull);
    return rc;
}
