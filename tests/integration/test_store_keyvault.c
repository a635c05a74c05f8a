/* test_store_keyvault.c: the azure-keyvault store against the Key Vault emulator (server.mjs). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>
#include <uv.h>

#include "azure_auth.h"
#include "config.h"
#include "http.h"
#include "log.h"
#include "rotor.h"
#include "secret.h"
#include "store.h"
#include "testsrv.h"
#include "util.h"

#define VAULT_HOST "rotor-test.vault.azure.net"
#define TENANT "72f988bf-0000-4000-8000-00000000f00d"
#define CLIENT_ID "00000000-0000-4000-8000-0000000c11e7"
/* Every password in these tests contains this marker; no log line may. */
#define MARK "TOPSECRET"

static struct {
    bool skip;
    char dir[64];
    char ca[160];
    char client_secret[64];
    pid_t emu_pid;
    testsrv_t srv; /* a scripted server, for challenges the emulator never sends */
    int port;
    char vault_url[128], resolve[128], authority[128], control[128];
} g;

/* fork+exec so the child dies with us (PR_SET_PDEATHSIG) even if this test crashes. */
static pid_t spawn(char *const argv[])
{
    pid_t pid = fork();
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        execv(argv[0], argv);
        _exit(127);
    }
    return pid;
}

static bool wait_file(const char *path)
{
    for (int i = 0; i < 400; i++) {
        if (access(path, R_OK) == 0)
            return true;
        usleep(50 * 1000);
    }
    return false;
}

static int group_setup(void **state)
{
    (void)state;
    char path[256], certdir[96], emu[256], portfile[128], srvfile[128];
    const char *vars[] = {"AZURE_TENANT_ID",      "AZURE_CLIENT_ID",
                          "AZURE_CLIENT_SECRET",  "AZURE_FEDERATED_TOKEN_FILE",
                          "AZURE_AUTHORITY_HOST", "AZURE_IMDS_ENDPOINT"};
    for (size_t i = 0; i < sizeof vars / sizeof *vars; i++)
        unsetenv(vars[i]);
    if (access("/usr/bin/node", X_OK) != 0) {
        if (testsrv_ci()) {
            fprintf(stderr, "node is missing (scripts/setup.sh): required under CI\n");
            return -1;
        }
        g.skip = true;
        return 0;
    }
    secret_wipe_json_frees();
    snprintf(g.dir, sizeof g.dir, "/tmp/rotor-kvstore.XXXXXX");
    if (!mkdtemp(g.dir))
        return -1;
    snprintf(certdir, sizeof certdir, "%s/certs", g.dir);
    if (testsrv_make_ca(certdir, VAULT_HOST) != 0)
        return -1;
    snprintf(g.ca, sizeof g.ca, "%s/ca.pem", certdir);
    snprintf(g.client_secret, sizeof g.client_secret, "client-secret-%d", (int)getpid());
    snprintf(path, sizeof path, "%s/client-secret", g.dir);
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    fputs(g.client_secret, f);
    fclose(f);

    snprintf(emu, sizeof emu, "%s/tests/emulators/keyvault/server.mjs", testsrv_source_dir());
    snprintf(portfile, sizeof portfile, "%s/ports.json", g.dir);
    char *eargv[] = {"/usr/bin/node",
                     emu,
                     "--port-file",
                     portfile,
                     "--cert",
                     certdir,
                     "--tenant",
                     TENANT,
                     "--client-id",
                     CLIENT_ID,
                     "--client-secret-file",
                     path,
                     NULL};
    g.emu_pid = spawn(eargv);
    if (g.emu_pid < 0 || !wait_file(portfile))
        return -1;
    json_t *ports = json_load_file(portfile, 0, NULL);
    g.port = (int)json_integer_value(json_object_get(ports, "https"));
    json_decref(ports);
    snprintf(g.vault_url, sizeof g.vault_url, "https://%s:%d", VAULT_HOST, g.port);
    snprintf(g.resolve, sizeof g.resolve, "%s:%d:127.0.0.1", VAULT_HOST, g.port);
    snprintf(g.authority, sizeof g.authority, "https://localhost:%d", g.port);
    snprintf(g.control, sizeof g.control, "https://127.0.0.1:%d/_control", g.port);

    snprintf(srvfile, sizeof srvfile, "%s/srv-port", g.dir);
    return testsrv_start(&g.srv, "https_server.py", certdir, srvfile);
}

static int group_teardown(void **state)
{
    (void)state;
    if (g.skip)
        return 0;
    char cmd[128];
    testsrv_stop(&g.srv);
    kill(g.emu_pid, SIGTERM);
    waitpid(g.emu_pid, NULL, 0);
    snprintf(cmd, sizeof cmd, "rm -rf %s", g.dir);
    return system(cmd) == 0 ? 0 : -1;
}

typedef struct {
    uv_loop_t loop;
    http_t *http;
    azure_cred_t *cred;
    cfg_secret_t cfg;
    store_t *store;
    store_t *extra[2]; /* closed by the teardown, also when a test fails half-way */
    FILE *log;
} fixture_t;

/* ---- control requests, synchronously ---- */

typedef struct {
    int done;
    long http;
    char *body;
} ctl_t;

