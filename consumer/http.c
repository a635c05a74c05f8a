/* http.c: libcurl's multi interface driven by the libuv loop (uv_poll per socket, one uv_timer),
 * after curl's docs/examples/multi-uv.c; bodies in both directions are wiped before they are freed.
 */
#include "http.h"

#include <ctype.h>
#include <curl/curl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "metrics.h"
#include "rotor.h"
#include "secret.h"
#include "util.h"

#define HTTP_MAX_BODY (16u * 1024u * 1024u) /* no Key Vault or token answer comes near this */
#define HTTP_MAX_HEADER 4096u

/* Response headers rotor reads, in the order of http_hdr_names. */
enum {
    HDR_WWW_AUTH,
    HDR_RETRY_AFTER,
    HDR_RETRY_MS,
    HDR_XMS_RETRY_MS,
    HDR_CTYPE,
    HDR_LOCATION,
    HDR_N
};
static const char *const http_hdr_names[HDR_N] = {
    "www-authenticate",    "retry-after",  "retry-after-ms",
    "x-ms-retry-after-ms", "content-type", "location",
};

/* One uv_poll per socket curl hands us; freed in its close callback. */
typedef struct http_sock_s {
    uv_poll_t poll;
    curl_socket_t fd;
    http_t *h;
    struct http_sock_s *prev, *next;
} http_sock_t;

struct http_req_s {
    http_t *h;
    CURL *easy;
    http_cb cb;
    void *arg;
    struct curl_slist *headers;
    struct curl_slist *resolve;
    char *body; /* request body, wiped */
    size_t body_len;
    char *rbuf; /* response body, wiped */
    size_t rlen, rcap;
    char *hdr[HDR_N];
    char errbuf[CURL_ERROR_SIZE];
    const char *service; /* borrowed static string (http_request_t.service) */
    bool done;
    struct http_req_s *prev, *next;
};

struct http_s {
    uv_loop_t *loop;
    CURLM *multi;
    uv_timer_t timer;
    http_req_t *reqs;   /* pending requests */
    http_sock_t *socks; /* live poll contexts */
    int handles;        /* uv handles not yet closed (timer + polls) */
    int dispatching;    /* depth of user callbacks from check_multi_info */
    bool closing;
    bool multi_gone;
};

static void http_finish_close(http_t *h);

static void wipe_free(char *p, size_t n)
{
    if (p) {
        secret_wipe(p, n);
        free(p);
    }
}

/* Wipes header values before curl frees them: an Authorization header carries a bearer token. */
static void wipe_slist(struct curl_slist *l)
{
    for (struct curl_slist *n = l; n; n = n->next)
        secret_wipe(n->data, strlen(n->data));
    curl_slist_free_all(l);
}

static void maybe_free_handle(http_t *h)
{
    if (h->closing && h->handles == 0 && h->dispatching == 0 && h->multi_gone)
        free(h);
}

static void on_handle_closed(uv_handle_t *handle)
{
    http_t *h = handle->data;
    if (handle->type == UV_POLL)
        free(handle);
    h->handles--;
    maybe_free_handle(h);
}

static void sock_close(http_sock_t *s)
{
    http_t *h = s->h;
    if (s->prev)
        s->prev->next = s->next;
    else
        h->socks = s->next;
    if (s->next)
        s->next->prev = s->prev;
    uv_poll_stop(&s->poll);
    s->poll.data = h;
    uv_close((uv_handle_t *)&s->poll, on_handle_closed);
}

static void req_unlink(http_req_t *r)
{
    http_t *h = r->h;
    if (r->prev)
        r->prev->next = r->next;
    else
        h->reqs = r->next;
    if (r->next)
        r->next->prev = r->prev;
    r->prev = r->next = NULL;
}

static void req_free(http_req_t *r)
{
    if (r->easy)
        curl_easy_cleanup(r->easy);
    wipe_slist(r->headers);
    curl_slist_free_all(r->resolve);
    wipe_free(r->body, r->body_len);
    wipe_free(r->rbuf, r->rcap);
    for (int i = 0; i < HDR_N; i++)
        free(r->hdr[i]);
    free(r);
}

/* Counted here, where every request ends, rather than in each driver: the drivers' retry loops
 * (429, 5xx, a challenge) then show as they are, one sample per round trip. A request that got
 * no response is counted by why, so a dead endpoint does not hide among the 5xx. */
