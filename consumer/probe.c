/* probe.c: http and sql probes on the loop: each probe retries on its own timer and counts
 * consecutive successes (probe_run) or consecutive failures (probe_watch, the soak). */
#include "probe.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "db.h"
#include "log.h"
#include "rotor.h"
#include "util.h"

#define PROBE_EXTRA_TRIES 4 /* a probe gives up after successes + this many tries */
#define PROBE_DEFAULT_TIMEOUT_MS 5000
#define PROBE_DEFAULT_QUERY "select 1"
#define PROBE_WHAT_MAX 512
#define PROBE_REASON_MAX (2 * PROBE_WHAT_MAX + 128) /* name, what, tail */

static const int probe_default_expect[] = {200};

/* One probe of the list; its timer spaces the tries (and bounds an sql try, which db.c does not).
 */
typedef struct {
    probe_req_t *req;
    const cfg_probe_t *cfg;
    uv_timer_t timer;
    http_req_t *http; /* the try in flight, or NULL */
    db_req_t *db;
    uint64_t try_started;
    int tries;
    int streak;   /* consecutive successes */
    int failures; /* consecutive failures */
    bool passed;
    bool timed_out;            /* the sql try was canceled by our own timer */
    char what[PROBE_WHAT_MAX]; /* what the last failed try saw */
} probe_one_t;

struct probe_req_s {
    uv_loop_t *loop;
    http_t *http;
    bool watch;
    probe_cb cb;
    void *arg;
    uv_timer_t timer; /* the watch's end, or the deferred pass of an empty list */
    probe_one_t *probes;
    size_t n, npassed;
    int open_handles;
    bool finished;
    int status;
    char reason[PROBE_REASON_MAX];
    /* sql probes */
    char *dsn, *role, *query;
    rotor_secret_t *password; /* wiped when freed */
};

static void on_probe_timer(uv_timer_t *t);

static int probe_successes(const cfg_probe_t *c)
{
    return c->successes > 0 ? c->successes : 1;
}

static uint64_t probe_timeout(const cfg_probe_t *c)
{
    return c->timeout_ms ? c->timeout_ms : PROBE_DEFAULT_TIMEOUT_MS;
}

/* "GET http://app/healthz" or "sql as app_blue", the name a reason starts with. */
static void probe_name(const probe_one_t *p, char *buf, size_t len)
{
    if (p->cfg->kind == PROBE_SQL)
        snprintf(buf, len, "sql as %s", p->req->role ? p->req->role : "?");
    else
        snprintf(buf, len, "%s %s", p->cfg->method ? p->cfg->method : "GET", p->cfg->url);
}

static void req_free(probe_req_t *r)
{
    free(r->probes);
    if (r->dsn)
        secret_wipe(r->dsn, strlen(r->dsn)); /* the admin DSN: it may hold a password */
    free(r->dsn);
    free(r->role);
    free(r->query);
    secret_free(r->password);
    free(r);
}

/* The callback runs only once every handle is closed, so the caller may close its loop in it. */
static void on_closed(uv_handle_t *h)
{
    probe_req_t *r = h->data;
    if (--r->open_handles > 0)
        return;
    r->cb(r->arg, r->status, r->status == 0 ? NULL : r->reason);
    req_free(r);
}

static void close_timer(probe_req_t *r, uv_timer_t *t)
{
    uv_timer_stop(t);
    t->data = r;
    uv_close((uv_handle_t *)t, on_closed);
}

/* Ends the request once; tries in flight are canceled (their callbacks see r->finished). */
static void req_finish(probe_req_t *r, int status, const char *reason)
{
    if (r->finished)
        return;
    r->finished = true;
    r->status = status;
    snprintf(r->reason, sizeof r->reason, "%s", reason ? reason : "");
    for (size_t i = 0; i < r->n; i++) {
        probe_one_t *p = &r->probes[i];
        if (p->http)
            http_cancel(p->http);
        if (p->db)
            db_cancel(p->db);
        close_timer(r, &p->timer);
    }
    close_timer(r, &r->timer);
}

static void fail_probe(probe_one_t *p, const char *tail)
{
    char name[PROBE_WHAT_MAX], reason[PROBE_REASON_MAX];
    probe_name(p, name, sizeof name);
    snprintf(reason, sizeof reason, "probe %s: %s %s", name, p->what, tail);
    req_finish(p->req, ROTOR_EFAIL, reason);
}

/* Spaces tries interval_ms apart, start to start, never overlapping. */
static void schedule_next(probe_one_t *p)
{
    uint64_t elapsed = uv_now(p->req->loop) - p->try_started;
    uint64_t interval = p->cfg->interval_ms;
    uv_timer_start(&p->timer, on_probe_timer, elapsed < interval ? interval - elapsed : 0, 0);
}