static void on_ctl(void *arg, int status, const http_response_t *res)
{
    ctl_t *c = arg;
    c->done = 1;
    c->http = status == 0 ? res->status : 0;
    c->body = strdup(res->body ? res->body : "");
}

static json_t *ctl_url(fixture_t *f, const char *method, const char *url, const char *body)
{
    http_request_t req = {.method = method,
                          .url = url,
                          .body = body,
                          .body_len = body ? strlen(body) : 0,
                          .ca_file = g.ca};
    ctl_t c = {0};
    assert_int_equal(http_send(f->http, &req, on_ctl, &c, NULL), 0);
    while (!c.done)
        uv_run(&f->loop, UV_RUN_ONCE);
    assert_int_equal(c.http, 200);
    json_t *j = json_loads(c.body, 0, NULL);
    free(c.body);
    assert_non_null(j);
    return j;
}

static json_t *ctl(fixture_t *f, const char *method, const char *what, const char *body)
{
    char url[256];
    snprintf(url, sizeof url, "%s/%s", g.control, what);
    return ctl_url(f, method, url, body);
}

static void faults(fixture_t *f, const char *json)
{
    json_decref(ctl(f, "POST", "faults", json));
}

/* The versions of name in the emulator (new reference; an empty array when none). */
static json_t *versions_of(fixture_t *f, const char *name)
{
    json_t *st = ctl(f, "GET", "state", NULL);
    json_t *v = json_object_get(json_object_get(st, "secrets"), name);
    v = v ? json_incref(v) : json_array();
    json_decref(st);
    return v;
}

/* Requests of a kind ("vault", "token") the emulator served since seq `after`. */
static json_t *requests_of(fixture_t *f, const char *kind, long after)
{
    json_t *all = ctl(f, "GET", "requests", NULL), *out = json_array(), *r;
    size_t i;
    json_array_foreach(all, i, r)
    {
        if (strcmp(json_string_value(json_object_get(r, "kind")), kind) == 0 &&
            json_integer_value(json_object_get(r, "seq")) > after)
            json_array_append(out, r);
    }
    json_decref(all);
    return out;
}

static long last_seq(fixture_t *f)
{
    json_t *all = ctl(f, "GET", "requests", NULL);
    size_t n = json_array_size(all);
    long seq = n ? (long)json_integer_value(json_object_get(json_array_get(all, n - 1), "seq")) : 0;
    json_decref(all);
    return seq;
}

static long rq_status(json_t *reqs, size_t i)
{
    return (long)json_integer_value(json_object_get(json_array_get(reqs, i), "status"));
}

static bool rq_auth(json_t *reqs, size_t i)
{
    return json_is_true(json_object_get(json_array_get(reqs, i), "auth"));
}

/* ---- store calls, synchronously ---- */

typedef struct {
    int done, status;
    char version[80];
    bool has_version;
    char reason[512];
    rotor_secret_t *value;
} res_t;

static void res_set(res_t *r, int status, const char *version, const char *reason)
{
    r->done++;
    r->status = status;
    r->has_version = version != NULL;
    snprintf(r->version, sizeof r->version, "%s", version ? version : "");
    snprintf(r->reason, sizeof r->reason, "%s", reason ? reason : "");
}

static void on_version(void *arg, int status, const char *version, const char *reason)
{
    res_set(arg, status, version, reason);
}

static void on_value(void *arg, int status, rotor_secret_t *value, const char *version,
                     const char *reason)
{
    res_t *r = arg;
    res_set(r, status, version, reason);
    r->value = value;
}

static void on_done(void *arg, int status, const char *reason)
{
    res_set(arg, status, NULL, reason);
}

static void wait_res(fixture_t *f, res_t *r)
{
    assert_int_equal(r->done, 0); /* never from within the call */
    while (!r->done)
        uv_run(&f->loop, UV_RUN_ONCE);
    assert_int_equal(r->done, 1);
}

static res_t put(fixture_t *f, store_t *s, const char *name, const char *value, const char *rot)
{
    res_t r = {0};
    rotor_secret_t *v = secret_from(value, strlen(value));
    store_tags_t tags = {rot, "green", "app_green"};
    int64_t exp = util_now_ms() + 3600 * 1000;
    assert_int_equal(s->ops->put(s, name, v, &tags, exp, on_version, &r, 0, NULL), 0);
    secret_free(v);
    wait_res(f, &r);
    return r;
}

static res_t find(fixture_t *f, const char *name, const char *rot)
{
    res_t r = {0};
    assert_int_equal(f->store->ops->find(f->store, name, rot, on_version, &r, 0, NULL), 0);
    wait_res(f, &r);
    return r;
}

static res_t get(fixture_t *f, const char *name, const char *version)
{
    res_t r = {0};
    assert_int_equal(f->store->ops->get(f->store, name, version, on_value, &r, 0, NULL), 0);
    wait_res(f, &r);
    return r;
}

static res_t current(fixture_t *f, const char *name)
{
    res_t r = {0};
    assert_int_equal(f->store->ops->current(f->store, name, on_version, &r, 0, NULL), 0);
    wait_res(f, &r);
    return r;
}

