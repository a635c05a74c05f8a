/* pg.c: asynchronous libpq on the libuv loop: resolve, connect and query without blocking.
 *
 * Every PQconnectPoll call of the connect phase runs on the libuv threadpool (uv_queue_work),
 * not on the loop: with SCRAM-SHA-256 authentication, the call that reads the server's first
 * SASL message computes the client proof, a PBKDF2 of the password with the server's iteration
 * count (4096 by default, about 3 ms of CPU here), and a TLS handshake costs about as much. In a
 * fleet of rotations that was half of the loop thread's time (docs/benchmarks.md). Every call of
 * every connection goes to the pool, not only those that authenticate by password: which call
 * computes the proof is libpq's business, the journal's and the admin's connections do SCRAM too,
 * and a handoff costs tens of microseconds against the milliseconds it saves.
 * A PGconn is not bound to a thread, but only one thread may touch it at a time: while a work item
 * runs, the connection has no uv_poll at all (the poll is closed before the work is queued, while
 * the socket is still the one it watches, and a new one is made for the socket libpq asks about
 * afterwards), nothing on the loop calls libpq on it, and a close or a deadline that happens
 * meanwhile leaves the PGconn to the after-work callback, which finishes and frees it.
 * The price: a step queues behind the pool's other work (UV_THREADPOOL_SIZE threads, 4 unless set;
 * set-db's hashes, the file store, host-name lookups that may wait for a slow resolver, Kafka's
 * metadata call), and the connect deadline counts that wait as the server's. */
#include "pg.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rotor.h"
#include "secret.h"
#include "util.h"

/* Addresses tried per host name: enough for dual-stack names, bounded for hostile resolvers. */
#define PGC_MAX_ADDRS 8

/* libpq ignores connect_timeout in PQconnectPoll: without a deadline of our own, a server that
 * accepts and never answers (a partition that blackholes, a firewall that lost its state) holds
 * the attempt forever. pgc_set_deadlines may change it. */
#define PGC_CONNECT_TIMEOUT_MS 30000

typedef enum {
    PGC_RESOLVING = 0,
    PGC_CONNECTING,
    PGC_READY,
    PGC_FAILED,
} pgc_state_t;

typedef struct pgc_query_s {
    struct pgc_query_s *next;
    char *sql;
    int nparams;
    char **params;
    pgc_result_cb cb;
    void *arg;
} pgc_query_t;

/* A uv_poll lives in its own allocation so an old one can finish closing after libpq has moved
 * to a new socket. */
typedef struct {
    uv_poll_t handle;
    pgc_conn_t *conn;
    int fd;
} pgc_poll_t;

/* One host entry after resolution: host (kept for TLS/SNI), hostaddr ("" = let libpq use host),
 * port ("" when the port list was not per host). */
typedef struct {
    char *host, *addr, *port;
} pgc_target_t;

struct pgc_conn_s {
    uv_loop_t *loop;
    PGconn *pg;
    pgc_state_t state;
    bool closing;
    bool connect_cb_done;
    bool flushing;
    bool in_connect;  /* inside pgc_connect: callbacks must wait for the timer */
    bool connect_err; /* a connect failure waiting for the timer */
    pgc_connect_cb connect_cb;
    void *connect_arg;

    char **keywords, **values; /* copies; values wiped on free (they may hold a password) */
    int nkw;

    pgc_target_t *targets; /* host list being resolved */
    int ntargets, resolve_next;
    bool per_host_ports;

    uv_timer_t timer;    /* defers callbacks out of API calls; its close frees the handle */
    uv_timer_t deadline; /* gives up a connect or a query the server does not answer */
    uint64_t connect_ms, query_ms; /* 0: no deadline */
    uv_getaddrinfo_t gai;
    bool gai_active;
    pgc_poll_t *poll;
    int handles;                       /* uv handles and requests not yet closed/completed */
    uv_work_t work;                    /* one PQconnectPoll on the threadpool */
    bool working;                      /* work queued or running: the loop must not touch pg */
    PostgresPollingStatusType work_st; /* its result, read in the after-work callback */

    pgc_query_t *head, *tail;
    bool inflight;
    PGresult *last;
    char *err;
};

static void conn_fail(pgc_conn_t *c, const char *msg);
static void conn_pump(pgc_conn_t *c);
static void on_timer(uv_timer_t *t);

