/* http.h: HTTP client requests on the libuv loop, through libcurl's multi interface
 * (curl_multi_socket_action driven by uv_poll and uv_timer, as curl's docs/examples/multi-uv.c).
 * One http_t per loop; each request is a one-shot http_req_t. TLS is always verified. */
#ifndef ROTOR_HTTP_H
#define ROTOR_HTTP_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

typedef struct http_s http_t;
typedef struct http_req_s http_req_t;

typedef struct {
    const char *method;         /* "GET", "PUT", "PATCH", "POST", "DELETE" */
    const char *url;            /* borrowed for the call (copied) */
    const char *const *headers; /* "Name: value" strings, NULL-terminated; copied */
    const char *body;           /* may be NULL; copied into a buffer wiped after the request
                                 * (a body can carry a password) */
    size_t body_len;
    const char *ca_file;         /* CA bundle to verify the server with; NULL = system store */
    uint64_t timeout_ms;         /* whole request; 0 = 30 s */
    uint64_t connect_timeout_ms; /* 0 = 10 s */
    const char *resolve;         /* optional "host:port:address" pin (curl's CURLOPT_RESOLVE), so
                                  * a test can give 127.0.0.1 a vault-like name; copied */
    const char *service; /* what is asked, for rotor_http_requests_total{service}: "keyvault",
                          * "entra", "kubernetes", "probe"; a borrowed static string; NULL
                          * counts as "other" */
} http_request_t;

typedef struct {
    long status;      /* HTTP status; 0 when the request failed before a response */
    const char *body; /* response body, NUL-terminated (borrowed during the callback, then
                       * wiped: it can carry a password) */
    size_t body_len;
    /* Response headers rotor needs (borrowed during the callback; NULL when absent). */
    const char *www_authenticate;
    const char *retry_after;
    const char *retry_after_ms;      /* "retry-after-ms" */
    const char *x_ms_retry_after_ms; /* "x-ms-retry-after-ms" */
    const char *content_type;
    const char *location;
    const char *error; /* transport error (curl's message) when status is 0 */
} http_response_t;

/* status: 0 when a response arrived (whatever its HTTP status), ROTOR_ETIMEOUT, ROTOR_ECANCELED,
 * or ROTOR_EFAIL for a transport error (res->error says which). res is never NULL. */
typedef void (*http_cb)(void *arg, int status, const http_response_t *res);

/* Creates the multi handle on loop. Fails with ROTOR_EFAIL if libcurl lacks an asynchronous
 * resolver (it would block the loop on DNS). */
int http_init(uv_loop_t *loop, http_t **out);

/* Starts a request. Every request that was started is counted once when it ends, in
 * rotor_http_requests_total{service,code}: code is the HTTP status, or "timeout", "error"
 * (no response) or "canceled". Returns 0 and *out (valid until the callback returns; may be NULL if
 * the caller does not need it), calling cb exactly once, later; or a negative error, never calling
 * cb. */
int http_send(http_t *h, const http_request_t *req, http_cb cb, void *arg, http_req_t **out);

/* Cancels a pending request: cb runs with ROTOR_ECANCELED (possibly from within this call). */
void http_cancel(http_req_t *r);

/* Cancels every pending request and frees the handle once its uv handles are closed. */
void http_close(http_t *h);

/* Milliseconds a server asked to wait (retry-after-ms, x-ms-retry-after-ms, or Retry-After in
 * seconds or as an HTTP date), or 0 when it did not say. Pure. */
uint64_t http_retry_after_ms(const http_response_t *res, int64_t now_ms);

#endif