static res_t disable(fixture_t *f, const char *name, const char *version)
{
    res_t r = {0};
    assert_int_equal(f->store->ops->disable(f->store, name, version, on_done, &r, 0, NULL), 0);
    wait_res(f, &r);
    return r;
}

static void assert_value(res_t *r, const char *want)
{
    assert_int_equal(r->status, 0);
    assert_non_null(r->value);
    assert_int_equal(r->value->len, strlen(want));
    assert_memory_equal(r->value->buf, want, r->value->len);
    secret_free(r->value);
    r->value = NULL;
}

/* ---- fixture ---- */

static void cfg_init(cfg_secret_t *c, const char *url, const char *resolve, int limit)
{
    memset(c, 0, sizeof *c);
    c->name = "app-db";
    c->store.kind = "azure-keyvault";
    c->store.kind_id = STORE_KEYVAULT;
    c->store.names[0] = "app-db-blue";
    c->store.names[1] = "app-db-green";
    c->store.current = "app-db-current";
    c->store.vault_url = (char *)url;
    c->store.ca_file = g.ca;
    c->store.resolve = (char *)resolve;
    c->store.timeout_ms = 10000;
    c->store.connect_timeout_ms = 5000;
    c->store.writes_per_10s = limit;
    c->store.content_type = "text/plain";
}

static int fx_setup(void **state)
{
    if (g.skip)
        return 0;
    fixture_t *f = calloc(1, sizeof *f);
    char err[256];
    uv_loop_init(&f->loop);
    if (http_init(&f->loop, &f->http) != 0)
        return -1;
    f->log = tmpfile();
    log_init(LOG_DEBUG, f->log);
    json_decref(ctl(f, "POST", "reset", "{}"));
    azure_cred_opts_t o = {.tenant_id = TENANT,
                           .client_id = CLIENT_ID,
                           .client_secret = g.client_secret,
                           .authority_host = g.authority,
                           .ca_file = g.ca};
    if (azure_cred_new(&f->loop, f->http, &o, &f->cred, err, sizeof err) != 0) {
        print_error("azure_cred_new: %s\n", err);
        return -1;
    }
    cfg_init(&f->cfg, g.vault_url, g.resolve, 300);
    store_deps_t deps = {f->http, f->cred};
    if (store_keyvault_open(&f->loop, &f->cfg, &deps, &f->store, err, sizeof err) != 0) {
        print_error("store_keyvault_open: %s\n", err);
        return -1;
    }
    *state = f;
    return 0;
}

/* The whole log of the test, NUL-terminated (caller frees). */
static char *log_text(fixture_t *f)
{
    fflush(f->log);
    long n = ftell(f->log);
    char *buf = calloc(1, (size_t)n + 1);
    rewind(f->log);
    assert_int_equal(fread(buf, 1, (size_t)n, f->log), (size_t)n);
    return buf;
}

static int fx_teardown(void **state)
{
    if (g.skip)
        return 0;
    fixture_t *f = *state;
    if (f->store)
        f->store->ops->close(f->store);
    for (int i = 0; i < 2; i++) {
        if (f->extra[i])
            f->extra[i]->ops->close(f->extra[i]);
    }
    azure_cred_free(f->cred);
    http_close(f->http);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&f->loop), 0);
    char *text = log_text(f);
    assert_null(strstr(text, MARK));
    assert_null(strstr(text, g.client_secret));
    free(text);
    log_init(LOG_INFO, NULL);
    fclose(f->log);
    free(f);
    return 0;
}

#define SKIP_WITHOUT_NODE()                                                                        \
    do {                                                                                           \
        if (g.skip)                                                                                \
            skip();                                                                                \
    } while (0)

/* ---- tests ---- */

