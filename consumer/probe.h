/* probe.h: probes (prefix probe_): checks that a slot or production serves. `http` probes
 * request a URL through http.c and judge status and body; `sql` probes log in as the slot's role
 * and run the database probe query (db_verify_login). A probe list passes when every probe has
 * reached its consecutive successes; a probe that keeps failing past its tries fails the list. */
#ifndef ROTOR_PROBE_H
#define ROTOR_PROBE_H

#include <stddef.h>
#include <uv.h>

#include "config.h"
#include "http.h"
#include "secret.h"

typedef struct probe_req_s probe_req_t;

/* What sql probes need: the admin DSN (for host, port and database), the role and its password
 * (borrowed for the call; copied and wiped inside). May be NULL when the list has no sql probe. */
typedef struct {
    const char *dsn;
    const char *role;
    const rotor_secret_t *password;
    const char *query;
} probe_sql_t;

/* status 0 when every probe passed, else negative with reason (which probe, what it saw). */
typedef void (*probe_cb)(void *arg, int status, const char *reason);

/* Runs probes[0..n) (borrowed; outlive the request) concurrently. Each probe tries up to
 * `successes + 4` times, `interval_ms` apart, each try bounded by `timeout_ms`, and passes at
 * `successes` consecutive successes. An empty list passes (asynchronously). Returns 0 and calls
 * cb exactly once, later; or a negative error, never calling it. */
int probe_run(uv_loop_t *loop, http_t *http, const cfg_probe_t *probes, size_t n,
              const probe_sql_t *sql, probe_cb cb, void *arg, probe_req_t **out);

/* Cancels: cb runs with ROTOR_ECANCELED. */
void probe_cancel(probe_req_t *r);

/* Watches probes continuously for duration_ms (the auto approval's soak): passes if no probe
 * fails `successes + 4` consecutive tries in that time; fails at the first probe that does. */
int probe_watch(uv_loop_t *loop, http_t *http, const cfg_probe_t *probes, size_t n,
                uint64_t duration_ms, probe_cb cb, void *arg, probe_req_t **out);

#endif
