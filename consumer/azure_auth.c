/* azure_auth.c: Entra ID tokens (client secret, workload identity, IMDS) over http.c, cached per
 * (scope, tenant) with one exchange in flight per entry however many callers wait for it. */
#include "azure_auth.h"
#include "azure_auth_parse.h"

#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backoff.h"
#include "rotor.h"
#include "secret.h"
#include "util.h"

#define AZ_DEFAULT_AUTHORITY "https://login.microsoftonline.com"
#define AZ_DEFAULT_IMDS "http://169.254.169.254"
#define AZ_REFRESH_MARGIN_MS (5 * 60 * 1000)
#define AZ_IMDS_TRIES 5
#define AZ_IMDS_MAX_DELAY_MS (60 * 1000)
#define AZ_MAX_TOKEN_FILE (64 * 1024) /* a projected service-account token is a few KiB */
#define AZ_REASON_LEN AZURE_REASON_LEN

typedef struct az_waiter_s {
    azure_token_cb cb;
    void *arg;
    struct az_waiter_s *next;
} az_waiter_t;

/* A cached answer, delivered on the next loop turn so azure_token never calls back inline. */
typedef struct az_delivery_s {
    azure_token_cb cb;
    void *arg;
    char *token; /* wiped */
    int64_t expires_on_ms;
    struct az_delivery_s *next;
} az_delivery_t;

typedef struct az_entry_s az_entry_t;

/* The federated token file is read on the threadpool; orphaned (e = NULL) if the credential is
 * freed first, and then freed by its after-work callback. */
typedef struct {
    uv_work_t work;
    char *path;
    char *data; /* wiped */
    size_t len;
    int err;
    az_entry_t *e;
} az_read_t;

struct az_entry_s {
    azure_cred_t *c;
    char *scope;
    char *tenant; /* "" for IMDS, which has no tenant */
    char *token;  /* wiped */
    int64_t expires_on_ms, refresh_at_ms;
    az_waiter_t *waiters;
    bool fetching;
    http_req_t *req;
    az_read_t *read;
    uv_timer_t *retry; /* IMDS backoff; freed in its close callback */
    int attempt;
    struct az_entry_s *next;
};

struct azure_cred_s {
    uv_loop_t *loop;
    http_t *http;
    azure_cred_kind_t kind;
    char *tenant, *client_id, *secret, *token_file, *authority, *imds, *ca_file;
    uint64_t imds_backoff_ms;
    az_entry_t *entries;
    az_delivery_t *deliveries;
    uv_timer_t *kick; /* runs deliveries; freed in its close callback */
    int busy;         /* depth of user callbacks on the stack */
    bool freeing;
};

/* ---- small helpers ---- */

static void wipe_str(char *s)
{
    if (s) {
        secret_wipe(s, strlen(s));
        free(s);
    }
}

static const char *opt_or_env(const char *v, const char *env)
{
    if (v && *v)
        return v;
    const char *e = getenv(env);
    return e && *e ? e : NULL;
}

static char *strip_slash(const char *s)
{
    char *d = util_strdup(s);
    size_t n = strlen(d);
    while (n && d[n - 1] == '/')
        d[--n] = '\0';
    return d;
}

/* Tenants come from Key Vault challenges and land in a URL path: names and GUIDs only. */
static bool tenant_ok(const char *t)
{
    size_t n = strlen(t);
    if (n == 0 || n > 128)
        return false;
    for (const char *p = t; *p; p++)
        if (!isalnum((unsigned char)*p) && *p != '-' && *p != '.' && *p != '_')
            return false;
    return true;
}

/* A growable buffer that is wiped whenever it moves or is freed: forms carry secrets. */
typedef struct {
    char *p;
    size_t len, cap;
} az_buf_t;

static void buf_reserve(az_buf_t *b, size_t more)
{
    if (b->len + more + 1 <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + more + 1)
        cap *= 2;
    char *np = util_malloc(cap);
    if (b->len)
        memcpy(np, b->p, b->len);
    np[b->len] = '\0';
    if (b->p) {
        secret_wipe(b->p, b->cap);
        free(b->p);
    }
    b->p = np;
    b->cap = cap;
}