static void set_err(pgc_conn_t *c, const char *msg)
{
    char *copy = util_strdup(msg ? msg : "unknown error");
    size_t n = strlen(copy);
    while (n > 0 && (copy[n - 1] == '\n' || copy[n - 1] == ' '))
        copy[--n] = '\0';
    free(c->err);
    c->err = copy;
}

static void wipe_free(char *s)
{
    if (s) {
        secret_wipe(s, strlen(s));
        free(s);
    }
}

static void query_free(pgc_query_t *q)
{
    wipe_free(q->sql);
    for (int i = 0; i < q->nparams; i++)
        wipe_free(q->params[i]);
    free(q->params);
    free(q);
}

static void targets_free(pgc_conn_t *c)
{
    for (int i = 0; i < c->ntargets; i++) {
        free(c->targets[i].host);
        free(c->targets[i].addr);
        free(c->targets[i].port);
    }
    free(c->targets);
    c->targets = NULL;
    c->ntargets = 0;
}

static void conn_free(pgc_conn_t *c)
{
    if (c->last)
        PQclear(c->last);
    if (c->pg)
        PQfinish(c->pg);
    for (int i = 0; i < c->nkw; i++) {
        free(c->keywords[i]);
        wipe_free(c->values[i]);
    }
    free(c->keywords);
    free(c->values);
    targets_free(c);
    free(c->err);
    free(c);
}

static void handle_released(pgc_conn_t *c)
{
    if (--c->handles == 0 && c->closing)
        conn_free(c);
}

static void on_poll_closed(uv_handle_t *h)
{
    pgc_poll_t *p = h->data;
    pgc_conn_t *c = p->conn;
    free(p);
    handle_released(c);
}

static void on_timer_closed(uv_handle_t *h)
{
    handle_released(h->data);
}

static void poll_close(pgc_conn_t *c)
{
    if (!c->poll)
        return;
    uv_close((uv_handle_t *)&c->poll->handle, on_poll_closed);
    c->poll = NULL;
}

static void poll_stop(pgc_conn_t *c)
{
    if (c->poll)
        uv_poll_stop(&c->poll->handle);
}

/* Watches PQsocket for events. A new socket (libpq moved on to another host) gets a new uv_poll;
 * the old one is closed first so its epoll registration is gone before the new one is added. */
static int poll_watch(pgc_conn_t *c, int events, uv_poll_cb cb)
{
    int fd = PQsocket(c->pg);
    if (fd < 0)
        return ROTOR_EDB;
    if (c->poll && c->poll->fd != fd)
        poll_close(c);
    if (!c->poll) {
        pgc_poll_t *p = util_calloc(1, sizeof *p);
        if (uv_poll_init(c->loop, &p->handle, fd) != 0) {
            free(p);
            return ROTOR_EDB;
        }
        p->handle.data = p;
        p->conn = c;
        p->fd = fd;
        c->poll = p;
        c->handles++;
    }
    return uv_poll_start(&c->poll->handle, events, cb) == 0 ? 0 : ROTOR_EDB;
}

static void deliver_connect(pgc_conn_t *c, int status)
{
    if (c->connect_cb_done)
        return;
    uv_timer_stop(&c->deadline);
    if (c->in_connect) {
        c->connect_err = true;
        uv_timer_start(&c->timer, on_timer, 0, 0);
        return;
    }
    c->connect_cb_done = true;
    if (c->connect_cb)
        c->connect_cb(c, status, c->connect_arg);
}

/* Pops the head query and completes it. The caller has cleared the in-flight state. */
static void query_complete(pgc_conn_t *c, PGresult *res, int status)
{
    pgc_query_t *q = c->head;
    c->head = q->next;
    if (!c->head)
        c->tail = NULL;
    q->cb(c, res, status, q->arg);
    query_free(q);
}

static void fail_all_queries(pgc_conn_t *c, int status)
{
    c->inflight = false;
    c->flushing = false;
    if (c->last) {
        PQclear(c->last);
        c->last = NULL;
    }
    while (c->head)
        query_complete(c, NULL, status);
}

/* The connection is unusable: every query queued or on the wire fails. */
static void conn_fail(pgc_conn_t *c, const char *msg)
{
    set_err(c, msg);
    c->state = PGC_FAILED;
    uv_timer_stop(&c->deadline);
    /* libpq may have closed the socket: drop its epoll registration before the number is
     * reused by another socket, which a later close of this poll would otherwise unregister. */
    poll_close(c);
    deliver_connect(c, ROTOR_EDB);
    if (!c->closing)
        fail_all_queries(c, ROTOR_EDB);
}

