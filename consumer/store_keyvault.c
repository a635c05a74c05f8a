/* store_keyvault.c: the azure-keyvault secret store, Key Vault's secrets REST API (7.4) over
 * http.c. */
#include "store.h"
#include "store_keyvault_parse.h"

#include <ctype.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "backoff.h"
#include "log.h"
#include "rotor.h"
#include "util.h"

/*
 * Every operation is one kv_req_t that may take several HTTP requests: the challenge probe, the
 * authenticated request, retries after 429/5xx, and the pages of a version list. Each step after
 * the first is started from the request's own timer (0 ms when there is nothing to wait for), so
 * no callback ever runs inside the call that started the operation or inside close().
 *
 * What a vault shares between the stores that use it (the challenge and the write limiter) lives
 * in a small registry keyed by loop and vault URL. Everything runs on the loop thread.
 */

#define KV_API "api-version=7.4"
#define KV_MAX_NAME 127
#define KV_MAX_VERSION 64
#define KV_MAX_TRIES 5  /* attempts of one HTTP request before the operation fails */
#define KV_MAX_PROBES 3 /* challenges read by one operation (a vault that keeps saying 401) */
#define KV_BACKOFF_MS 500
#define KV_BACKOFF_MAX_MS 30000
#define KV_RETRY_AFTER_MAX_MS 120000
#define KV_MAX_LIMIT 300 /* Key Vault's published limit of secret writes per 10 s and vault */
/* Key Vault counts a write when it arrives; rotor cannot see that, but a write has surely arrived
 * once its response is back. So a write holds a slot from the moment it is sent and is stamped
 * when its response arrives: however slow the network, two writes `limit` apart reach the vault
 * at least a window apart. The margin covers the difference between the two clocks' rates. */
#ifndef KV_WINDOW_MS
#define KV_WINDOW_MS 10000
#endif
#define KV_WINDOW_MARGIN_MS 250

typedef enum { KV_FIND, KV_PUT, KV_GET, KV_CURRENT, KV_DISABLE, KV_WRITE_CURRENT } kv_op_t;

typedef struct kv_req_s kv_req_t;

typedef struct kv_vault_s {
    struct kv_vault_s *next;
    uv_loop_t *loop;
    char *url;  /* without a trailing slash */
    char *host; /* lower case, for the challenge's resource check */
    int refs;
    /* The challenge: the token's tenant and scope, NULL until a 401 told them. */
    char *tenant, *scope;
    /* Sliding-window log of the last writes' answer times (uv_now), oldest first, and the
     * writes sent and not answered yet: together at most `limit`. */
    int limit;
    uint64_t stamps[KV_MAX_LIMIT];
    int nstamps;
    int inflight;
    kv_req_t *qhead, *qtail; /* writes waiting for the window, FIFO */
    uv_timer_t timer;
} kv_vault_t;

typedef struct {
    store_t base;
    kv_vault_t *vault;
    http_t *http;
    azure_cred_t *cred;
    kv_req_t *reqs; /* pending operations */
    bool closed;
} kv_store_t;

/* A growable buffer that wipes what it leaves behind (request bodies carry passwords). */
typedef struct {
    char *p;
    size_t len, cap;
} kv_buf_t;

struct kv_req_s {
    kv_store_t *s;
    kv_req_t *prev, *next; /* in s->reqs */
    kv_req_t *qnext;       /* in the vault's write queue */
    kv_op_t op;
    const char *method;
    char *url;
    kv_buf_t body;
    bool write;    /* PUT or PATCH: goes through the limiter */
    bool queued;   /* waiting in the limiter */
    bool slot;     /* holds a slot of the limiter until its answer (or its end) */
    bool authed;   /* the attempt in flight carries a token */
    bool reauthed; /* a 401 already dropped the token once */
    bool canceled; /* the store closed, or ops->cancel: nothing more is sent */
    bool token_pending;
    int tries, probes;
    http_req_t *http;
    uv_timer_t timer;
    char name[KV_MAX_NAME + 1];
    char *rotation_id;
    /* find: the newest match so far */
    char out_version[KV_MAX_VERSION + 1];
    int64_t best_created;
    char reason[512];
    union {
        store_version_cb version;
        store_value_cb value;
        store_done_cb done;
    } cb;
    void *arg;
    int64_t deadline_ms; /* epoch ms; 0 = none */
};

static kv_vault_t *kv_vaults;

static void kv_attempt(kv_req_t *r);

/* ---- small helpers ---- */

