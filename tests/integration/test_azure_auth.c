/* test_azure_auth.c: Entra ID credentials against https_server.py playing Entra and IMDS. */
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

#include "azure_auth.h"
#include "http.h"
#include "rotor.h"
#include "testsrv.h"
#include "util.h"

#define SCOPE "https://vault.azure.net/.default"
#define SECRET "s3cr&t=+x/topsecret-value"

static struct {
    char dir[64];
    char ca[128];
    testsrv_t server; /* server.base: https://127.0.0.1:PORT */
} srv;

static int server_start(void **state)
{
    (void)state;
    char portfile[128];
    /* The credential chain reads these; the tests say everything explicitly. */
    const char *vars[] = {"AZURE_TENANT_ID",      "AZURE_CLIENT_ID",
                          "AZURE_CLIENT_SECRET",  "AZURE_FEDERATED_TOKEN_FILE",
                          "AZURE_AUTHORITY_HOST", "AZURE_IMDS_ENDPOINT"};
    for (size_t i = 0; i < sizeof vars / sizeof *vars; i++)
        unsetenv(vars[i]);
    snprintf(srv.dir, sizeof srv.dir, "/tmp/rotor-azauth.XXXXXX");
    if (!mkdtemp(srv.dir) || testsrv_make_ca(srv.dir, NULL) != 0)
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

typedef struct {
    uv_loop_t loop;
    http_t *http;
    azure_cred_t *cred;
} fixture_t;

/* ---- talking to the server's control paths, synchronously ---- */

typedef struct {
    int done, status;
    long http;
    char *body;
} ctl_t;

static void on_ctl(void *arg, int status, const http_response_t *res)
{
    ctl_t *c = arg;
    c->done = 1;
    c->status = status;
    c->http = res->status;
    c->body = strdup(res->body);
}

static char *ctl(fixture_t *f, const char *method, const char *path, const char *body)
{
    char url[128];
    snprintf(url, sizeof url, "%s%s", srv.server.base, path);
    http_request_t req = {.method = method,
                          .url = url,
                          .body = body,
                          .body_len = body ? strlen(body) : 0,
                          .ca_file = srv.ca};
    ctl_t c = {0};
    assert_int_equal(http_send(f->http, &req, on_ctl, &c, NULL), 0);
    while (!c.done)
        uv_run(&f->loop, UV_RUN_ONCE);
    assert_int_equal(c.status, 0);
    assert_int_equal(c.http, 200);
    return c.body;
}

static void script(fixture_t *f, const char *path, const char *responses_json)
{
    char body[2048];
    snprintf(body, sizeof body, "{\"path\":\"%s\",\"responses\":%s}", path, responses_json);
    free(ctl(f, "POST", "/_script", body));
}

/* The requests the server recorded so far (new reference). */
static json_t *recorded(fixture_t *f)
{
    char *body = ctl(f, "GET", "/_requests", NULL);
    json_error_t err;
    json_t *j = json_loads(body, 0, &err);
    free(body);
    assert_true(json_is_array(j));
    return j;
}

static size_t recorded_count(fixture_t *f)
{
    json_t *j = recorded(f);
    size_t n = json_array_size(j);
    json_decref(j);
    return n;
}

static int hexval(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : c - 'a' + 10;
}

/* The decoded value of key in an urlencoded form or query, or NULL (caller frees). */
static char *form_get(const char *form, const char *key)
{
    size_t klen = strlen(key);
    for (const char *p = form; p && *p;) {
        const char *amp = strchr(p, '&');
        const char *end = amp ? amp : p + strlen(p);
        if ((size_t)(end - p) > klen && strncmp(p, key, klen) == 0 && p[klen] == '=') {
            char *out = malloc((size_t)(end - p) + 1), *o = out;
            for (const char *s = p + klen + 1; s < end; s++) {
                if (*s == '%' && s + 2 < end + 1) {
                    *o++ = (char)(hexval(s[1]) * 16 + hexval(s[2]));
                    s += 2;
                } else {
                    *o++ = *s == '+' ? ' ' : *s;
                }
            }
            *o = '\0';
            return out;
        }
        p = amp ? amp + 1 : NULL;
    }
    return NULL;
}

static void assert_field(const char *form, const char *key, const char *want)
{
    char *v = form_get(form, key);
    if (!want) {
        assert_null(v);
        return;
    }
    assert_non_null(v);
    assert_string_equal(v, want);
    free(v);
}

/* ---- token callbacks ---- */

typedef struct {
    int done, status;
    char token[256];
    int64_t exp;
    char reason[512];
} tok_t;

static void on_token(void *arg, int status, const char *token, int64_t exp, const char *reason)
{
    tok_t *t = arg;
    t->done++;
    t->status = status;
    t->exp = exp;
    snprintf(t->token, sizeof t->token, "%s", token ? token : "");
    snprintf(t->reason, sizeof t->reason, "%s", reason ? reason : "");
}

static void get_token(fixture_t *f, const char *tenant, tok_t *t)
{
    memset(t, 0, sizeof *t);
    assert_int_equal(azure_token(f->cred, SCOPE, tenant, on_token, t), 0);
    assert_int_equal(t->done, 0); /* never from within azure_token, cached or not */
    while (!t->done)
        uv_run(&f->loop, UV_RUN_ONCE);
    assert_int_equal(t->done, 1);
}

static int fx_setup(void **state)
{
    fixture_t *f = calloc(1, sizeof *f);
    uv_loop_init(&f->loop);
    if (http_init(&f->loop, &f->http) != 0)
        return -1;
    free(ctl(f, "POST", "/_reset", "{}"));
    *state = f;
    return 0;
}

static int fx_teardown(void **state)
{
    fixture_t *f = *state;
    azure_cred_free(f->cred);
    http_close(f->http);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&f->loop), 0);
    free(f);
    return 0;
}

