/* app_http.h: the sample application's HTTP side (GNU libmicrohttpd, one thread per connection):
 * GET /users, /healthz and /readyz, an access log line per request, and a graceful stop. */
#ifndef SAMPLE_APP_HTTP_H
#define SAMPLE_APP_HTTP_H

#include <netinet/in.h>
#include <stdint.h>

#include "app_db.h"

typedef struct app_http app_http_t;

/* Starts serving on addr (an IPv4 or IPv6 socket address). slot and role are borrowed and db is
 * borrowed; all must outlive app_http_stop. Returns NULL (after logging why) when it cannot
 * listen. */
app_http_t *app_http_start(const struct sockaddr_storage *addr, app_db_t *db, const char *slot,
                           const char *role);

/* The port actually bound (useful with port 0). */
uint16_t app_http_port(const app_http_t *h);

/* Stops accepting, lets in-flight requests finish (up to drain_ms), then stops and frees h.
 * Returns the number of requests still running when the drain time ran out. */
int app_http_stop(app_http_t *h, int drain_ms);

#endif