static void buf_add(az_buf_t *b, const char *s, size_t n)
{
    buf_reserve(b, n);
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

/* application/x-www-form-urlencoded / RFC 3986 query escaping of the unreserved set. */
static void buf_escape(az_buf_t *b, const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (isalnum(ch) || ch == '-' || ch == '.' || ch == '_' || ch == '~') {
            buf_add(b, (const char *)&ch, 1);
        } else {
            char enc[3] = {'%', hex[ch >> 4], hex[ch & 15]};
            buf_add(b, enc, 3);
        }
    }
}

static void buf_param(az_buf_t *b, const char *key, const char *value)
{
    if (b->len)
        buf_add(b, "&", 1);
    buf_add(b, key, strlen(key));
    buf_add(b, "=", 1);
    buf_escape(b, value);
}

static void buf_free(az_buf_t *b)
{
    if (b->p) {
        secret_wipe(b->p, b->cap);
        free(b->p);
    }
    b->p = NULL;
    b->len = b->cap = 0;
}

/* Replaces every occurrence of needle in s (in place) so a server echoing a credential back in
 * an error cannot carry it into a log line. */
static void redact(char *s, const char *needle)
{
    size_t n = needle ? strlen(needle) : 0;
    if (n < 4)
        return;
    char *hit;
    while ((hit = strstr(s, needle)))
        memset(hit, '*', n);
}

/* ---- delivering answers ---- */

static void az_final_free(azure_cred_t *c);

static void maybe_final_free(azure_cred_t *c)
{
    if (c->freeing && c->busy == 0)
        az_final_free(c);
}

/* Calls every waiter of e with one answer. The token is copied first: a callback may invalidate
 * the entry (or free the credential) while later waiters still need it. */
static void entry_settle(az_entry_t *e, int status, const char *token, int64_t exp_ms,
                         const char *reason)
{
    azure_cred_t *c = e->c;
    az_waiter_t *w = e->waiters;
    e->waiters = NULL;
    e->fetching = false;
    e->req = NULL;
    e->attempt = 0;
    if (status == 0) {
        wipe_str(e->token);
        e->token = util_strdup(token);
        e->expires_on_ms = exp_ms;
        int64_t now = util_now_ms();
        int64_t margin = (exp_ms - now) / 2;
        if (margin > AZ_REFRESH_MARGIN_MS)
            margin = AZ_REFRESH_MARGIN_MS;
        e->refresh_at_ms = exp_ms - (margin > 0 ? margin : 0);
    }
    char *tok = status == 0 ? util_strdup(token) : NULL;
    c->busy++;
    while (w) {
        az_waiter_t *next = w->next;
        w->cb(w->arg, status, tok, status == 0 ? exp_ms : 0, status == 0 ? NULL : reason);
        free(w);
        w = next;
    }
    wipe_str(tok);
    c->busy--;
    maybe_final_free(c);
}

static void on_kick(uv_timer_t *t)
{
    azure_cred_t *c = t->data;
    az_delivery_t *d = c->deliveries;
    c->deliveries = NULL;
    c->busy++;
    while (d) {
        az_delivery_t *next = d->next;
        d->cb(d->arg, 0, d->token, d->expires_on_ms, NULL);
        wipe_str(d->token);
        free(d);
        d = next;
    }
    c->busy--;
    maybe_final_free(c);
}

static void deliver_cached(azure_cred_t *c, az_entry_t *e, azure_token_cb cb, void *arg)
{
    az_delivery_t *d = util_calloc(1, sizeof *d);
    d->cb = cb;
    d->arg = arg;
    d->token = util_strdup(e->token);
    d->expires_on_ms = e->expires_on_ms;
    /* Appended, so answers keep the order of the calls. */
    az_delivery_t **tail = &c->deliveries;
    while (*tail)
        tail = &(*tail)->next;
    *tail = d;
    uv_timer_start(c->kick, on_kick, 0, 0);
}

/* ---- parsing answers ---- */

/* 9999-12-31T23:59:59Z: a larger expiry or lifetime is garbage, and would overflow as ms. */
#define AZ_MAX_SECONDS 253402300799LL

/* Epoch seconds or a lifetime in seconds, as a JSON number or a string of digits, within
 * 0..AZ_MAX_SECONDS. */
