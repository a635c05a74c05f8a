/* store.h: the secret store interface (prefix store_). One store_t per managed secret; a driver
 * behind a small table of operations: `file` (store_file.c, the embedded default laid out like a
 * Key Vault CSI mount) and `azure-keyvault` (store_keyvault.c).
 *
 * Every operation is a request: it returns 0 and calls its callback exactly once, later, on the
 * loop thread; or returns a negative error and never calls it. Values travel as rotor_secret_t.
 *
 * Every operation also takes:
 * - deadline_ms: the epoch ms by which the request must be over (the engine passes the deadline
 *   of the attempt it belongs to), or 0 for none. A driver never starts a retry, or a wait for
 *   its rate limiter, that would end past it: it fails instead, with its last error and "gave
 *   up: the attempt's deadline".
 * - out: when not NULL, receives the request's handle (valid until its callback returns), for
 *   ops->cancel. Set only when the operation returns 0. */
#ifndef ROTOR_STORE_H
#define ROTOR_STORE_H

#include <stdint.h>
#include <uv.h>

#include "azure_auth.h"
#include "config.h"
#include "http.h"
#include "secret.h"

typedef struct store_s store_t;
typedef struct store_req_s store_req_t;

/* Tags written with a version, and read back to find the version of a rotation. */
typedef struct {
    const char *rotation_id;
    const char *slot;
    const char *role;
} store_tags_t;

/* version: the version id (borrowed, valid during the callback), NULL when none was found.
 * reason: borrowed, set when status < 0. */
typedef void (*store_version_cb)(void *arg, int status, const char *version, const char *reason);
/* value: owned by the callee (secret_free it), NULL when status < 0. version: borrowed. */
typedef void (*store_value_cb)(void *arg, int status, rotor_secret_t *value, const char *version,
                               const char *reason);
typedef void (*store_done_cb)(void *arg, int status, const char *reason);

typedef struct {
    /* The enabled version of `name` tagged with rotation_id, if any (NULL version if none). */
    int (*find)(store_t *s, const char *name, const char *rotation_id, store_version_cb cb,
                void *arg, int64_t deadline_ms, store_req_t **out);
    /* Writes value (borrowed for the call) as a new version of `name`, tagged, expiring at
     * exp_ms (epoch ms), and makes it the current one. */
    int (*put)(store_t *s, const char *name, const rotor_secret_t *value, const store_tags_t *tags,
               int64_t exp_ms, store_version_cb cb, void *arg, int64_t deadline_ms,
               store_req_t **out);
    /* Reads `version` of name, or the current version when version is NULL. ROTOR_ENOTFOUND if
     * there is none. */
    int (*get)(store_t *s, const char *name, const char *version, store_value_cb cb, void *arg,
               int64_t deadline_ms, store_req_t **out);
    /* The id of the current (latest enabled) version of name; NULL if none is tracked. */
    int (*current)(store_t *s, const char *name, store_version_cb cb, void *arg,
                   int64_t deadline_ms, store_req_t **out);
    /* Disables a version: it can no longer be read; if it was current, name has no current
     * value afterwards. Disabling a disabled or unknown version is not an error. */
    int (*disable)(store_t *s, const char *name, const char *version, store_done_cb cb, void *arg,
                   int64_t deadline_ms, store_req_t **out);
    /* Writes the `current` entry (role and password of the active slot, JSON) atomically.
     * value is borrowed for the call. */
    int (*write_current)(store_t *s, const char *name, const rotor_secret_t *value,
                         store_done_cb cb, void *arg, int64_t deadline_ms, store_req_t **out);
    /* Cancels a pending request, as db_cancel and a deploy driver's cancel do: its callback runs
     * once with ROTOR_ECANCELED, later, on the loop (never from within this call), and no further
     * effect of it is started: azure-keyvault aborts the HTTP request in flight (one already sent
     * may still have reached the vault), its retry timer and its wait for the write limiter;
     * file, whose work takes milliseconds on the threadpool, takes it off the queue if it has not
     * started, else lets it finish and drops the result. Must not be called after the callback
     * ran. */
    void (*cancel)(store_t *s, store_req_t *req);
    /* Frees the store; no request may be pending. */
    void (*close)(store_t *s);
} store_ops_t;

struct store_s {
    const store_ops_t *ops;
    uv_loop_t *loop;
    const cfg_secret_t *cfg; /* borrowed; outlives the store */
};

/* What drivers may share with the rest of the process (borrowed; outlive the store). Either may
 * be NULL when no configured secret needs it. */
typedef struct {
    http_t *http;       /* HTTP client on the loop */
    azure_cred_t *cred; /* Entra ID credential */
} store_deps_t;

/* Opens the store configured for sec. Returns 0 and *out or a negative error with err set. */
int store_open(uv_loop_t *loop, const cfg_secret_t *sec, const store_deps_t *deps, store_t **out,
               char *err, size_t errlen);

/* Driver constructors (store_open dispatches on cfg->store.kind). */
int store_file_open(uv_loop_t *loop, const cfg_secret_t *sec, const store_deps_t *deps,
                    store_t **out, char *err, size_t errlen);
int store_keyvault_open(uv_loop_t *loop, const cfg_secret_t *sec, const store_deps_t *deps,
                        store_t **out, char *err, size_t errlen);

/* The file store's directory as rotor requires it: an existing directory (rotor never creates
 * it), not a symbolic link, owned by the effective uid, writable by it and by no one else. Blocks
 * on the file system: start-up and the CLI only. Returns 0, or ROTOR_ESTORE with err naming
 * store.dir and what was found. */
int store_file_check(const char *dir, char *err, size_t errlen);

#endif
