/* rotation_int.h: what the engine's own files share (rotation.c: the state machine and
 * lifetime; stage.c: each stage's effect through the drivers; command.c: commands from Kafka).
 * Not for other modules: they use rotation.h. */
#ifndef ROTOR_ROTATION_INT_H
#define ROTOR_ROTATION_INT_H

#include <jansson.h>
#include <stdbool.h>
#include <uv.h>

#include "db.h"
#include "deploy.h"
#include "log.h"
#include "probe.h"
#include "rotation.h"
#include "seen.h"
#include "store.h"

/* Where a stage goes when it ends. Targets below 0 are terminal statuses. */
enum { T_COMPLETED = -1, T_ROLLED_BACK = -2 };
typedef enum { ON_OK, ON_APPROVED, ON_REJECTED, ON_PROBE_FAILED } trans_event_t;

typedef enum { IF_ANY, IF_GATE_SWAP, IF_GATE_RETIRE, IF_SWAPPED, IF_NOT_SWAPPED } trans_guard_t;

typedef struct {
    const cfg_secret_t *cfg;
    store_t *store;
    deploy_t *deploy; /* NULL for the kinds without a driver (none, external) */
    char *dsn;        /* admin DSN (may hold a password): wiped on free */
    char *dsn_entra;  /* database.entra_token: dsn with the current Entra token as password */
    engine_t *eng;
    /* The secret's active slot as this process last saw it journaled (registration, or a
     * rotation of it that ended here); -1 when unknown. A request creates its rotation from it
     * without reading the journal first: the insert itself checks it (journal_create). */
    int active;
    /* The last command (its event id) logged as waiting for this secret's partition claim:
     * a command retried every second is logged once. */
    char unclaimed_logged[64];
} secret_ctx_t;

typedef struct rotation_s rotation_t;
struct cmd_s; /* command.c */

#define ENGINE_SEEN_MAX 4096

struct engine_s {
    uv_loop_t *loop;
    const rotor_config_t *cfg;
    journal_t *journal;
    char *source;
    bool (*owns)(void *arg, const char *secret);
    void *owns_arg;
    bool (*fence)(void *arg, const char *secret, journal_fence_t *out);
    void (*fenced)(void *arg, const journal_fence_t *f);
    bool (*claim_pending)(void *arg, const char *secret, int32_t *part);
    rotation_t *leaving; /* let go or finished, callbacks still to come (fence.c) */
    store_deps_t deps;   /* shared by the drivers: HTTP client, Entra credential */
    secret_ctx_t *secrets;
    size_t nsecrets;
    rotation_t *rotations;
    engine_ready_cb ready_cb;
    void *ready_arg;
    int registering; /* secrets still being registered at start-up */
    bool stopping;
    void (*stop_cb)(void *arg);
    void *stop_arg;
    uv_timer_t stop_timer;      /* polls for in-flight work to reach the journal */
    uv_timer_t stop_deadline;   /* bounds that wait */
    uv_timer_t load_timer;      /* retries loading the open rotations */
    uv_timer_t cmd_timer;       /* re-handles a command that arrived during a write */
    struct cmd_s *deferred_cmd; /* those commands (command.c's cmd_t), a queue in arrival order */
    int handles_open;
    /* Request ids the journal holds as applied (command.c): a redelivered request of a rotation
     * running here is answered without a round trip. ENGINE_SEEN_MAX entries, the oldest go. */
    seen_t *seen;
};

struct rotation_s {
    journal_rot_t row;  /* what the journal holds; row.seq is the compare-and-set token */
    journal_rot_t next; /* the row being written, while `writing` */
    engine_t *eng;
    secret_ctx_t *sec;
    uv_timer_t timer;    /* next attempt, soak, approval deadline, drain */
    uv_timer_t deadline; /* the running attempt's timeout */
    bool writing;
    struct cmd_s *cmd; /* command.c's cmd_t whose write (of r->next) is in flight, or NULL */
    /* The command the next rot_persist applies (its event id and type, borrowed from the
     * command's event): recorded with the write, which is refused if the id was applied before.
     * rot_persist clears them. */
    const char *cmd_event_id;
    const char *cmd_type;
    unsigned token;         /* the current effect; callbacks carrying another token are stale */
    int inflight;           /* callbacks still to come; the rotation is freed only at zero */
    int handles;            /* uv handles not yet closed */
    bool gone;              /* removed from the engine; free when inflight and handles are zero */
    bool draining;          /* retire's drain timer holds a ticket (inflight) */
    bool letting_go;        /* no longer owned here: removed once its write is done (fence.c) */
    bool release;           /* when freed, release its running attempt in the journal */
    bool orphan;            /* the engine was freed first: nothing to unlink or release */
    bool awaiting_previous; /* waiting for a previous owner's attempt (logged once) */
    /* The stages whose end is being written, in order: one, or more when a write also ends
     * stages with nothing to do (deploy none; approve mode auto with soak 0). */
    rotor_stage_t finished[4];
    int nfinished;
    bool next_starts;   /* r->next, being written, also starts the next stage's attempt */
    bool fresh_attempt; /* r->row is a running attempt journaled here whose effect has not begun */
    bool setdb_checked; /* set-db: this attempt asked whether the password is set already */
    db_req_t *dbreq;
    store_req_t *storereq;           /* the store's request in flight (one at a time) */
    deploy_req_t *deployreq;         /* the deploy driver's request in flight */
    probe_req_t *probereq;           /* probes of the current effect, or of the soak */
    int verify_pending;              /* verify: checks still running (login, probes) */
    void (*ext_next)(rotation_t *r); /* external: what follows the pipeline's answer */
    bool ext_early; /* external: the pipeline answered before rotor began waiting */
    int ext_early_status;
    char ext_early_reason[512];
    int64_t attempt_started_ms;
    /* The running attempt's deadline (epoch ms): store requests end by it. */
    int64_t attempt_until_ms;
    int64_t took_ms; /* the attempt being journaled took this long; -1: its start was not seen */
    long sessions_ended;
    bool login_unproved_warned; /* prepare.login_not_proved logged (once per rotation) */
    rotation_t *next_rot;
};