static void new_env_cred(fixture_t *f)
{
    char err[256];
    azure_cred_opts_t o = {.tenant_id = "tenant-1",
                           .client_id = "client-1",
                           .client_secret = SECRET,
                           .authority_host = srv.server.base,
                           .ca_file = srv.ca};
    assert_int_equal(azure_cred_new(&f->loop, f->http, &o, &f->cred, err, sizeof err), 0);
    assert_int_equal(azure_cred_kind(f->cred), AZURE_CRED_ENV);
}

/* ---- tests ---- */

static void test_client_secret(void **state)
{
    fixture_t *f = *state;
    new_env_cred(f);
    tok_t t;
    int64_t before = util_now_ms();
    get_token(f, NULL, &t);
    assert_int_equal(t.status, 0);
    assert_int_equal(strncmp(t.token, "entra-", 6), 0);
    /* expires_in 3599 s from the exchange. */
    assert_true(t.exp >= before + 3599000 - 1000);
    assert_true(t.exp <= util_now_ms() + 3599000 + 1000);

    json_t *reqs = recorded(f);
    assert_int_equal(json_array_size(reqs), 1);
    json_t *r = json_array_get(reqs, 0);
    assert_string_equal(json_string_value(json_object_get(r, "method")), "POST");
    const char *path = json_string_value(json_object_get(r, "path"));
    assert_string_equal(path, "/tenant-1/oauth2/v2.0/token");
    assert_null(strstr(path, "topsecret"));
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(r, "headers"), "content-type")),
        "application/x-www-form-urlencoded");
    const char *form = json_string_value(json_object_get(r, "body"));
    assert_field(form, "client_id", "client-1");
    assert_field(form, "client_secret", SECRET);
    assert_field(form, "scope", SCOPE);
    assert_field(form, "grant_type", "client_credentials");
    assert_field(form, "client_assertion", NULL);
    json_decref(reqs);
}

static void test_cache_and_invalidate(void **state)
{
    fixture_t *f = *state;
    new_env_cred(f);
    tok_t a, b, c;
    get_token(f, NULL, &a);
    assert_int_equal(a.status, 0);
    get_token(f, NULL, &b); /* cached: answered on a later loop turn, no request */
    assert_int_equal(b.status, 0);
    assert_string_equal(b.token, a.token);
    assert_int_equal(b.exp, a.exp);
    assert_int_equal(recorded_count(f), 1);

    azure_token_invalidate(f->cred, SCOPE);
    get_token(f, NULL, &c);
    assert_int_equal(c.status, 0);
    assert_string_not_equal(c.token, a.token);
    assert_int_equal(recorded_count(f), 2);

    /* A tenant named by a challenge is a separate entry, fetched from its own authority path. */
    tok_t d;
    get_token(f, "tenant-2.example", &d);
    assert_int_equal(d.status, 0);
    assert_string_not_equal(d.token, c.token);
    json_t *reqs = recorded(f);
    assert_int_equal(json_array_size(reqs), 3);
    assert_string_equal(json_string_value(json_object_get(json_array_get(reqs, 2), "path")),
                        "/tenant-2.example/oauth2/v2.0/token");
    json_decref(reqs);

    /* A tenant that would escape the URL path is refused without a callback. */
    tok_t e = {0};
    assert_int_equal(azure_token(f->cred, SCOPE, "../evil", on_token, &e), ROTOR_EINVALID);
    uv_run(&f->loop, UV_RUN_NOWAIT);
    assert_int_equal(e.done, 0);
}