static bool json_seconds(json_t *v, int64_t *out)
{
    if (json_is_integer(v)) {
        *out = (int64_t)json_integer_value(v);
        return *out >= 0 && *out <= AZ_MAX_SECONDS;
    }
    if (json_is_real(v)) {
        double d = json_real_value(v);
        if (!(d >= 0 && d <= (double)AZ_MAX_SECONDS))
            return false; /* casting a larger double is undefined */
        *out = (int64_t)d;
        return true;
    }
    const char *s = json_string_value(v);
    if (!s || !*s)
        return false;
    char *end;
    errno = 0;
    long long n = strtoll(s, &end, 10);
    if (errno || *end || n < 0 || n > AZ_MAX_SECONDS)
        return false;
    *out = n;
    return true;
}

int azure_parse_token(const http_response_t *res, char **token, int64_t *exp_ms, char *reason)
{
    json_error_t jerr;
    json_t *j = json_loadb(res->body, res->body_len, 0, &jerr);
    json_t *tok = json_object_get(j, "access_token");
    int64_t secs;
    int rc = 0;
    if (!json_is_string(tok) || json_string_length(tok) == 0) {
        snprintf(reason, AZ_REASON_LEN, "token endpoint answered %ld without an access_token",
                 res->status);
        rc = ROTOR_EFAIL;
    } else if (json_seconds(json_object_get(j, "expires_on"), &secs)) {
        *exp_ms = secs * 1000;
    } else if (json_seconds(json_object_get(j, "expires_in"), &secs)) {
        *exp_ms = util_now_ms() + secs * 1000;
    } else {
        snprintf(reason, AZ_REASON_LEN,
                 "token endpoint answered without a usable expires_in or expires_on");
        rc = ROTOR_EFAIL;
    }
    if (rc == 0)
        *token = util_strdup(json_string_value(tok));
    if (json_is_string(tok))
        secret_wipe((char *)json_string_value(tok), json_string_length(tok));
    json_decref(j);
    return rc;
}

void azure_parse_error(const char *secret, const char *who, const http_response_t *res,
                       char *reason)
{
    json_error_t jerr;
    json_t *j = json_loadb(res->body, res->body_len, 0, &jerr);
    const char *code = json_string_value(json_object_get(j, "error"));
    const char *desc = json_string_value(json_object_get(j, "error_description"));
    if (!code && json_is_object(json_object_get(j, "error"))) {
        json_t *o = json_object_get(j, "error");
        code = json_string_value(json_object_get(o, "code"));
        desc = json_string_value(json_object_get(o, "message"));
    }
    if (code || desc)
        snprintf(reason, AZ_REASON_LEN, "%s: HTTP %ld: %s: %.300s", who, res->status,
                 code ? code : "error", desc ? desc : "");
    else
        snprintf(reason, AZ_REASON_LEN, "%s: HTTP %ld", who, res->status);
    json_decref(j);
    util_utf8_trim(reason); /* a long code is cut at the buffer's end, maybe mid-character */
    redact(reason, secret);
}

/* ---- the exchanges ---- */

static int entry_send_entra(az_entry_t *e, const char *assertion);
static int entry_send_imds(az_entry_t *e);

static bool imds_retryable(long status)
{
    return status == 404 || status == 410 || status == 429 || status >= 500;
}

static void on_retry_timer(uv_timer_t *t)
{
    az_entry_t *e = t->data;
    char reason[AZ_REASON_LEN];
    int rc = entry_send_imds(e);
    if (rc < 0) {
        snprintf(reason, sizeof reason, "managed identity: cannot send the request: %s",
                 rotor_strerror(rc));
        entry_settle(e, rc, NULL, 0, reason);
    }
}

static bool imds_schedule_retry(az_entry_t *e, const http_response_t *res)
{
    azure_cred_t *c = e->c;
    if (e->attempt + 1 >= AZ_IMDS_TRIES)
        return false;
    e->attempt++;
    /* 410: IMDS is being upgraded, which Azure documents as lasting up to 70 s. */
    uint64_t base = c->imds_backoff_ms * (res->status == 410 ? 4 : 1);
    uint64_t hint = http_retry_after_ms(res, util_now_ms());
    if (hint > AZ_IMDS_MAX_DELAY_MS)
        hint = AZ_IMDS_MAX_DELAY_MS;
    uint64_t delay = backoff_delay(e->attempt, base, AZ_IMDS_MAX_DELAY_MS, hint);
    if (!e->retry) {
        e->retry = util_malloc(sizeof *e->retry);
        uv_timer_init(c->loop, e->retry);
        e->retry->data = e;
    }
    e->fetching = true;
    uv_timer_start(e->retry, on_retry_timer, delay, 0);
    return true;
}

