/* health.c: /healthz, /readyz and /metrics served by libmicrohttpd, driven by the uv loop. */
#include "health.h"

#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "log.h"
#include "metrics.h"
#include "observe.h"
#include "rotor.h"
#include "util.h"

/* Idle connections are dropped after this many seconds; MHD enforces it through our timer. */
#define HEALTH_CONN_TIMEOUT_S 10u
#define HEALTH_CONN_LIMIT 64u
#define HEALTH_LAG_HELP                                                                            \
    "Longest time callbacks held the event loop in one iteration since the last scrape, seconds"
#define HEALTH_DELAY_HELP                                                                          \
    "Time callbacks held the event loop, per iteration (the longest an event arriving meanwhile "  \
    "waited), seconds"
/* Fine below the 2 ms that a fleet run's p99 must stay under, so that bound is a bucket edge and
 * the fraction of samples within it is exact; coarse above, where only "how bad" matters. */
static const double health_lag_buckets[] = {0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025,
                                            0.05,    0.1,    0.25,  0.5,   1,     2.5,  5};

struct health_s {
    uv_loop_t *loop;
    struct MHD_Daemon *mhd;
    uv_poll_t poll;        /* MHD's epoll fd */
    uv_timer_t mhd_timer;  /* MHD's own timeouts (idle connections, pending data) */
    uv_prepare_t hold;     /* measures how long each loop iteration held the loop */
    uint64_t hold_at;      /* uv_hrtime() at the previous prepare, 0 before the first */
    uint64_t hold_idle;    /* uv_metrics_idle_time() then */
    double hold_max;       /* longest hold since the last scrape */
    health_ready_fn ready; /* borrowed */
    void *ready_arg;       /* borrowed */
    int port;
    int open_handles;
};

/* Parses "a.b.c.d:port", ":port" (all IPv4) or "[v6]:port" into ss. Returns 0 or ROTOR_ECONFIG. */
static int health_parse_listen(const char *listen, struct sockaddr_storage *ss, bool *v6)
{
    char host[64];
    const char *colon;
    memset(ss, 0, sizeof *ss);
    if (listen[0] == '[') {
        const char *close = strchr(listen, ']');
        if (!close || close[1] != ':' || (size_t)(close - listen - 1) >= sizeof host)
            return ROTOR_ECONFIG;
        memcpy(host, listen + 1, (size_t)(close - listen - 1));
        host[close - listen - 1] = '\0';
        colon = close + 1;
        *v6 = true;
    } else {
        colon = strrchr(listen, ':');
        if (!colon || (size_t)(colon - listen) >= sizeof host)
            return ROTOR_ECONFIG;
        memcpy(host, listen, (size_t)(colon - listen));
        host[colon - listen] = '\0';
        *v6 = false;
    }
    const char *digits = colon + 1;
    size_t ndigits = strspn(digits, "0123456789");
    if (ndigits == 0 || ndigits > 5 || digits[ndigits] != '\0')
        return ROTOR_ECONFIG;
    long port = strtol(digits, NULL, 10);
    if (port > 65535)
        return ROTOR_ECONFIG;

    if (*v6) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)ss;
        a->sin6_family = AF_INET6;
        a->sin6_port = htons((uint16_t)port);
        return inet_pton(AF_INET6, host, &a->sin6_addr) == 1 ? 0 : ROTOR_ECONFIG;
    }
    struct sockaddr_in *a = (struct sockaddr_in *)ss;
    a->sin_family = AF_INET;
    a->sin_port = htons((uint16_t)port);
    if (host[0] == '\0') {
        a->sin_addr.s_addr = htonl(INADDR_ANY);
        return 0;
    }
    return inet_pton(AF_INET, host, &a->sin_addr) == 1 ? 0 : ROTOR_ECONFIG;
}

static void health_mhd_log(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    char line[256];
    vsnprintf(line, sizeof line, fmt, ap);
    line[strcspn(line, "\n")] = '\0';
    log_warn("health.http.error", "detail", line);
}