static void kv_buf_add(kv_buf_t *b, const char *data, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = util_malloc(cap);
        if (b->p) {
            memcpy(p, b->p, b->len);
            secret_wipe(b->p, b->cap);
            free(b->p);
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, data, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void kv_buf_str(kv_buf_t *b, const char *s)
{
    kv_buf_add(b, s, strlen(s));
}

/* Appends s as a JSON string by hand: jansson would leave unwiped copies of a password. */
static void kv_buf_json_string(kv_buf_t *b, const char *s, size_t n)
{
    char esc[8];
    kv_buf_add(b, "\"", 1);
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\')
            continue;
        kv_buf_add(b, s + run, i - run);
        if (c == '"' || c == '\\')
            snprintf(esc, sizeof esc, "\\%c", c);
        else
            snprintf(esc, sizeof esc, "\\u%04x", c);
        kv_buf_str(b, esc);
        run = i + 1;
    }
    kv_buf_add(b, s + run, n - run);
    kv_buf_add(b, "\"", 1);
    secret_wipe(esc, sizeof esc);
}

static void kv_buf_free(kv_buf_t *b)
{
    if (b->p) {
        secret_wipe(b->p, b->cap);
        free(b->p);
    }
    memset(b, 0, sizeof *b);
}

/* Key Vault's rule for object names: 1-127 of 0-9a-zA-Z-. */
static bool kv_name_valid(const char *name)
{
    size_t n = name ? strlen(name) : 0;
    if (n == 0 || n > KV_MAX_NAME)
        return false;
    for (size_t i = 0; i < n; i++) {
        if (!isalnum((unsigned char)name[i]) && name[i] != '-')
            return false;
    }
    return true;
}

/* Version ids go into URLs: letters and digits only (Key Vault's are 32 hex digits). */
static bool kv_version_valid(const char *v)
{
    size_t n = v ? strlen(v) : 0;
    if (n == 0 || n > KV_MAX_VERSION)
        return false;
    for (size_t i = 0; i < n; i++) {
        if (!isalnum((unsigned char)v[i]))
            return false;
    }
    return true;
}

/* The host of an https URL, lower case, without port (caller frees), or NULL. */
static char *kv_url_host(const char *url)
{
    if (!url || strncasecmp(url, "https://", 8) != 0)
        return NULL;
    const char *h = url + 8;
    size_t n = strcspn(h, ":/?#");
    if (n == 0 || memchr(h, '@', n))
        return NULL;
    char *host = util_malloc(n + 1);
    for (size_t i = 0; i < n; i++)
        host[i] = (char)tolower((unsigned char)h[i]);
    host[n] = '\0';
    return host;
}

/* ---- the vault registry ---- */

static kv_vault_t *kv_vault_get(uv_loop_t *loop, const char *url, int limit)
{
    size_t n = strlen(url);
    while (n > 0 && url[n - 1] == '/')
        n--;
    if (limit < 1 || limit > KV_MAX_LIMIT)
        limit = KV_MAX_LIMIT;
    for (kv_vault_t *v = kv_vaults; v; v = v->next) {
        if (v->loop == loop && strlen(v->url) == n && strncasecmp(v->url, url, n) == 0) {
            v->refs++;
            /* Two configs for one vault: the stricter limit holds for both. */
            if (limit < v->limit)
                v->limit = limit;
            return v;
        }
    }
    kv_vault_t *v = util_calloc(1, sizeof *v);
    v->loop = loop;
    v->url = util_malloc(n + 1);
    memcpy(v->url, url, n);
    v->url[n] = '\0';
    v->host = kv_url_host(v->url);
    v->refs = 1;
    v->limit = limit;
    uv_timer_init(loop, &v->timer);
    v->timer.data = v;
    v->next = kv_vaults;
    kv_vaults = v;
    return v;
}

static void kv_vault_forget_challenge(kv_vault_t *v)
{
    free(v->tenant);
    free(v->scope);
    v->tenant = v->scope = NULL;
}

static void kv_vault_closed(uv_handle_t *h)
{
    kv_vault_t *v = h->data;
    kv_vault_forget_challenge(v);
    free(v->url);
    free(v->host);
    free(v);
}

static void kv_vault_put(kv_vault_t *v)
{
    if (--v->refs > 0)
        return;
    for (kv_vault_t **p = &kv_vaults; *p; p = &(*p)->next) {
        if (*p == v) {
            *p = v->next;
            break;
        }
    }
    uv_close((uv_handle_t *)&v->timer, kv_vault_closed);
}

/* ---- the write limiter ---- */

static uint64_t kv_window(void)
{
    return KV_WINDOW_MS + KV_WINDOW_MARGIN_MS;
}

/* Takes a slot in the window if one is free. */
static bool kv_limiter_take(kv_vault_t *v)
{
    uint64_t now = uv_now(v->loop);
    int drop = 0;
    while (drop < v->nstamps && v->stamps[drop] + kv_window() <= now)
        drop++;
    if (drop > 0) {
        memmove(v->stamps, v->stamps + drop, (size_t)(v->nstamps - drop) * sizeof v->stamps[0]);
        v->nstamps -= drop;
    }
    if (v->nstamps + v->inflight >= v->limit)
        return false;
    v->inflight++;
    return true;
}

static void kv_fetch_token(kv_req_t *r);

static void kv_limiter_pump(kv_vault_t *v);

static void kv_on_limiter_timer(uv_timer_t *t)
{
    kv_limiter_pump(t->data);
}

static void kv_limiter_pump(kv_vault_t *v)
{
    while (v->qhead && kv_limiter_take(v)) {
        kv_req_t *r = v->qhead;
        v->qhead = r->qnext;
        if (!v->qhead)
            v->qtail = NULL;
        r->qnext = NULL;
        r->queued = false;
        r->slot = true;
        uv_timer_stop(&r->timer); /* its deadline watch (kv_limiter_enqueue) */
        kv_fetch_token(r);
    }
    if (v->qhead && v->nstamps > 0) {
        uint64_t now = uv_now(v->loop), at = v->stamps[0] + kv_window();
        uv_timer_start(&v->timer, kv_on_limiter_timer, at > now ? at - now : 0, 0);
    }
}

/* A write's answer came back (or it ended unsent): its slot becomes a stamp that expires one
 * window from now. Answers come in time order, so the log stays sorted. */
static void kv_limiter_release(kv_req_t *r)
{
    if (!r->slot)
        return;
    r->slot = false;
    kv_vault_t *v = r->s->vault;
    v->inflight--;
    v->stamps[v->nstamps++] = uv_now(v->loop);
    kv_limiter_pump(v);
}

static void kv_limiter_remove(kv_req_t *r);
static void kv_fail(kv_req_t *r, int status, const char *fmt, ...);

/* A write still waiting for the limiter at its deadline gives up: the wait counts as part of
 * the attempt, and a write sent later would land after the attempt ended. */
static void kv_on_limiter_deadline(uv_timer_t *t)
{
    kv_req_t *r = t->data;
    if (!r->queued)
        return;
    kv_limiter_remove(r);
    kv_fail(r, ROTOR_ETIMEOUT,
            "Key Vault: gave up: the attempt's deadline passed while waiting for the write "
            "limiter (%s %s)",
            r->method, r->name);
}

static void kv_limiter_enqueue(kv_req_t *r)
{
    kv_vault_t *v = r->s->vault;
    r->queued = true;
    if (v->qtail)
        v->qtail->qnext = r;
    else
        v->qhead = r;
    v->qtail = r;
    kv_limiter_pump(v);
    if (r->queued && r->deadline_ms) {
        int64_t left = r->deadline_ms - util_now_ms();
        uv_timer_start(&r->timer, kv_on_limiter_deadline, left > 0 ? (uint64_t)left : 0, 0);
    }
}

static void kv_limiter_remove(kv_req_t *r)
{
    kv_vault_t *v = r->s->vault;
    kv_req_t *prev = NULL;
    for (kv_req_t *q = v->qhead; q; prev = q, q = q->qnext) {
        if (q != r)
            continue;
        if (prev)
            prev->qnext = q->qnext;
        else
            v->qhead = q->qnext;
        if (v->qtail == q)
            v->qtail = prev;
        break;
    }
    r->qnext = NULL;
    r->queued = false;
}

/* ---- request life cycle ---- */

static void kv_store_maybe_free(kv_store_t *s)
{
    if (!s->closed || s->reqs)
        return;
    kv_vault_put(s->vault);
    free(s);
}

static void kv_req_closed(uv_handle_t *h)
{
    kv_req_t *r = h->data;
    kv_buf_free(&r->body);
    free(r->url);
    free(r->rotation_id);
    free(r);
}

/* Calls the operation's callback once and releases the request. */
static void kv_finish(kv_req_t *r, int status, rotor_secret_t *value)
{
    const char *reason = status < 0 ? r->reason : NULL;
    const char *version = status == 0 && r->out_version[0] ? r->out_version : NULL;
    switch (r->op) {
    case KV_FIND:
    case KV_PUT:
    case KV_CURRENT:
        r->cb.version(r->arg, status, version, reason);
        break;
    case KV_GET:
        r->cb.value(r->arg, status, status == 0 ? value : NULL, version, reason);
        if (status < 0)
            secret_free(value);
        break;
    case KV_DISABLE:
    case KV_WRITE_CURRENT:
        r->cb.done(r->arg, status, reason);
        break;
    }
    kv_limiter_release(r); /* a write that ended without an answer (no token, say) */
    kv_store_t *s = r->s;
    if (r->prev)
        r->prev->next = r->next;
    else
        s->reqs = r->next;
    if (r->next)
        r->next->prev = r->prev;
    uv_close((uv_handle_t *)&r->timer, kv_req_closed);
    kv_store_maybe_free(s);
}

static void kv_fail(kv_req_t *r, int status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->reason, sizeof r->reason, fmt, ap);
    va_end(ap);
    kv_finish(r, status, NULL);
}