static void count_request(const char *service, long code, int status)
{
    char labels[96], num[24];
    const char *c = num;
    if (status == ROTOR_ECANCELED)
        c = "canceled";
    else if (code > 0)
        snprintf(num, sizeof num, "%ld", code);
    else
        c = status == ROTOR_ETIMEOUT ? "timeout" : "error";
    snprintf(labels, sizeof labels, "service=\"%s\",code=\"%s\"", service ? service : "other", c);
    metrics_count("rotor_http_requests_total",
                  "HTTP requests rotor made that ended, by service and status code", labels, 1);
}

/* Calls the request's callback once and frees it; the easy handle is already out of the multi. */
static void req_complete(http_req_t *r, int status, const char *error)
{
    http_response_t res = {0};
    r->done = true;
    req_unlink(r);
    if (r->easy)
        curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &res.status);
    res.body = r->rbuf ? r->rbuf : "";
    res.body_len = r->rlen;
    res.www_authenticate = r->hdr[HDR_WWW_AUTH];
    res.retry_after = r->hdr[HDR_RETRY_AFTER];
    res.retry_after_ms = r->hdr[HDR_RETRY_MS];
    res.x_ms_retry_after_ms = r->hdr[HDR_XMS_RETRY_MS];
    res.content_type = r->hdr[HDR_CTYPE];
    res.location = r->hdr[HDR_LOCATION];
    res.error = error;
    count_request(r->service, res.status, status);
    r->cb(r->arg, status, &res);
    req_free(r);
}

static int map_curl_error(CURLcode rc)
{
    switch (rc) {
    case CURLE_OK:
        return 0;
    case CURLE_OPERATION_TIMEDOUT:
        return ROTOR_ETIMEOUT;
    default:
        return ROTOR_EFAIL;
    }
}

static void check_multi_info(http_t *h)
{
    CURLMsg *msg;
    int left;
    h->dispatching++;
    while (!h->closing && (msg = curl_multi_info_read(h->multi, &left))) {
        if (msg->msg != CURLMSG_DONE)
            continue;
        http_req_t *r = NULL;
        CURLcode rc = msg->data.result;
        CURL *easy = msg->easy_handle;
        curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **)&r);
        curl_multi_remove_handle(h->multi, easy);
        const char *error = NULL;
        if (rc != CURLE_OK)
            error = r->errbuf[0] ? r->errbuf : curl_easy_strerror(rc);
        req_complete(r, map_curl_error(rc), error);
    }
    h->dispatching--;
    if (h->closing && h->dispatching == 0)
        http_finish_close(h);
}