static void test_short_lifetime_not_cached(void **state)
{
    fixture_t *f = *state;
    new_env_cred(f);
    /* Half of a zero lifetime is no time at all: the next call must fetch again. */
    script(f, "/tenant-1/oauth2/v2.0/token",
           "[{\"json\":{\"access_token\":\"short\",\"expires_in\":\"0\",\"token_type\":"
           "\"Bearer\"}}]");
    tok_t a, b;
    get_token(f, NULL, &a);
    assert_int_equal(a.status, 0);
    assert_string_equal(a.token, "short");
    get_token(f, NULL, &b);
    assert_int_equal(b.status, 0);
    assert_string_not_equal(b.token, "short");
    assert_int_equal(recorded_count(f), 2);
}

static void test_single_flight(void **state)
{
    fixture_t *f = *state;
    new_env_cred(f);
    script(f, "/tenant-1/oauth2/v2.0/token",
           "[{\"delay_ms\":200,\"json\":{\"access_token\":\"shared\",\"expires_in\":3600}}]");
    tok_t t[10];
    memset(t, 0, sizeof t);
    for (int i = 0; i < 10; i++)
        assert_int_equal(azure_token(f->cred, SCOPE, NULL, on_token, &t[i]), 0);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    for (int i = 0; i < 10; i++) {
        assert_int_equal(t[i].done, 1);
        assert_int_equal(t[i].status, 0);
        assert_string_equal(t[i].token, "shared");
    }
    assert_int_equal(recorded_count(f), 1);
}

static void write_file(const char *path, const char *text)
{
    FILE *fp = fopen(path, "w");
    assert_non_null(fp);
    fputs(text, fp);
    fclose(fp);
}

static void test_workload_identity(void **state)
{
    fixture_t *f = *state;
    char file[128], err[256];
    snprintf(file, sizeof file, "%s/sa-token", srv.dir);
    write_file(file, "eyJhssertion.one.sig\n");
    azure_cred_opts_t o = {.tenant_id = "tenant-1",
                           .client_id = "client-wi",
                           .federated_token_file = file,
                           .authority_host = srv.server.base,
                           .ca_file = srv.ca};
    assert_int_equal(azure_cred_new(&f->loop, f->http, &o, &f->cred, err, sizeof err), 0);
    assert_int_equal(azure_cred_kind(f->cred), AZURE_CRED_WORKLOAD);

    tok_t a, b;
    get_token(f, NULL, &a);
    assert_int_equal(a.status, 0);
    /* The kubelet rotates the file; the next exchange must send what it holds now. */
    write_file(file, "eyJhssertion.two.sig");
    azure_token_invalidate(f->cred, SCOPE);
    get_token(f, NULL, &b);
    assert_int_equal(b.status, 0);

    json_t *reqs = recorded(f);
    assert_int_equal(json_array_size(reqs), 2);
    const char *want[] = {"eyJhssertion.one.sig", "eyJhssertion.two.sig"};
    for (size_t i = 0; i < 2; i++) {
        json_t *r = json_array_get(reqs, i);
        assert_string_equal(json_string_value(json_object_get(r, "path")),
                            "/tenant-1/oauth2/v2.0/token");
        const char *form = json_string_value(json_object_get(r, "body"));
        assert_field(form, "client_assertion", want[i]);
        assert_field(form, "client_assertion_type",
                     "urn:ietf:params:oauth:client-assertion-type:jwt-bearer");
        assert_field(form, "client_id", "client-wi");
        assert_field(form, "scope", SCOPE);
        assert_field(form, "grant_type", "client_credentials");
        assert_field(form, "client_secret", NULL);
    }
    json_decref(reqs);

    /* A missing file fails the exchange with a reason, asynchronously. */
    unlink(file);
    azure_token_invalidate(f->cred, SCOPE);
    tok_t c;
    get_token(f, NULL, &c);
    assert_int_equal(c.status, ROTOR_ECONFIG);
    assert_non_null(strstr(c.reason, "federated token file"));
    assert_int_equal(recorded_count(f), 2);
}

static void new_imds_cred(fixture_t *f, const char *client_id)
{
    char err[256];
    azure_cred_opts_t o = {.client_id = client_id,
                           .imds_endpoint = srv.server.base,
                           .ca_file = srv.ca,
                           .imds_backoff_ms = 20};
    assert_int_equal(azure_cred_new(&f->loop, f->http, &o, &f->cred, err, sizeof err), 0);
    assert_int_equal(azure_cred_kind(f->cred), AZURE_CRED_IMDS);
}