static void kv_on_timer(uv_timer_t *t)
{
    kv_req_t *r = t->data;
    if (r->canceled)
        kv_fail(r, ROTOR_ECANCELED, "canceled");
    else if (r->deadline_ms && util_now_ms() >= r->deadline_ms)
        kv_fail(r, ROTOR_ETIMEOUT, "Key Vault: gave up: the attempt's deadline (%s %s)", r->method,
                r->name);
    else
        kv_attempt(r);
}

static void kv_next(kv_req_t *r, uint64_t delay_ms)
{
    uv_timer_start(&r->timer, kv_on_timer, delay_ms, 0);
}

/* ---- responses ---- */

void kv_answer_error(const http_response_t *res, char *buf, size_t len)
{
    json_t *o = res->body_len ? json_loadb(res->body, res->body_len, 0, NULL) : NULL;
    json_t *e = json_object_get(o, "error");
    const char *code = json_string_value(json_object_get(e, "code"));
    const char *msg = json_string_value(json_object_get(e, "message"));
    if (code)
        snprintf(buf, len, "Key Vault: %s: %s", code, msg ? msg : "(no message)");
    else
        snprintf(buf, len, "Key Vault: HTTP %ld", res->status);
    json_decref(o);
    util_utf8_trim(buf); /* a long message is cut at the buffer's end, maybe mid-character */
}

