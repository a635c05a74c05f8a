/* rotation.h: the rotation engine (prefix engine_): the state machine that alone moves the
 * journal. Drivers do one effect each and report back; every transition is a compare-and-set
 * write that carries its history line and its outbox events in the same statement.
 *
 * A stage's attempt: pending -> running (journaled, stage.started) -> effect -> pending at the
 * next stage (journaled, stage.completed), or, on error, pending again after a backoff, or failed
 * once the attempts are spent. approve waits (status waiting) for a decision or a soak time. */
#ifndef ROTOR_ROTATION_H
#define ROTOR_ROTATION_H

#include <stdbool.h>
#include <uv.h>

#include "config.h"
#include "event.h"
#include "journal.h"
#include "kv_event.h"

typedef struct engine_s engine_t;

typedef struct {
    uv_loop_t *loop;
    const rotor_config_t *cfg; /* borrowed; outlives the engine */
    journal_t *journal;        /* borrowed; opened and migrated */
    const char *source;        /* CloudEvents source of what rotor emits (copied) */
    /* Whether this process owns the secret (its commands partition is assigned here). */
    bool (*owns)(void *arg, const char *secret);
    void *owns_arg;
    /* The claim under which this process writes the secret's rotations (fencing), with owns_arg;
     * false when it does not own the secret (then it writes nothing for it). */
    bool (*fence)(void *arg, const char *secret, journal_fence_t *out);
    /* The journal refused a write made under f (another process claimed the partition). */
    void (*fenced)(void *arg, const journal_fence_t *f);
    /* The secret's partition is assigned here but not claimed (the claim is still to come or
     * failed, or another process claimed it since); *part is -1 while the partition count is not
     * known yet (then true as well). With owns_arg; NULL: never. A command for such a secret
     * waits (its owner is not settled) instead of being refused. */
    bool (*claim_pending)(void *arg, const char *secret, int32_t *part);
} engine_opts_t;

/* Opens each secret's store, resolves each admin DSN, registers the secrets in the journal and
 * loads the open rotations this process owns. cb runs once when ready (status 0) or failed. */
typedef void (*engine_ready_cb)(engine_t *e, int status, const char *reason, void *arg);
int engine_start(const engine_opts_t *opts, engine_ready_cb cb, void *arg, engine_t **out,
                 char *err, size_t errlen);

/* Handles one valid input event (borrowed until cb runs). cb status: 0 = its effect is in the
 * journal (commit the offset); ROTOR_EINVALID = the event cannot be used (dead-letter it with
 * reason); ROTOR_EDB = the journal is unavailable (try the same event again later). */
typedef void (*engine_cmd_cb)(void *arg, int status, const char *reason);
int engine_command(engine_t *e, const event_t *ev, engine_cmd_cb cb, void *arg);

/* Handles one Key Vault event (borrowed until cb runs): requests a rotation through the
 * commands topic when the version production uses nears or passes its expiry, reports a version
 * someone else wrote as secret.changed-out-of-band, records and ignores the rest. cb status: 0 =
 * handled; ROTOR_ESTORE = the vault did not answer in time (reason says so: try again a few times,
 * then give up); ROTOR_EDB = the journal is unavailable (try the event again later). */
int engine_keyvault_event(engine_t *e, const kv_event_t *ev, engine_cmd_cb cb, void *arg);

/* Ownership changed: load the open rotations of newly owned secrets; let go of the others:
 * their in-flight effects are cancelled, and a running attempt is released in the journal once
 * nothing of it runs any more, so that the new owner starts its own at once. */
void engine_rebalanced(engine_t *e);

/* True if the secret has an open rotation in this process. */
bool engine_has_open(engine_t *e, const char *secret);

/* Graceful stop: start no new attempt; wait for in-flight effects to reach a journaled point;
 * past timeout_ms cancel what is left (it resumes on the next start). done runs once. */
void engine_stop(engine_t *e, uint64_t timeout_ms, void (*done)(void *arg), void *arg);

/* Frees the engine after engine_stop's done callback. */
void engine_free(engine_t *e);

/* Number of rotations this process holds open (for metrics and readiness). */
int engine_open_count(engine_t *e);

/* The transition table as a Mermaid state diagram (malloc'ed; the caller frees). docs/ shows it
 * and a test holds the two together. */
char *engine_diagram(void);

#endif