static void on_try_run(probe_one_t *p, bool ok)
{
    probe_req_t *r = p->req;
    int need = probe_successes(p->cfg);
    p->streak = ok ? p->streak + 1 : 0;
    if (p->streak >= need) {
        p->passed = true;
        if (++r->npassed == r->n)
            req_finish(r, 0, NULL);
        return;
    }
    if (p->tries >= need + PROBE_EXTRA_TRIES) {
        char tail[64];
        snprintf(tail, sizeof tail, "after %d tries", p->tries);
        fail_probe(p, tail);
        return;
    }
    schedule_next(p);
}

static void on_try_watch(probe_one_t *p, bool ok)
{
    int limit = probe_successes(p->cfg) + PROBE_EXTRA_TRIES;
    p->failures = ok ? 0 : p->failures + 1;
    if (p->failures >= limit) {
        char tail[64];
        snprintf(tail, sizeof tail, "%d times in a row", p->failures);
        fail_probe(p, tail);
        return;
    }
    schedule_next(p);
}

/* The end of one try; `what` is set on failure. A try canceled by someone else ends the request. */
static void on_try_done(probe_one_t *p, int status, bool ok)
{
    probe_req_t *r = p->req;
    if (r->finished)
        return;
    uv_timer_stop(&p->timer);
    if (status == ROTOR_ECANCELED) {
        char name[PROBE_WHAT_MAX], reason[PROBE_REASON_MAX];
        probe_name(p, name, sizeof name);
        snprintf(reason, sizeof reason, "probe %s: canceled", name);
        req_finish(r, ROTOR_ECANCELED, reason);
        return;
    }
    if (!ok) {
        char name[PROBE_WHAT_MAX];
        probe_name(p, name, sizeof name);
        log_debug("probe.try.failed", "probe", name, "saw", p->what);
    }
    if (r->watch)
        on_try_watch(p, ok);
    else
        on_try_run(p, ok);
}

static bool status_expected(const cfg_probe_t *c, long status)
{
    const int *expect = c->nexpect ? c->expect : probe_default_expect;
    size_t n = c->nexpect ? c->nexpect : 1;
    for (size_t i = 0; i < n; i++)
        if (expect[i] == status)
            return true;
    return false;
}

/* "200" or "200, 204": the accepted statuses, for a reason. */
static void format_expect(const cfg_probe_t *c, char *buf, size_t len)
{
    const int *expect = c->nexpect ? c->expect : probe_default_expect;
    size_t n = c->nexpect ? c->nexpect : 1, used = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < n && used < len; i++) {
        int w = snprintf(buf + used, len - used, "%s%d", i ? ", " : "", expect[i]);
        used += w > 0 ? (size_t)w : 0;
    }
}

/* Copies curl's message without its " after N ms" timing, which reads as noise next to our own
 * "after 5 tries" ("Failed to connect to 127.0.0.1 port 8080: Couldn't connect to server"). */
static void tidy_transport_error(const char *msg, char *buf, size_t len)
{
    const char *cut = strstr(msg, " after ");
    size_t digits = cut ? strspn(cut + 7, "0123456789") : 0;
    if (!cut || digits == 0 || strncmp(cut + 7 + digits, " ms", 3) != 0) {
        snprintf(buf, len, "%s", msg);
        return;
    }
    snprintf(buf, len, "%.*s%s", (int)(cut - msg), msg, cut + 7 + digits + 3);
}

/* Judges a response; returns true on success, else describes it in p->what. */
static bool judge_http(probe_one_t *p, int status, const http_response_t *res)
{
    const cfg_probe_t *c = p->cfg;
    if (status == ROTOR_ETIMEOUT) {
        snprintf(p->what, sizeof p->what, "timed out after %llums",
                 (unsigned long long)probe_timeout(c));
        return false;
    }
    if (status != 0) {
        tidy_transport_error(res->error ? res->error : rotor_strerror(status), p->what,
                             sizeof p->what);
        return false;
    }
    if (!status_expected(c, res->status)) {
        char exp[128];
        format_expect(c, exp, sizeof exp);
        snprintf(p->what, sizeof p->what, "got %ld (expected %s)", res->status, exp);
        return false;
    }
    if (c->body_contains &&
        !memmem(res->body, res->body_len, c->body_contains, strlen(c->body_contains))) {
        snprintf(p->what, sizeof p->what, "got %ld without \"%.200s\" in the body", res->status,
                 c->body_contains);
        return false;
    }
    return true;
}

static void on_http(void *arg, int status, const http_response_t *res)
{
    probe_one_t *p = arg;
    p->http = NULL;
    if (p->req->finished)
        return;
    if (status == ROTOR_ECANCELED)
        on_try_done(p, status, false);
    else
        on_try_done(p, status, judge_http(p, status, res));
}

static void on_db(void *arg, int status, const char *reason, long count)
{
    (void)count;
    probe_one_t *p = arg;
    p->db = NULL;
    if (p->req->finished)
        return;
    if (p->timed_out) {
        p->timed_out = false;
        snprintf(p->what, sizeof p->what, "timed out after %llums",
                 (unsigned long long)probe_timeout(p->cfg));
        on_try_done(p, ROTOR_ETIMEOUT, false);
        return;
    }
    if (status != 0 && status != ROTOR_ECANCELED)
        snprintf(p->what, sizeof p->what, "%s", reason ? reason : rotor_strerror(status));
    on_try_done(p, status, status == 0);
}