static void kv_fail_response(kv_req_t *r, int status, const http_response_t *res)
{
    char why[400];
    kv_answer_error(res, why, sizeof why);
    kv_fail(r, status, "%s (%s %s)", why, r->method, r->name);
}

bool kv_answer_disabled(const http_response_t *res)
{
    json_t *o = json_loadb(res->body, res->body_len, 0, NULL);
    json_t *inner = json_object_get(json_object_get(o, "error"), "innererror");
    const char *code = json_string_value(json_object_get(inner, "code"));
    bool disabled = code && strcmp(code, "SecretDisabled") == 0;
    json_decref(o);
    return disabled;
}

/* The version id: the last segment of a bundle's "id". */
static bool kv_version_of(json_t *bundle, char *out, size_t len)
{
    const char *id = json_string_value(json_object_get(bundle, "id"));
    const char *slash = id ? strrchr(id, '/') : NULL;
    if (!slash || !kv_version_valid(slash + 1))
        return false;
    util_strlcpy(out, slash + 1, len);
    return true;
}

/* The body parsed; the value's copy inside jansson is wiped before it is freed. */
static json_t *kv_parse(const http_response_t *res)
{
    return json_loadb(res->body ? res->body : "", res->body_len, 0, NULL);
}

static void kv_json_free(json_t *o)
{
    json_t *v = json_object_get(o, "value");
    if (json_is_string(v))
        secret_wipe((char *)json_string_value(v), json_string_length(v));
    json_decref(o);
}

int kv_answer_bundle(const http_response_t *res, char *version, size_t versionlen,
                     rotor_secret_t **value)
{
    json_t *o = kv_parse(res);
    json_t *v = json_object_get(o, "value");
    int rc = 0;
    if (!kv_version_of(o, version, versionlen) || (value && !json_is_string(v)))
        rc = ROTOR_ESTORE;
    else if (value)
        *value = secret_from(json_string_value(v), json_string_length(v));
    kv_json_free(o);
    return rc;
}

static void kv_finish_bundle(kv_req_t *r, const http_response_t *res, bool want_value)
{
    rotor_secret_t *secret = NULL;
    if (kv_answer_bundle(res, r->out_version, sizeof r->out_version, want_value ? &secret : NULL) <
        0) {
        kv_fail(r, ROTOR_ESTORE, "Key Vault: malformed secret bundle (%s %s)", r->method, r->name);
        return;
    }
    kv_finish(r, 0, secret);
}

int kv_answer_list(const http_response_t *res, const char *rotation_id, const char *vault_url,
                   char *version, size_t versionlen, int64_t *best_created, char **next_link)
{
    *next_link = NULL;
    json_t *o = kv_parse(res);
    json_t *items = json_object_get(o, "value"), *it;
    size_t i;
    json_array_foreach(items, i, it)
    {
        json_t *attrs = json_object_get(it, "attributes");
        const char *rot =
            json_string_value(json_object_get(json_object_get(it, "tags"), "rotation"));
        int64_t created = json_integer_value(json_object_get(attrs, "created"));
        char v[KV_MAX_VERSION + 1];
        /* The list has no order Key Vault promises: newest by creation, later ones on ties. */
        if (json_is_true(json_object_get(attrs, "enabled")) && rot &&
            strcmp(rot, rotation_id) == 0 && kv_version_of(it, v, sizeof v) &&
            (!version[0] || created >= *best_created)) {
            *best_created = created;
            util_strlcpy(version, v, versionlen);
        }
    }
    const char *next = json_string_value(json_object_get(o, "nextLink"));
    size_t ulen = strlen(vault_url);
    int rc = 0;
    if (next && *next) {
        /* The next page gets our token: it must be this vault's list, nowhere else. */
        bool ours =
            strncasecmp(next, vault_url, ulen) == 0 && next[ulen] == '/' && !strpbrk(next, " \r\n");
        if (ours)
            *next_link = util_strdup(next);
        else
            rc = ROTOR_ESTORE;
    }
    json_decref(o);
    return rc;
}

static void kv_on_find_page(kv_req_t *r, const http_response_t *res)
{
    if (res->status == 404) {
        kv_finish(r, 0, NULL); /* no such secret: nothing to reuse */
        return;
    }
    if (res->status != 200) {
        kv_fail_response(r, ROTOR_ESTORE, res);
        return;
    }
    char *next = NULL;
    if (kv_answer_list(res, r->rotation_id, r->s->vault->url, r->out_version, sizeof r->out_version,
                       &r->best_created, &next) < 0) {
        kv_fail(r, ROTOR_ESTORE, "Key Vault: nextLink points outside the vault (list %s)", r->name);
        return;
    }
    if (next) {
        free(r->url);
        r->url = next;
        r->tries = 0;
        kv_next(r, 0);
        return;
    }
    kv_finish(r, 0, NULL);
}

