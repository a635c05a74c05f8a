/* deploy_kubernetes.c: the kubernetes deploy driver: a Deployment per slot and Services that
 * select a slot by label, driven over the API server's REST interface on the loop. */
#include "deploy.h"
#include "deploy_kubernetes_parse.h"

#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backoff.h"
#include "log.h"
#include "rotor.h"
#include "secret.h"
#include "util.h"

#define K8S_SA_DIR "/var/run/secrets/kubernetes.io/serviceaccount"
#define K8S_MAX_TOKEN 16384 /* projected tokens are ~1 KiB; bound the read all the same */
#define K8S_MAX_NS 256
#define K8S_MAX_CONFLICTS 5 /* 409s re-read and retried per patch */
#define K8S_MAX_TRANSIENT 8 /* consecutive 429/5xx/transport failures per call */
#define K8S_BACKOFF_INITIAL_MS 200
#define K8S_BACKOFF_MAX_MS 10000
#define K8S_DEFAULT_POLL_MS 1000
#define K8S_MAX_STEPS 8
#define K8S_REASON_LEN 512
#define K8S_CFG(sec) ((sec)->deploy.kubernetes)

typedef struct {
    deploy_t base;
    http_t *http;
    char *api;        /* https://host:port, no trailing slash */
    char *token_file; /* re-read for every request: the kubelet rotates it */
    char *ca_file;
    char *ns;
} k8s_t;

typedef enum {
    K8S_PATCH,       /* send a patch; a 409 re-reads the object and patches again */
    K8S_ROLLOUT,     /* poll a Deployment until rolled out as `kubectl rollout status` says */
    K8S_SCALED_DOWN, /* poll a Deployment until it has no pods */
    K8S_ENDPOINTS,   /* poll a Service's Endpoints until only the slot's pods are ready in it */
    K8S_OBSERVE,     /* read the production Service's slot */
} k8s_step_kind_t;

typedef struct {
    k8s_step_kind_t kind;
    char *path;        /* API path of the object (endpoints: of the Service's Endpoints) */
    char *name;        /* the object's name, for reasons */
    char *body;        /* patch body */
    const char *ctype; /* patch content type */
} k8s_step_t;

typedef struct k8s_read_s k8s_read_t;

struct deploy_req_s {
    k8s_t *k;
    const char *action; /* static */
    char *rotation_id;
    rotor_slot_t slot;
    deploy_cb cb;
    deploy_observe_cb observe_cb; /* set instead of cb for observe */
    void *arg;

    k8s_step_t steps[K8S_MAX_STEPS];
    int nsteps, cur;
    int phase; /* within a step: patch 0 = patch, 1 = re-read; endpoints 0 = endpoints, 1 = pods */

    /* The call in flight (or to be repeated after a delay). */
    const char *method;
    char *path;
    const char *body, *ctype;
    k8s_read_t *read; /* token read on the threadpool */
    http_req_t *http;
    uv_timer_t timer; /* poll interval and retry delays */

    int conflicts, transient;
    bool unauthorized_retried;
    json_t *endpoints; /* between an Endpoints read and the pods read that judges it */

    bool canceled, finished;
    int status, observed;
    char reason[K8S_REASON_LEN];
};

struct k8s_read_s {
    uv_work_t work;
    deploy_req_t *req; /* NULL once the request no longer waits for it */
    char *path;
    char *data;
    size_t len;
    int err;
};

static void k8s_send(deploy_req_t *req);
static void k8s_step_start(deploy_req_t *req);

/* ---- finishing ---------------------------------------------------------------------------- */

static void k8s_req_free(deploy_req_t *req)
{
    for (int i = 0; i < req->nsteps; i++) {
        free(req->steps[i].path);
        free(req->steps[i].name);
        free(req->steps[i].body);
    }
    json_decref(req->endpoints);
    free(req->path);
    free(req->rotation_id);
    free(req);
}