static void on_token_response(void *arg, int status, const http_response_t *res)
{
    az_entry_t *e = arg;
    azure_cred_t *c = e->c;
    const char *who = c->kind == AZURE_CRED_IMDS ? "managed identity" : "entra id";
    char reason[AZ_REASON_LEN];
    e->req = NULL;
    if (status == ROTOR_ECANCELED) {
        entry_settle(e, status, NULL, 0, "canceled");
        return;
    }
    if (status < 0) {
        snprintf(reason, sizeof reason, "%s: %s", who, res->error ? res->error : "request failed");
        entry_settle(e, status, NULL, 0, reason);
        return;
    }
    if (c->kind == AZURE_CRED_IMDS && imds_retryable(res->status) && !c->freeing &&
        imds_schedule_retry(e, res))
        return;
    if (res->status < 200 || res->status > 299) {
        azure_parse_error(c->secret, who, res, reason);
        entry_settle(e, ROTOR_EFAIL, NULL, 0, reason);
        return;
    }
    char *token = NULL;
    int64_t exp_ms = 0;
    int rc = azure_parse_token(res, &token, &exp_ms, reason);
    if (rc == 0) {
        entry_settle(e, 0, token, exp_ms, NULL);
        wipe_str(token);
    } else {
        entry_settle(e, rc, NULL, 0, reason);
    }
}

static int entry_send_entra(az_entry_t *e, const char *assertion)
{
    azure_cred_t *c = e->c;
    char url[1024];
    snprintf(url, sizeof url, "%s/%s/oauth2/v2.0/token", c->authority, e->tenant);
    az_buf_t form = {0};
    buf_param(&form, "client_id", c->client_id);
    buf_param(&form, "scope", e->scope);
    buf_param(&form, "grant_type", "client_credentials");
    if (assertion) {
        buf_param(&form, "client_assertion_type",
                  "urn:ietf:params:oauth:client-assertion-type:jwt-bearer");
        buf_param(&form, "client_assertion", assertion);
    } else {
        buf_param(&form, "client_secret", c->secret);
    }
    const char *headers[] = {"Content-Type: application/x-www-form-urlencoded",
                             "Accept: application/json", NULL};
    http_request_t req = {.method = "POST",
                          .url = url,
                          .headers = headers,
                          .body = form.p,
                          .body_len = form.len,
                          .ca_file = c->ca_file,
                          .service = "entra"};
    int rc = http_send(c->http, &req, on_token_response, e, &e->req);
    buf_free(&form);
    return rc;
}

static int entry_send_imds(az_entry_t *e)
{
    azure_cred_t *c = e->c;
    /* IMDS takes the v1 "resource", the scope without its "/.default". */
    char *resource = util_strdup(e->scope);
    size_t n = strlen(resource);
    const char *suffix = "/.default";
    if (n > strlen(suffix) && strcmp(resource + n - strlen(suffix), suffix) == 0)
        resource[n - strlen(suffix)] = '\0';
    az_buf_t url = {0};
    buf_add(&url, c->imds, strlen(c->imds));
    const char *path = "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=";
    buf_add(&url, path, strlen(path));
    buf_escape(&url, resource);
    if (c->client_id) {
        buf_add(&url, "&client_id=", 11);
        buf_escape(&url, c->client_id);
    }
    free(resource);
    const char *headers[] = {"Metadata: true", "Accept: application/json", NULL};
    http_request_t req = {.method = "GET",
                          .url = url.p,
                          .headers = headers,
                          .ca_file = c->ca_file,
                          .timeout_ms = 10000,
                          .connect_timeout_ms = 3000,
                          .service = "entra"};
    int rc = http_send(c->http, &req, on_token_response, e, &e->req);
    buf_free(&url);
    return rc;
}

/* Threadpool: a plain blocking read is fine here, never on the loop. */
static void read_work(uv_work_t *w)
{
    az_read_t *r = w->data;
    r->data = util_malloc(AZ_MAX_TOKEN_FILE + 1);
    r->err = util_read_token_file(r->path, r->data, AZ_MAX_TOKEN_FILE, &r->len);
}

static void read_free(az_read_t *r)
{
    if (r->data) {
        secret_wipe(r->data, AZ_MAX_TOKEN_FILE + 1);
        free(r->data);
    }
    free(r->path);
    free(r);
}

