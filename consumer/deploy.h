/* deploy.h: the deploy driver interface (prefix deploy_). A driver acts on the application's
 * slots and knows nothing of Kafka or the journal: `none` (credential-only rotation; the engine
 * writes the store's `current` entry), `exec` (deploy_exec.c: a command per action),
 * `kubernetes` (deploy_kubernetes.c). The `external` kind is the engine's own: it publishes
 * stage.requested and awaits the pipeline's stage.completed, so it has no driver here.
 *
 * Every action is a request: it returns 0 and calls cb exactly once, later, on the loop; or
 * returns a negative error and never calls it. Each action compares desired with observed state
 * and is harmless to repeat. */
#ifndef ROTOR_DEPLOY_H
#define ROTOR_DEPLOY_H

#include <uv.h>

#include "config.h"
#include "http.h"

typedef struct deploy_s deploy_t;
typedef struct deploy_req_s deploy_req_t;

/* What an action is about; all borrowed for the call (copied where kept). Never a password. */
typedef struct {
    const char *rotation_id;
    const char *secret;     /* managed secret name */
    rotor_slot_t slot;      /* the slot the action brings up, points at, or retires */
    const char *role;       /* that slot's database role */
    const char *store_name; /* that slot's secret name in the store */
    const char *version;    /* the store version the slot must read ("" if not known) */
} deploy_ctx_t;

typedef void (*deploy_cb)(void *arg, int status, const char *reason);
/* observed: the slot production points at now, or -1 when the driver cannot tell. */
typedef void (*deploy_observe_cb)(void *arg, int status, int observed, const char *reason);

typedef struct {
    /* deploy: bring ctx->slot up reading ctx->version and wait until it is ready. */
    int (*deploy)(deploy_t *d, const deploy_ctx_t *ctx, deploy_cb cb, void *arg,
                  deploy_req_t **out);
    /* swap: point production at ctx->slot and wait until production serves only from it. */
    int (*swap)(deploy_t *d, const deploy_ctx_t *ctx, deploy_cb cb, void *arg, deploy_req_t **out);
    /* retire: scale ctx->slot (the old one) to zero. */
    int (*retire)(deploy_t *d, const deploy_ctx_t *ctx, deploy_cb cb, void *arg,
                  deploy_req_t **out);
    /* rollback: point production back at ctx->slot (the old one) and scale the other down. */
    int (*rollback)(deploy_t *d, const deploy_ctx_t *ctx, deploy_cb cb, void *arg,
                    deploy_req_t **out);
    /* prepare's check: which slot production points at now. */
    int (*observe)(deploy_t *d, const deploy_ctx_t *ctx, deploy_observe_cb cb, void *arg,
                   deploy_req_t **out);
    /* Cancels a pending request: its callback runs with ROTOR_ECANCELED. */
    void (*cancel)(deploy_req_t *r);
    /* Frees the driver; no request may be pending. */
    void (*close)(deploy_t *d);
} deploy_ops_t;

struct deploy_s {
    const deploy_ops_t *ops;
    uv_loop_t *loop;
    const cfg_secret_t *cfg; /* borrowed; outlives the driver */
};

/* Opens the driver configured for sec; *out is NULL for kinds without a driver (none,
 * external). Returns 0 or a negative error with err set. */
int deploy_open(uv_loop_t *loop, const cfg_secret_t *sec, http_t *http, deploy_t **out, char *err,
                size_t errlen);

/* The drivers' constructors, which deploy_open dispatches to (same contract). sec is borrowed
 * and must outlive the driver; the caller owns *out and frees it with ops->close. */
int deploy_exec_open(uv_loop_t *loop, const cfg_secret_t *sec, http_t *http, deploy_t **out,
                     char *err, size_t errlen);
int deploy_kubernetes_open(uv_loop_t *loop, const cfg_secret_t *sec, http_t *http, deploy_t **out,
                           char *err, size_t errlen);

#endif