/* body is copied. */
static enum MHD_Result health_reply(struct MHD_Connection *c, unsigned int status, const char *body,
                                    const char *content_type)
{
    struct MHD_Response *r =
        MHD_create_response_from_buffer(strlen(body), (void *)body, MHD_RESPMEM_MUST_COPY);
    if (!r)
        return MHD_NO;
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
    if (status == MHD_HTTP_METHOD_NOT_ALLOWED)
        MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, MHD_HTTP_METHOD_GET);
    enum MHD_Result ret = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result health_reply_ready(health_t *h, struct MHD_Connection *c)
{
    const char *reason = NULL;
    if (!h->ready || h->ready(h->ready_arg, &reason))
        return health_reply(c, MHD_HTTP_OK, "ready\n", "text/plain");
    char body[256];
    snprintf(body, sizeof body, "%s\n", reason && reason[0] ? reason : "not ready");
    return health_reply(c, MHD_HTTP_SERVICE_UNAVAILABLE, body, "text/plain");
}

static enum MHD_Result health_reply_metrics(health_t *h, struct MHD_Connection *c)
{
    /* The largest hold since the last scrape, so a stall between two scrapes is not missed; the
     * iteration serving this scrape is still running and counts towards the next. */
    metrics_gauge("rotor_loop_lag_seconds", HEALTH_LAG_HELP, NULL, h->hold_max);
    h->hold_max = 0;
    metrics_gauge("rotor_up", "1 while the rotor daemon is running.", NULL, 1);
    size_t len;
    char *text = metrics_render(&len);
    /* MUST_FREE hands text to MHD, which releases it with free(). */
    struct MHD_Response *r = MHD_create_response_from_buffer(len, text, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(text);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/plain; version=0.0.4");
    enum MHD_Result ret = MHD_queue_response(c, MHD_HTTP_OK, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result health_access(void *cls, struct MHD_Connection *c, const char *url,
                                     const char *method, const char *version,
                                     const char *upload_data, size_t *upload_data_size,
                                     void **con_cls)
{
    (void)version;
    (void)upload_data;
    static int seen;
    health_t *h = cls;
    /* A stray POST is answered at once: MHD then drops its body and closes the connection, so
     * nothing is buffered for a request we refuse anyway. */
    if (strcmp(method, MHD_HTTP_METHOD_GET) != 0)
        return health_reply(c, MHD_HTTP_METHOD_NOT_ALLOWED, "method not allowed\n", "text/plain");
    /* A GET is answered on the second call, once MHD has read the whole request: a response
     * queued on the first call makes MHD close the connection instead of keeping it alive. */
    if (*con_cls == NULL) {
        *con_cls = &seen;
        return MHD_YES;
    }
    if (*upload_data_size) {
        *upload_data_size = 0;
        return MHD_YES;
    }
    if (strcmp(url, "/healthz") == 0)
        return health_reply(c, MHD_HTTP_OK, "ok\n", "text/plain");
    if (strcmp(url, "/readyz") == 0)
        return health_reply_ready(h, c);
    if (strcmp(url, "/metrics") == 0)
        return health_reply_metrics(h, c);
    return health_reply(c, MHD_HTTP_NOT_FOUND, "not found\n", "text/plain");
}

static void health_mhd_timer_cb(uv_timer_t *t);

/* MHD must run again within the timeout it reports, even with no socket activity, or idle
 * connections never expire and buffered data waits. */
static void health_run(health_t *h)
{
    MHD_run(h->mhd);
    MHD_UNSIGNED_LONG_LONG ms;
    if (MHD_get_timeout(h->mhd, &ms) == MHD_YES)
        uv_timer_start(&h->mhd_timer, health_mhd_timer_cb, (uint64_t)ms, 0);
    else
        uv_timer_stop(&h->mhd_timer);
}

static void health_mhd_timer_cb(uv_timer_t *t)
{
    health_run(t->data);
}

static void health_poll_cb(uv_poll_t *p, int status, int events)
{
    (void)events;
    if (status < 0)
        log_warn("health.poll.error", "error", uv_strerror(status));
    health_run(p->data);
}

/* Runs once per loop iteration, right before the loop blocks for I/O. The time since the previous
 * prepare, less what the loop spent waiting inside epoll meanwhile (libuv's idle-time metric), is
 * how long callbacks held the loop in that iteration: I/O callbacks, timers, checks, closes. An
 * event that arrived during that time waited for it, so that is the loop's lag. Nothing is
 * sampled on a timer: a loop asleep in epoll is not lagging and costs no wake-up, and an iteration
 * only happens when something woke the loop anyway. uv_hrtime() gives nanoseconds; the loop's
 * own clock counts whole milliseconds, too coarse for the 2 ms bound. */
static void health_hold_cb(uv_prepare_t *p)
{
    health_t *h = p->data;
    uint64_t now = uv_hrtime();
    uint64_t idle = uv_metrics_idle_time(h->loop);
    if (h->hold_at) {
        uint64_t wall = now - h->hold_at, waited = idle - h->hold_idle;
        double held = wall > waited ? (double)(wall - waited) / 1e9 : 0.0;
        if (held > h->hold_max)
            h->hold_max = held;
        metrics_observe("rotor_loop_delay_seconds", HEALTH_DELAY_HELP, NULL, health_lag_buckets,
                        sizeof health_lag_buckets / sizeof health_lag_buckets[0], held);
    }
    h->hold_at = now;
    h->hold_idle = idle;
}

static struct MHD_Daemon *health_mhd_start(health_t *h, const struct sockaddr_storage *ss, bool v6)
{
    unsigned int flags = MHD_USE_EPOLL | MHD_USE_ERROR_LOG | (v6 ? MHD_USE_IPv6 : 0);
    uint16_t port = v6 ? ntohs(((const struct sockaddr_in6 *)ss)->sin6_port)
                       : ntohs(((const struct sockaddr_in *)ss)->sin_port);
    /* The logger goes first, or MHD prints what it says about the other options to stderr. */
    return MHD_start_daemon(flags, port, NULL, NULL, health_access, h, MHD_OPTION_EXTERNAL_LOGGER,
                            health_mhd_log, h, MHD_OPTION_SOCK_ADDR, ss,
                            MHD_OPTION_CONNECTION_TIMEOUT, HEALTH_CONN_TIMEOUT_S,
                            MHD_OPTION_CONNECTION_LIMIT, HEALTH_CONN_LIMIT, MHD_OPTION_END);
}

int health_start(uv_loop_t *loop, const char *listen, health_ready_fn ready, void *arg,
                 health_t **out)
{
    struct sockaddr_storage ss;
    bool v6;
    if (!loop || !listen || !out)
        return ROTOR_EINVALID;
    if (health_parse_listen(listen, &ss, &v6) < 0)
        return ROTOR_ECONFIG;

    health_t *h = util_calloc(1, sizeof *h);
    h->loop = loop;
    h->ready = ready;
    h->ready_arg = arg;
    errno = 0;
    h->mhd = health_mhd_start(h, &ss, v6);
    if (!h->mhd) {
        int err = errno > 0 ? -errno : ROTOR_EFAIL;
        free(h);
        return err;
    }
    const union MHD_DaemonInfo *ep = MHD_get_daemon_info(h->mhd, MHD_DAEMON_INFO_EPOLL_FD);
    const union MHD_DaemonInfo *bp = MHD_get_daemon_info(h->mhd, MHD_DAEMON_INFO_BIND_PORT);
    int rc = ep && bp ? uv_poll_init(loop, &h->poll, ep->epoll_fd) : ROTOR_EFAIL;
    if (rc < 0) {
        MHD_stop_daemon(h->mhd);
        free(h);
        return rc;
    }
    h->port = bp->port;
    uv_timer_init(loop, &h->mhd_timer);
    uv_prepare_init(loop, &h->hold);
    h->poll.data = h->mhd_timer.data = h->hold.data = h;
    h->open_handles = 3;

    uv_poll_start(&h->poll, UV_READABLE, health_poll_cb);
    metrics_gauge("rotor_loop_lag_seconds", HEALTH_LAG_HELP, NULL, 0);
    observe_build_info();
    /* Makes libuv account the time it waits in epoll; it can be switched on at any time. */
    uv_loop_configure(loop, UV_METRICS_IDLE_TIME);
    uv_prepare_start(&h->hold, health_hold_cb);
    uv_unref((uv_handle_t *)&h->hold); /* measures the loop, does not keep it running */
    health_run(h);
    *out = h;
    return 0;
}

int health_port(const health_t *h)
{
    return h->port;
}

static void health_close_cb(uv_handle_t *handle)
{
    health_t *h = handle->data;
    if (--h->open_handles == 0)
        free(h);
}

void health_stop(health_t *h)
{
    if (!h)
        return;
    /* Stop watching before MHD closes its epoll fd, so the loop never polls a dead descriptor. */
    uv_poll_stop(&h->poll);
    MHD_stop_daemon(h->mhd);
    h->mhd = NULL;
    uv_close((uv_handle_t *)&h->poll, health_close_cb);
    uv_close((uv_handle_t *)&h->mhd_timer, health_close_cb);
    uv_close((uv_handle_t *)&h->hold, health_close_cb);
}