static void test_round_trip_and_paging(void **state)
{
    SKIP_WITHOUT_NODE();
    fixture_t *f = *state;
    const char *name = "app-db-green";
    char ids[27][80], value[64], rot[32];
    /* 27 versions: the list has two pages of at most 25. */
    for (int i = 0; i < 27; i++) {
        snprintf(value, sizeof value, "pw-%d-" MARK "\"\\\x01", i);
        snprintf(rot, sizeof rot, "rot-%d", i);
        res_t r = put(f, f->store, name, value, rot);
        assert_int_equal(r.status, 0);
        assert_true(r.has_version);
        snprintf(ids[i], sizeof ids[i], "%s", r.version);
    }
    json_t *vs = versions_of(f, name);
    assert_int_equal(json_array_size(vs), 27);
    json_t *v0 = json_array_get(vs, 0);
    assert_string_equal(json_string_value(json_object_get(v0, "version")), ids[0]);
    assert_string_equal(json_string_value(json_object_get(v0, "value")), "pw-0-" MARK "\"\\\x01");
    assert_string_equal(json_string_value(json_object_get(v0, "contentType")), "text/plain");
    json_t *tags = json_object_get(v0, "tags");
    assert_string_equal(json_string_value(json_object_get(tags, "rotation")), "rot-0");
    assert_string_equal(json_string_value(json_object_get(tags, "slot")), "green");
    assert_string_equal(json_string_value(json_object_get(tags, "role")), "app_green");
    assert_string_equal(json_string_value(json_object_get(tags, "managed-by")), "rotor");
    json_int_t exp = json_integer_value(json_object_get(json_object_get(v0, "attributes"), "exp"));
    assert_true(exp > util_now_ms() / 1000 + 3500 && exp <= util_now_ms() / 1000 + 3600);
    json_decref(vs);

    long before = last_seq(f);
    res_t r = find(f, name, "rot-26"); /* on the second page */
    assert_int_equal(r.status, 0);
    assert_string_equal(r.version, ids[26]);
    json_t *lists = requests_of(f, "vault", before);
    assert_int_equal(json_array_size(lists), 2);
    assert_non_null(
        json_object_get(json_object_get(json_array_get(lists, 1), "query"), "$skiptoken"));
    json_decref(lists);
    r = find(f, name, "rot-3");
    assert_string_equal(r.version, ids[3]);
    r = find(f, name, "rot-none");
    assert_int_equal(r.status, 0);
    assert_false(r.has_version);
    r = find(f, "no-such-secret", "rot-3");
    assert_int_equal(r.status, 0);
    assert_false(r.has_version);

    r = get(f, name, ids[5]);
    assert_string_equal(r.version, ids[5]);
    assert_value(&r, "pw-5-" MARK "\"\\\x01");
    r = get(f, name, NULL);
    assert_string_equal(r.version, ids[26]);
    assert_value(&r, "pw-26-" MARK "\"\\\x01");
    r = get(f, "no-such-secret", NULL);
    assert_int_equal(r.status, ROTOR_ENOTFOUND);
    assert_null(r.value);
    assert_non_null(strstr(r.reason, "Key Vault: SecretNotFound: "));
    r = current(f, name);
    assert_string_equal(r.version, ids[26]);
    r = current(f, "no-such-secret");
    assert_int_equal(r.status, 0);
    assert_false(r.has_version);

    /* Disabling the latest: it can no longer be read or found, and there is no current one. */
    r = disable(f, name, ids[26]);
    assert_int_equal(r.status, 0);
    vs = versions_of(f, name);
    assert_false(json_is_true(
        json_object_get(json_object_get(json_array_get(vs, 26), "attributes"), "enabled")));
    assert_true(json_is_true(
        json_object_get(json_object_get(json_array_get(vs, 25), "attributes"), "enabled")));
    json_decref(vs);
    r = get(f, name, ids[26]);
    assert_int_equal(r.status, ROTOR_ENOTFOUND);
    assert_non_null(strstr(r.reason, "disabled"));
    r = find(f, name, "rot-26");
    assert_false(r.has_version);
    r = current(f, name);
    assert_int_equal(r.status, 0);
    assert_false(r.has_version);
    r = disable(f, name, ids[26]); /* again: nothing to do */
    assert_int_equal(r.status, 0);
    r = disable(f, name, "0123456789abcdef0123456789abcdef"); /* unknown: 404 is success */
    assert_int_equal(r.status, 0);
    r = disable(f, "no-such-secret", "0123456789abcdef0123456789abcdef");
    assert_int_equal(r.status, 0);

    /* The current entry. */
    const char *entry = "{\"role\":\"app_green\",\"password\":\"pw-" MARK "\"}";
    rotor_secret_t *e = secret_from(entry, strlen(entry));
    res_t w = {0};
    assert_int_equal(
        f->store->ops->write_current(f->store, "app-db-current", e, on_done, &w, 0, NULL), 0);
    secret_free(e);
    wait_res(f, &w);
    assert_int_equal(w.status, 0);
    vs = versions_of(f, "app-db-current");
    assert_int_equal(json_array_size(vs), 1);
    json_t *cur = json_array_get(vs, 0);
    assert_string_equal(json_string_value(json_object_get(cur, "value")), entry);
    assert_string_equal(json_string_value(json_object_get(cur, "contentType")), "application/json");
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(cur, "tags"), "managed-by")), "rotor");
    assert_null(json_object_get(json_object_get(cur, "tags"), "rotation"));
    json_decref(vs);
    r = get(f, "app-db-current", NULL);
    assert_value(&r, entry);
}

static void test_find_reuses_version(void **state)
{
    SKIP_WITHOUT_NODE();
    fixture_t *f = *state;
    res_t a = put(f, f->store, "app-db-blue", "first-" MARK, "rot-a");
    assert_int_equal(a.status, 0);
    res_t b = find(f, "app-db-blue", "rot-a");
    assert_int_equal(b.status, 0);
    assert_string_equal(b.version, a.version);
    json_t *vs = versions_of(f, "app-db-blue");
    assert_int_equal(json_array_size(vs), 1);
    json_decref(vs);
}