/* ---- connect-phase messages ----
 *
 * libpq's connect-phase messages quote what it read from the conninfo: its parser quotes the token
 * it stumbled on (`invalid percent-encoded token: "s3cr%ZZet"`), its option checks the value they
 * refused (`invalid integer value "pa" for connection option "port"`, from a URI whose password
 * held a "/"). Any of these may be a piece of a password, and the message goes on into the
 * journal, the events and the logs. So every quoted fragment is replaced by "***", except in the
 * lines that report a connection attempt or the server's answer (the host or socket libpq tried,
 * the role or database the server names: what an operator needs), libpq's own words (option
 * names, syntax characters) and a host name that looks like one. Last, any password of the
 * conninfo is blotted out wherever it still appears. */

#define PGC_REDACTED "***"

/* Quoted words of libpq's own (`missing "=" after`, `matching "]"`, `for connection option
 * "port"`): a syntax character or the name of a connection option. */
static bool quote_is_literal(const char *q, size_t n)
{
    if (n == 1 && strchr("=]:/", q[0]))
        return true;
    /* The option list without defaults: PQconndefaults would read the environment, the service
     * file and the password database. */
    PQconninfoOption *opts = PQconninfoParse("", NULL);
    bool keyword = false;
    for (PQconninfoOption *o = opts; o && o->keyword && !keyword; o++)
        keyword = strlen(o->keyword) == n && memcmp(o->keyword, q, n) == 0;
    PQconninfoFree(opts);
    return keyword;
}

/* A DNS name or an address: no character a password fragment would need to be noticed. */
static bool quote_is_host_name(const char *q, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)q[i]) && !strchr(".-_:[]%", q[i]))
            return false;
    return n > 0;
}

static bool starts(const char *line, const char *prefix)
{
    return strncmp(line, prefix, strlen(prefix)) == 0;
}

/* A line that reports a connection attempt or the server's answer, kept as it is. */
static bool line_is_attempt(const char *line, size_t n)
{
    static const char *const prefixes[] = {
        "connection to server ", "FATAL:", "ERROR:", "PANIC:", "DETAIL:", "HINT:"};
    for (size_t i = 0; i < sizeof prefixes / sizeof prefixes[0]; i++)
        if (starts(line, prefixes[i]))
            return true;
    return n > 0 && line[0] == '\t'; /* libpq's hint under an attempt */
}

/* Appends line (n bytes, without its newline) to out with the quotes it may not keep redacted. */
static char *redact_line(char *out, const char *line, size_t n)
{
    if (line_is_attempt(line, n)) {
        memcpy(out, line, n);
        return out + n;
    }
    bool host_line = starts(line, "could not translate host name ");
    const char *end = line + n;
    while (line < end) {
        const char *open = memchr(line, '"', (size_t)(end - line));
        const char *close = open ? memchr(open + 1, '"', (size_t)(end - open - 1)) : NULL;
        if (!close) {
            /* An unterminated quote hides the rest of the line. */
            size_t k = open ? (size_t)(open - line) + 1 : (size_t)(end - line);
            memcpy(out, line, k);
            out += k;
            if (open) {
                memcpy(out, PGC_REDACTED, strlen(PGC_REDACTED));
                out += strlen(PGC_REDACTED);
            }
            return out;
        }
        size_t k = (size_t)(open - line) + 1, qn = (size_t)(close - open - 1);
        memcpy(out, line, k);
        out += k;
        if (quote_is_literal(open + 1, qn) || (host_line && quote_is_host_name(open + 1, qn))) {
            memcpy(out, open + 1, qn);
            out += qn;
        } else {
            memcpy(out, PGC_REDACTED, strlen(PGC_REDACTED));
            out += strlen(PGC_REDACTED);
        }
        *out++ = '"';
        line = close + 1;
    }
    return out;
}

/* Replaces every occurrence of secret in s (in place: "***" is never longer than a secret of
 * three bytes or more; shorter ones are left alone, they would blot out ordinary words). */
