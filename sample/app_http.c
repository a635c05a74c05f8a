/* app_http.c: routes, responses and the access log of the sample application, on libmicrohttpd. */
#include "app_http.h"
#include "app_log.h"
#include "app_util.h"

#include <jansson.h>
#include <microhttpd.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdbool.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

struct app_http {
    struct MHD_Daemon *daemon;
    app_db_t *db;
    const char *slot;
    const char *role;
    atomic_int inflight;
    atomic_bool draining;
};

/* Per-request state, from the first call of the handler to the completion callback. */
typedef struct {
    struct timespec start;
    char *method;
    char *path;
    unsigned status;
} app_http_req_t;

static double app_http_elapsed_ms(const struct timespec *start)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)(now.tv_sec - start->tv_sec) * 1e3 +
           (double)(now.tv_nsec - start->tv_nsec) / 1e6;
}

/* Takes ownership of body (malloc'ed). */
static enum MHD_Result app_http_respond(app_http_t *h, struct MHD_Connection *conn,
                                        app_http_req_t *req, unsigned status, const char *type,
                                        char *body)
{
    struct MHD_Response *r =
        MHD_create_response_from_buffer(strlen(body), body, MHD_RESPMEM_MUST_FREE);
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    MHD_add_response_header(r, "X-Slot", h->slot);
    MHD_add_response_header(r, "X-Role", h->role);
    /* While draining, a keep-alive client must reconnect, and so reach the other instance. */
    if (atomic_load(&h->draining))
        MHD_add_response_header(r, MHD_HTTP_HEADER_CONNECTION, "close");
    req->status = status;
    enum MHD_Result ret = MHD_queue_response(conn, status, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result app_http_text(app_http_t *h, struct MHD_Connection *conn,
                                     app_http_req_t *req, unsigned status, const char *text)
{
    size_t n = strlen(text);
    char *body = app_xcalloc(1, n + 2);
    memcpy(body, text, n);
    body[n] = '\n';
    return app_http_respond(h, conn, req, status, "text/plain; charset=utf-8", body);
}

/* Takes ownership of o. */
static enum MHD_Result app_http_json(app_http_t *h, struct MHD_Connection *conn,
                                     app_http_req_t *req, unsigned status, json_t *o)
{
    char *body = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(o);
    if (!body)
        return app_http_text(h, conn, req, MHD_HTTP_INTERNAL_SERVER_ERROR, "cannot encode");
    return app_http_respond(h, conn, req, status, "application/json", body);
}

static unsigned app_http_status_of(int rc)
{
    return rc == APP_DB_EQUERY ? MHD_HTTP_INTERNAL_SERVER_ERROR : MHD_HTTP_SERVICE_UNAVAILABLE;
}

static json_t *app_http_users_json(app_http_t *h, const PGresult *res)
{
    json_t *users = json_array();
    for (int i = 0; i < PQntuples(res); i++) {
        json_t *u = json_object();
        json_object_set_new(u, "id", json_integer(strtoll(PQgetvalue(res, i, 0), NULL, 10)));
        json_object_set_new(u, "name", json_string(PQgetvalue(res, i, 1)));
        json_array_append_new(users, u);
    }
    return json_pack("{s:s, s:s, s:o}", "slot", h->slot, "role", h->role, "users", users);
}

static enum MHD_Result app_http_users(app_http_t *h, struct MHD_Connection *conn,
                                      app_http_req_t *req)
{
    char err[512];
    PGresult *res = NULL;
    int rc =
        app_db_query(h->db, "SELECT id, name FROM app.users ORDER BY id", &res, err, sizeof err);
    if (rc < 0) {
        app_log_warn("users.failed", "role", h->role, "reason", err);
        json_t *o = json_pack("{s:s, s:s, s:s}", "slot", h->slot, "role", h->role, "error", err);
        return app_http_json(h, conn, req, app_http_status_of(rc), o);
    }
    json_t *o = app_http_users_json(h, res);
    PQclear(res);
    return app_http_json(h, conn, req, MHD_HTTP_OK, o);
}

static enum MHD_Result app_http_readyz(app_http_t *h, struct MHD_Connection *conn,
                                       app_http_req_t *req)
{
    if (atomic_load(&h->draining))
        return app_http_text(h, conn, req, MHD_HTTP_SERVICE_UNAVAILABLE, "draining");
    char err[512];
    PGresult *res = NULL;
    int rc = app_db_query(h->db, "SELECT 1", &res, err, sizeof err);
    if (rc < 0) {
        app_log_warn("readyz.failed", "role", h->role, "reason", err);
        return app_http_text(h, conn, req, MHD_HTTP_SERVICE_UNAVAILABLE, err);
    }
    PQclear(res);
    return app_http_text(h, conn, req, MHD_HTTP_OK, "ok");
}

static enum MHD_Result app_http_route(app_http_t *h, struct MHD_Connection *conn,
                                      app_http_req_t *req)
{
    bool get = strcmp(req->method, MHD_HTTP_METHOD_GET) == 0 ||
               strcmp(req->method, MHD_HTTP_METHOD_HEAD) == 0;
    bool known = strcmp(req->path, "/users") == 0 || strcmp(req->path, "/healthz") == 0 ||
                 strcmp(req->path, "/readyz") == 0;
    if (!known)
        return app_http_text(h, conn, req, MHD_HTTP_NOT_FOUND, "not found");
    if (!get)
        return app_http_text(h, conn, req, MHD_HTTP_METHOD_NOT_ALLOWED, "method not allowed");
    if (strcmp(req->path, "/users") == 0)
        return app_http_users(h, conn, req);
    if (strcmp(req->path, "/readyz") == 0)
        return app_http_readyz(h, conn, req);
    return app_http_text(h, conn, req, MHD_HTTP_OK, "ok");
}

static enum MHD_Result app_http_access(void *cls, struct MHD_Connection *conn, const char *url,
                                       const char *method, const char *version,
                                       const char *upload_data, size_t *upload_data_size,
                                       void **req_cls)
{
    (void)version;
    (void)upload_data;
    app_http_t *h = cls;
    if (!*req_cls) {
        /* First call: headers only. Counting here makes the drain wait for this request. */
        app_http_req_t *req = app_xcalloc(1, sizeof *req);
        clock_gettime(CLOCK_MONOTONIC, &req->start);
        req->method = app_xstrdup(method);
        req->path = app_xstrdup(url);
        atomic_fetch_add(&h->inflight, 1);
        *req_cls = req;
        return MHD_YES;
    }
    if (*upload_data_size) {
        /* No route takes a body: drop it, answer once it is all read. */
        *upload_data_size = 0;
        return MHD_YES;
    }
    return app_http_route(h, conn, *req_cls);
}

static void app_http_completed(void *cls, struct MHD_Connection *conn, void **req_cls,
                               enum MHD_RequestTerminationCode toe)
{
    (void)conn;
    app_http_t *h = cls;
    app_http_req_t *req = *req_cls;
    if (!req)
        return;
    app_log_request(req->method, req->path, req->status, app_http_elapsed_ms(&req->start),
                    toe != MHD_REQUEST_TERMINATED_COMPLETED_OK);
    free(req->method);
    free(req->path);
    free(req);
    *req_cls = NULL;
    atomic_fetch_sub(&h->inflight, 1);
}

static void app_http_mhd_log(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    char msg[512];
    vsnprintf(msg, sizeof msg, fmt, ap);
    /* libmicrohttpd 0.9.75 says this even when the logger is the first option. */
    if (strstr(msg, "EXTERNAL_LOGGER is not the first option"))
        return;
    size_t n = strlen(msg);
    while (n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == ' '))
        msg[--n] = '\0';
    app_log_warn("http.error", "reason", msg);
}

app_http_t *app_http_start(const struct sockaddr_storage *addr, app_db_t *db, const char *slot,
                           const char *role)
{
    app_http_t *h = app_xcalloc(1, sizeof *h);
    h->db = db;
    h->slot = slot;
    h->role = role;
    /* One thread per connection: handlers block on libpq, which a sample application may do.
     * ITC makes MHD_quiesce_daemon possible, the first step of a graceful stop. */
    unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD |
                     MHD_USE_POLL | MHD_USE_ITC | MHD_USE_ERROR_LOG;
    if (addr->ss_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    h->daemon = MHD_start_daemon(flags, 0, NULL, NULL, app_http_access, h, MHD_OPTION_SOCK_ADDR,
                                 addr, MHD_OPTION_NOTIFY_COMPLETED, app_http_completed, h,
                                 MHD_OPTION_EXTERNAL_LOGGER, app_http_mhd_log, NULL,
                                 MHD_OPTION_CONNECTION_LIMIT, 512u, MHD_OPTION_CONNECTION_TIMEOUT,
                                 60u, MHD_OPTION_LISTENING_ADDRESS_REUSE, 1u, MHD_OPTION_END);
    if (!h->daemon) {
        app_log_error("http.listen.failed", "reason", "cannot bind or start the HTTP server");
        free(h);
        return NULL;
    }
    return h;
}

uint16_t app_http_port(const app_http_t *h)
{
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(h->daemon, MHD_DAEMON_INFO_BIND_PORT);
    return info ? info->port : 0;
}

static unsigned app_http_connections(app_http_t *h)
{
    const union MHD_DaemonInfo *info =
        MHD_get_daemon_info(h->daemon, MHD_DAEMON_INFO_CURRENT_CONNECTIONS);
    return info ? info->num_connections : 0;
}

int app_http_stop(app_http_t *h, int drain_ms)
{
    atomic_store(&h->draining, true);
    MHD_socket listener = MHD_quiesce_daemon(h->daemon);
    /* A quiesced socket still completes handshakes into its backlog, where clients would hang
     * until the stop; shutting it down refuses them at once, so a proxy fails over to the other
     * slot. The descriptor stays open until MHD's thread has surely let go of it. */
    if (listener != MHD_INVALID_SOCKET) {
        struct timespec settle = {0, 20 * 1000000L};
        nanosleep(&settle, NULL);
        shutdown(listener, SHUT_RDWR);
    }
    /* Idle keep-alive connections may still carry one more request; give them a short grace
     * once nothing is in flight, then stop (MHD_stop_daemon shuts the sockets down). */
    const int step_ms = 20, idle_grace_ms = 500;
    int waited = 0, idle = 0;
    while (waited < drain_ms) {
        if (atomic_load(&h->inflight) == 0) {
            if (app_http_connections(h) == 0 || idle >= idle_grace_ms)
                break;
            idle += step_ms;
        } else {
            idle = 0;
        }
        struct timespec ts = {0, step_ms * 1000000L};
        nanosleep(&ts, NULL);
        waited += step_ms;
    }
    int left = atomic_load(&h->inflight);
    MHD_stop_daemon(h->daemon);
    if (listener != MHD_INVALID_SOCKET)
        close(listener);
    free(h);
    return left;
}
