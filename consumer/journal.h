/* journal.h: the PostgreSQL journal (schema `rotor`): versioned migrations, one row per rotation
 * moved only by compare-and-set, an append-only history (the audit trail) and the transactional
 * outbox. Every write is ONE SQL statement: the row change, its history line and its outbox
 * events commit together or not at all, and history and events are written only when the
 * compare-and-set wins.
 *
 * All requests run FIFO on one connection; each calls its callback exactly once, later. */
#ifndef ROTOR_JOURNAL_H
#define ROTOR_JOURNAL_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "rotor.h"

typedef struct journal_s journal_t;

/* Status of a rotation row. OPEN statuses hold the per-secret lock (partial unique index). */
typedef enum {
    RS_PENDING = 0, /* the stage's next attempt starts at next_at */
    RS_RUNNING,     /* an attempt's effect is in progress */
    RS_WAITING,     /* approve: waiting for a decision or for the soak to end */
    RS_FAILED,      /* gave up; visible until `rotor retry` or `rotor abort` */
    RS_COMPLETED,   /* terminal */
    RS_ROLLED_BACK, /* terminal */
    RS_ABORTED,     /* terminal */
    RS__COUNT
} journal_status_t;

const char *journal_status_name(journal_status_t s);
int journal_status_parse(const char *name, journal_status_t *out);
bool journal_status_open(journal_status_t s);

/* Who may write a rotation (fencing): the claim on the commands partition its secret maps to,
 * made by journal_claim. A write counts only while rotor.owners still holds this claim (same
 * instance, same epoch) and no claim counts more partitions of the commands topic. epoch 0 = no
 * claim: the write is refused. */
typedef struct {
    int32_t part;
    int32_t nparts; /* the partition count the claim was made under */
    int64_t epoch;
} journal_fence_t;

/* One rotation row. Plain data: fixed buffers, no ownership. */
typedef struct {
    char id[37];
    char secret[128];
    rotor_stage_t stage;
    journal_status_t status;
    int seq; /* compare-and-set token: an update names the seq it read */
    int attempt;
    rotor_slot_t from_slot, to_slot;
    bool swapped; /* production points at to_slot */
    char trigger[16];
    char request_id[128];
    char reason[1025];
    char error[2049];
    char traceparent[64];
    char version[129];     /* store version written by generate */
    char old_version[129]; /* from_slot's store version at prepare (retire disables it) */
    char actor[257];       /* who approved, rejected, retried or aborted */
    int64_t next_at_ms;
    int64_t expires_at_ms;
    int64_t created_at_ms;
    /* Fencing. Written: the writer's claim (journal_create, journal_update) and, with status
     * running, the attempt's deadline. Read: the claim the last attempt ran under, and whether
     * the process that ran it still holds its journal session. */
    journal_fence_t fence;
    int64_t run_until_ms; /* status running: no other owner starts an attempt before then */
    int32_t run_part;
    int64_t run_epoch;
    /* the running attempt's journal session (pid and backend_start) is still connected */
    bool run_live;
} journal_rot_t;

/* Connection string of the journal is borrowed for the call. instance names this process
 * (application_name): outbox rows are relayed by the instance that wrote them. */
typedef void (*journal_open_cb)(journal_t *j, int status, const char *reason, void *arg);
int journal_open(uv_loop_t *loop, const char *dsn, const char *instance, journal_open_cb cb,
                 void *arg, journal_t **out);

/* Closes the connection; pending requests complete with ROTOR_ECANCELED. */
void journal_close(journal_t *j);

/* Tests only: the deadlines (ms) of the journal's connecting and of each query once open
 * (defaults 10 s and 30 s); the session's server-side statement_timeout is derived from query_ms
 * (query_ms - max(query_ms / 6, 500)). Call before the open callback has run. */
void journal_set_timeouts(journal_t *j, uint64_t connect_ms, uint64_t query_ms);

/* Called (on the loop) after every commit that added outbox rows. */
void journal_on_outbox(journal_t *j, void (*fn)(void *arg), void *arg);

/* Called (on the loop) when the journal is connected again after losing its connection; fn NULL
 * stops the calls. One listener (the partition claims: owner.c). */
void journal_on_reconnect(journal_t *j, void (*fn)(void *arg), void *arg);

typedef void (*journal_done_cb)(void *arg, int status);

/* Registers a managed secret the first time rotor meets it; active is used only then.
 * Reports the active slot recorded in the journal. */
typedef void (*journal_secret_cb)(void *arg, int status, rotor_slot_t active, int64_t first_seen_ms,
                                  int64_t last_rotated_ms);
int journal_secret(journal_t *j, const char *name, rotor_slot_t active, journal_secret_cb cb,
                   void *arg);