static void on_timer(uv_timer_t *t)
{
    http_t *h = t->data;
    int running;
    curl_multi_socket_action(h->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    check_multi_info(h);
}

static void on_poll(uv_poll_t *p, int status, int events)
{
    http_sock_t *s = p->data;
    http_t *h = s->h;
    int flags = 0;
    int running;
    if (status < 0)
        flags = CURL_CSELECT_ERR;
    if (!status && (events & UV_READABLE))
        flags |= CURL_CSELECT_IN;
    if (!status && (events & UV_WRITABLE))
        flags |= CURL_CSELECT_OUT;
    /* s may be closed inside the action (CURL_POLL_REMOVE): it is not touched afterwards. */
    curl_multi_socket_action(h->multi, s->fd, flags, &running);
    check_multi_info(h);
}

static int on_curl_timer(CURLM *multi, long timeout_ms, void *userp)
{
    http_t *h = userp;
    (void)multi;
    if (timeout_ms < 0) {
        uv_timer_stop(&h->timer);
        return 0;
    }
    /* Never act from inside curl's callback: a zero timeout runs on the next loop turn. */
    uv_timer_start(&h->timer, on_timer, (uint64_t)timeout_ms, 0);
    return 0;
}

static int on_curl_socket(CURL *easy, curl_socket_t fd, int action, void *userp, void *socketp)
{
    http_t *h = userp;
    http_sock_t *s = socketp;
    (void)easy;
    if (action == CURL_POLL_REMOVE) {
        if (s) {
            sock_close(s);
            curl_multi_assign(h->multi, fd, NULL);
        }
        return 0;
    }
    if (!s) {
        s = util_calloc(1, sizeof *s);
        s->fd = fd;
        s->h = h;
        if (uv_poll_init_socket(h->loop, &s->poll, fd) != 0) {
            free(s);
            return -1;
        }
        s->poll.data = s;
        h->handles++;
        s->next = h->socks;
        if (h->socks)
            h->socks->prev = s;
        h->socks = s;
        curl_multi_assign(h->multi, fd, s);
    }
    int events = 0;
    if (action == CURL_POLL_IN || action == CURL_POLL_INOUT)
        events |= UV_READABLE;
    if (action == CURL_POLL_OUT || action == CURL_POLL_INOUT)
        events |= UV_WRITABLE;
    uv_poll_start(&s->poll, events, on_poll);
    return 0;
}

int http_init(uv_loop_t *loop, http_t **out)
{
    curl_version_info_data *v = curl_version_info(CURLVERSION_NOW);
    if (!v || !(v->features & CURL_VERSION_ASYNCHDNS))
        return ROTOR_EFAIL;
    /* Idempotent and reference-counted by curl; rotor starts it before any thread exists. */
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
        return ROTOR_EFAIL;
    http_t *h = util_calloc(1, sizeof *h);
    h->loop = loop;
    h->multi = curl_multi_init();
    if (!h->multi) {
        free(h);
        curl_global_cleanup();
        return ROTOR_EFAIL;
    }
    uv_timer_init(loop, &h->timer);
    h->timer.data = h;
    h->handles = 1;
    curl_multi_setopt(h->multi, CURLMOPT_SOCKETFUNCTION, on_curl_socket);
    curl_multi_setopt(h->multi, CURLMOPT_SOCKETDATA, h);
    curl_multi_setopt(h->multi, CURLMOPT_TIMERFUNCTION, on_curl_timer);
    curl_multi_setopt(h->multi, CURLMOPT_TIMERDATA, h);
    *out = h;
    return 0;
}

static size_t on_write(char *p, size_t size, size_t n, void *arg)
{
    http_req_t *r = arg;
    size_t len = size * n;
    if (len > HTTP_MAX_BODY - r->rlen)
        return 0; /* aborts the transfer with CURLE_WRITE_ERROR */
    if (r->rlen + len + 1 > r->rcap) {
        /* Grow by copy, not realloc, so no unwiped copy of a password is left behind. */
        size_t cap = r->rcap ? r->rcap : 1024;
        while (cap < r->rlen + len + 1)
            cap *= 2;
        char *nb = util_malloc(cap);
        if (r->rlen)
            memcpy(nb, r->rbuf, r->rlen);
        wipe_free(r->rbuf, r->rcap);
        r->rbuf = nb;
        r->rcap = cap;
    }
    memcpy(r->rbuf + r->rlen, p, len);
    r->rlen += len;
    r->rbuf[r->rlen] = '\0';
    return len;
}

static size_t on_header(char *p, size_t size, size_t n, void *arg)
{
    http_req_t *r = arg;
    size_t len = size * n;
    /* A new status line (after a 100 Continue or an auth round) starts a new header set. */
    if (len >= 5 && strncmp(p, "HTTP/", 5) == 0) {
        for (int i = 0; i < HDR_N; i++) {
            free(r->hdr[i]);
            r->hdr[i] = NULL;
        }
        return len;
    }
    const char *colon = memchr(p, ':', len);
    if (!colon || len > HTTP_MAX_HEADER)
        return len;
    size_t nlen = (size_t)(colon - p);
    for (int i = 0; i < HDR_N; i++) {
        if (strlen(http_hdr_names[i]) != nlen || strncasecmp(p, http_hdr_names[i], nlen) != 0)
            continue;
        const char *v = colon + 1, *end = p + len;
        while (v < end && (*v == ' ' || *v == '\t'))
            v++;
        while (end > v && isspace((unsigned char)end[-1]))
            end--;
        free(r->hdr[i]);
        r->hdr[i] = util_malloc((size_t)(end - v) + 1);
        memcpy(r->hdr[i], v, (size_t)(end - v));
        r->hdr[i][end - v] = '\0';
        break;
    }
    return len;
}

static bool method_has_body(const char *m)
{
    return strcmp(m, "POST") == 0 || strcmp(m, "PUT") == 0 || strcmp(m, "PATCH") == 0;
}

static int req_setup(http_req_t *r, const http_request_t *req)
{
    CURL *e = r->easy;
    const char *m = req->method ? req->method : "GET";
    curl_easy_setopt(e, CURLOPT_URL, req->url);
    curl_easy_setopt(e, CURLOPT_PRIVATE, r);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L);
    if (req->ca_file)
        curl_easy_setopt(e, CURLOPT_CAINFO, req->ca_file);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)(req->timeout_ms ? req->timeout_ms : 30000));
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS,
                     (long)(req->connect_timeout_ms ? req->connect_timeout_ms : 10000));
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, r->errbuf);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_write);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, r);
    if (req->body || method_has_body(m)) {
        /* Our own copy, not COPYPOSTFIELDS: curl would free its copy without wiping it. */
        r->body_len = req->body ? req->body_len : 0;
        r->body = util_malloc(r->body_len + 1);
        if (r->body_len)
            memcpy(r->body, req->body, r->body_len);
        r->body[r->body_len] = '\0';
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)r->body_len);
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, r->body);
    }
    if (strcmp(m, "HEAD") == 0)
        curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
    else if (strcmp(m, "GET") != 0 && strcmp(m, "POST") != 0)
        curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, m);
    else if (strcmp(m, "GET") == 0 && r->body)
        curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, "GET");
    /* A round trip for 100-continue buys nothing with bodies this small. */
    r->headers = curl_slist_append(NULL, "Expect:");
    for (const char *const *hp = req->headers; hp && *hp; hp++) {
        struct curl_slist *l = curl_slist_append(r->headers, *hp);
        if (!l)
            return ROTOR_EFAIL;
        r->headers = l;
    }
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, r->headers);
    if (req->resolve) {
        r->resolve = curl_slist_append(NULL, req->resolve);
        if (!r->resolve)
            return ROTOR_EFAIL;
        curl_easy_setopt(e, CURLOPT_RESOLVE, r->resolve);
    }
    return 0;
}