static void read_done(uv_work_t *w, int status)
{
    az_read_t *r = w->data;
    az_entry_t *e = r->e;
    char reason[AZ_REASON_LEN];
    if (!e) { /* the credential was freed meanwhile */
        read_free(r);
        return;
    }
    e->read = NULL;
    int rc = status < 0 ? ROTOR_ECANCELED : 0;
    if (rc == 0 && r->err) {
        snprintf(reason, sizeof reason,
                 "workload identity: cannot read the federated token file: %s", strerror(-r->err));
        rc = ROTOR_ECONFIG;
    } else if (rc == 0) {
        rc = entry_send_entra(e, r->data);
        if (rc < 0)
            snprintf(reason, sizeof reason, "workload identity: cannot send the request: %s",
                     rotor_strerror(rc));
    } else {
        snprintf(reason, sizeof reason, "canceled");
    }
    read_free(r);
    if (rc < 0)
        entry_settle(e, rc, NULL, 0, reason);
}

static int entry_start_read(az_entry_t *e)
{
    az_read_t *r = util_calloc(1, sizeof *r);
    r->path = util_strdup(e->c->token_file);
    r->e = e;
    r->work.data = r;
    int rc = uv_queue_work(e->c->loop, &r->work, read_work, read_done);
    if (rc < 0) {
        read_free(r);
        return rc;
    }
    e->read = r;
    return 0;
}

static int entry_fetch(az_entry_t *e)
{
    switch (e->c->kind) {
    case AZURE_CRED_ENV:
        return entry_send_entra(e, NULL);
    case AZURE_CRED_WORKLOAD:
        /* Re-read on every exchange: the kubelet replaces the file before the token expires. */
        return entry_start_read(e);
    case AZURE_CRED_IMDS:
    default:
        return entry_send_imds(e);
    }
}

/* ---- the public interface ---- */

static az_entry_t *entry_get(azure_cred_t *c, const char *scope, const char *tenant)
{
    for (az_entry_t *e = c->entries; e; e = e->next)
        if (strcmp(e->scope, scope) == 0 && strcmp(e->tenant, tenant) == 0)
            return e;
    az_entry_t *e = util_calloc(1, sizeof *e);
    e->c = c;
    e->scope = util_strdup(scope);
    e->tenant = util_strdup(tenant);
    e->next = c->entries;
    c->entries = e;
    return e;
}

int azure_token(azure_cred_t *c, const char *scope, const char *tenant, azure_token_cb cb,
                void *arg)
{
    if (!c || !scope || !*scope || !cb)
        return ROTOR_EINVALID;
    if (c->freeing)
        return ROTOR_ECANCELED;
    if (c->kind == AZURE_CRED_IMDS)
        tenant = "";
    else if (!tenant || !*tenant)
        tenant = c->tenant;
    else if (!tenant_ok(tenant))
        return ROTOR_EINVALID;
    az_entry_t *e = entry_get(c, scope, tenant);
    if (e->token && util_now_ms() < e->refresh_at_ms) {
        deliver_cached(c, e, cb, arg);
        return 0;
    }
    az_waiter_t *w = util_calloc(1, sizeof *w);
    w->cb = cb;
    w->arg = arg;
    az_waiter_t **tail = &e->waiters;
    while (*tail)
        tail = &(*tail)->next;
    *tail = w;
    if (e->fetching)
        return 0;
    e->fetching = true;
    int rc = entry_fetch(e);
    if (rc < 0) {
        /* Nothing was in flight, so w is the only waiter: undo it and report, not call back. */
        e->waiters = NULL;
        e->fetching = false;
        free(w);
        return rc;
    }
    return 0;
}

void azure_token_invalidate(azure_cred_t *c, const char *scope)
{
    if (!c || !scope)
        return;
    for (az_entry_t *e = c->entries; e; e = e->next) {
        if (strcmp(e->scope, scope) != 0)
            continue;
        wipe_str(e->token);
        e->token = NULL;
        e->refresh_at_ms = 0;
    }
}

azure_cred_kind_t azure_cred_kind(const azure_cred_t *c)
{
    return c->kind;
}