static void blot(char *s, const char *secret)
{
    size_t n = secret ? strlen(secret) : 0, r = strlen(PGC_REDACTED);
    if (n < r)
        return;
    for (char *p = strstr(s, secret); p; p = strstr(p + r, secret)) {
        memcpy(p, PGC_REDACTED, r);
        memmove(p + r, p + n, strlen(p + n) + 1);
    }
}

/* PQconninfoFree leaves the values in freed memory: wipe them first (one is the password). */
static void conninfo_free(PQconninfoOption *opts)
{
    for (PQconninfoOption *o = opts; o && o->keyword; o++)
        if (o->val)
            secret_wipe(o->val, strlen(o->val));
    PQconninfoFree(opts);
}

static bool is_conninfo(const char *v)
{
    return strchr(v, '=') || strncmp(v, "postgresql://", 13) == 0 ||
           strncmp(v, "postgres://", 11) == 0;
}

char *pgc_redact_error(const char *msg, const char *const *keywords, const char *const *values)
{
    size_t len = msg ? strlen(msg) : 0;
    /* Worst case: a line that is one lone quote, `"` into `"***` (and `""` into `"***"`). */
    char *out = util_malloc(len * 4 + 1), *o = out;
    for (const char *line = msg; line && *line;) {
        const char *nl = strchr(line, '\n');
        size_t n = nl ? (size_t)(nl - line) : strlen(line);
        o = redact_line(o, line, n);
        if (nl)
            *o++ = '\n';
        line += n + (nl ? 1 : 0);
    }
    *o = '\0';
    for (int i = 0; keywords && values && keywords[i]; i++) {
        if (!values[i])
            continue;
        if (strcmp(keywords[i], "password") == 0)
            blot(out, values[i]);
        if (strcmp(keywords[i], "dbname") == 0 && is_conninfo(values[i])) {
            PQconninfoOption *opts = PQconninfoParse(values[i], NULL);
            for (PQconninfoOption *p = opts; p && p->keyword; p++)
                if (p->val && strcmp(p->keyword, "password") == 0)
                    blot(out, p->val);
            conninfo_free(opts);
        }
    }
    return out;
}

/* A connection could not be made: the reason, with nothing of the conninfo that may be secret. */
static void conn_fail_connect(pgc_conn_t *c)
{
    char *msg = pgc_redact_error(c->pg ? PQerrorMessage(c->pg) : NULL,
                                 (const char *const *)c->keywords, (const char *const *)c->values);
    conn_fail(c, *msg ? msg : "connection failed");
    secret_wipe(msg, strlen(msg));
    free(msg);
}

/* ---- connecting ---- */

static void on_connect_poll(uv_poll_t *h, int status, int events);

static void connect_step(pgc_conn_t *c, PostgresPollingStatusType st)
{
    int events;
    switch (st) {
    case PGRES_POLLING_OK:
        c->state = PGC_READY;
        deliver_connect(c, 0);
        conn_pump(c);
        return;
    case PGRES_POLLING_READING:
        events = UV_READABLE;
        break;
    case PGRES_POLLING_WRITING:
        events = UV_WRITABLE;
        break;
    default:
        conn_fail_connect(c);
        return;
    }
    if (poll_watch(c, events, on_connect_poll) != 0)
        conn_fail(c, "cannot watch the connection's socket");
}

static void connect_poll_work(uv_work_t *w)
{
    pgc_conn_t *c = w->data;
    c->work_st = PQconnectPoll(c->pg);
}

static void connect_poll_done(uv_work_t *w, int status)
{
    pgc_conn_t *c = w->data;
    c->working = false;
    /* Closed or given up meanwhile (status is UV_ECANCELED if the work never ran): the PGconn
     * is finished with the handle. */
    if (status == 0 && !c->closing && c->state != PGC_FAILED)
        connect_step(c, c->work_st);
    handle_released(c);
}

static void on_connect_poll(uv_poll_t *h, int status, int events)
{
    (void)status;
    (void)events;
    pgc_conn_t *c = ((pgc_poll_t *)h->data)->conn;
    /* Closed before libpq runs, while the socket is still the one it watches: on the pool thread
     * libpq may close it and open another, and the number may meanwhile be reused by a socket of
     * another connection that the loop watches; a later close would unregister that one. */
    poll_close(c);
    c->work.data = c;
    if (uv_queue_work(c->loop, &c->work, connect_poll_work, connect_poll_done) != 0) {
        connect_step(c, PQconnectPoll(c->pg)); /* cannot happen with valid callbacks */
        return;
    }
    c->working = true;
    c->handles++;
}