static void k8s_on_closed(uv_handle_t *h)
{
    deploy_req_t *req = h->data;
    const char *why = req->status < 0 ? req->reason : NULL;
    if (req->observe_cb)
        req->observe_cb(req->arg, req->status, req->status < 0 ? -1 : req->observed, why);
    else
        req->cb(req->arg, req->status, why);
    k8s_req_free(req);
}

/* The callback runs from the timer's close callback: always later, never inside the caller. */
static void k8s_finish(deploy_req_t *req, int status, const char *reason)
{
    if (req->finished)
        return;
    req->finished = true;
    req->status = status;
    if (status < 0)
        util_strlcpy(req->reason, reason ? reason : rotor_strerror(status), sizeof req->reason);
    uv_timer_stop(&req->timer);
    uv_close((uv_handle_t *)&req->timer, k8s_on_closed);
}

static void k8s_fail(deploy_req_t *req, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void k8s_fail(deploy_req_t *req, int status, const char *fmt, ...)
{
    char reason[K8S_REASON_LEN];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(reason, sizeof reason, fmt, ap);
    va_end(ap);
    k8s_finish(req, status, reason);
}

/* ---- the token, read on the threadpool for every request --------------------------------- */

static void k8s_read_work(uv_work_t *w)
{
    k8s_read_t *r = w->data;
    r->err = util_read_token_file(r->path, r->data, K8S_MAX_TOKEN, &r->len);
}

static void k8s_read_free(k8s_read_t *r)
{
    secret_wipe(r->data, K8S_MAX_TOKEN + 1);
    free(r->data);
    free(r->path);
    free(r);
}

static void k8s_on_http(void *arg, int status, const http_response_t *res);

static void k8s_read_done(uv_work_t *w, int status)
{
    k8s_read_t *r = w->data;
    deploy_req_t *req = r->req;
    if (!req) { /* canceled meanwhile */
        k8s_read_free(r);
        return;
    }
    req->read = NULL;
    if (status < 0 || r->err) {
        k8s_fail(req, ROTOR_ECONFIG, "kubernetes: cannot read the token file %s: %s",
                 req->k->token_file, status < 0 ? uv_strerror(status) : strerror(-r->err));
        k8s_read_free(r);
        return;
    }
    size_t alen = r->len + 32;
    char *auth = util_malloc(alen);
    snprintf(auth, alen, "Authorization: Bearer %s", r->data);
    char ctype[96] = "";
    if (req->ctype)
        snprintf(ctype, sizeof ctype, "Content-Type: %s", req->ctype);
    const char *headers[] = {auth, "Accept: application/json", "User-Agent: rotor/" ROTOR_VERSION,
                             req->ctype ? ctype : NULL, NULL};
    size_t ulen = strlen(req->k->api) + strlen(req->path) + 1;
    char *url = util_malloc(ulen);
    snprintf(url, ulen, "%s%s", req->k->api, req->path);
    http_request_t hr = {
        .method = req->method,
        .url = url,
        .headers = headers,
        .body = req->body,
        .body_len = req->body ? strlen(req->body) : 0,
        .ca_file = req->k->ca_file,
        .service = "kubernetes",
    };
    int rc = http_send(req->k->http, &hr, k8s_on_http, req, &req->http);
    secret_wipe(auth, alen);
    free(auth);
    free(url);
    k8s_read_free(r);
    if (rc < 0)
        k8s_fail(req, rc, "kubernetes: %s %s: cannot send the request: %s", req->method, req->path,
                 rotor_strerror(rc));
}

/* Sends (or sends again) the call in req->method/path/body, after reading the token. */
static void k8s_send(deploy_req_t *req)
{
    k8s_read_t *r = util_calloc(1, sizeof *r);
    r->path = util_strdup(req->k->token_file);
    r->data = util_malloc(K8S_MAX_TOKEN + 1);
    r->req = req;
    r->work.data = r;
    int rc = uv_queue_work(req->k->base.loop, &r->work, k8s_read_work, k8s_read_done);
    if (rc < 0) {
        k8s_read_free(r);
        k8s_fail(req, rc, "kubernetes: cannot queue the token read: %s", uv_strerror(rc));
        return;
    }
    req->read = r;
}

static void k8s_call(deploy_req_t *req, const char *method, const char *path, const char *body,
                     const char *ctype)
{
    req->method = method;
    free(req->path);
    req->path = util_strdup(path);
    req->body = body;
    req->ctype = ctype;
    req->transient = 0;
    req->unauthorized_retried = false;
    k8s_send(req);
}

/* ---- answers ------------------------------------------------------------------------------ */

void k8s_status_reason(const char *method, const char *path, const http_response_t *res, char *out,
                       size_t len)
{
    json_t *o = res->body_len ? json_loadb(res->body, res->body_len, 0, NULL) : NULL;
    const char *kind = json_string_value(json_object_get(o, "kind"));
    const char *reason = json_string_value(json_object_get(o, "reason"));
    const char *msg = json_string_value(json_object_get(o, "message"));
    if (kind && strcmp(kind, "Status") == 0 && msg)
        snprintf(out, len, "kubernetes: %ld %s: %s", res->status, reason ? reason : "Failure", msg);
    else
        snprintf(out, len, "kubernetes: %s %s: HTTP %ld", method, path, res->status);
    json_decref(o);
    util_utf8_trim(out); /* a long message is cut at the buffer's end, maybe mid-character */
}

static void k8s_on_timer(uv_timer_t *t)
{
    deploy_req_t *req = t->data;
    k8s_send(req);
}

static void k8s_retry_later(deploy_req_t *req, uint64_t ms)
{
    uv_timer_start(&req->timer, k8s_on_timer, ms, 0);
}

/* 429, 5xx and transport failures: wait (the server's Retry-After when larger) and send again. */
static void k8s_transient(deploy_req_t *req, const http_response_t *res, int code, const char *why)
{
    if (++req->transient > K8S_MAX_TRANSIENT) {
        k8s_fail(req, code, "%s (gave up after %d tries)", why, K8S_MAX_TRANSIENT + 1);
        return;
    }
    uint64_t hint = res->status ? http_retry_after_ms(res, util_now_ms()) : 0;
    uint64_t ms = backoff_delay(req->transient, K8S_BACKOFF_INITIAL_MS, K8S_BACKOFF_MAX_MS, hint);
    char status[16], delay[32];
    snprintf(status, sizeof status, "%ld", res->status);
    util_format_duration(ms, delay, sizeof delay);
    log_warn("deploy.kubernetes.retry", "action", req->action, "rotation_id", req->rotation_id,
             "method", req->method, "path", req->path, "status", status, "delay", delay, "error",
             why);
    k8s_retry_later(req, ms);
}

static void k8s_on_ok(deploy_req_t *req, json_t *o);

static void k8s_on_http(void *arg, int status, const http_response_t *res)
{
    deploy_req_t *req = arg;
    req->http = NULL;
    char why[K8S_REASON_LEN];
    if (req->canceled || status == ROTOR_ECANCELED) {
        k8s_finish(req, ROTOR_ECANCELED, "kubernetes: canceled");
        return;
    }
    if (status < 0) {
        snprintf(why, sizeof why, "kubernetes: %s %s: %s", req->method, req->path,
                 res->error ? res->error : rotor_strerror(status));
        k8s_transient(req, res, status, why);
        return;
    }
    if (res->status >= 200 && res->status < 300) {
        json_t *o = json_loadb(res->body, res->body_len, 0, NULL);
        if (!json_is_object(o)) {
            json_decref(o);
            k8s_fail(req, ROTOR_EFAIL, "kubernetes: %s %s: the answer is not a JSON object",
                     req->method, req->path);
            return;
        }
        req->transient = 0;
        k8s_on_ok(req, o);
        json_decref(o);
        return;
    }
    k8s_status_reason(req->method, req->path, res, why, sizeof why);
    if (res->status == 401 && !req->unauthorized_retried) {
        /* The token may have rotated between our read and the server's check. */
        req->unauthorized_retried = true;
        k8s_send(req);
    } else if (res->status == 409 && req->steps[req->cur].kind == K8S_PATCH && req->phase == 0 &&
               ++req->conflicts <= K8S_MAX_CONFLICTS) {
        log_info("deploy.kubernetes.conflict", "action", req->action, "rotation_id",
                 req->rotation_id, "path", req->path, "note", "re-reading and patching again");
        req->phase = 1;
        k8s_call(req, "GET", req->steps[req->cur].path, NULL, NULL);
    } else if (res->status == 429 || res->status >= 500) {
        k8s_transient(req, res, ROTOR_EFAIL, why);
    } else {
        k8s_fail(req, res->status == 404 ? ROTOR_ENOTFOUND : ROTOR_EFAIL, "%s", why);
    }
}

/* ---- steps -------------------------------------------------------------------------------- */

static json_int_t k8s_int(const json_t *o, const char *a, const char *b)
{
    return json_integer_value(json_object_get(json_object_get(o, a), b));
}

static void k8s_next_step(deploy_req_t *req)
{
    req->cur++;
    req->phase = 0;
    req->conflicts = 0;
    if (req->cur == req->nsteps)
        k8s_finish(req, 0, NULL);
    else
        k8s_step_start(req);
}

static void k8s_poll_later(deploy_req_t *req)
{
    uint64_t ms = req->k->base.cfg->deploy.kubernetes.poll_ms;
    req->phase = 0;
    free(req->path);
    req->path = util_strdup(req->steps[req->cur].path);
    req->method = "GET";
    req->body = req->ctype = NULL;
    req->unauthorized_retried = false;
    k8s_retry_later(req, ms ? ms : K8S_DEFAULT_POLL_MS);
}

int k8s_rollout_state(const json_t *dep)
{
    const json_t *st = json_object_get(dep, "status");
    if (k8s_int(dep, "metadata", "generation") > k8s_int(dep, "status", "observedGeneration"))
        return 0;
    size_t i;
    json_t *c;
    json_array_foreach(json_object_get(st, "conditions"), i, c)
    {
        const char *type = json_string_value(json_object_get(c, "type"));
        const char *reason = json_string_value(json_object_get(c, "reason"));
        if (type && reason && strcmp(type, "Progressing") == 0 &&
            strcmp(reason, "ProgressDeadlineExceeded") == 0)
            return -1;
    }
    json_t *want = json_object_get(json_object_get(dep, "spec"), "replicas");
    json_int_t updated = k8s_int(dep, "status", "updatedReplicas");
    if (json_is_integer(want) && updated < json_integer_value(want))
        return 0;
    if (k8s_int(dep, "status", "replicas") > updated)
        return 0;
    return k8s_int(dep, "status", "availableReplicas") >= updated;
}

static void k8s_rollout_answer(deploy_req_t *req, json_t *dep)
{
    const k8s_step_t *s = &req->steps[req->cur];
    int state = k8s_rollout_state(dep);
    if (state < 0)
        k8s_fail(req, ROTOR_EFAIL, "rollout of %s exceeded its progress deadline", s->name);
    else if (state > 0)
        k8s_next_step(req);
    else
        k8s_poll_later(req);
}

bool k8s_scaled_down(const json_t *dep)
{
    bool observed =
        k8s_int(dep, "metadata", "generation") <= k8s_int(dep, "status", "observedGeneration");
    return observed && k8s_int(dep, "status", "replicas") == 0;
}

static void k8s_scaled_down_answer(deploy_req_t *req, json_t *dep)
{
    if (k8s_scaled_down(dep))
        k8s_next_step(req);
    else
        k8s_poll_later(req);
}

/* Percent-encodes s for a query value. */
static void k8s_query_escape(const char *s, char *out, size_t len)
{
    size_t o = 0;
    for (; *s && o + 4 < len; s++) {
        unsigned char c = (unsigned char)*s;
        if (isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~')
            out[o++] = (char)c;
        else
            o += (size_t)snprintf(out + o, len - o, "%%%02X", c);
    }
    out[o] = '\0';
}

static bool k8s_pod_listed(const json_t *pods, const char *name, const char *ip)
{
    size_t i;
    json_t *p;
    json_array_foreach(json_object_get(pods, "items"), i, p)
    {
        const char *n = json_string_value(json_object_get(json_object_get(p, "metadata"), "name"));
        const char *pip = json_string_value(json_object_get(json_object_get(p, "status"), "podIP"));
        if (name ? n && strcmp(n, name) == 0 : ip && pip && strcmp(ip, pip) == 0)
            return true;
    }
    return false;
}

bool k8s_endpoints_serve_slot(const json_t *ep, const json_t *pods)
{
    size_t i, j, n = 0;
    json_t *sub, *a;
    json_array_foreach(json_object_get(ep, "subsets"), i, sub)
    {
        json_array_foreach(json_object_get(sub, "addresses"), j, a)
        {
            json_t *ref = json_object_get(a, "targetRef");
            const char *name = json_string_value(json_object_get(ref, "name"));
            const char *kind = json_string_value(json_object_get(ref, "kind"));
            if (kind && strcmp(kind, "Pod") != 0)
                return false;
            if (!k8s_pod_listed(pods, name, json_string_value(json_object_get(a, "ip"))))
                return false;
            n++;
        }
    }
    return n > 0;
}

static void k8s_endpoints_answer(deploy_req_t *req, json_t *o)
{
    if (req->phase == 0) {
        json_decref(req->endpoints);
        req->endpoints = json_incref(o);
        const cfg_secret_t *cfg = req->k->base.cfg;
        char sel[256], esc[768], path[1024];
        snprintf(sel, sizeof sel, "%s=%s", cfg->deploy.kubernetes.slot_label,
                 rotor_slot_name(req->slot));
        k8s_query_escape(sel, esc, sizeof esc);
        snprintf(path, sizeof path, "/api/v1/namespaces/%s/pods?labelSelector=%s", req->k->ns, esc);
        req->phase = 1;
        k8s_call(req, "GET", path, NULL, NULL);
        return;
    }
    bool ok = k8s_endpoints_serve_slot(req->endpoints, o);
    json_decref(req->endpoints);
    req->endpoints = NULL;
    if (ok)
        k8s_next_step(req);
    else
        k8s_poll_later(req);
}

int k8s_observed_slot(const json_t *svc, const char *label)
{
    const json_t *sel = json_object_get(json_object_get(svc, "spec"), "selector");
    const char *v = json_string_value(json_object_get(sel, label));
    rotor_slot_t slot;
    return v && rotor_slot_parse(v, &slot) == 0 ? (int)slot : -1;
}

static void k8s_observe_answer(deploy_req_t *req, json_t *svc)
{
    req->observed = k8s_observed_slot(svc, req->k->base.cfg->deploy.kubernetes.slot_label);
    k8s_next_step(req);
}

static void k8s_on_ok(deploy_req_t *req, json_t *o)
{
    k8s_step_t *s = &req->steps[req->cur];
    switch (s->kind) {
    case K8S_PATCH:
        if (req->phase == 1) { /* re-read after a conflict: patch again */
            req->phase = 0;
            k8s_call(req, "PATCH", s->path, s->body, s->ctype);
        } else {
            log_info("deploy.kubernetes.patched", "action", req->action, "rotation_id",
                     req->rotation_id, "path", s->path);
            k8s_next_step(req);
        }
        return;
    case K8S_ROLLOUT:
        k8s_rollout_answer(req, o);
        return;
    case K8S_SCALED_DOWN:
        k8s_scaled_down_answer(req, o);
        return;
    case K8S_ENDPOINTS:
        k8s_endpoints_answer(req, o);
        return;
    case K8S_OBSERVE:
        k8s_observe_answer(req, o);
        return;
    }
}

static void k8s_step_start(deploy_req_t *req)
{
    const k8s_step_t *s = &req->steps[req->cur];
    if (s->kind == K8S_PATCH)
        k8s_call(req, "PATCH", s->path, s->body, s->ctype);
    else
        k8s_call(req, "GET", s->path, NULL, NULL);
}

/* ---- building actions --------------------------------------------------------------------- */

static char *k8s_path(const k8s_t *k, const char *fmt, const char *name)
{
    char buf[1024];
    snprintf(buf, sizeof buf, fmt, k->ns, name);
    return util_strdup(buf);
}

static const char *const K8S_DEPLOYMENT = "/apis/apps/v1/namespaces/%s/deployments/%s";
static const char *const K8S_SERVICE = "/api/v1/namespaces/%s/services/%s";
static const char *const K8S_ENDPOINTS_PATH = "/api/v1/namespaces/%s/endpoints/%s";

/* Takes ownership of body (a JSON object, dumped and released). */
static void k8s_add(deploy_req_t *req, k8s_step_kind_t kind, const char *fmt, const char *name,
                    json_t *body, const char *ctype)
{
    k8s_step_t *s = &req->steps[req->nsteps++];
    s->kind = kind;
    s->path = k8s_path(req->k, fmt, name);
    s->name = util_strdup(name);
    s->ctype = ctype;
    if (body) {
        s->body = json_dumps(body, JSON_COMPACT);
        if (!s->body)
            abort();
        json_decref(body);
    }
}

static json_t *k8s_replicas_patch(int replicas)
{
    return json_pack("{s:{s:i}}", "spec", "replicas", replicas);
}

static json_t *k8s_selector_patch(const char *label, rotor_slot_t slot)
{
    return json_pack("{s:{s:{s:s}}}", "spec", "selector", label, rotor_slot_name(slot));
}

/* Points production at slot (and stage at the other one), then waits for production's
 * endpoints to be slot's pods only. */
static void k8s_add_point(deploy_req_t *req, rotor_slot_t slot)
{
    const cfg_secret_t *cfg = req->k->base.cfg;
    const char *label = cfg->deploy.kubernetes.slot_label;
    const char *prod = cfg->deploy.kubernetes.service_production;
    const char *stage = cfg->deploy.kubernetes.service_stage;
    k8s_add(req, K8S_PATCH, K8S_SERVICE, prod, k8s_selector_patch(label, slot),
            "application/merge-patch+json");
    if (stage)
        k8s_add(req, K8S_PATCH, K8S_SERVICE, stage,
                k8s_selector_patch(label, rotor_slot_other(slot)), "application/merge-patch+json");
    k8s_add(req, K8S_ENDPOINTS, K8S_ENDPOINTS_PATH, prod, NULL, NULL);
}

static void k8s_add_scale_down(deploy_req_t *req, rotor_slot_t slot)
{
    const char *dep = req->k->base.cfg->deploy.kubernetes.deployments[slot];
    k8s_add(req, K8S_PATCH, K8S_DEPLOYMENT, dep, k8s_replicas_patch(0),
            "application/merge-patch+json");
    k8s_add(req, K8S_SCALED_DOWN, K8S_DEPLOYMENT, dep, NULL, NULL);
}

static deploy_req_t *k8s_req_new(deploy_t *d, const char *action, const deploy_ctx_t *ctx)
{
    deploy_req_t *req = util_calloc(1, sizeof *req);
    req->k = (k8s_t *)d;
    req->action = action;
    req->rotation_id = util_strdup(ctx && ctx->rotation_id ? ctx->rotation_id : "");
    req->slot = ctx ? ctx->slot : SLOT_BLUE;
    req->observed = -1;
    uv_timer_init(d->loop, &req->timer);
    req->timer.data = req;
    return req;
}

static int k8s_start(deploy_req_t *req, deploy_cb cb, void *arg, deploy_req_t **out)
{
    req->cb = cb;
    req->arg = arg;
    if (out)
        *out = req;
    k8s_step_start(req);
    return 0;
}

static bool k8s_bad_slot(const deploy_ctx_t *ctx)
{
    return !ctx || (ctx->slot != SLOT_BLUE && ctx->slot != SLOT_GREEN);
}

/* Never the secret value: the pod template carries the version id only, and its change is what
 * makes the Deployment roll its pods onto the new secret version. */
static int k8s_deploy(deploy_t *d, const deploy_ctx_t *ctx, deploy_cb cb, void *arg,
                      deploy_req_t **out)
{
    if (k8s_bad_slot(ctx))
        return ROTOR_EINVALID;
    const cfg_secret_t *cfg = d->cfg;
    deploy_req_t *req = k8s_req_new(d, "deploy", ctx);
    const char *dep = cfg->deploy.kubernetes.deployments[ctx->slot];
    json_t *patch = k8s_replicas_patch(cfg->deploy.kubernetes.replicas);
    if (ctx->version && ctx->version[0]) {
        json_t *tmpl = json_pack("{s:{s:{s:s}}}", "metadata", "annotations",
                                 cfg->deploy.kubernetes.annotation, ctx->version);
        json_object_set_new(json_object_get(patch, "spec"), "template", tmpl);
    }
    k8s_add(req, K8S_PATCH, K8S_DEPLOYMENT, dep, patch, "application/strategic-merge-patch+json");
    k8s_add(req, K8S_ROLLOUT, K8S_DEPLOYMENT, dep, NULL, NULL);
    return k8s_start(req, cb, arg, out);
}

static int k8s_swap(deploy_t *d, const deploy_ctx_t *ctx, deploy_cb cb, void *arg,
                    deploy_req_t **out)
{
    if (k8s_bad_slot(ctx))
        return ROTOR_EINVALID;
    deploy_req_t *req = k8s_req_new(d, "swap", ctx);
    k8s_add_point(req, ctx->slot);
    return k8s_start(req, cb, arg, out);
}

static int k8s_retire(deploy_t *d, const deploy_ctx_t *ctx, deploy_cb cb, void *arg,
                      deploy_req_t **out)
{
    if (k8s_bad_slot(ctx))
        return ROTOR_EINVALID;
    deploy_req_t *req = k8s_req_new(d, "retire", ctx);
    k8s_add_scale_down(req, ctx->slot);
    return k8s_start(req, cb, arg, out);
}

/* The old slot is made whole first (a no-op unless something scaled it down), then production
 * goes back; the other slot is scaled down only once nothing routes to it. */
static int k8s_rollback(deploy_t *d, const deploy_ctx_t *ctx, deploy_cb cb, void *arg,
                        deploy_req_t **out)
{
    if (k8s_bad_slot(ctx))
        return ROTOR_EINVALID;
    deploy_req_t *req = k8s_req_new(d, "rollback", ctx);
    const char *dep = d->cfg->deploy.kubernetes.deployments[ctx->slot];
    k8s_add(req, K8S_PATCH, K8S_DEPLOYMENT, dep,
            k8s_replicas_patch(d->cfg->deploy.kubernetes.replicas), "application/merge-patch+json");
    k8s_add(req, K8S_ROLLOUT, K8S_DEPLOYMENT, dep, NULL, NULL);
    k8s_add_point(req, ctx->slot);
    k8s_add_scale_down(req, rotor_slot_other(ctx->slot));
    return k8s_start(req, cb, arg, out);
}

static int k8s_observe(deploy_t *d, const deploy_ctx_t *ctx, deploy_observe_cb cb, void *arg,
                       deploy_req_t **out)
{
    deploy_req_t *req = k8s_req_new(d, "observe", ctx);
    req->observe_cb = cb;
    k8s_add(req, K8S_OBSERVE, K8S_SERVICE, d->cfg->deploy.kubernetes.service_production, NULL,
            NULL);
    return k8s_start(req, NULL, arg, out);
}

static void k8s_cancel(deploy_req_t *req)
{
    if (!req || req->finished)
        return;
    req->canceled = true;
    if (req->read) {
        /* The read may already run on a thread: its completion frees it, detached from us. */
        req->read->req = NULL;
        uv_cancel((uv_req_t *)&req->read->work);
        req->read = NULL;
    }
    if (req->http)
        http_cancel(req->http); /* k8s_on_http finishes the request */
    k8s_finish(req, ROTOR_ECANCELED, "kubernetes: canceled");
}

static void k8s_close(deploy_t *d)
{
    k8s_t *k = (k8s_t *)d;
    free(k->api);
    free(k->token_file);
    free(k->ca_file);
    free(k->ns);
    free(k);
}

static const deploy_ops_t k8s_ops = {
    .deploy = k8s_deploy,
    .swap = k8s_swap,
    .retire = k8s_retire,
    .rollback = k8s_rollback,
    .observe = k8s_observe,
    .cancel = k8s_cancel,
    .close = k8s_close,
};

/* ---- opening ------------------------------------------------------------------------------ */

/* The service account's namespace: a tiny file read once, at start-up, like the configuration. */
static char *k8s_sa_namespace(void)
{
    char buf[K8S_MAX_NS] = "";
    FILE *f = fopen(K8S_SA_DIR "/namespace", "re");
    if (f) {
        if (!fgets(buf, sizeof buf, f))
            buf[0] = '\0';
        fclose(f);
    }
    size_t n = strlen(buf);
    while (n && isspace((unsigned char)buf[n - 1]))
        buf[--n] = '\0';
    return util_strdup(n ? buf : "default");
}

static int k8s_in_cluster_url(char **out, char *err, size_t errlen, const char *name)
{
    const char *host = getenv("KUBERNETES_SERVICE_HOST");
    const char *port = getenv("KUBERNETES_SERVICE_PORT");
    if (!host || !host[0] || !port || !port[0]) {
        snprintf(err, errlen,
                 "secret %s: deploy.kubernetes.api_url is unset and KUBERNETES_SERVICE_HOST/PORT "
                 "are not in the environment (not in a cluster)",
                 name);
        return ROTOR_ECONFIG;
    }
    char buf[512];
    /* An IPv6 service address needs brackets in a URL. */
    snprintf(buf, sizeof buf, strchr(host, ':') ? "https://[%s]:%s" : "https://%s:%s", host, port);
    *out = util_strdup(buf);
    return 0;
}

int deploy_kubernetes_open(uv_loop_t *loop, const cfg_secret_t *sec, http_t *http, deploy_t **out,
                           char *err, size_t errlen)
{
    const char *name = sec->name ? sec->name : "?";
    *out = NULL;
    if (!http) {
        snprintf(err, errlen, "secret %s: deploy kind kubernetes needs the HTTP client", name);
        return ROTOR_ECONFIG;
    }
    if (!K8S_CFG(sec).deployments[SLOT_BLUE] || !K8S_CFG(sec).deployments[SLOT_GREEN] ||
        !K8S_CFG(sec).service_production || !K8S_CFG(sec).slot_label || !K8S_CFG(sec).annotation ||
        K8S_CFG(sec).replicas < 1) {
        snprintf(err, errlen,
                 "secret %s: deploy.kubernetes needs deployments.blue, deployments.green, "
                 "services.production, slot_label, annotation and replicas >= 1",
                 name);
        return ROTOR_ECONFIG;
    }
    char *api = NULL;
    if (K8S_CFG(sec).api_url && K8S_CFG(sec).api_url[0]) {
        api = util_strdup(K8S_CFG(sec).api_url);
        size_t n = strlen(api);
        while (n && api[n - 1] == '/')
            api[--n] = '\0';
    } else {
        int rc = k8s_in_cluster_url(&api, err, errlen, name);
        if (rc < 0)
            return rc;
    }
    k8s_t *k = util_calloc(1, sizeof *k);
    k->base.ops = &k8s_ops;
    k->base.loop = loop;
    k->base.cfg = sec;
    k->http = http;
    k->api = api;
    k->token_file =
        util_strdup(K8S_CFG(sec).token_file ? K8S_CFG(sec).token_file : K8S_SA_DIR "/token");
    k->ca_file = util_strdup(K8S_CFG(sec).ca_file ? K8S_CFG(sec).ca_file : K8S_SA_DIR "/ca.crt");
    k->ns = K8S_CFG(sec).namespace ? util_strdup(K8S_CFG(sec).namespace) : k8s_sa_namespace();
    *out = &k->base;
    return 0;
}