/* journal_secret for n secrets in one statement: registers those not met yet (names[i] with
 * active[i]) and reports, for each secret found, its index in names and when it was first seen
 * and last rotated (0 = never). A secret another replica registers at the same moment may be
 * missing from this answer (it is in the next). names and active are borrowed for the call; rows
 * borrowed during the callback. */
typedef struct {
    int index;
    int64_t first_seen_ms;
    int64_t last_rotated_ms;
} journal_secret_row_t;
typedef void (*journal_secrets_cb)(void *arg, int status, const journal_secret_row_t *rows, int n);
int journal_secrets(journal_t *j, const char *const *names, const rotor_slot_t *active, int n,
                    journal_secrets_cb cb, void *arg);

/* Per secret, the latest rotation that changed the password production uses (completed, or
 * aborted after the swap): when it finished and the VALID UNTIL it set (expires_at; 0 when
 * none), for the expiry gauges. Rows borrowed during the callback. */
typedef struct {
    char secret[128];
    int64_t rotated_ms;
    int64_t valid_until_ms;
} journal_figures_t;
typedef void (*journal_figures_cb)(void *arg, int status, const journal_figures_t *rows, int n);
int journal_secret_figures(journal_t *j, journal_figures_cb cb, void *arg);

/* Open rotations (rows borrowed during the callback). */
typedef void (*journal_rows_cb)(void *arg, int status, const journal_rot_t *rows, int n);
int journal_load_open(journal_t *j, journal_rows_cb cb, void *arg);
/* One rotation by id (n = 0 when unknown). */
int journal_find(journal_t *j, const char *id, journal_rows_cb cb, void *arg);
/* The rotation that a command with this CloudEvent id started or was absorbed into (n = 0 when
 * the id is new). Input is at-least-once: this is how a redelivered request is recognised. */
int journal_by_request(journal_t *j, const char *request_id, journal_rows_cb cb, void *arg);
/* The open rotation of a secret, if any, else the most recent one (n = 0 when none). */
int journal_latest(journal_t *j, const char *secret, journal_rows_cb cb, void *arg);

/* history: a JSON object {trigger, actor, stage, outcome, attempt, duration_ms, error, request_id},
 * or an array of them (written in order)
 * outbox: a JSON array of {topic, key, value (text), headers (object of strings)}.
 * Both borrowed for the call; either may be NULL. */

/* Inserts r as a new rotation if the secret has no open rotation, its active slot is still
 * r->from_slot and no history line names r->request_id (a request already applied). status 0 =
 * created; ROTOR_ECONFLICT = not created (re-read and decide); ROTOR_EFENCED = r->fence no longer
 * holds (another process owns the secret now). */
int journal_create(journal_t *j, const journal_rot_t *r, const char *history, const char *outbox,
                   journal_done_cb cb, void *arg);

/* Writes r over the row whose seq is still r->seq (and bumps it). status 0 = written;
 * ROTOR_ECONFLICT = the row moved on; ROTOR_EFENCED = r->fence no longer holds. A terminal status
 * records the finish time and, for completed (or aborted after the swap), makes to_slot the
 * secret's active slot. */
int journal_update(journal_t *j, const journal_rot_t *r, const char *history, const char *outbox,
                   journal_done_cb cb, void *arg);

/* journal_update that applies a command (an operator's decision): event_id and type (its
 * CloudEvents id and type, borrowed for the call) are recorded in rotor.commands in the same
 * statement, and the write is refused when that id was applied to r before. status as for
 * journal_update, or ROTOR_EALREADY = applied before, nothing written. event_id NULL =
 * journal_update. */
int journal_update_command(journal_t *j, const journal_rot_t *r, const char *event_id,
                           const char *type, const char *history, const char *outbox,
                           journal_done_cb cb, void *arg);

/* Claims partition part of the commands topic for this instance (fencing): bumps the
 * partition's epoch in rotor.owners, which refuses every later write made under an earlier
 * claim. held: the epoch this process claimed last (0 = none); if rotor.owners still records
 * it, nobody took the partition over meanwhile and the claim keeps it, so that writes in flight
 * across a rebalance that gives the partition back are not refused. Reports the epoch. */
typedef void (*journal_claim_cb)(void *arg, int status, int64_t epoch);
int journal_claim(journal_t *j, int32_t part, int32_t nparts, int64_t held, journal_claim_cb cb,
                  void *arg);

/* Gives up a running attempt this instance started under (part, epoch): the row stays running
 * (seq bumped) but with no deadline, so its new owner starts its own attempt at once. history
 * as for journal_update (borrowed). status ROTOR_ECONFLICT = not running under that claim. */
int journal_release(journal_t *j, const char *id, int32_t part, int64_t epoch, const char *history,
                    journal_done_cb cb, void *arg);