/* Appends the resolved host list after the caller's parameters, so it overrides both the
 * explicit host and whatever an expanded dbname connection string held. */
static void build_params(pgc_conn_t *c, const char ***kw, const char ***val, char **lists)
{
    int n = c->nkw;
    *kw = util_calloc((size_t)n + 4, sizeof **kw);
    *val = util_calloc((size_t)n + 4, sizeof **val);
    for (int i = 0; i < n; i++) {
        (*kw)[i] = c->keywords[i];
        (*val)[i] = c->values[i];
    }
    if (c->ntargets == 0)
        return;
    const char *names[3] = {"host", "hostaddr", "port"};
    for (int f = 0; f < 3; f++) {
        if (f == 2 && !c->per_host_ports)
            break;
        size_t len = 1;
        for (int i = 0; i < c->ntargets; i++) {
            pgc_target_t *t = &c->targets[i];
            len += strlen(f == 0 ? t->host : f == 1 ? t->addr : t->port) + 1;
        }
        lists[f] = util_calloc(1, len);
        for (int i = 0; i < c->ntargets; i++) {
            pgc_target_t *t = &c->targets[i];
            if (i)
                strcat(lists[f], ",");
            strcat(lists[f], f == 0 ? t->host : f == 1 ? t->addr : t->port);
        }
        (*kw)[n] = names[f];
        (*val)[n] = lists[f];
        n++;
    }
}

static void start_libpq(pgc_conn_t *c)
{
    const char **kw, **val;
    char *lists[3] = {NULL, NULL, NULL};
    build_params(c, &kw, &val, lists);
    c->pg = PQconnectStartParams(kw, val, 1);
    free(kw);
    free(val);
    for (int i = 0; i < 3; i++)
        free(lists[i]);
    c->state = PGC_CONNECTING;
    if (!c->pg) {
        conn_fail(c, "out of memory starting a connection");
        return;
    }
    if (PQstatus(c->pg) == CONNECTION_BAD) {
        conn_fail_connect(c);
        return;
    }
    PQsetnonblocking(c->pg, 1);
    /* libpq's documented first step: the socket is connecting, wait until it is writable. */
    connect_step(c, PGRES_POLLING_WRITING);
}

/* ---- resolving ---- */

static bool needs_dns(const char *host)
{
    unsigned char buf[sizeof(struct in6_addr)];
    if (!host || !*host || host[0] == '/' || host[0] == '@')
        return false;
    return inet_pton(AF_INET, host, buf) != 1 && inet_pton(AF_INET6, host, buf) != 1;
}

static void resolve_next(pgc_conn_t *c);

/* Replaces target i by one target per resolved address (capped). */
static void expand_target(pgc_conn_t *c, int i, struct addrinfo *res)
{
    char ips[PGC_MAX_ADDRS][64];
    int n = 0;
    for (struct addrinfo *ai = res; ai && n < PGC_MAX_ADDRS; ai = ai->ai_next) {
        if (uv_ip_name(ai->ai_addr, ips[n], sizeof ips[n]) != 0)
            continue;
        bool dup = false;
        for (int k = 0; k < n; k++)
            dup = dup || strcmp(ips[k], ips[n]) == 0;
        if (!dup)
            n++;
    }
    if (n == 0)
        return;
    pgc_target_t *t = util_calloc((size_t)(c->ntargets + n - 1), sizeof *t);
    memcpy(t, c->targets, (size_t)i * sizeof *t);
    for (int k = 0; k < n; k++) {
        t[i + k].host = util_strdup(c->targets[i].host);
        t[i + k].addr = util_strdup(ips[k]);
        t[i + k].port = util_strdup(c->targets[i].port);
    }
    memcpy(t + i + n, c->targets + i + 1, (size_t)(c->ntargets - i - 1) * sizeof *t);
    free(c->targets[i].host);
    free(c->targets[i].addr);
    free(c->targets[i].port);
    free(c->targets);
    c->targets = t;
    c->ntargets += n - 1;
    c->resolve_next = i + n;
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    pgc_conn_t *c = req->data;
    c->gai_active = false;
    if (!c->closing && c->state != PGC_FAILED) { /* FAILED: the connect deadline passed */
        int i = c->resolve_next;
        if (status == 0)
            expand_target(c, i, res);
        /* An unresolvable name is left to libpq (hostaddr empty): with several hosts the others
         * may still work, and libpq words the error for a single one. Its lookup of a name that
         * just failed returns at once. */
        if (status != 0)
            c->resolve_next = i + 1;
        resolve_next(c);
    }
    uv_freeaddrinfo(res);
    handle_released(c);
}