static void kv_on_result(kv_req_t *r, const http_response_t *res)
{
    long code = res->status;
    switch (r->op) {
    case KV_FIND:
        kv_on_find_page(r, res);
        return;
    case KV_PUT:
    case KV_WRITE_CURRENT:
        if (code == 200)
            kv_finish_bundle(r, res, false);
        else
            kv_fail_response(r, ROTOR_ESTORE, res);
        return;
    case KV_GET:
        if (code == 200)
            kv_finish_bundle(r, res, true);
        else if (code == 404 || (code == 403 && kv_answer_disabled(res)))
            kv_fail_response(r, ROTOR_ENOTFOUND, res);
        else
            kv_fail_response(r, ROTOR_ESTORE, res);
        return;
    case KV_CURRENT:
        /* A disabled latest version is what a reader cannot read: no current value. */
        if (code == 200)
            kv_finish_bundle(r, res, false);
        else if (code == 404 || (code == 403 && kv_answer_disabled(res)))
            kv_finish(r, 0, NULL);
        else
            kv_fail_response(r, ROTOR_ESTORE, res);
        return;
    case KV_DISABLE:
        if (code == 200 || code == 404)
            kv_finish(r, 0, NULL);
        else
            kv_fail_response(r, ROTOR_ESTORE, res);
        return;
    }
}

/* ---- challenge-based authentication ---- */

/* The value of key="..." (or key=token) in a WWW-Authenticate header (caller frees), or NULL. */
static char *kv_auth_param(const char *h, const char *key)
{
    size_t klen = strlen(key);
    for (const char *p = h; (p = strcasestr(p, key)) != NULL; p += klen) {
        bool start = p == h || p[-1] == ' ' || p[-1] == ',';
        const char *q = p + klen;
        while (*q == ' ')
            q++;
        if (!start || *q != '=')
            continue;
        q++;
        while (*q == ' ')
            q++;
        bool quoted = *q == '"';
        if (quoted)
            q++;
        size_t n = quoted ? strcspn(q, "\"") : strcspn(q, ", ");
        char *out = util_malloc(n + 1);
        memcpy(out, q, n);
        out[n] = '\0';
        return out;
    }
    return NULL;
}

int kv_answer_challenge(const char *www, const char *vault_host, const char *method,
                        const char *name, char **tenant_out, char **scope_out, char *reason,
                        size_t reasonlen)
{
    *tenant_out = *scope_out = NULL;
    char *authz = www ? kv_auth_param(www, "authorization") : NULL;
    if (!authz && www)
        authz = kv_auth_param(www, "authorization_uri");
    char *scope = www ? kv_auth_param(www, "scope") : NULL;
    char *resource = www ? kv_auth_param(www, "resource") : NULL;
    const char *target = scope ? scope : resource;
    char *rhost = kv_url_host(target);
    const char *tenant = authz ? strrchr(authz, '/') : NULL;
    size_t hl = vault_host ? strlen(vault_host) : 0, rl = rhost ? strlen(rhost) : 0;
    /* The token is good for whatever the resource names: send it only to a host inside it. */
    bool inside = rhost && vault_host && hl >= rl && strcmp(vault_host + hl - rl, rhost) == 0 &&
                  (hl == rl || vault_host[hl - rl - 1] == '.');
    int rc = 0;
    if (!www || strncasecmp(www, "Bearer", 6) != 0 || !tenant || !tenant[1] || !target) {
        snprintf(reason, reasonlen,
                 "Key Vault: unauthorized without a usable Bearer challenge (%s %s)", method, name);
        rc = ROTOR_ESTORE;
    } else if (!inside) {
        snprintf(reason, reasonlen,
                 "Key Vault: the challenge's resource %s is not the vault's domain %s; no token "
                 "sent",
                 target, vault_host ? vault_host : "?");
        util_utf8_trim(reason); /* the header's bytes need not be UTF-8 */
        rc = ROTOR_ESTORE;
    } else {
        *tenant_out = util_strdup(tenant + 1);
        size_t sl = strlen(target);
        if (scope) {
            *scope_out = util_strdup(scope);
        } else {
            *scope_out = util_malloc(sl + sizeof "/.default");
            while (sl > 0 && target[sl - 1] == '/')
                sl--;
            snprintf(*scope_out, sl + sizeof "/.default", "%.*s/.default", (int)sl, target);
        }
    }
    free(authz);
    free(scope);
    free(resource);
    free(rhost);
    return rc;
}

/* Reads a challenge into the vault. Returns 0, or ROTOR_ESTORE with r->reason. */
static int kv_read_challenge(kv_req_t *r, const char *www)
{
    kv_vault_t *v = r->s->vault;
    char *tenant, *scope;
    int rc = kv_answer_challenge(www, v->host, r->method, r->name, &tenant, &scope, r->reason,
                                 sizeof r->reason);
    if (rc < 0)
        return rc;
    kv_vault_forget_challenge(v);
    v->tenant = tenant;
    v->scope = scope;
    return 0;
}

static void kv_on_unauthorized(kv_req_t *r, const http_response_t *res)
{
    kv_vault_t *v = r->s->vault;
    if (r->authed) {
        if (r->reauthed) {
            kv_fail_response(r, ROTOR_ESTORE, res);
            return;
        }
        /* The token expired or was revoked: fetch a new one, after re-reading the challenge. */
        r->reauthed = true;
        if (v->scope)
            azure_token_invalidate(r->s->cred, v->scope);
        kv_vault_forget_challenge(v);
        kv_next(r, 0);
        return;
    }
    if (++r->probes > KV_MAX_PROBES) {
        kv_fail_response(r, ROTOR_ESTORE, res);
        return;
    }
    if (kv_read_challenge(r, res->www_authenticate) < 0) {
        kv_finish(r, ROTOR_ESTORE, NULL);
        return;
    }
    kv_next(r, 0);
}