static void on_sql_timeout(uv_timer_t *t)
{
    probe_one_t *p = t->data;
    p->timed_out = true;
    db_cancel(p->db); /* calls on_db from within */
}

static int start_http(probe_one_t *p)
{
    const cfg_probe_t *c = p->cfg;
    http_request_t hr = {
        .method = c->method ? c->method : "GET",
        .url = c->url,
        .ca_file = c->ca_file,
        .timeout_ms = probe_timeout(c),
        .connect_timeout_ms = probe_timeout(c),
        .service = "probe",
    };
    return http_send(p->req->http, &hr, on_http, p, &p->http);
}

static int start_sql(probe_one_t *p)
{
    probe_req_t *r = p->req;
    int rc = db_verify_login(r->loop, r->dsn, r->role, r->password, r->query, on_db, p, &p->db);
    if (rc == 0)
        uv_timer_start(&p->timer, on_sql_timeout, probe_timeout(p->cfg), 0);
    return rc;
}

/* One try. A try that cannot even start counts as a failed one. */
static void probe_try(probe_one_t *p)
{
    p->tries++;
    p->try_started = uv_now(p->req->loop);
    p->timer.data = p;
    int rc = p->cfg->kind == PROBE_SQL ? start_sql(p) : start_http(p);
    if (rc != 0) {
        p->http = NULL;
        p->db = NULL;
        snprintf(p->what, sizeof p->what, "cannot start: %s", rotor_strerror(rc));
        on_try_done(p, rc, false);
    }
}

static void on_probe_timer(uv_timer_t *t)
{
    probe_try(t->data);
}

static void on_req_timer(uv_timer_t *t)
{
    req_finish(t->data, 0, NULL);
}

static bool probes_valid(const cfg_probe_t *probes, size_t n, http_t *http, bool have_sql)
{
    if (n && !probes)
        return false;
    for (size_t i = 0; i < n; i++) {
        if (probes[i].kind == PROBE_HTTP && (!http || !probes[i].url))
            return false;
        if (probes[i].kind == PROBE_SQL && !have_sql)
            return false;
    }
    return true;
}

static probe_req_t *req_new(uv_loop_t *loop, http_t *http, const cfg_probe_t *probes, size_t n,
                            probe_cb cb, void *arg)
{
    probe_req_t *r = util_calloc(1, sizeof *r);
    r->loop = loop;
    r->http = http;
    r->cb = cb;
    r->arg = arg;
    r->n = n;
    r->probes = n ? util_calloc(n, sizeof *r->probes) : NULL;
    uv_timer_init(loop, &r->timer);
    r->timer.data = r;
    r->open_handles = 1;
    for (size_t i = 0; i < n; i++) {
        probe_one_t *p = &r->probes[i];
        p->req = r;
        p->cfg = &probes[i];
        uv_timer_init(loop, &p->timer);
        p->timer.data = p;
        r->open_handles++;
    }
    return r;
}

/* First tries go out from a zero timer, so no callback can run inside probe_run/probe_watch. */
static void req_start(probe_req_t *r, uint64_t end_ms)
{
    for (size_t i = 0; i < r->n; i++)
        uv_timer_start(&r->probes[i].timer, on_probe_timer, 0, 0);
    if (!r->watch && r->n)
        return;
    uv_timer_start(&r->timer, on_req_timer, end_ms, 0);
}

int probe_run(uv_loop_t *loop, http_t *http, const cfg_probe_t *probes, size_t n,
              const probe_sql_t *sql, probe_cb cb, void *arg, probe_req_t **out)
{
    bool have_sql = sql && sql->dsn && sql->role && sql->password && sql->password->buf;
    if (!loop || !cb || !out || !probes_valid(probes, n, http, have_sql))
        return ROTOR_EINVALID;
    probe_req_t *r = req_new(loop, http, probes, n, cb, arg);
    if (have_sql) {
        r->dsn = util_strdup(sql->dsn);
        r->role = util_strdup(sql->role);
        r->query = util_strdup(sql->query ? sql->query : PROBE_DEFAULT_QUERY);
        r->password = secret_from(sql->password->buf, sql->password->len);
    }
    req_start(r, 0);
    *out = r;
    return 0;
}

int probe_watch(uv_loop_t *loop, http_t *http, const cfg_probe_t *probes, size_t n,
                uint64_t duration_ms, probe_cb cb, void *arg, probe_req_t **out)
{
    /* The soak has no slot credentials to log in with: sql probes cannot be watched. */
    if (!loop || !cb || !out || !probes_valid(probes, n, http, false))
        return ROTOR_EINVALID;
    probe_req_t *r = req_new(loop, http, probes, n, cb, arg);
    r->watch = true;
    req_start(r, duration_ms);
    *out = r;
    return 0;
}

void probe_cancel(probe_req_t *r)
{
    if (r)
        req_finish(r, ROTOR_ECANCELED, "canceled");
}