int azure_cred_new(uv_loop_t *loop, http_t *h, const azure_cred_opts_t *opts, azure_cred_t **out,
                   char *err, size_t errlen)
{
    azure_cred_opts_t none = {0};
    if (!opts)
        opts = &none;
    const char *tenant = opt_or_env(opts->tenant_id, "AZURE_TENANT_ID");
    const char *client = opt_or_env(opts->client_id, "AZURE_CLIENT_ID");
    const char *secret = opt_or_env(opts->client_secret, "AZURE_CLIENT_SECRET");
    const char *file = opt_or_env(opts->federated_token_file, "AZURE_FEDERATED_TOKEN_FILE");
    const char *authority = opt_or_env(opts->authority_host, "AZURE_AUTHORITY_HOST");
    const char *imds = opt_or_env(opts->imds_endpoint, "AZURE_IMDS_ENDPOINT");
    if (!authority)
        authority = AZ_DEFAULT_AUTHORITY;
    if (!imds)
        imds = AZ_DEFAULT_IMDS;

    azure_cred_kind_t kind = AZURE_CRED_IMDS;
    if (tenant && client && secret)
        kind = AZURE_CRED_ENV;
    else if (file && client && tenant)
        kind = AZURE_CRED_WORKLOAD;

    if (kind != AZURE_CRED_IMDS && strncmp(authority, "https://", 8) != 0) {
        snprintf(err, errlen, "authority host must be an https:// URL (a credential goes there)");
        return ROTOR_ECONFIG;
    }
    if (kind != AZURE_CRED_IMDS && !tenant_ok(tenant)) {
        snprintf(err, errlen, "tenant id must be a GUID or a domain name");
        return ROTOR_ECONFIG;
    }
    if (strncmp(imds, "http://", 7) != 0 && strncmp(imds, "https://", 8) != 0) {
        snprintf(err, errlen, "IMDS endpoint must be an http:// or https:// URL");
        return ROTOR_ECONFIG;
    }

    azure_cred_t *c = util_calloc(1, sizeof *c);
    c->loop = loop;
    c->http = h;
    c->kind = kind;
    c->tenant = util_strdup(kind == AZURE_CRED_IMDS ? "" : tenant);
    c->client_id = util_strdup(client);
    c->secret = kind == AZURE_CRED_ENV ? util_strdup(secret) : NULL;
    c->token_file = kind == AZURE_CRED_WORKLOAD ? util_strdup(file) : NULL;
    c->authority = strip_slash(authority);
    c->imds = strip_slash(imds);
    c->ca_file = util_strdup(opts->ca_file);
    c->imds_backoff_ms = opts->imds_backoff_ms ? opts->imds_backoff_ms : 1000;
    c->kick = util_malloc(sizeof *c->kick);
    uv_timer_init(loop, c->kick);
    c->kick->data = c;
    *out = c;
    return 0;
}

static void on_timer_closed(uv_handle_t *h)
{
    free(h);
}

static void az_final_free(azure_cred_t *c)
{
    while (c->entries) {
        az_entry_t *e = c->entries;
        c->entries = e->next;
        if (e->retry)
            uv_close((uv_handle_t *)e->retry, on_timer_closed);
        wipe_str(e->token);
        free(e->scope);
        free(e->tenant);
        free(e);
    }
    uv_close((uv_handle_t *)c->kick, on_timer_closed);
    free(c->tenant);
    free(c->client_id);
    wipe_str(c->secret);
    free(c->token_file);
    free(c->authority);
    free(c->imds);
    free(c->ca_file);
    free(c);
}

void azure_cred_free(azure_cred_t *c)
{
    if (!c || c->freeing)
        return;
    c->freeing = true;
    c->busy++;
    for (az_entry_t *e = c->entries; e; e = e->next) {
        if (e->req) {
            http_cancel(e->req); /* settles e with ROTOR_ECANCELED */
        } else if (e->read) {
            e->read->e = NULL;
            uv_cancel((uv_req_t *)&e->read->work);
            e->read = NULL;
            entry_settle(e, ROTOR_ECANCELED, NULL, 0, "canceled");
        } else if (e->fetching) { /* waiting out an IMDS backoff */
            if (e->retry)
                uv_timer_stop(e->retry);
            entry_settle(e, ROTOR_ECANCELED, NULL, 0, "canceled");
        }
    }
    uv_timer_stop(c->kick);
    az_delivery_t *d = c->deliveries;
    c->deliveries = NULL;
    while (d) {
        az_delivery_t *next = d->next;
        d->cb(d->arg, ROTOR_ECANCELED, NULL, 0, "canceled");
        wipe_str(d->token);
        free(d);
        d = next;
    }
    c->busy--;
    maybe_final_free(c);
}