static void test_imds_retry_and_expires_on(void **state)
{
    fixture_t *f = *state;
    new_imds_cred(f, "uami-1");
    long long exp = (long long)time(NULL) + 1234;
    char responses[512];
    snprintf(responses, sizeof responses,
             "[{\"status\":410,\"json\":{\"error\":\"upgrading\"}},"
             "{\"json\":{\"access_token\":\"imds-tok\",\"expires_on\":\"%lld\","
             "\"resource\":\"https://vault.azure.net\",\"token_type\":\"Bearer\"}}]",
             exp);
    script(f, "/metadata/identity/oauth2/token", responses);
    tok_t t;
    get_token(f, NULL, &t);
    assert_int_equal(t.status, 0);
    assert_string_equal(t.token, "imds-tok");
    assert_int_equal(t.exp, exp * 1000);

    json_t *reqs = recorded(f);
    assert_int_equal(json_array_size(reqs), 2);
    for (size_t i = 0; i < 2; i++) {
        json_t *r = json_array_get(reqs, i);
        assert_string_equal(json_string_value(json_object_get(r, "method")), "GET");
        assert_string_equal(
            json_string_value(json_object_get(json_object_get(r, "headers"), "metadata")), "true");
        const char *path = json_string_value(json_object_get(r, "path"));
        const char *q = strchr(path, '?');
        assert_non_null(q);
        assert_int_equal(strncmp(path, "/metadata/identity/oauth2/token?", 32), 0);
        assert_field(q + 1, "api-version", "2018-02-01");
        assert_field(q + 1, "resource", "https://vault.azure.net");
        assert_field(q + 1, "client_id", "uami-1");
    }
    json_decref(reqs);
}

static void test_imds_retry_after_and_give_up(void **state)
{
    fixture_t *f = *state;
    new_imds_cred(f, NULL);
    /* A 429's hint is honoured even though the backoff alone would be 20 ms. */
    script(f, "/metadata/identity/oauth2/token",
           "[{\"status\":429,\"headers\":{\"retry-after-ms\":\"400\"},\"json\":{}}]");
    tok_t t;
    uint64_t t0 = uv_hrtime();
    get_token(f, NULL, &t);
    assert_int_equal(t.status, 0);
    assert_true((uv_hrtime() - t0) / 1000000 >= 400);
    json_t *reqs = recorded(f);
    assert_int_equal(json_array_size(reqs), 2);
    const char *path = json_string_value(json_object_get(json_array_get(reqs, 1), "path"));
    assert_null(strstr(path, "client_id")); /* system-assigned identity */
    json_decref(reqs);

    /* Five tries, then the last answer's error is the reason. */
    free(ctl(f, "POST", "/_reset", "{}"));
    azure_token_invalidate(f->cred, SCOPE);
    script(
        f, "/metadata/identity/oauth2/token",
        "[{\"status\":503,\"json\":{}},{\"status\":503,\"json\":{}},{\"status\":500,\"json\":{}},"
        "{\"status\":404,\"json\":{}},{\"status\":503,\"json\":{\"error\":\"unavailable\","
        "\"error_description\":\"try later\"}},{\"status\":503,\"json\":{}}]");
    get_token(f, NULL, &t);
    assert_int_equal(t.status, ROTOR_EFAIL);
    assert_non_null(strstr(t.reason, "503"));
    assert_non_null(strstr(t.reason, "try later"));
    assert_int_equal(recorded_count(f), 5);

    /* A 400 is the caller's mistake: no retry. */
    free(ctl(f, "POST", "/_reset", "{}"));
    script(f, "/metadata/identity/oauth2/token",
           "[{\"status\":400,\"json\":{\"error\":\"invalid_request\"}}]");
    get_token(f, NULL, &t);
    assert_int_equal(t.status, ROTOR_EFAIL);
    assert_int_equal(recorded_count(f), 1);
}