/* ---- sending ---- */

static void kv_retry(kv_req_t *r, int status, const http_response_t *res, const char *why)
{
    snprintf(r->reason, sizeof r->reason, "%s (%s %s)", why, r->method, r->name);
    if (++r->tries >= KV_MAX_TRIES) {
        kv_finish(r, status == ROTOR_ETIMEOUT ? ROTOR_ETIMEOUT : ROTOR_ESTORE, NULL);
        return;
    }
    int64_t now = util_now_ms();
    uint64_t delay = http_retry_after_ms(res, now);
    if (delay > KV_RETRY_AFTER_MAX_MS)
        delay = KV_RETRY_AFTER_MAX_MS;
    if (delay == 0)
        delay = backoff_delay(r->tries, KV_BACKOFF_MS, KV_BACKOFF_MAX_MS, 0);
    if (r->deadline_ms && now + (int64_t)delay >= r->deadline_ms) {
        /* The retry would begin after the attempt ended: a write then could land after another
         * attempt's (a version the database never receives), or after this process lost the
         * secret. Fail now with the last error. */
        size_t n = strlen(r->reason);
        snprintf(r->reason + n, sizeof r->reason - n, "; gave up: the attempt's deadline");
        kv_finish(r, status == ROTOR_ETIMEOUT ? ROTOR_ETIMEOUT : ROTOR_ESTORE, NULL);
        return;
    }
    char ms[24];
    snprintf(ms, sizeof ms, "%llu", (unsigned long long)delay);
    log_warn("store.keyvault.retry", "secret", r->name, "method", r->method, "reason", r->reason,
             "delay_ms", ms);
    kv_next(r, delay);
}

static void kv_on_http(void *arg, int status, const http_response_t *res)
{
    kv_req_t *r = arg;
    r->http = NULL;
    kv_limiter_release(r);
    if (r->canceled || status == ROTOR_ECANCELED) {
        r->canceled = true;
        kv_next(r, 0);
        return;
    }
    if (status < 0) {
        char why[300];
        snprintf(why, sizeof why, "Key Vault: %s",
                 res->error && *res->error ? res->error : rotor_strerror(status));
        /* A PUT lost in transit may have been written: not retried here, so a second version
         * is never created blindly; the stage's retry finds the first one by its tag. */
        if (r->op == KV_PUT && r->authed) {
            snprintf(r->reason, sizeof r->reason, "%s (%s %s; outcome unknown)", why, r->method,
                     r->name);
            kv_finish(r, status == ROTOR_ETIMEOUT ? ROTOR_ETIMEOUT : ROTOR_ESTORE, NULL);
            return;
        }
        kv_retry(r, status, res, why);
        return;
    }
    if (res->status == 401) {
        kv_on_unauthorized(r, res);
        return;
    }
    if (res->status == 429 || res->status >= 500) {
        char why[400];
        kv_answer_error(res, why, sizeof why);
        kv_retry(r, 0, res, why);
        return;
    }
    if (!r->authed && r->body.len) {
        kv_fail(r, ROTOR_ESTORE,
                "Key Vault: answered HTTP %ld to an unauthenticated %s; expected a challenge (%s)",
                res->status, r->method, r->name);
        return;
    }
    kv_on_result(r, res);
}

/* Sends the request; without a token it is the challenge probe, and carries no body. */
static void kv_send(kv_req_t *r, const char *token)
{
    const cfg_secret_t *cfg = r->s->base.cfg;
    kv_buf_t auth = {0};
    const char *headers[4] = {"Accept: application/json", NULL, NULL, NULL};
    int nh = 1;
    r->authed = token != NULL;
    if (token) {
        kv_buf_str(&auth, "Authorization: Bearer ");
        kv_buf_str(&auth, token);
        headers[nh++] = auth.p;
    }
    if (token && r->body.len)
        headers[nh++] = "Content-Type: application/json";
    /* No request outlives the deadline (kv_on_timer checked that some time is left). */
    uint64_t timeout = cfg->store.timeout_ms ? cfg->store.timeout_ms : 30000;
    if (r->deadline_ms) {
        int64_t left = r->deadline_ms - util_now_ms();
        if (left < 1)
            left = 1;
        if ((uint64_t)left < timeout)
            timeout = (uint64_t)left;
    }
    http_request_t req = {
        .method = r->method,
        .url = r->url,
        .headers = headers,
        .body = token ? r->body.p : NULL,
        .body_len = token ? r->body.len : 0,
        .ca_file = cfg->store.ca_file,
        .timeout_ms = timeout,
        .connect_timeout_ms = cfg->store.connect_timeout_ms,
        .resolve = cfg->store.resolve,
        .service = "keyvault",
    };
    int rc = http_send(r->s->http, &req, kv_on_http, r, &r->http);
    kv_buf_free(&auth);
    if (rc < 0)
        kv_fail(r, rc == ROTOR_ECANCELED ? rc : ROTOR_ESTORE, "Key Vault: cannot send %s %s: %s",
                r->method, r->name, rotor_strerror(rc));
}