static void test_throttled_write_retried(void **state)
{
    SKIP_WITHOUT_NODE();
    fixture_t *f = *state;
    /* Learn the challenge first, so the 429 meets the authenticated write. */
    res_t r = current(f, "app-db-blue");
    assert_int_equal(r.status, 0);
    long before = last_seq(f);
    faults(f, "{\"throttle_writes\":1,\"retry_after\":1}");
    uint64_t t0 = uv_hrtime();
    r = put(f, f->store, "app-db-blue", "throttled-" MARK, "rot-t");
    uint64_t ms = (uv_hrtime() - t0) / 1000000;
    assert_int_equal(r.status, 0);
    assert_true(ms >= 950); /* Retry-After: 1 was honoured */
    json_t *reqs = requests_of(f, "vault", before);
    assert_int_equal(json_array_size(reqs), 2);
    assert_int_equal(rq_status(reqs, 0), 429);
    assert_int_equal(rq_status(reqs, 1), 200);
    json_decref(reqs);
    json_t *vs = versions_of(f, "app-db-blue");
    assert_int_equal(json_array_size(vs), 1);
    json_decref(vs);

    /* The Azure-specific header, in milliseconds. */
    faults(f, "{\"throttle_writes\":1,\"retry_after\":0.3,"
              "\"retry_after_header\":\"x-ms-retry-after-ms\"}");
    t0 = uv_hrtime();
    r = put(f, f->store, "app-db-blue", "throttled2-" MARK, "rot-t2");
    ms = (uv_hrtime() - t0) / 1000000;
    assert_int_equal(r.status, 0);
    assert_true(ms >= 290 && ms < 5000); /* 300 ms, not 300 s */
    vs = versions_of(f, "app-db-blue");
    assert_int_equal(json_array_size(vs), 2);
    json_decref(vs);
    char *text = log_text(f);
    assert_non_null(strstr(text, "store.keyvault.retry"));
    free(text);
}

/* Runs the loop for ms (other requests of the loop go on meanwhile). */
static void on_pause(uv_timer_t *t)
{
    *(int *)t->data = 1;
}