static void test_error_reason_redacted(void **state)
{
    fixture_t *f = *state;
    new_env_cred(f);
    script(f, "/tenant-1/oauth2/v2.0/token",
           "[{\"status\":401,\"json\":{\"error\":\"invalid_client\",\"error_description\":"
           "\"AADSTS7000215: Invalid client secret provided: " SECRET "\"}}]");
    tok_t t;
    get_token(f, NULL, &t);
    assert_int_equal(t.status, ROTOR_EFAIL);
    assert_string_equal(t.token, "");
    assert_non_null(strstr(t.reason, "invalid_client"));
    assert_non_null(strstr(t.reason, "AADSTS7000215: Invalid client secret provided"));
    assert_non_null(strstr(t.reason, "401"));
    assert_null(strstr(t.reason, SECRET));
    assert_null(strstr(t.reason, "topsecret"));
    /* A failure is not cached. */
    get_token(f, NULL, &t);
    assert_int_equal(t.status, 0);
    assert_int_equal(recorded_count(f), 2);
}

static void test_free_cancels_pending(void **state)
{
    fixture_t *f = *state;
    new_env_cred(f);
    tok_t cached, again = {0}, pending = {0};
    get_token(f, NULL, &cached);
    script(f, "/tenant-9/oauth2/v2.0/token", "[{\"delay_ms\":1000,\"json\":{}}]");
    assert_int_equal(azure_token(f->cred, SCOPE, NULL, on_token, &again), 0);
    assert_int_equal(azure_token(f->cred, SCOPE, "tenant-9", on_token, &pending), 0);
    azure_cred_free(f->cred);
    f->cred = NULL;
    assert_int_equal(again.done, 1);
    assert_int_equal(again.status, ROTOR_ECANCELED);
    assert_int_equal(pending.done, 1);
    assert_int_equal(pending.status, ROTOR_ECANCELED);

    /* Freed while the token file is being read on the threadpool. */
    char file[128], err[256];
    snprintf(file, sizeof file, "%s/sa-token-free", srv.dir);
    write_file(file, "assertion");
    azure_cred_opts_t o = {.tenant_id = "tenant-1",
                           .client_id = "client-wi",
                           .federated_token_file = file,
                           .authority_host = srv.server.base,
                           .ca_file = srv.ca};
    assert_int_equal(azure_cred_new(&f->loop, f->http, &o, &f->cred, err, sizeof err), 0);
    tok_t reading = {0};
    assert_int_equal(azure_token(f->cred, SCOPE, NULL, on_token, &reading), 0);
    azure_cred_free(f->cred);
    f->cred = NULL;
    assert_int_equal(reading.done, 1);
    assert_int_equal(reading.status, ROTOR_ECANCELED);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_int_equal(reading.done, 1);
    assert_int_equal(recorded_count(f), 1);
}

static void test_credential_choice(void **state)
{
    fixture_t *f = *state;
    char err[256];
    azure_cred_t *c;
    /* Environment first, then workload identity, then IMDS, as DefaultAzureCredential. */
    setenv("AZURE_TENANT_ID", "t", 1);
    setenv("AZURE_CLIENT_ID", "c", 1);
    setenv("AZURE_FEDERATED_TOKEN_FILE", "/nonexistent", 1);
    assert_int_equal(azure_cred_new(&f->loop, f->http, NULL, &c, err, sizeof err), 0);
    assert_int_equal(azure_cred_kind(c), AZURE_CRED_WORKLOAD);
    azure_cred_free(c);
    setenv("AZURE_CLIENT_SECRET", "x", 1);
    assert_int_equal(azure_cred_new(&f->loop, f->http, NULL, &c, err, sizeof err), 0);
    assert_int_equal(azure_cred_kind(c), AZURE_CRED_ENV);
    azure_cred_free(c);
    /* The secret must not travel in clear text. */
    setenv("AZURE_AUTHORITY_HOST", "http://login.example", 1);
    assert_int_equal(azure_cred_new(&f->loop, f->http, NULL, &c, err, sizeof err), ROTOR_ECONFIG);
    assert_non_null(strstr(err, "https"));
    unsetenv("AZURE_TENANT_ID");
    unsetenv("AZURE_CLIENT_SECRET");
    unsetenv("AZURE_FEDERATED_TOKEN_FILE");
    unsetenv("AZURE_AUTHORITY_HOST");
    assert_int_equal(azure_cred_new(&f->loop, f->http, NULL, &c, err, sizeof err), 0);
    assert_int_equal(azure_cred_kind(c), AZURE_CRED_IMDS);
    azure_cred_free(c);
    unsetenv("AZURE_CLIENT_ID");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_client_secret, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_cache_and_invalidate, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_short_lifetime_not_cached, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_single_flight, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_workload_identity, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_imds_retry_and_expires_on, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_imds_retry_after_and_give_up, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_error_reason_redacted, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_free_cancels_pending, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_credential_choice, fx_setup, fx_teardown),
    };
    return cmocka_run_group_tests(tests, server_start, server_stop);
}