static void resolve_next(pgc_conn_t *c)
{
    while (c->resolve_next < c->ntargets && !needs_dns(c->targets[c->resolve_next].host))
        c->resolve_next++;
    if (c->resolve_next >= c->ntargets) {
        start_libpq(c);
        return;
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    c->gai.data = c;
    if (uv_getaddrinfo(c->loop, &c->gai, on_resolved, c->targets[c->resolve_next].host, NULL,
                       &hints) != 0) {
        c->resolve_next++;
        resolve_next(c);
        return;
    }
    c->gai_active = true;
    c->handles++;
}

static char *list_item(const char **p)
{
    const char *s = *p, *e = strchr(s, ',');
    size_t n = e ? (size_t)(e - s) : strlen(s);
    char *out = util_malloc(n + 1);
    memcpy(out, s, n);
    out[n] = '\0';
    *p = e ? e + 1 : s + n;
    return out;
}

static int list_len(const char *s)
{
    int n = 1;
    for (; *s; s++)
        n += *s == ',';
    return n;
}

/* The effective host, hostaddr and port as libpq will see them: later keywords win, a dbname
 * connection string is expanded in place, empty values are ignored, the environment fills gaps. */
static void effective_params(pgc_conn_t *c, const char *eff[3])
{
    static const char *names[3] = {"host", "hostaddr", "port"};
    bool expanded = false;
    for (int i = 0; i < c->nkw; i++) {
        const char *v = c->values[i];
        if (!v || !*v)
            continue;
        if (!expanded && strcmp(c->keywords[i], "dbname") == 0) {
            expanded = true;
            PQconninfoOption *opts = is_conninfo(v) ? PQconninfoParse(v, NULL) : NULL;
            for (PQconninfoOption *o = opts; o && o->keyword; o++)
                for (int f = 0; f < 3; f++)
                    if (o->val && *o->val && strcmp(o->keyword, names[f]) == 0)
                        eff[f] = util_strdup(o->val);
            conninfo_free(opts);
            continue;
        }
        for (int f = 0; f < 3; f++)
            if (strcmp(c->keywords[i], names[f]) == 0)
                eff[f] = util_strdup(v);
    }
    static const char *env[3] = {"PGHOST", "PGHOSTADDR", "PGPORT"};
    for (int f = 0; f < 3; f++)
        if (!eff[f] && getenv(env[f]) && *getenv(env[f]))
            eff[f] = util_strdup(getenv(env[f]));
}

/* Builds the target list when some host is a name and no hostaddr was given. */
static void plan_targets(pgc_conn_t *c)
{
    const char *eff[3] = {NULL, NULL, NULL};
    effective_params(c, eff);
    const char *host = eff[0], *port = eff[2];
    bool any_name = false;
    for (const char *p = host; p && *p;) {
        char *h = list_item(&p);
        any_name = any_name || needs_dns(h);
        free(h);
    }
    if (any_name && !eff[1]) {
        c->ntargets = list_len(host);
        c->per_host_ports = port && list_len(port) == c->ntargets && c->ntargets > 1;
        c->targets = util_calloc((size_t)c->ntargets, sizeof *c->targets);
        const char *hp = host, *pp = c->per_host_ports ? port : "";
        for (int i = 0; i < c->ntargets; i++) {
            c->targets[i].host = list_item(&hp);
            c->targets[i].addr = util_strdup("");
            c->targets[i].port = c->per_host_ports ? list_item(&pp) : util_strdup("");
        }
    }
    for (int f = 0; f < 3; f++)
        free((char *)eff[f]);
}

static void on_timer(uv_timer_t *t)
{
    pgc_conn_t *c = t->data;
    if (c->connect_err) {
        c->connect_err = false;
        deliver_connect(c, ROTOR_EDB);
        return;
    }
    conn_pump(c);
}

/* The server did not answer in time: the connection is given up (its queries fail with
 * ROTOR_EDB), as if it had been cut, so that the owner reconnects. */
static void on_deadline(uv_timer_t *t)
{
    pgc_conn_t *c = t->data;
    if (c->closing || c->state == PGC_FAILED)
        return;
    char msg[160];
    bool connecting = c->state != PGC_READY;
    snprintf(msg, sizeof msg, "no answer from the server in %llu ms %s: connection given up",
             (unsigned long long)(connecting ? c->connect_ms : c->query_ms),
             connecting ? "while connecting" : "to a query");
    if (c->gai_active)
        uv_cancel((uv_req_t *)&c->gai);
    conn_fail(c, msg);
}

int pgc_connect(uv_loop_t *loop, const char *const *keywords, const char *const *values,
                pgc_connect_cb cb, void *arg, pgc_conn_t **out)
{
    if (!loop || !keywords || !values || !out)
        return -EINVAL;
    pgc_conn_t *c = util_calloc(1, sizeof *c);
    c->loop = loop;
    c->connect_cb = cb;
    c->connect_arg = arg;
    while (keywords[c->nkw])
        c->nkw++;
    c->keywords = util_calloc((size_t)c->nkw + 1, sizeof *c->keywords);
    c->values = util_calloc((size_t)c->nkw + 1, sizeof *c->values);
    for (int i = 0; i < c->nkw; i++) {
        c->keywords[i] = util_strdup(keywords[i]);
        c->values[i] = util_strdup(values[i]);
    }
    uv_timer_init(loop, &c->timer);
    c->timer.data = c;
    uv_timer_init(loop, &c->deadline);
    c->deadline.data = c;
    c->handles = 2;
    c->connect_ms = PGC_CONNECT_TIMEOUT_MS;
    uv_timer_start(&c->deadline, on_deadline, c->connect_ms, 0);
    c->in_connect = true;
    plan_targets(c);
    resolve_next(c);
    c->in_connect = false;
    *out = c;
    return 0;
}

int pgc_connect_dsn(uv_loop_t *loop, const char *dsn, pgc_connect_cb cb, void *arg,
                    pgc_conn_t **out)
{
    if (!dsn)
        return -EINVAL;
    const char *kw[] = {"dbname", NULL};
    const char *val[] = {dsn, NULL};
    return pgc_connect(loop, kw, val, cb, arg, out);
}

/* ---- queries ---- */

static void on_query_poll(uv_poll_t *h, int status, int events);

static void query_watch(pgc_conn_t *c)
{
    int events = c->flushing ? UV_READABLE | UV_WRITABLE : UV_READABLE;
    if (poll_watch(c, events, on_query_poll) != 0)
        conn_fail(c, "cannot watch the connection's socket");
}

static void query_finish(pgc_conn_t *c)
{
    PGresult *res = c->last;
    c->last = NULL;
    c->inflight = false;
    uv_timer_stop(&c->deadline);
    poll_stop(c);
    ExecStatusType st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
    int status = st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK ? 0 : ROTOR_EDB;
    if (status != 0)
        set_err(c, res && *PQresultErrorMessage(res) ? PQresultErrorMessage(res)
                                                     : PQerrorMessage(c->pg));
    query_complete(c, res, status);
    if (res)
        PQclear(res);
    conn_pump(c);
}

/* Reads every result that is complete; returns when libpq needs more input. */
static void query_drain(pgc_conn_t *c)
{
    while (!PQisBusy(c->pg)) {
        PGresult *r = PQgetResult(c->pg);
        if (!r) {
            query_finish(c);
            return;
        }
        ExecStatusType st = PQresultStatus(r);
        if (c->last)
            PQclear(c->last);
        c->last = r;
        if (st == PGRES_COPY_IN || st == PGRES_COPY_OUT || st == PGRES_COPY_BOTH) {
            /* COPY would keep returning the same result: not supported on this path. */
            conn_fail(c, "COPY is not supported by pgc_query");
            return;
        }
    }
    query_watch(c);
}

static void on_query_poll(uv_poll_t *h, int status, int events)
{
    pgc_conn_t *c = ((pgc_poll_t *)h->data)->conn;
    /* On a poll error, let libpq find out what is wrong with the socket. */
    if ((events & UV_READABLE) || status < 0) {
        if (!PQconsumeInput(c->pg)) {
            conn_fail(c, PQerrorMessage(c->pg));
            return;
        }
    }
    if (c->flushing) {
        int r = PQflush(c->pg);
        if (r < 0) {
            conn_fail(c, PQerrorMessage(c->pg));
            return;
        }
        c->flushing = r == 1;
        if (c->flushing) {
            query_watch(c);
            return;
        }
    }
    query_drain(c);
}

static void query_send(pgc_conn_t *c)
{
    pgc_query_t *q = c->head;
    if (!PQsendQueryParams(c->pg, q->sql, q->nparams, NULL, (const char *const *)q->params, NULL,
                           NULL, 0)) {
        if (PQstatus(c->pg) == CONNECTION_BAD) {
            conn_fail(c, PQerrorMessage(c->pg));
            return;
        }
        set_err(c, PQerrorMessage(c->pg));
        query_complete(c, NULL, ROTOR_EDB);
        return;
    }
    c->inflight = true;
    if (c->query_ms)
        uv_timer_start(&c->deadline, on_deadline, c->query_ms, 0);
    int r = PQflush(c->pg);
    if (r < 0) {
        conn_fail(c, PQerrorMessage(c->pg));
        return;
    }
    c->flushing = r == 1;
    query_watch(c);
}

static void conn_pump(pgc_conn_t *c)
{
    while (!c->closing && c->state == PGC_READY && !c->inflight && c->head)
        query_send(c);
}

int pgc_query(pgc_conn_t *c, const char *sql, int nparams, const char *const *params,
              pgc_result_cb cb, void *arg)
{
    if (!c || !sql || !cb || nparams < 0 || (nparams > 0 && !params))
        return -EINVAL;
    if (c->closing)
        return ROTOR_ECANCELED;
    if (c->state == PGC_FAILED)
        return ROTOR_EDB;
    pgc_query_t *q = util_calloc(1, sizeof *q);
    q->sql = util_strdup(sql);
    q->nparams = nparams;
    q->params = util_calloc((size_t)nparams + 1, sizeof *q->params);
    for (int i = 0; i < nparams; i++)
        q->params[i] = util_strdup(params[i]);
    q->cb = cb;
    q->arg = arg;
    if (c->tail)
        c->tail->next = q;
    else
        c->head = q;
    c->tail = q;
    /* Sent from the timer: the callback must not run within this call if sending fails. */
    if (c->state == PGC_READY && !c->inflight)
        uv_timer_start(&c->timer, on_timer, 0, 0);
    return 0;
}

/* ---- closing and accessors ---- */

void pgc_close(pgc_conn_t *c)
{
    if (!c || c->closing)
        return;
    c->closing = true;
    poll_stop(c);
    /* Every pending callback runs here, so a caller may free its request state right after. */
    deliver_connect(c, ROTOR_ECANCELED);
    fail_all_queries(c, ROTOR_ECANCELED);
    poll_close(c);
    if (c->gai_active)
        uv_cancel((uv_req_t *)&c->gai);
    if (c->working)
        uv_cancel((uv_req_t *)&c->work); /* fails once running: then it completes first */
    uv_close((uv_handle_t *)&c->timer, on_timer_closed);
    uv_close((uv_handle_t *)&c->deadline, on_timer_closed);
}

void pgc_set_deadlines(pgc_conn_t *c, uint64_t connect_ms, uint64_t query_ms)
{
    c->connect_ms = connect_ms;
    c->query_ms = query_ms;
    if (c->closing || c->state == PGC_FAILED)
        return;
    uv_timer_stop(&c->deadline);
    if (c->state != PGC_READY && !c->connect_cb_done && connect_ms)
        uv_timer_start(&c->deadline, on_deadline, connect_ms, 0);
    else if (c->state == PGC_READY && c->inflight && query_ms)
        uv_timer_start(&c->deadline, on_deadline, query_ms, 0);
}

const char *pgc_error(pgc_conn_t *c)
{
    if (c->err)
        return c->err;
    return c->pg && !c->working ? PQerrorMessage(c->pg) : "";
}

PGconn *pgc_raw(pgc_conn_t *c)
{
    return c->working ? NULL : c->pg;
}

int pgc_ok(pgc_conn_t *c)
{
    return !c->closing && c->state == PGC_READY && PQstatus(c->pg) == CONNECTION_OK;
}

int pgc_pending(pgc_conn_t *c)
{
    int n = 0;
    for (pgc_query_t *q = c->head; q; q = q->next)
        n++;
    return n;
}