typedef void (*persisted_fn)(rotation_t *r, int status);

/* rotation.c: lifetime and journal writes */
rotation_t *rot_add(engine_t *e, secret_ctx_t *sec, const journal_rot_t *row);
void rot_remove(rotation_t *r);
/* Frees a removed rotation once no callback or handle can reach it any more. */
void rot_maybe_free(rotation_t *r);
rotation_t *rot_find(engine_t *e, const char *id);
rotation_t *rot_of_secret(engine_t *e, const char *secret);
secret_ctx_t *rot_secret_ctx(engine_t *e, const char *name);
/* Writes r->next over r->row by compare-and-set; steals hist and outbox. */
void rot_persist(rotation_t *r, json_t *hist, json_t *outbox, persisted_fn then);
void rot_after_write(rotation_t *r, int status);
void rot_on_effect_persisted(rotation_t *r, int status);
void rot_reload(rotation_t *r);
void rot_step(rotation_t *r);
void rot_on_timer(uv_timer_t *t);
void rot_stop_effect(rotation_t *r);
/* The current attempt's effect ended (status 0 or negative with reason). */
void rot_effect_done(rotation_t *r, int status, const char *reason);
void rot_approve_decided(rotation_t *r, trans_event_t on, const char *actor, const char *why,
                         persisted_fn then);

/* rotation.c: helpers */
void rot_crash_point(const rotation_t *r, const char *point);
/* The same at a point of another stage than r's (approve:done after a decision). */
void rot_crash_point_at(const rotation_t *r, rotor_stage_t stage, const char *point);
/* abort:<point> (the abort command's write is not a stage's). */
void rot_crash_point_named(const rotation_t *r, const char *here);
const cfg_stage_policy_t *rot_policy(const rotation_t *r);
const char *rot_role(const rotation_t *r, rotor_slot_t s);
const char *rot_store_name(const rotation_t *r, rotor_slot_t s);
/* The admin DSN the database driver uses now (with the Entra token when so configured). */
const char *rot_admin_dsn(const rotation_t *r);
void rot_log(log_level_t lvl, const char *msg, const rotation_t *r, const char *k1, const char *v1);
char *rot_itoa(char *buf, size_t len, long long v);
/* Adds an event rotor emits to an outbox array; steals data. */
void rot_outbox_add(engine_t *e, json_t *outbox, const char *type, const char *secret,
                    const char *traceparent, json_t *data);
json_t *rot_data(const journal_rot_t *row);
json_t *rot_history(const journal_rot_t *row, const char *outcome, const char *actor,
                    int64_t duration_ms, const char *error, const char *request_id);

/* fence.c: ownership. The claim under which this process writes secret's rotations (false when
 * not owned). */
bool rot_fence(engine_t *e, const char *secret, journal_fence_t *out);
/* Before a write of r->next: sets its claim and, for a new attempt, its deadline (now +
 * timeout_ms). false = not owned: the write must not be made. */
bool rot_fence_write(rotation_t *r, uint64_t timeout_ms);
/* The claim r's last write was made under is still this process's claim (before an effect). */
bool rot_fence_holds(const rotation_t *r);
/* r's row is running under another claim whose attempt may still run: arms a re-read and
 * returns true (start nothing); false when r may start its own attempt. */
bool rot_wait_previous_owner(rotation_t *r);
/* This process no longer owns r's secret: cancels r's effect and removes it; a running attempt
 * is released in the journal once nothing of it runs any more (rot_left). */
void rot_let_go(rotation_t *r, const char *why);
/* A removed rotation is about to be freed: unlinks it from the engine's leaving list and sends
 * its release. */
void rot_left(rotation_t *r);
/* Whether a removed rotation with this id still has callbacks to come. */
bool rot_leaving(engine_t *e, const char *id);
/* rotation.c: loads the open rotations again on the next loop turn. */
void rot_load_soon(engine_t *e);

/* stage.c: starts the effect of r's current stage; it ends in rot_effect_done(). */
void stage_run(rotation_t *r);
/* stage.c: what a deploy action of r's current stage is about (the slot, its role, store name
 * and version). Borrowed pointers into r. */
void stage_deploy_ctx(const rotation_t *r, deploy_ctx_t *ctx);
/* stage.c: true when r's current stage hands a deploy action to a pipeline (kind external). */
bool stage_is_external(const rotation_t *r);
/* stage.c: the same for stage st of r's secret. */
bool stage_external_at(const rotation_t *r, rotor_stage_t st);
/* stage.c: a pipeline's answer for r's current stage. Returns false when r is not waiting for
 * one (the answer is out of place). */
bool stage_external_answer(rotation_t *r, int status, const char *reason);
/* stage.c: stops a deploy request, an external wait or probes of the current effect. */
void stage_cancel_deploy(rotation_t *r);
/* stage.c: the auto approval's soak with production probes: watches them until r->row.next_at;
 * approves when they keep passing, rolls back when one fails. */
void stage_soak(rotation_t *r);

#endif
