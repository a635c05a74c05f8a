/* health.h: /healthz, /readyz and /metrics over HTTP on the loop, served by GNU libmicrohttpd in
 * external-select mode: its epoll fd is watched by a uv_poll and its timeout by a uv_timer. */
#ifndef ROTOR_HEALTH_H
#define ROTOR_HEALTH_H

#include <uv.h>

typedef struct health_s health_t;

/* Returns 1 when ready (consumer assigned, journal connected), else 0, and a short reason. */
typedef int (*health_ready_fn)(void *arg, const char **reason);

/* Listens on listen ("127.0.0.1:9464", ":9464", "[::1]:9464"; port 0 picks one). ready/arg are
 * borrowed. Returns 0 and *out or a negative error. */
int health_start(uv_loop_t *loop, const char *listen, health_ready_fn ready, void *arg,
                 health_t **out);

/* The bound port. */
int health_port(const health_t *h);

/* Stops serving; memory freed in the close callbacks. */
void health_stop(health_t *h);

#endif