int http_send(http_t *h, const http_request_t *req, http_cb cb, void *arg, http_req_t **out)
{
    if (out)
        *out = NULL;
    if (!h || !req || !req->url || !cb)
        return ROTOR_EINVALID;
    if (h->closing)
        return ROTOR_ECANCELED;
    http_req_t *r = util_calloc(1, sizeof *r);
    r->h = h;
    r->cb = cb;
    r->arg = arg;
    r->service = req->service;
    r->easy = curl_easy_init();
    if (!r->easy || req_setup(r, req) != 0 ||
        curl_multi_add_handle(h->multi, r->easy) != CURLM_OK) {
        req_free(r);
        return ROTOR_EFAIL;
    }
    r->next = h->reqs;
    if (h->reqs)
        h->reqs->prev = r;
    h->reqs = r;
    if (out)
        *out = r;
    return 0;
}

void http_cancel(http_req_t *r)
{
    if (!r || r->done)
        return;
    curl_multi_remove_handle(r->h->multi, r->easy);
    req_complete(r, ROTOR_ECANCELED, "canceled");
}

/* Runs once no user callback from check_multi_info is on the stack. */
static void http_finish_close(http_t *h)
{
    if (h->multi_gone)
        return;
    while (h->reqs)
        http_cancel(h->reqs);
    curl_multi_cleanup(h->multi);
    h->multi_gone = true;
    /* curl reports REMOVE for the sockets it closes; anything left is closed here. */
    while (h->socks)
        sock_close(h->socks);
    uv_timer_stop(&h->timer);
    h->timer.data = h;
    uv_close((uv_handle_t *)&h->timer, on_handle_closed);
    curl_global_cleanup();
    maybe_free_handle(h);
}

void http_close(http_t *h)
{
    if (!h || h->closing)
        return;
    h->closing = true;
    if (h->dispatching == 0)
        http_finish_close(h);
}

static bool parse_u64(const char *s, uint64_t *out)
{
    uint64_t v = 0;
    while (*s == ' ' || *s == '\t')
        s++;
    if (!isdigit((unsigned char)*s))
        return false;
    for (; isdigit((unsigned char)*s); s++) {
        if (v > (UINT64_MAX - 9) / 10)
            return false;
        v = v * 10 + (uint64_t)(*s - '0');
    }
    while (*s == ' ' || *s == '\t')
        s++;
    if (*s)
        return false;
    *out = v;
    return true;
}

uint64_t http_retry_after_ms(const http_response_t *res, int64_t now_ms)
{
    uint64_t v;
    if (!res)
        return 0;
    if (res->retry_after_ms && parse_u64(res->retry_after_ms, &v))
        return v;
    if (res->x_ms_retry_after_ms && parse_u64(res->x_ms_retry_after_ms, &v))
        return v;
    if (!res->retry_after)
        return 0;
    if (parse_u64(res->retry_after, &v))
        return v > UINT64_MAX / 1000 ? UINT64_MAX : v * 1000;
    /* An HTTP date; curl_getdate is a pure parser of the RFC 7231 forms. */
    time_t now = (time_t)(now_ms / 1000);
    time_t when = curl_getdate(res->retry_after, &now);
    if (when == (time_t)-1 || when <= now)
        return 0;
    /* curl reads years far past 9999 ("3 Dec 2000000000"): saturate as the seconds form does
     * rather than overflow in milliseconds. */
    uint64_t secs = (uint64_t)when - (uint64_t)now;
    if (secs > UINT64_MAX / 1000)
        return UINT64_MAX;
    return secs * 1000 - (uint64_t)(now_ms - (int64_t)now * 1000);
}