static void kv_on_token(void *arg, int status, const char *token, int64_t expires_on_ms,
                        const char *reason)
{
    (void)expires_on_ms;
    kv_req_t *r = arg;
    r->token_pending = false;
    if (r->canceled) {
        kv_fail(r, ROTOR_ECANCELED, "canceled");
        return;
    }
    if (status < 0) {
        kv_fail(r, ROTOR_ESTORE, "Entra ID: %s (%s %s)", reason ? reason : rotor_strerror(status),
                r->method, r->name);
        return;
    }
    kv_send(r, token);
}

static void kv_fetch_token(kv_req_t *r)
{
    kv_vault_t *v = r->s->vault;
    if (!v->scope) {
        kv_send(r, NULL); /* a 401 dropped the challenge while this write waited */
        return;
    }
    r->token_pending = true;
    int rc = azure_token(r->s->cred, v->scope, v->tenant, kv_on_token, r);
    if (rc < 0) {
        r->token_pending = false;
        kv_fail(r, ROTOR_ESTORE, "Entra ID: cannot request a token: %s (%s %s)", rotor_strerror(rc),
                r->method, r->name);
    }
}

static void kv_attempt(kv_req_t *r)
{
    kv_vault_t *v = r->s->vault;
    if (!v->scope)
        kv_send(r, NULL);
    else if (r->write)
        kv_limiter_enqueue(r);
    else
        kv_fetch_token(r);
}

/* ---- operations ---- */

static kv_req_t *kv_req_new(store_t *base, kv_op_t op, const char *method, const char *name,
                            const char *suffix, void *arg, int64_t deadline_ms, store_req_t **out)
{
    kv_store_t *s = (kv_store_t *)base;
    kv_req_t *r = util_calloc(1, sizeof *r);
    r->s = s;
    r->op = op;
    r->method = method;
    r->write = strcmp(method, "PUT") == 0 || strcmp(method, "PATCH") == 0;
    util_strlcpy(r->name, name, sizeof r->name);
    size_t n = strlen(s->vault->url) + strlen(name) + strlen(suffix) + 64;
    r->url = util_malloc(n);
    snprintf(r->url, n, "%s/secrets/%s%s", s->vault->url, name, suffix);
    r->arg = arg;
    r->deadline_ms = deadline_ms;
    if (out)
        *out = (store_req_t *)r;
    uv_timer_init(base->loop, &r->timer);
    r->timer.data = r;
    r->next = s->reqs;
    if (s->reqs)
        s->reqs->prev = r;
    s->reqs = r;
    kv_next(r, 0); /* callbacks never run inside the operation's own call */
    return r;
}

static bool kv_usable(store_t *base, const char *name)
{
    return !((kv_store_t *)base)->closed && kv_name_valid(name);
}

static int kv_find(store_t *s, const char *name, const char *rotation_id, store_version_cb cb,
                   void *arg, int64_t deadline_ms, store_req_t **out)
{
    if (!kv_usable(s, name) || !rotation_id || !cb)
        return ROTOR_EINVALID;
    kv_req_t *r = kv_req_new(s, KV_FIND, "GET", name, "/versions?" KV_API "&maxresults=25", arg,
                             deadline_ms, out);
    r->rotation_id = util_strdup(rotation_id);
    r->cb.version = cb;
    return 0;
}

/* {"value":..., "contentType":..., "tags":{...}, "attributes":{...}}: only the value is written
 * by hand, into a buffer that is wiped. */