/* History and events about rotation id without a state change (absorbed duplicates, a
 * pipeline's answer). event_id (may be NULL) and type name the command noted: the note is written
 * once per event id and rotation (rotor.commands); status ROTOR_EALREADY = noted before, nothing
 * written. All strings borrowed for the call. */
int journal_note(journal_t *j, const char *id, const char *event_id, const char *type,
                 const char *history, const char *outbox, journal_done_cb cb, void *arg);

/* Whether the command event_id was applied to rotation rotation_id (a UUID): recorded in
 * rotor.commands, or named by one of its history lines. Strings borrowed for the call. */
typedef void (*journal_applied_cb)(void *arg, int status, bool applied);
int journal_command_applied(journal_t *j, const char *rotation_id, const char *event_id,
                            journal_applied_cb cb, void *arg);
/* journal_note for a request absorbed into rotation id, written only if the journal does not
 * name request_id yet (a rotation it started, a history line, rotor.commands): the lookup of
 * journal_by_request and the note in one round trip. status 0 = noted; ROTOR_ECONFLICT = nothing
 * written (the id is known, or the rotation is not): ask journal_by_request and decide. history
 * and outbox borrowed for the call. */
int journal_absorb(journal_t *j, const char *id, const char *request_id, const char *history,
                   const char *outbox, journal_done_cb cb, void *arg);

/* Records an unusable input message for the dead-letter topic: original key and value bytes,
 * original headers (JSON object, may be NULL) plus the rotor-dlq-* headers. */
int journal_dead_letter(journal_t *j, const char *dlq_topic, const char *topic, int32_t partition,
                        int64_t offset, const void *key, size_t key_len, const void *value,
                        size_t len, const char *headers, const char *reason, journal_done_cb cb,
                        void *arg);

/* Queues events that belong to no rotation (an out-of-band change, a request for the commands
 * topic), in one statement. outbox as for journal_create; borrowed for the call. */
int journal_outbox_add(journal_t *j, const char *outbox, journal_done_cb cb, void *arg);

/* Whether rotor wrote `version` of the secret's store entries (a rotation's version): status 0
 * and n = 1 through journal_rows_cb when it did, n = 0 when not. */
int journal_version_written(journal_t *j, const char *secret, const char *version,
                            journal_rows_cb cb, void *arg);

/* Claims the schedule slot (secret, due) once across all replicas and, if this call won it,
 * queues outbox in the same statement. status 0 = claimed; ROTOR_ECONFLICT = already claimed. */
int journal_schedule_claim(journal_t *j, const char *secret, int64_t due_ms, const char *outbox,
                           journal_done_cb cb, void *arg);

/* Outbox rows not yet sent nor parked, written by this instance (or abandoned for over a minute by
 * another), with id > after_id, oldest first: at most limit rows, and a row only while those
 * before it hold fewer than max_bytes of key, value and headers (as text), so the first always.
 * Rows and their buffers are borrowed during the callback. */
typedef struct {
    int64_t id;
    const char *topic;
    const unsigned char *key;
    size_t key_len;
    const unsigned char *value;
    size_t len;
    const char *headers; /* JSON object of strings, or NULL */
} journal_outbox_row_t;
typedef void (*journal_outbox_cb)(void *arg, int status, const journal_outbox_row_t *rows, int n);
int journal_outbox_fetch(journal_t *j, int64_t after_id, int limit, size_t max_bytes,
                         journal_outbox_cb cb, void *arg);

/* Takes over unsent, unparked rows another instance left for over a minute and that has no
 * journal session any more (a pod replaced under a new name). first_id: the lowest adopted id,
 * 0 when none. */
typedef void (*journal_adopt_cb)(void *arg, int status, int64_t first_id);
int journal_outbox_adopt(journal_t *j, journal_adopt_cb cb, void *arg);

/* Marks rows sent, all in one statement (ids borrowed for the call). */
int journal_outbox_sent(journal_t *j, const int64_t *ids, int n, journal_done_cb cb, void *arg);

/* Parks a row Kafka refuses for good: it is no longer fetched nor adopted until an operator
 * clears parked_at (docs/operations.md). reason is borrowed for the call. */
int journal_outbox_park(journal_t *j, int64_t id, const char *reason, journal_done_cb cb,
                        void *arg);

/* Unsent rows of the whole outbox (every owner): waiting to be published, and parked. */
typedef void (*journal_outbox_stats_cb)(void *arg, int status, int64_t backlog, int64_t parked);
int journal_outbox_stats(journal_t *j, journal_outbox_stats_cb cb, void *arg);

/* 1 while connected. */
int journal_ok(journal_t *j);

/* The migrations, in order (for docs and tests). */
extern const char *const journal_migrations[];
extern const int journal_nmigrations;

#endif