static void pause_ms(fixture_t *f, uint64_t ms)
{
    uv_timer_t t;
    int fired = 0;
    uv_timer_init(&f->loop, &t);
    t.data = &fired;
    uv_timer_start(&t, on_pause, ms, 0);
    while (!fired)
        uv_run(&f->loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(&f->loop, UV_RUN_NOWAIT);
}

static size_t count_method(json_t *reqs, const char *method)
{
    size_t n = 0, i;
    json_t *q;
    json_array_foreach(reqs, i, q)
    {
        if (strcmp(json_string_value(json_object_get(q, "method")), method) == 0)
            n++;
    }
    return n;
}

/* A write the vault keeps throttling is canceled (the attempt it belongs to ended): the callback
 * says so, and no later retry reaches the vault. Without cancellation the PUT was retried after
 * each Retry-After, past the attempt, and could land a version no one waits for. */
static void test_cancel_throttled_write(void **state)
{
    SKIP_WITHOUT_NODE();
    fixture_t *f = *state;
    res_t r = current(f, "app-db-blue"); /* the challenge first: the 429 meets the write */
    assert_int_equal(r.status, 0);
    long before = last_seq(f);
    faults(f, "{\"throttle_writes\":100,\"retry_after\":2}");
    res_t w = {0};
    rotor_secret_t *v = secret_from("canceled-" MARK, strlen("canceled-" MARK));
    store_tags_t tags = {"rot-cancel", "green", "app_green"};
    store_req_t *req = NULL;
    store_t *s = f->store;
    assert_int_equal(s->ops->put(s, "app-db-blue", v, &tags, 0, on_version, &w, 0, &req), 0);
    secret_free(v);
    assert_non_null(req);
    pause_ms(f, 1000); /* the first PUT got its 429; the retry waits 2 s */
    assert_int_equal(w.done, 0);
    s->ops->cancel(s, req);
    assert_int_equal(w.done, 0); /* never from within the call */
    wait_res(f, &w);
    assert_int_equal(w.status, ROTOR_ECANCELED);
    pause_ms(f, 3000); /* past the Retry-After the PUT would have been retried at */
    json_t *reqs = requests_of(f, "vault", before);
    assert_int_equal(count_method(reqs, "PUT"), 1);
    assert_int_equal(rq_status(reqs, 0), 429);
    json_decref(reqs);
    json_t *vs = versions_of(f, "app-db-blue");
    assert_int_equal(json_array_size(vs), 0);
    json_decref(vs);
    faults(f, "{\"reset\":true}");
}

/* A retry that would begin past the request's deadline is not made: the write fails at once
 * with the last error and the deadline as the reason. */
static void test_retry_past_deadline(void **state)
{
    SKIP_WITHOUT_NODE();
    fixture_t *f = *state;
    res_t r = current(f, "app-db-blue");
    assert_int_equal(r.status, 0);
    long before = last_seq(f);
    faults(f, "{\"throttle_writes\":100,\"retry_after\":5}");
    res_t w = {0};
    rotor_secret_t *v = secret_from("late-" MARK, strlen("late-" MARK));
    store_tags_t tags = {"rot-late", "green", "app_green"};
    store_t *s = f->store;
    uint64_t t0 = uv_hrtime();
    assert_int_equal(
        s->ops->put(s, "app-db-blue", v, &tags, 0, on_version, &w, util_now_ms() + 3000, NULL), 0);
    secret_free(v);
    wait_res(f, &w);
    uint64_t ms = (uv_hrtime() - t0) / 1000000;
    assert_int_equal(w.status, ROTOR_ESTORE);
    assert_non_null(strstr(w.reason, "Throttled"));
    assert_non_null(strstr(w.reason, "gave up: the attempt's deadline"));
    assert_true(ms < 2000); /* at once, not after the Retry-After */
    json_t *reqs = requests_of(f, "vault", before);
    assert_int_equal(count_method(reqs, "PUT"), 1);
    json_decref(reqs);

    /* A deadline already past: nothing is sent at all. */
    before = last_seq(f);
    res_t g = {0};
    assert_int_equal(s->ops->get(s, "app-db-blue", NULL, on_value, &g, util_now_ms() - 1, NULL), 0);
    wait_res(f, &g);
    assert_int_equal(g.status, ROTOR_ETIMEOUT);
    assert_non_null(strstr(g.reason, "gave up: the attempt's deadline"));
    reqs = requests_of(f, "vault", before);
    assert_int_equal(json_array_size(reqs), 0);
    json_decref(reqs);
    faults(f, "{\"reset\":true}");
}

/* The wait for the write limiter counts against the deadline, and a write canceled while it
 * waits is never sent. */
static void test_limiter_wait_deadline_and_cancel(void **state)
{
    SKIP_WITHOUT_NODE();
    fixture_t *f = *state;
    static cfg_secret_t c; /* borrowed by the store until the teardown closes it */
    cfg_init(&c, g.vault_url, g.resolve, 2);
    store_t *s;
    char err[256];
    store_deps_t deps = {f->http, f->cred};
    assert_int_equal(store_keyvault_open(&f->loop, &c, &deps, &f->extra[0], err, sizeof err), 0);
    s = f->extra[0];
    res_t r = current(f, "app-db-blue"); /* the challenge first */
    assert_int_equal(r.status, 0);
    for (int i = 0; i < 2; i++) { /* the window's two writes */
        r = put(f, s, "app-db-blue", "window-" MARK, "rot-w");
        assert_int_equal(r.status, 0);
    }
    long before = last_seq(f);
    static res_t late, canceled; /* outlive a failed assertion: the teardown cancels them */
    memset(&late, 0, sizeof late);
    memset(&canceled, 0, sizeof canceled);
    rotor_secret_t *v = secret_from("queued-" MARK, strlen("queued-" MARK));
    store_tags_t tags = {"rot-q", "green", "app_green"};
    store_req_t *req = NULL;
    uint64_t t0 = uv_hrtime();
    assert_int_equal(
        s->ops->put(s, "app-db-green", v, &tags, 0, on_version, &late, util_now_ms() + 1000, NULL),
        0);
    assert_int_equal(s->ops->put(s, "app-db-green", v, &tags, 0, on_version, &canceled, 0, &req),
                     0);
    secret_free(v);
    pause_ms(f, 300);
    s->ops->cancel(s, req);
    wait_res(f, &canceled);
    assert_int_equal(canceled.status, ROTOR_ECANCELED);
    wait_res(f, &late);
    uint64_t ms = (uv_hrtime() - t0) / 1000000;
    assert_int_equal(late.status, ROTOR_ETIMEOUT);
    assert_non_null(strstr(late.reason, "gave up: the attempt's deadline"));
    assert_non_null(strstr(late.reason, "write limiter"));
    assert_true(ms >= 900 && ms < 5000);
    json_t *reqs = requests_of(f, "vault", before);
    assert_int_equal(count_method(reqs, "PUT"), 0);
    json_decref(reqs);
}

static void test_unavailable_then_success(void **state)
{
    SKIP_WITHOUT_NODE();
    fixture_t *f = *state;
    res_t r = put(f, f->store, "app-db-blue", "up-" MARK, "rot-u");
    assert_int_equal(r.status, 0);
    long before = last_seq(f);
    faults(f, "{\"unavailable\":2,\"retry_after\":0.05,\"retry_after_header\":\"retry-after-ms\"}");
    r = get(f, "app-db-blue", NULL);
    assert_value(&r, "up-" MARK);
    json_t *reqs = requests_of(f, "vault", before);
    assert_int_equal(json_array_size(reqs), 3);
    assert_int_equal(rq_status(reqs, 0), 503);
    assert_int_equal(rq_status(reqs, 1), 503);
    assert_int_equal(rq_status(reqs, 2), 200);
    json_decref(reqs);

    /* A vault that stays down: five tries, then the last reason. */
    before = last_seq(f);
    faults(f, "{\"unavailable\":20}");
    r = get(f, "app-db-blue", NULL);
    assert_int_equal(r.status, ROTOR_ESTORE);
    assert_null(r.value);
    assert_non_null(strstr(r.reason, "Key Vault: ServiceUnavailable: "));
    reqs = requests_of(f, "vault", before);
    assert_int_equal(json_array_size(reqs), 5);
    json_decref(reqs);
    faults(f, "{\"reset\":true}");
}

static void test_token_expiry(void **state)
{
    SKIP_WITHOUT_NODE();
    fixture_t *f = *state;
    res_t a = put(f, f->store, "app-db-blue", "exp-" MARK, "rot-e");
    assert_int_equal(a.status, 0);
    json_t *tokens = requests_of(f, "token", 0);
    assert_int_equal(json_array_size(tokens), 1);
    json_decref(tokens);

    long before = last_seq(f);
    faults(f, "{\"expire_tokens\":true}");
    res_t r = get(f, "app-db-blue", a.version);
    assert_value(&r, "exp-" MARK);
    json_t *reqs = requests_of(f, "vault", before);
    assert_int_equal(json_array_size(reqs), 3);
    assert_int_equal(rq_status(reqs, 0), 401); /* the expired token */
    assert_true(rq_auth(reqs, 0));
    assert_int_equal(rq_status(reqs, 1), 401); /* the challenge, read again */
    assert_false(rq_auth(reqs, 1));
    assert_int_equal(rq_status(reqs, 2), 200);
    assert_true(rq_auth(reqs, 2));
    json_decref(reqs);
    tokens = requests_of(f, "token", 0);
    assert_int_equal(json_array_size(tokens), 2);
    json_decref(tokens);
}

/* A challenge naming a resource outside the vault's domain: no token is fetched or sent. */
static void check_foreign_challenge(fixture_t *f, const char *www)
{
    char base[128], url[192], resolve[64], body[512];
    snprintf(base, sizeof base, "https://localhost:%d", g.srv.port);
    snprintf(resolve, sizeof resolve, "localhost:%d:127.0.0.1", g.srv.port);
    snprintf(url, sizeof url, "%s/_reset", base);
    json_decref(ctl_url(f, "POST", url, "{}"));
    snprintf(body, sizeof body,
             "{\"path\":\"/secrets/app-db-blue/\",\"responses\":[{\"status\":401,\"headers\":"
             "{\"WWW-Authenticate\":\"%s\"},\"json\":{\"error\":{\"code\":\"Unauthorized\","
             "\"message\":\"no token\"}}}]}",
             www);
    snprintf(url, sizeof url, "%s/_script", base);
    json_decref(ctl_url(f, "POST", url, body));

    cfg_secret_t cfg;
    cfg_init(&cfg, base, resolve, 300);
    store_t *s = NULL;
    char err[256];
    store_deps_t deps = {f->http, f->cred};
    assert_int_equal(store_keyvault_open(&f->loop, &cfg, &deps, &s, err, sizeof err), 0);
    res_t r = {0};
    assert_int_equal(s->ops->get(s, "app-db-blue", NULL, on_value, &r, 0, NULL), 0);
    wait_res(f, &r);
    s->ops->close(s);
    assert_int_equal(r.status, ROTOR_ESTORE);
    assert_non_null(strstr(r.reason, "is not the vault's domain"));

    snprintf(url, sizeof url, "%s/_requests", base);
    json_t *reqs = ctl_url(f, "GET", url, NULL);
    assert_int_equal(json_array_size(reqs), 1);
    assert_null(
        json_object_get(json_object_get(json_array_get(reqs, 0), "headers"), "authorization"));
    json_decref(reqs);
    json_t *tokens = requests_of(f, "token", 0);
    assert_int_equal(json_array_size(tokens), 0);
    json_decref(tokens);
}

static void test_foreign_resource_refused(void **state)
{
    SKIP_WITHOUT_NODE();
    fixture_t *f = *state;
    check_foreign_challenge(f, "Bearer authorization=\\\"https://login.example/" TENANT
                               "\\\", resource=\\\"https://vault.evil.example\\\"");
    /* "host" is a suffix of "localhost" but not a domain of it. */
    check_foreign_challenge(f, "Bearer authorization=\\\"https://login.example/" TENANT
                               "\\\", scope=\\\"https://host/.default\\\"");
}

static void test_write_limit(void **state)
{
    SKIP_WITHOUT_NODE();
    fixture_t *f = *state;
    /* Two stores of one vault share its limiter; the emulator would throttle any excess. */
    cfg_secret_t c1, c2;
    cfg_init(&c1, g.vault_url, g.resolve, 10);
    cfg_init(&c2, g.vault_url, g.resolve, 10);
    store_t **s = f->extra;
    char err[256];
    store_deps_t deps = {f->http, f->cred};
    assert_int_equal(store_keyvault_open(&f->loop, &c1, &deps, &s[0], err, sizeof err), 0);
    assert_int_equal(store_keyvault_open(&f->loop, &c2, &deps, &s[1], err, sizeof err), 0);
    faults(f, "{\"write_limit_per_10s\":10}");
    enum { N = 20 };
    static res_t r[N]; /* outlives a failed assertion: the teardown cancels what is pending */
    memset(r, 0, sizeof r);
    uint64_t t0 = uv_hrtime();
    for (int i = 0; i < N; i++) {
        char name[32], rot[32];
        snprintf(name, sizeof name, "limited-%d", i);
        snprintf(rot, sizeof rot, "rot-%d", i);
        rotor_secret_t *v = secret_from("limited-" MARK, strlen("limited-" MARK));
        store_tags_t tags = {rot, "blue", "app_blue"};
        store_t *st = s[i % 2];
        assert_int_equal(st->ops->put(st, name, v, &tags, 0, on_version, &r[i], 0, NULL), 0);
        secret_free(v);
    }
    for (int i = 0; i < N; i++) {
        while (!r[i].done)
            uv_run(&f->loop, UV_RUN_ONCE);
        assert_int_equal(r[i].status, 0);
    }
    uint64_t ms = (uv_hrtime() - t0) / 1000000;
    assert_true(ms >= 10000); /* queued, none dropped */

    json_t *st = ctl(f, "GET", "state", NULL);
    assert_true(json_integer_value(json_object_get(st, "writes_peak_10s")) <= 10);
    assert_int_equal(json_object_size(json_object_get(st, "secrets")), N);
    json_decref(st);
    /* From the log: no 11 authenticated writes within 10 s, and none throttled. */
    json_t *reqs = requests_of(f, "vault", 0), *q;
    int64_t times[64];
    size_t n = 0, i;
    json_array_foreach(reqs, i, q)
    {
        assert_null(json_object_get(q, "fault"));
        if (rq_auth(reqs, i) && strcmp(json_string_value(json_object_get(q, "method")), "PUT") == 0)
            times[n++] = json_integer_value(json_object_get(q, "time"));
    }
    json_decref(reqs);
    assert_int_equal(n, N);
    for (i = 10; i < n; i++)
        assert_true(times[i] - times[i - 10] >= 10000);
}

static void test_close_with_pending(void **state)
{
    SKIP_WITHOUT_NODE();
    fixture_t *f = *state;
    res_t warm = current(f, "app-db-blue");
    assert_int_equal(warm.status, 0);
    faults(f, "{\"delay_ms\":500}");
    cfg_secret_t c;
    cfg_init(&c, g.vault_url, g.resolve, 1);
    char err[256];
    store_deps_t deps = {f->http, f->cred};
    assert_int_equal(store_keyvault_open(&f->loop, &c, &deps, &f->extra[0], err, sizeof err), 0);
    store_t *s = f->extra[0];
    static res_t a, b, d; /* outlive a failed assertion, as in test_write_limit */
    memset(&a, 0, sizeof a);
    memset(&b, 0, sizeof b);
    memset(&d, 0, sizeof d);
    rotor_secret_t *v = secret_from("closing-" MARK, strlen("closing-" MARK));
    store_tags_t tags = {"rot-c", "blue", "app_blue"};
    /* The second write waits behind the first in the limiter. */
    assert_int_equal(s->ops->put(s, "app-db-blue", v, &tags, 0, on_version, &a, 0, NULL), 0);
    assert_int_equal(s->ops->put(s, "app-db-green", v, &tags, 0, on_version, &b, 0, NULL), 0);
    assert_int_equal(s->ops->get(s, "app-db-blue", NULL, on_value, &d, 0, NULL), 0);
    secret_free(v);
    for (int i = 0; i < 20; i++)
        uv_run(&f->loop, UV_RUN_NOWAIT);
    f->extra[0] = NULL;
    s->ops->close(s);
    assert_int_equal(a.done + b.done + d.done, 0); /* not inside close */
    while (!a.done || !b.done || !d.done)
        uv_run(&f->loop, UV_RUN_ONCE);
    assert_int_equal(a.status, ROTOR_ECANCELED);
    assert_int_equal(b.status, ROTOR_ECANCELED);
    assert_int_equal(d.status, ROTOR_ECANCELED);
    assert_null(d.value);
    faults(f, "{\"reset\":true}");
}

static void test_bad_input(void **state)
{
    SKIP_WITHOUT_NODE();
    fixture_t *f = *state;
    res_t r = {0};
    assert_int_equal(f->store->ops->get(f->store, "bad_name", NULL, on_value, &r, 0, NULL),
                     ROTOR_EINVALID);
    assert_int_equal(f->store->ops->get(f->store, "app-db-blue", "../x", on_value, &r, 0, NULL),
                     ROTOR_EINVALID);
    assert_int_equal(f->store->ops->disable(f->store, "app-db-blue", "", on_done, &r, 0, NULL),
                     ROTOR_EINVALID);
    uv_run(&f->loop, UV_RUN_NOWAIT);
    assert_int_equal(r.done, 0);

    cfg_secret_t c;
    store_t *s = NULL;
    char err[256];
    store_deps_t deps = {f->http, f->cred}, none = {f->http, NULL};
    cfg_init(&c, g.vault_url, g.resolve, 10);
    c.store.names[1] = "app.db";
    assert_int_equal(store_keyvault_open(&f->loop, &c, &deps, &s, err, sizeof err), ROTOR_ECONFIG);
    assert_non_null(strstr(err, "app.db"));
    cfg_init(&c, "http://plain.example", NULL, 10);
    assert_int_equal(store_keyvault_open(&f->loop, &c, &deps, &s, err, sizeof err), ROTOR_ECONFIG);
    cfg_init(&c, g.vault_url, g.resolve, 10);
    assert_int_equal(store_keyvault_open(&f->loop, &c, &none, &s, err, sizeof err), ROTOR_ECONFIG);
    assert_null(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_round_trip_and_paging, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_find_reuses_version, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_throttled_write_retried, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_cancel_throttled_write, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_retry_past_deadline, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_limiter_wait_deadline_and_cancel, fx_setup,
                                        fx_teardown),
        cmocka_unit_test_setup_teardown(test_unavailable_then_success, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_token_expiry, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_foreign_resource_refused, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_close_with_pending, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_bad_input, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_write_limit, fx_setup, fx_teardown),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