static void kv_body(kv_buf_t *b, const rotor_secret_t *value, const char *content_type,
                    json_t *tags, int64_t exp_ms)
{
    json_t *rest = json_object();
    json_object_set_new(rest, "contentType", json_string(content_type));
    json_object_set_new(rest, "tags", tags);
    json_t *attrs = json_object();
    json_object_set_new(attrs, "enabled", json_true());
    if (exp_ms > 0)
        json_object_set_new(attrs, "exp", json_integer(exp_ms / 1000));
    json_object_set_new(rest, "attributes", attrs);
    char *tail = json_dumps(rest, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(rest);
    kv_buf_str(b, "{\"value\":");
    kv_buf_json_string(b, value->buf, value->len);
    kv_buf_str(b, ",");
    kv_buf_str(b, tail + 1); /* tail is "{...}": splice its members after the value */
    free(tail);
}

static int kv_put(store_t *s, const char *name, const rotor_secret_t *value,
                  const store_tags_t *tags, int64_t exp_ms, store_version_cb cb, void *arg,
                  int64_t deadline_ms, store_req_t **out)
{
    if (!kv_usable(s, name) || !value || !value->buf || !cb)
        return ROTOR_EINVALID;
    json_t *t = json_object();
    if (tags && tags->rotation_id)
        json_object_set_new(t, "rotation", json_string(tags->rotation_id));
    if (tags && tags->slot)
        json_object_set_new(t, "slot", json_string(tags->slot));
    if (tags && tags->role)
        json_object_set_new(t, "role", json_string(tags->role));
    json_object_set_new(t, "managed-by", json_string("rotor"));
    const char *ct = s->cfg->store.content_type ? s->cfg->store.content_type : "text/plain";
    kv_req_t *r = kv_req_new(s, KV_PUT, "PUT", name, "?" KV_API, arg, deadline_ms, out);
    kv_body(&r->body, value, ct, t, exp_ms);
    r->cb.version = cb;
    return 0;
}

static int kv_get(store_t *s, const char *name, const char *version, store_value_cb cb, void *arg,
                  int64_t deadline_ms, store_req_t **out)
{
    if (!kv_usable(s, name) || (version && !kv_version_valid(version)) || !cb)
        return ROTOR_EINVALID;
    char suffix[KV_MAX_VERSION + 32];
    snprintf(suffix, sizeof suffix, "/%s?" KV_API, version ? version : "");
    kv_req_t *r = kv_req_new(s, KV_GET, "GET", name, suffix, arg, deadline_ms, out);
    r->cb.value = cb;
    return 0;
}

static int kv_current(store_t *s, const char *name, store_version_cb cb, void *arg,
                      int64_t deadline_ms, store_req_t **out)
{
    if (!kv_usable(s, name) || !cb)
        return ROTOR_EINVALID;
    kv_req_t *r = kv_req_new(s, KV_CURRENT, "GET", name, "/?" KV_API, arg, deadline_ms, out);
    r->cb.version = cb;
    return 0;
}

static int kv_disable(store_t *s, const char *name, const char *version, store_done_cb cb,
                      void *arg, int64_t deadline_ms, store_req_t **out)
{
    if (!kv_usable(s, name) || !kv_version_valid(version) || !cb)
        return ROTOR_EINVALID;
    char suffix[KV_MAX_VERSION + 32];
    snprintf(suffix, sizeof suffix, "/%s?" KV_API, version);
    kv_req_t *r = kv_req_new(s, KV_DISABLE, "PATCH", name, suffix, arg, deadline_ms, out);
    kv_buf_str(&r->body, "{\"attributes\":{\"enabled\":false}}");
    r->cb.done = cb;
    return 0;
}

static int kv_write_current(store_t *s, const char *name, const rotor_secret_t *value,
                            store_done_cb cb, void *arg, int64_t deadline_ms, store_req_t **out)
{
    if (!kv_usable(s, name) || !value || !value->buf || !cb)
        return ROTOR_EINVALID;
    json_t *t = json_object();
    json_object_set_new(t, "managed-by", json_string("rotor"));
    kv_req_t *r = kv_req_new(s, KV_WRITE_CURRENT, "PUT", name, "?" KV_API, arg, deadline_ms, out);
    kv_body(&r->body, value, "application/json", t, 0);
    r->cb.done = cb;
    return 0;
}

/* The operation completes with ROTOR_ECANCELED on a later loop turn and sends nothing more:
 * the HTTP request in flight is aborted, a retry timer or a wait for the limiter is stopped (a
 * token request in flight is awaited, as azure_auth cannot cancel one, and then nothing is
 * sent). */
static void kv_cancel_req(kv_req_t *r)
{
    if (r->canceled)
        return;
    r->canceled = true;
    if (r->queued)
        kv_limiter_remove(r);
    if (r->http)
        http_cancel(r->http); /* kv_on_http schedules the callback */
    else if (!r->token_pending)
        kv_next(r, 0);
}

static void kv_cancel(store_t *base, store_req_t *req)
{
    (void)base;
    kv_cancel_req((kv_req_t *)req);
}

/* Pending operations complete with ROTOR_ECANCELED on later loop turns; the memory goes with the
 * last of them. */
static void kv_close(store_t *base)
{
    kv_store_t *s = (kv_store_t *)base;
    s->closed = true;
    for (kv_req_t *r = s->reqs; r; r = r->next)
        kv_cancel_req(r);
    kv_store_maybe_free(s);
}

static const store_ops_t store_keyvault_ops = {
    .find = kv_find,
    .put = kv_put,
    .get = kv_get,
    .current = kv_current,
    .disable = kv_disable,
    .write_current = kv_write_current,
    .cancel = kv_cancel,
    .close = kv_close,
};

int store_keyvault_open(uv_loop_t *loop, const cfg_secret_t *sec, const store_deps_t *deps,
                        store_t **out, char *err, size_t errlen)
{
    const char *who = sec->name ? sec->name : "?";
    char *host = kv_url_host(sec->store.vault_url);
    free(host);
    if (!host) {
        snprintf(err, errlen, "secret %s: store.vault_url must be an https URL", who);
        return ROTOR_ECONFIG;
    }
    if (!deps || !deps->http || !deps->cred) {
        snprintf(err, errlen,
                 "secret %s: the azure-keyvault store needs HTTP and an Entra ID "
                 "credential",
                 who);
        return ROTOR_ECONFIG;
    }
    const char *names[] = {sec->store.names[0], sec->store.names[1], sec->store.current};
    for (size_t i = 0; i < 3; i++) {
        if ((i < 2 || names[i]) && !kv_name_valid(names[i])) {
            snprintf(err, errlen, "secret %s: Key Vault secret name %s is not 1-127 of 0-9a-zA-Z-",
                     who, names[i] ? names[i] : "(unset)");
            return ROTOR_ECONFIG;
        }
    }
    kv_store_t *s = util_calloc(1, sizeof *s);
    s->base.ops = &store_keyvault_ops;
    s->base.loop = loop;
    s->base.cfg = sec;
    s->http = deps->http;
    s->cred = deps->cred;
    s->vault = kv_vault_get(loop, sec->store.vault_url, sec->store.writes_per_10s);
    *out = &s->base;
    return 0;
}
