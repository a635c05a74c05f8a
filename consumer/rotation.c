/* rotation.c: the rotation engine: state machine, attempts, timeouts, retries, commands. */
#include "rotation.h"

#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backoff.h"
#include "db.h"
#include "log.h"
#include "metrics.h"
#include "password.h"
#include "store.h"
#include "util.h"

/* ---- the transition table --------------------------------------------------------------- */

/* Where a stage goes when it ends. Targets below 0 are terminal statuses. */
enum { T_COMPLETED = -1, T_ROLLED_BACK = -2 };
typedef enum { ON_OK, ON_APPROVED, ON_REJECTED } trans_event_t;
typedef enum { IF_ANY, IF_GATE_SWAP, IF_GATE_RETIRE, IF_SWAPPED, IF_NOT_SWAPPED } trans_guard_t;

typedef struct {
    rotor_stage_t from;
    trans_event_t on;
    trans_guard_t guard;
    int to; /* rotor_stage_t or T_* */
} transition_t;

/* First match wins. Failure, retry and abort apply to every stage and are not listed. */
static const transition_t transitions[] = {
    {STAGE_PREPARE, ON_OK, IF_ANY, STAGE_GENERATE},
    {STAGE_GENERATE, ON_OK, IF_ANY, STAGE_SET_DB},
    {STAGE_SET_DB, ON_OK, IF_ANY, STAGE_DEPLOY},
    {STAGE_DEPLOY, ON_OK, IF_ANY, STAGE_VERIFY},
    {STAGE_VERIFY, ON_OK, IF_GATE_SWAP, STAGE_APPROVE},
    {STAGE_VERIFY, ON_OK, IF_ANY, STAGE_SWAP},
    {STAGE_SWAP, ON_OK, IF_GATE_RETIRE, STAGE_APPROVE},
    {STAGE_SWAP, ON_OK, IF_ANY, STAGE_RETIRE},
    {STAGE_APPROVE, ON_APPROVED, IF_NOT_SWAPPED, STAGE_SWAP},
    {STAGE_APPROVE, ON_APPROVED, IF_SWAPPED, STAGE_RETIRE},
    {STAGE_APPROVE, ON_REJECTED, IF_ANY, STAGE_ROLLBACK},
    {STAGE_RETIRE, ON_OK, IF_ANY, T_COMPLETED},
    {STAGE_ROLLBACK, ON_OK, IF_ANY, T_ROLLED_BACK},
};

static const char *const event_labels[] = {"ok", "approved", "rejected"};
static const char *const guard_labels[] = {"", "gate includes swap", "gate includes retire",
                                           "swapped", "not swapped"};

static bool guard_holds(trans_guard_t g, const cfg_secret_t *cfg, const journal_rot_t *row)
{
    switch (g) {
    case IF_ANY:
        return true;
    case IF_GATE_SWAP:
        return (cfg->approval.gate & GATE_SWAP) != 0;
    case IF_GATE_RETIRE:
        return (cfg->approval.gate & GATE_RETIRE) != 0;
    case IF_SWAPPED:
        return row->swapped;
    case IF_NOT_SWAPPED:
        return !row->swapped;
    }
    return false;
}

static int next_stage(const cfg_secret_t *cfg, const journal_rot_t *row, trans_event_t on)
{
    for (size_t i = 0; i < sizeof transitions / sizeof transitions[0]; i++) {
        const transition_t *t = &transitions[i];
        if (t->from == row->stage && t->on == on && guard_holds(t->guard, cfg, row))
            return t->to;
    }
    return T_COMPLETED; /* unreachable with a complete table; a test checks every stage */
}

static const char *target_name(int to)
{
    return to == T_COMPLETED     ? "completed"
           : to == T_ROLLED_BACK ? "rolled_back"
                                 : rotor_stage_name(to);
}

char *engine_diagram(void)
{
    size_t cap = 8192, used = 0;
    char *out = util_malloc(cap);
    used += (size_t)snprintf(out + used, cap - used, "stateDiagram-v2\n    [*] --> prepare\n");
    for (size_t i = 0; i < sizeof transitions / sizeof transitions[0]; i++) {
        const transition_t *t = &transitions[i];
        const char *from = rotor_stage_name(t->from);
        char fromid[16];
        util_strlcpy(fromid, from, sizeof fromid);
        for (char *p = fromid; *p; p++)
            *p = *p == '-' ? '_' : *p;
        char toid[16];
        util_strlcpy(toid, target_name(t->to), sizeof toid);
        for (char *p = toid; *p; p++)
            *p = *p == '-' ? '_' : *p;
        const char *g = guard_labels[t->guard];
        used += (size_t)snprintf(out + used, cap - used, "    %s --> %s: %s%s%s\n", fromid, toid,
                                 event_labels[t->on], *g ? " / " : "", g);
    }
    used += (size_t)snprintf(out + used, cap - used,
                             "    completed --> [*]\n    rolled_back --> [*]\n"
                             "    note right of prepare\n"
                             "        Every stage on an error retries after a backoff\n"
                             "        and fails once its attempts are spent.\n"
                             "        rotor retry runs a failed stage again.\n"
                             "        rotor abort ends an open rotation as aborted.\n"
                             "    end note\n");
    return out;
}

/* ---- state --------------------------------------------------------------------------------- */

typedef struct {
    const cfg_secret_t *cfg;
    store_t *store;
    char *dsn; /* admin DSN (may hold a password): wiped on free */
} secret_ctx_t;

typedef struct rotation_s rotation_t;

struct engine_s {
    uv_loop_t *loop;
    const rotor_config_t *cfg;
    journal_t *journal;
    char *source;
    bool (*owns)(void *arg, const char *secret);
    void *owns_arg;
    secret_ctx_t *secrets;
    size_t nsecrets;
    rotation_t *rotations;
    engine_ready_cb ready_cb;
    void *ready_arg;
    int registering; /* secrets still being registered at start-up */
    bool stopping;
    void (*stop_cb)(void *arg);
    void *stop_arg;
    uv_timer_t stop_timer;    /* polls for in-flight work to reach the journal */
    uv_timer_t stop_deadline; /* bounds that wait */
    uv_timer_t cmd_timer;     /* re-handles a command that arrived during a write */
    void *deferred_cmd;       /* that command (a cmd_t) */
    void *pending_cmd;        /* the command whose journal write is in flight (one at a time) */
    int handles_open;
};

struct rotation_s {
    journal_rot_t row;  /* what the journal holds; row.seq is the compare-and-set token */
    journal_rot_t next; /* the row being written, while `writing` */
    engine_t *eng;
    secret_ctx_t *sec;
    uv_timer_t timer;    /* next attempt, soak, approval deadline, drain */
    uv_timer_t deadline; /* the running attempt's timeout */
    bool writing;
    unsigned token;         /* the current effect; callbacks carrying another token are stale */
    int inflight;           /* callbacks still to come; the rotation is freed only at zero */
    int handles;            /* uv handles not yet closed */
    bool gone;              /* removed from the engine; free when inflight and handles are zero */
    bool draining;          /* retire's drain timer holds a ticket (inflight) */
    rotor_stage_t finished; /* the stage whose end is being written */
    db_req_t *dbreq;
    int64_t attempt_started_ms;
    long sessions_ended;
    rotation_t *next_rot;
};

static void step(rotation_t *r);

/* ---- fault injection for the crash tests ---------------------------------------------------- */

/* ROTOR_CRASH_POINT="<stage>:<point>" kills the process with SIGKILL, exactly as `kill -9` would,
 * at a chosen point: begin (attempt journaled, effect not started), inside (set-db: password read
 * back, ALTER ROLE not sent), effect (effect done, not journaled), done (journaled, next stage
 * not started). Tests use it to prove recovery from every point. */
static void crash_point_at(const rotation_t *r, rotor_stage_t stage, const char *point)
{
    static bool loaded;
    static const char *want;
    if (!loaded) {
        want = getenv("ROTOR_CRASH_POINT");
        loaded = true;
    }
    if (!want)
        return;
    char here[64];
    snprintf(here, sizeof here, "%s:%s", rotor_stage_name(stage), point);
    if (strcmp(want, here) == 0) {
        log_warn("crash_point", "point", here, "rotation", r->row.id);
        raise(SIGKILL);
    }
}

static void crash_point(const rotation_t *r, const char *point)
{
    crash_point_at(r, r->row.stage, point);
}

/* ---- helpers ----------------------------------------------------------------------------- */

static char *itoa_buf(char *buf, size_t len, long long v)
{
    snprintf(buf, len, "%lld", v);
    return buf;
}

static const cfg_stage_policy_t *policy(const rotation_t *r)
{
    return &r->sec->cfg->stages[r->row.stage];
}

static const char *role_of(const rotation_t *r, rotor_slot_t s)
{
    return r->sec->cfg->database.roles[s];
}

static const char *name_of(const rotation_t *r, rotor_slot_t s)
{
    return r->sec->cfg->store.names[s];
}

static void log_rot(log_level_t lvl, const char *msg, const rotation_t *r, const char *k1,
                    const char *v1)
{
    char attempt[16];
    log_write(lvl, msg, "rotation", r->row.id, "secret", r->row.secret, "stage",
              rotor_stage_name(r->row.stage), "attempt",
              itoa_buf(attempt, sizeof attempt, r->row.attempt), k1, v1, NULL);
}

/* Builds an outbox entry for an event rotor emits; steals data. */
static void outbox_add(engine_t *e, json_t *outbox, const char *type, const char *secret,
                       const char *traceparent, json_t *data)
{
    char *value = event_build(type, e->source, secret, data, traceparent[0] ? traceparent : NULL);
    if (!value)
        return; /* event_build logged the programming error */
    json_t *o =
        json_pack("{s:s, s:s, s:s, s:{s:s}}", "topic", e->cfg->kafka.topic_events, "key", secret,
                  "value", value, "headers", "content-type", "application/cloudevents+json");
    json_array_append_new(outbox, o);
    free(value);
}

/* Event data common to every event about a rotation. */
static json_t *rot_data(const journal_rot_t *row)
{
    return json_pack("{s:s, s:s}", "rotation_id", row->id, "secret", row->secret);
}

static json_t *history(const journal_rot_t *row, const char *outcome, const char *actor,
                       int64_t duration_ms, const char *error, const char *request_id)
{
    json_t *h =
        json_pack("{s:s, s:s, s:s, s:i}", "trigger", row->trigger, "stage",
                  rotor_stage_name(row->stage), "outcome", outcome, "attempt", row->attempt);
    if (actor && *actor)
        json_object_set_new(h, "actor", json_string(actor));
    if (duration_ms >= 0)
        json_object_set_new(h, "duration_ms", json_integer(duration_ms));
    if (error && *error)
        json_object_set_new(h, "error", json_string(error));
    if (request_id && *request_id)
        json_object_set_new(h, "request_id", json_string(request_id));
    return h;
}

/* ---- lifetime ------------------------------------------------------------------------------ */

static void rotation_maybe_free(rotation_t *r)
{
    if (r->gone && r->inflight == 0 && r->handles == 0 && !r->writing)
        free(r);
}

static void on_rot_handle_closed(uv_handle_t *h)
{
    rotation_t *r = h->data;
    r->handles--;
    rotation_maybe_free(r);
}

/* Makes every callback of the current effect stale and stops what can be stopped: the
 * deadline, the drain timer, a database request. Store requests are quick and just run out. */
static void stop_effect(rotation_t *r)
{
    r->token++;
    uv_timer_stop(&r->deadline);
    if (r->draining) {
        uv_timer_stop(&r->timer);
        r->draining = false;
        r->inflight--;
    }
    if (r->dbreq) {
        db_req_t *q = r->dbreq;
        r->dbreq = NULL;
        db_cancel(q);
    }
}

/* Removes r from the engine. Its memory goes when the last callback and handle are done. */
static void rotation_remove(rotation_t *r)
{
    engine_t *e = r->eng;
    for (rotation_t **p = &e->rotations; *p; p = &(*p)->next_rot) {
        if (*p == r) {
            *p = r->next_rot;
            break;
        }
    }
    r->gone = true;
    stop_effect(r);
    uv_close((uv_handle_t *)&r->timer, on_rot_handle_closed);
    uv_close((uv_handle_t *)&r->deadline, on_rot_handle_closed);
    rotation_maybe_free(r);
}

static secret_ctx_t *secret_ctx(engine_t *e, const char *name)
{
    for (size_t i = 0; i < e->nsecrets; i++) {
        if (strcmp(e->secrets[i].cfg->name, name) == 0)
            return &e->secrets[i];
    }
    return NULL;
}

static rotation_t *rotation_find(engine_t *e, const char *id)
{
    for (rotation_t *r = e->rotations; r; r = r->next_rot) {
        if (strcmp(r->row.id, id) == 0)
            return r;
    }
    return NULL;
}

static rotation_t *rotation_of_secret(engine_t *e, const char *secret)
{
    for (rotation_t *r = e->rotations; r; r = r->next_rot) {
        if (strcmp(r->row.secret, secret) == 0)
            return r;
    }
    return NULL;
}

static void on_timer(uv_timer_t *t);
static void on_deadline(uv_timer_t *t);

static rotation_t *rotation_add(engine_t *e, secret_ctx_t *sec, const journal_rot_t *row)
{
    rotation_t *r = util_calloc(1, sizeof *r);
    r->row = *row;
    r->eng = e;
    r->sec = sec;
    uv_timer_init(e->loop, &r->timer);
    uv_timer_init(e->loop, &r->deadline);
    r->timer.data = r;
    r->deadline.data = r;
    r->handles = 2;
    r->next_rot = e->rotations;
    e->rotations = r;
    return r;
}

/* ---- journal writes ------------------------------------------------------------------------ */

typedef void (*persisted_fn)(rotation_t *r, int status);

typedef struct {
    rotation_t *r;
    persisted_fn then;
} persist_t;

static void on_persisted(void *arg, int status)
{
    persist_t *p = arg;
    rotation_t *r = p->r;
    persisted_fn then = p->then;
    free(p);
    r->writing = false;
    if (status == 0) {
        r->row = r->next;
        r->row.seq++;
    }
    if (r->gone) {
        rotation_maybe_free(r);
        return;
    }
    then(r, status);
}

static void reload_row(rotation_t *r);

/* Writes r->next over r->row by compare-and-set with its history line and events. Steals
 * hist and outbox. then runs with 0, ROTOR_ECONFLICT or ROTOR_EDB. */
static void persist(rotation_t *r, json_t *hist, json_t *outbox, persisted_fn then)
{
    char *h = json_dumps(hist, JSON_COMPACT);
    char *o = json_dumps(outbox, JSON_COMPACT);
    json_decref(hist);
    json_decref(outbox);
    persist_t *p = util_calloc(1, sizeof *p);
    p->r = r;
    p->then = then;
    r->writing = true;
    r->next.seq = r->row.seq;
    int rc = journal_update(r->eng->journal, &r->next, h, o, on_persisted, p);
    free(h);
    free(o);
    if (rc < 0) {
        free(p);
        r->writing = false;
        then(r, ROTOR_EDB);
    }
}

/* The default reaction to a write that did not land: a conflict means the row moved on
 * (another command or process): re-read it; a journal error: try the step again shortly. */
static void after_write(rotation_t *r, int status)
{
    if (status == 0) {
        step(r);
    } else if (status == ROTOR_ECONFLICT) {
        log_rot(LOG_WARN, "rotation.conflict", r, "action", "reload");
        reload_row(r);
    } else {
        log_rot(LOG_WARN, "rotation.journal_unavailable", r, "retry_in", "1s");
        uv_timer_start(&r->timer, on_timer, 1000, 0);
    }
}

static void on_reloaded(void *arg, int status, const journal_rot_t *rows, int n)
{
    rotation_t *r = arg;
    r->inflight--;
    if (r->gone) {
        rotation_maybe_free(r);
        return;
    }
    if (status != 0) {
        uv_timer_start(&r->timer, on_timer, 1000, 0);
        return;
    }
    if (n == 0 || !journal_status_open(rows[0].status)) {
        rotation_remove(r);
        return;
    }
    r->row = rows[0];
    step(r);
}

static void reload_row(rotation_t *r)
{
    r->inflight++;
    r->token++;
    if (journal_find(r->eng->journal, r->row.id, on_reloaded, r) < 0) {
        r->inflight--;
        uv_timer_start(&r->timer, on_timer, 1000, 0);
    }
}

/* ---- effects ----------------------------------------------------------------------------- */

/* A callback's ticket: which rotation, and which effect it belongs to. */
typedef struct {
    rotation_t *r;
    unsigned token;
} eff_t;

static eff_t *eff_new(rotation_t *r)
{
    eff_t *x = util_malloc(sizeof *x);
    x->r = r;
    x->token = r->token;
    r->inflight++;
    return x;
}

/* Returns the rotation if the callback is still current, else NULL (and may free it). */
static rotation_t *eff_take(eff_t *x)
{
    rotation_t *r = x->r;
    unsigned token = x->token;
    free(x);
    r->inflight--;
    if (r->gone || token != r->token) {
        rotation_maybe_free(r);
        return NULL;
    }
    return r;
}

static void effect_done(rotation_t *r, int status, const char *reason);

#define STORE_CALL(r, call)                                                                        \
    do {                                                                                           \
        int rc_ = (call);                                                                          \
        if (rc_ < 0) {                                                                             \
            (r)->inflight--;                                                                       \
            effect_done((r), rc_, "secret store request failed to start");                         \
            return;                                                                                \
        }                                                                                          \
    } while (0)

/* db requests: one at a time per rotation, tracked so a timeout can cancel it. */
static void on_db(void *arg, int status, const char *reason, long count);

typedef void (*db_next_fn)(rotation_t *r, long count);

typedef struct {
    eff_t *x;
    db_next_fn next;
} dbctx_t;

static dbctx_t *dbctx(rotation_t *r, db_next_fn next)
{
    dbctx_t *c = util_malloc(sizeof *c);
    c->x = eff_new(r);
    c->next = next;
    return c;
}

static void on_db(void *arg, int status, const char *reason, long count)
{
    dbctx_t *c = arg;
    db_next_fn next = c->next;
    rotation_t *r = c->x->r;
    if (c->x->token == r->token)
        r->dbreq = NULL;
    r = eff_take(c->x);
    free(c);
    if (!r)
        return;
    if (status < 0) {
        effect_done(r, status, reason ? reason : rotor_strerror(status));
        return;
    }
    next(r, count);
}

static void db_started(rotation_t *r, dbctx_t *c, int rc, db_req_t *req)
{
    if (rc < 0) {
        r->inflight--;
        free(c->x);
        free(c);
        effect_done(r, rc, "database request failed to start");
        return;
    }
    r->dbreq = req;
}

static void effect_ok(rotation_t *r, long count)
{
    (void)count;
    effect_done(r, 0, NULL);
}

/* prepare: roles, the active slot's current version, and what the store says is current. */
static void prepare_current_entry(rotation_t *r, int status, rotor_secret_t *value)
{
    if (status == ROTOR_ENOTFOUND || !value) {
        effect_done(r, 0, NULL); /* no `current` entry yet: nothing to disagree with */
        return;
    }
    json_error_t jerr;
    json_t *doc = json_loadb(value->buf, value->len, 0, &jerr);
    secret_free(value);
    const char *role = doc ? json_string_value(json_object_get(doc, "role")) : NULL;
    char reason[512];
    if (!role) {
        snprintf(reason, sizeof reason, "store entry %s is not {\"role\", \"password\"} JSON",
                 r->sec->cfg->store.current);
        json_decref(doc);
        effect_done(r, ROTOR_EFAIL, reason);
        return;
    }
    if (strcmp(role, role_of(r, r->row.from_slot)) != 0) {
        snprintf(reason, sizeof reason,
                 "store entry %s names role %s but the journal's active slot is %s (%s)",
                 r->sec->cfg->store.current, role, rotor_slot_name(r->row.from_slot),
                 role_of(r, r->row.from_slot));
        json_decref(doc);
        effect_done(r, ROTOR_EFAIL, reason);
        return;
    }
    json_decref(doc);
    effect_done(r, 0, NULL);
}

static void on_prepare_current_value(void *arg, int status, rotor_secret_t *value,
                                     const char *version, const char *reason)
{
    (void)version;
    rotation_t *r = eff_take(arg);
    if (!r) {
        secret_free(value);
        return;
    }
    if (status < 0 && status != ROTOR_ENOTFOUND) {
        secret_free(value);
        effect_done(r, status, reason);
        return;
    }
    prepare_current_entry(r, status, value);
}

static void on_prepare_version(void *arg, int status, const char *version, const char *reason)
{
    rotation_t *r = eff_take(arg);
    if (!r)
        return;
    if (status < 0) {
        effect_done(r, status, reason);
        return;
    }
    util_strlcpy(r->row.old_version, version ? version : "", sizeof r->row.old_version);
    const char *current = r->sec->cfg->store.current;
    if (!current) {
        effect_done(r, 0, NULL);
        return;
    }
    store_t *s = r->sec->store;
    STORE_CALL(r, s->ops->get(s, current, NULL, on_prepare_current_value, eff_new(r)));
}

static void prepare_roles_ok(rotation_t *r, long count)
{
    (void)count;
    store_t *s = r->sec->store;
    STORE_CALL(r, s->ops->current(s, name_of(r, r->row.from_slot), on_prepare_version, eff_new(r)));
}

static void eff_prepare(rotation_t *r)
{
    db_req_t *req = NULL;
    dbctx_t *c = dbctx(r, prepare_roles_ok);
    int rc = db_check_roles(r->eng->loop, r->sec->dsn, role_of(r, r->row.from_slot),
                            role_of(r, r->row.to_slot), on_db, c, &req);
    db_started(r, c, rc, req);
}

/* generate: reuse the version this rotation already wrote, or write one. */
static void on_generate_put(void *arg, int status, const char *version, const char *reason)
{
    rotation_t *r = eff_take(arg);
    if (!r)
        return;
    if (status < 0 || !version) {
        effect_done(r, status < 0 ? status : ROTOR_ESTORE, reason ? reason : "no version id");
        return;
    }
    util_strlcpy(r->row.version, version, sizeof r->row.version);
    effect_done(r, 0, NULL);
}

static void on_generate_find(void *arg, int status, const char *version, const char *reason)
{
    rotation_t *r = eff_take(arg);
    if (!r)
        return;
    if (status < 0) {
        effect_done(r, status, reason);
        return;
    }
    if (version) {
        log_rot(LOG_INFO, "generate.reuse_version", r, "version", version);
        util_strlcpy(r->row.version, version, sizeof r->row.version);
        effect_done(r, 0, NULL);
        return;
    }
    const cfg_secret_t *cfg = r->sec->cfg;
    password_policy_t pol = {cfg->password.length, cfg->password.classes, cfg->password.exclude};
    rotor_secret_t *pw = NULL;
    int rc = password_generate(&pol, &pw);
    if (rc < 0) {
        effect_done(r, rc, "password generation failed");
        return;
    }
    store_tags_t tags = {r->row.id, rotor_slot_name(r->row.to_slot), role_of(r, r->row.to_slot)};
    store_t *s = r->sec->store;
    rc = s->ops->put(s, name_of(r, r->row.to_slot), pw, &tags, r->row.expires_at_ms,
                     on_generate_put, eff_new(r));
    secret_free(pw); /* the store copied it */
    if (rc < 0) {
        r->inflight--;
        effect_done(r, rc, "secret store request failed to start");
    }
}

static void eff_generate(rotation_t *r)
{
    store_t *s = r->sec->store;
    STORE_CALL(
        r, s->ops->find(s, name_of(r, r->row.to_slot), r->row.id, on_generate_find, eff_new(r)));
}

/* set-db and verify both read this rotation's version back from the store first. */
static void read_new_version(rotation_t *r, store_value_cb cb)
{
    store_t *s = r->sec->store;
    STORE_CALL(r, s->ops->get(s, name_of(r, r->row.to_slot), r->row.version, cb, eff_new(r)));
}

static void on_setdb_value(void *arg, int status, rotor_secret_t *value, const char *version,
                           const char *reason)
{
    (void)version;
    rotation_t *r = eff_take(arg);
    if (!r || status < 0) {
        secret_free(value);
        if (r)
            effect_done(r, status, reason);
        return;
    }
    crash_point(r, "inside");
    db_req_t *req = NULL;
    dbctx_t *c = dbctx(r, effect_ok);
    int rc = db_set_password(r->eng->loop, r->sec->dsn, role_of(r, r->row.to_slot), value,
                             r->row.expires_at_ms, on_db, c, &req);
    secret_free(value); /* db_set_password copied it */
    db_started(r, c, rc, req);
}

static void eff_set_db(rotation_t *r)
{
    read_new_version(r, on_setdb_value);
}

static void on_verify_value(void *arg, int status, rotor_secret_t *value, const char *version,
                            const char *reason)
{
    (void)version;
    rotation_t *r = eff_take(arg);
    if (!r || status < 0) {
        secret_free(value);
        if (r)
            effect_done(r, status, reason);
        return;
    }
    db_req_t *req = NULL;
    dbctx_t *c = dbctx(r, effect_ok);
    int rc = db_verify_login(r->eng->loop, r->sec->dsn, role_of(r, r->row.to_slot), value,
                             r->sec->cfg->database.probe, on_db, c, &req);
    secret_free(value);
    db_started(r, c, rc, req);
}

static void eff_verify(rotation_t *r)
{
    read_new_version(r, on_verify_value);
}

/* deploy `none`: nothing to bring up; the credential alone rotates. */
static void eff_deploy(rotation_t *r)
{
    effect_done(r, 0, NULL);
}

/* The `current` entry: {"role": ..., "password": ...}, built straight into a wiped buffer (a
 * JSON library would leave copies of the password in memory it does not wipe). */
static rotor_secret_t *current_entry(const char *role, const rotor_secret_t *pw)
{
    size_t cap = strlen(role) * 6 + pw->len * 6 + 32;
    rotor_secret_t *s = secret_new(cap);
    size_t n = 0;
    const char *parts[] = {"{\"role\":\"", role, "\",\"password\":\"", NULL, "\"}"};
    for (int i = 0; i < 5; i++) {
        const char *src = i == 3 ? pw->buf : parts[i];
        size_t len = i == 3 ? pw->len : strlen(src);
        bool esc = i == 1 || i == 3;
        for (size_t k = 0; k < len; k++) {
            unsigned char ch = (unsigned char)src[k];
            if (esc && (ch == '"' || ch == '\\')) {
                s->buf[n++] = '\\';
                s->buf[n++] = (char)ch;
            } else if (esc && ch < 0x20) {
                n += (size_t)snprintf(s->buf + n, cap + 1 - n, "\\u%04x", ch);
            } else {
                s->buf[n++] = (char)ch;
            }
        }
    }
    s->len = n;
    return s;
}

static void on_current_written(void *arg, int status, const char *reason)
{
    rotation_t *r = eff_take(arg);
    if (!r)
        return;
    if (status < 0) {
        effect_done(r, status, reason);
        return;
    }
    if (r->row.stage == STAGE_SWAP) {
        r->row.swapped = true;
        effect_done(r, 0, NULL);
        return;
    }
    /* rollback: production is back on the old slot; now close the standby role again. */
    r->row.swapped = false;
    db_req_t *req = NULL;
    dbctx_t *c = dbctx(r, effect_ok);
    int rc = db_set_nologin(r->eng->loop, r->sec->dsn, role_of(r, r->row.to_slot), on_db, c, &req);
    db_started(r, c, rc, req);
}

/* Writes the `current` entry for slot with the value read from the store. */
static void on_current_value(void *arg, int status, rotor_secret_t *value, const char *version,
                             const char *reason)
{
    (void)version;
    rotation_t *r = eff_take(arg);
    if (!r || status < 0) {
        secret_free(value);
        if (r)
            effect_done(r, status, reason);
        return;
    }
    rotor_slot_t slot = r->row.stage == STAGE_SWAP ? r->row.to_slot : r->row.from_slot;
    rotor_secret_t *entry = current_entry(role_of(r, slot), value);
    secret_free(value);
    store_t *s = r->sec->store;
    int rc =
        s->ops->write_current(s, r->sec->cfg->store.current, entry, on_current_written, eff_new(r));
    secret_free(entry);
    if (rc < 0) {
        r->inflight--;
        effect_done(r, rc, "secret store request failed to start");
    }
}

static void eff_swap(rotation_t *r)
{
    if (!r->sec->cfg->store.current) {
        /* Without a `current` entry there is nothing to point at: the application chooses its
         * slot itself; the swap is the moment rotor records the new active slot. */
        r->row.swapped = true;
        effect_done(r, 0, NULL);
        return;
    }
    read_new_version(r, on_current_value);
}

static void eff_rollback(rotation_t *r)
{
    if (r->row.swapped && r->sec->cfg->store.current) {
        store_t *s = r->sec->store;
        STORE_CALL(
            r, s->ops->get(s, name_of(r, r->row.from_slot), NULL, on_current_value, eff_new(r)));
        return;
    }
    r->row.swapped = false;
    db_req_t *req = NULL;
    dbctx_t *c = dbctx(r, effect_ok);
    int rc = db_set_nologin(r->eng->loop, r->sec->dsn, role_of(r, r->row.to_slot), on_db, c, &req);
    db_started(r, c, rc, req);
}

/* retire: NOLOGIN for the old role now (no new sessions), end its remaining sessions after the
 * drain time, disable its secret version. Each effect is harmless to repeat. */
static void on_retire_disabled(void *arg, int status, const char *reason)
{
    rotation_t *r = eff_take(arg);
    if (r)
        effect_done(r, status, reason);
}

static void retire_sessions_ended(rotation_t *r, long count)
{
    r->sessions_ended = count;
    if (!r->row.old_version[0]) {
        effect_done(r, 0, NULL);
        return;
    }
    store_t *s = r->sec->store;
    STORE_CALL(r, s->ops->disable(s, name_of(r, r->row.from_slot), r->row.old_version,
                                  on_retire_disabled, eff_new(r)));
}

static void on_drained(uv_timer_t *t)
{
    rotation_t *r = t->data;
    r->draining = false;
    r->inflight--;
    db_req_t *req = NULL;
    dbctx_t *c = dbctx(r, retire_sessions_ended);
    int rc =
        db_end_sessions(r->eng->loop, r->sec->dsn, role_of(r, r->row.from_slot), on_db, c, &req);
    db_started(r, c, rc, req);
}

static void retire_nologin_done(rotation_t *r, long count)
{
    (void)count;
    char drain[32];
    util_format_duration(r->sec->cfg->database.drain_ms, drain, sizeof drain);
    log_rot(LOG_INFO, "retire.draining", r, "drain", drain);
    r->inflight++; /* the timer is part of the effect; a timeout or removal stops it */
    r->draining = true;
    uv_timer_start(&r->timer, on_drained, r->sec->cfg->database.drain_ms, 0);
}

static void eff_retire(rotation_t *r)
{
    db_req_t *req = NULL;
    dbctx_t *c = dbctx(r, retire_nologin_done);
    int rc =
        db_set_nologin(r->eng->loop, r->sec->dsn, role_of(r, r->row.from_slot), on_db, c, &req);
    db_started(r, c, rc, req);
}

typedef void (*effect_fn)(rotation_t *r);
static const effect_fn effects[STAGE__COUNT] = {
    [STAGE_PREPARE] = eff_prepare, [STAGE_GENERATE] = eff_generate, [STAGE_SET_DB] = eff_set_db,
    [STAGE_DEPLOY] = eff_deploy,   [STAGE_VERIFY] = eff_verify,     [STAGE_SWAP] = eff_swap,
    [STAGE_RETIRE] = eff_retire,   [STAGE_ROLLBACK] = eff_rollback,
};

/* ---- attempts ------------------------------------------------------------------------------ */

static void on_deadline(uv_timer_t *t)
{
    rotation_t *r = t->data;
    char timeout[32];
    util_format_duration(policy(r)->timeout_ms, timeout, sizeof timeout);
    char reason[96];
    snprintf(reason, sizeof reason, "stage %s timed out after %s", rotor_stage_name(r->row.stage),
             timeout);
    stop_effect(r);
    effect_done(r, ROTOR_ETIMEOUT, reason);
}

static void on_attempt_started(rotation_t *r, int status)
{
    if (status != 0) {
        after_write(r, status);
        return;
    }
    if (r->eng->stopping) {
        /* journaled as running; the next start resumes it */
        return;
    }
    crash_point(r, "begin");
    r->attempt_started_ms = util_now_ms();
    r->sessions_ended = -1;
    uv_timer_start(&r->deadline, on_deadline, policy(r)->timeout_ms, 0);
    log_rot(LOG_INFO, "stage.started", r, NULL, NULL);
    effects[r->row.stage](r);
}

static void enter_approval(rotation_t *r, json_t *out);

static void start_attempt(rotation_t *r)
{
    const cfg_stage_policy_t *pol = policy(r);
    r->next = r->row;
    if (r->row.stage == STAGE_APPROVE) {
        /* approve has no effect to attempt: it waits (back here after `rotor retry`). */
        json_t *out = json_array();
        enter_approval(r, out);
        persist(r, history(&r->next, "started", NULL, -1, NULL, NULL), out, after_write);
        return;
    }
    if (r->row.attempt >= pol->max_attempts) {
        /* Attempts were spent by earlier runs (a crash loop, say): give up, visibly. */
        effect_done(r, ROTOR_EFAIL, "no attempts left");
        return;
    }
    r->next.status = RS_RUNNING;
    r->next.attempt = r->row.attempt + 1;
    json_t *out = json_array();
    json_t *d = rot_data(&r->next);
    json_object_set_new(d, "stage", json_string(rotor_stage_name(r->row.stage)));
    json_object_set_new(d, "attempt", json_integer(r->next.attempt));
    outbox_add(r->eng, out, "stage.started", r->row.secret, r->row.traceparent, d);
    persist(r, history(&r->next, "started", NULL, -1, NULL, NULL), out, on_attempt_started);
}

/* Enters the approve stage: waiting for a decision (manual) or for the soak (auto). */
static void enter_approval(rotation_t *r, json_t *out)
{
    const cfg_secret_t *cfg = r->sec->cfg;
    r->next.status = RS_WAITING;
    r->next.attempt = 1;
    int64_t now = util_now_ms();
    r->next.next_at_ms = now + (int64_t)(cfg->approval.mode == APPROVAL_AUTO
                                             ? cfg->approval.soak_ms
                                             : cfg->stages[STAGE_APPROVE].timeout_ms);
    json_t *d = rot_data(&r->next);
    json_object_set_new(d, "stage", json_string("approve"));
    json_object_set_new(d, "attempt", json_integer(1));
    outbox_add(r->eng, out, "stage.started", r->row.secret, r->row.traceparent, d);
    if (cfg->approval.mode == APPROVAL_MANUAL) {
        d = rot_data(&r->next);
        json_object_set_new(d, "gate", json_string(r->next.swapped ? "retire" : "swap"));
        json_object_set_new(
            d, "active_slot",
            json_string(rotor_slot_name(r->next.swapped ? r->next.to_slot : r->next.from_slot)));
        outbox_add(r->eng, out, "rotation.awaiting-approval", r->row.secret, r->row.traceparent, d);
    }
}

/* Moves r->next to what follows the current stage on `on`, adding the events. */
static void advance(rotation_t *r, trans_event_t on, json_t *out)
{
    int to = next_stage(r->sec->cfg, &r->next, on);
    int64_t now = util_now_ms();
    if (to == T_COMPLETED) {
        r->next.status = RS_COMPLETED;
        json_t *d = rot_data(&r->next);
        json_object_set_new(d, "active_slot", json_string(rotor_slot_name(r->next.to_slot)));
        json_object_set_new(d, "active_role", json_string(role_of(r, r->next.to_slot)));
        json_object_set_new(d, "version", json_string(r->next.version));
        json_object_set_new(d, "duration_ms", json_integer(now - r->next.created_at_ms));
        outbox_add(r->eng, out, "rotation.completed", r->row.secret, r->row.traceparent, d);
        return;
    }
    if (to == T_ROLLED_BACK) {
        r->next.status = RS_ROLLED_BACK;
        json_t *d = rot_data(&r->next);
        json_object_set_new(d, "active_slot", json_string(rotor_slot_name(r->next.from_slot)));
        json_object_set_new(d, "reason",
                            json_string(r->next.error[0] ? r->next.error : "rejected"));
        outbox_add(r->eng, out, "rotation.rolled-back", r->row.secret, r->row.traceparent, d);
        return;
    }
    r->next.stage = (rotor_stage_t)to;
    r->next.attempt = 0;
    r->next.next_at_ms = now;
    r->next.status = RS_PENDING;
    if (to == STAGE_APPROVE)
        enter_approval(r, out);
}

/* Counts what a journaled transition did, once it is in the journal. */
static void count_transition(const rotation_t *r)
{
    char labels[96];
    const char *outcome = r->row.status == RS_PENDING && r->row.stage == r->finished ? "retry"
                          : r->row.status == RS_FAILED                               ? "failed"
                                                                                     : "ok";
    snprintf(labels, sizeof labels, "stage=\"%s\",outcome=\"%s\"", rotor_stage_name(r->finished),
             outcome);
    metrics_count("rotor_stage_attempts_total", "Stage attempts that ended, by stage and outcome",
                  labels, 1);
    metrics_gauge("rotor_rotations_open", "Rotations open in this process", NULL,
                  engine_open_count(r->eng) - (journal_status_open(r->row.status) ? 0 : 1));
    if (!journal_status_open(r->row.status)) {
        snprintf(labels, sizeof labels, "status=\"%s\"", journal_status_name(r->row.status));
        metrics_count("rotor_rotations_total", "Rotations that ended, by final status", labels, 1);
    }
}

static void on_effect_persisted(rotation_t *r, int status)
{
    if (status == 0)
        count_transition(r);
    if (status == 0)
        crash_point_at(r, r->finished, "done");
    after_write(r, status);
}

static void effect_done(rotation_t *r, int status, const char *reason)
{
    if (r->gone)
        return;
    uv_timer_stop(&r->deadline);
    r->token++; /* late callbacks of this attempt are stale from now on */
    if (status == 0)
        crash_point(r, "effect");
    int64_t took = r->attempt_started_ms ? util_now_ms() - r->attempt_started_ms : 0;
    /* r->row was updated in place by the effect (version, swapped, old_version); the journal
     * still holds the old values, and r->row.seq is still the token it holds. */
    r->next = r->row;
    r->finished = r->row.stage;
    json_t *out = json_array();
    json_t *hist;
    if (status == 0) {
        json_t *d = rot_data(&r->row);
        json_object_set_new(d, "stage", json_string(rotor_stage_name(r->row.stage)));
        json_object_set_new(d, "attempt", json_integer(r->row.attempt > 0 ? r->row.attempt : 1));
        json_object_set_new(d, "duration_ms", json_integer(took));
        if (r->row.stage == STAGE_GENERATE)
            json_object_set_new(d, "version", json_string(r->row.version));
        if (r->row.stage == STAGE_RETIRE && r->sessions_ended >= 0)
            json_object_set_new(d, "sessions_ended", json_integer(r->sessions_ended));
        outbox_add(r->eng, out, "stage.completed", r->row.secret, r->row.traceparent, d);
        hist = history(&r->row, "completed", NULL, took, NULL, NULL);
        if (r->row.stage != STAGE_ROLLBACK)
            r->next.error[0] = '\0'; /* a rollback keeps the rejection's reason */
        log_rot(LOG_INFO, "stage.completed", r, NULL, NULL);
        advance(r, ON_OK, out);
    } else {
        const cfg_stage_policy_t *pol = policy(r);
        /* An approval that timed out is not retried by itself: a person has to decide. */
        bool final = r->row.attempt >= pol->max_attempts || r->row.stage == STAGE_APPROVE;
        util_strlcpy(r->next.error, reason ? reason : rotor_strerror(status), sizeof r->next.error);
        json_t *d = rot_data(&r->row);
        json_object_set_new(d, "stage", json_string(rotor_stage_name(r->row.stage)));
        json_object_set_new(d, "attempt", json_integer(r->row.attempt > 0 ? r->row.attempt : 1));
        json_object_set_new(d, "error", json_string(r->next.error));
        json_object_set_new(d, "final", json_boolean(final));
        hist = history(&r->row, final ? "failed" : "retrying", NULL, took, r->next.error, NULL);
        log_rot(final ? LOG_ERROR : LOG_WARN, "stage.failed", r, "error", r->next.error);
        if (final) {
            r->next.status = RS_FAILED;
            outbox_add(r->eng, out, "stage.failed", r->row.secret, r->row.traceparent, d);
            json_t *f = rot_data(&r->row);
            json_object_set_new(f, "stage", json_string(rotor_stage_name(r->row.stage)));
            json_object_set_new(f, "error", json_string(r->next.error));
            outbox_add(r->eng, out, "rotation.failed", r->row.secret, r->row.traceparent, f);
        } else {
            uint64_t delay =
                backoff_delay(r->row.attempt, pol->backoff_initial_ms, pol->backoff_max_ms, 0);
            json_object_set_new(d, "retry_in_ms", json_integer((json_int_t)delay));
            outbox_add(r->eng, out, "stage.failed", r->row.secret, r->row.traceparent, d);
            r->next.status = RS_PENDING;
            r->next.next_at_ms = util_now_ms() + (int64_t)delay;
        }
    }
    persist(r, hist, out, on_effect_persisted);
}

/* ---- the step function: what to do next for a rotation ------------------------------------- */

static void on_timer(uv_timer_t *t)
{
    step(t->data);
}

static void approve_decided(rotation_t *r, trans_event_t on, const char *actor, const char *why,
                            persisted_fn then);

static void step(rotation_t *r)
{
    engine_t *e = r->eng;
    if (r->gone || r->writing || e->stopping)
        return;
    if (!journal_status_open(r->row.status)) {
        log_rot(LOG_INFO, "rotation.finished", r, "status", journal_status_name(r->row.status));
        rotation_remove(r);
        return;
    }
    if (!e->owns(e->owns_arg, r->row.secret)) {
        rotation_remove(r); /* another process owns this secret now */
        return;
    }
    int64_t now = util_now_ms();
    switch (r->row.status) {
    case RS_PENDING:
    case RS_RUNNING: /* a running row found at start-up: its attempt died with the process */
        if (r->row.next_at_ms > now) {
            uv_timer_start(&r->timer, on_timer, (uint64_t)(r->row.next_at_ms - now), 0);
            return;
        }
        start_attempt(r);
        return;
    case RS_WAITING:
        if (r->row.next_at_ms > now) {
            uv_timer_start(&r->timer, on_timer, (uint64_t)(r->row.next_at_ms - now), 0);
            return;
        }
        if (r->sec->cfg->approval.mode == APPROVAL_AUTO)
            approve_decided(r, ON_APPROVED, "auto", NULL, on_effect_persisted);
        else
            effect_done(r, ROTOR_ETIMEOUT, "no approval decision before the approve timeout");
        return;
    default:
        return; /* failed: visible until an operator retries or aborts */
    }
}

static void approve_decided(rotation_t *r, trans_event_t on, const char *actor, const char *why,
                            persisted_fn then)
{
    uv_timer_stop(&r->timer);
    r->next = r->row;
    r->finished = STAGE_APPROVE;
    json_t *out = json_array();
    json_t *hist;
    if (on == ON_APPROVED) {
        json_t *d = rot_data(&r->row);
        json_object_set_new(d, "stage", json_string("approve"));
        json_object_set_new(d, "attempt", json_integer(1));
        json_object_set_new(d, "duration_ms", json_integer(0));
        outbox_add(r->eng, out, "stage.completed", r->row.secret, r->row.traceparent, d);
        hist = history(&r->row, "approved", actor, -1, NULL, NULL);
    } else {
        util_strlcpy(r->next.error, why && *why ? why : "rejected", sizeof r->next.error);
        hist = history(&r->row, "rejected", actor, -1, r->next.error, NULL);
    }
    util_strlcpy(r->next.actor, actor ? actor : "", sizeof r->next.actor);
    advance(r, on, out);
    persist(r, hist, out, then);
}

/* ---- commands ---------------------------------------------------------------------------- */

typedef struct {
    engine_t *e;
    engine_cmd_cb cb;
    void *arg;
    const event_t *ev;
    rotation_t *r;
    secret_ctx_t *sec;
    journal_rot_t row;
    int tries;
} cmd_t;

static void cmd_finish(cmd_t *c, int status, const char *reason)
{
    c->cb(c->arg, status, reason);
    free(c);
}

static const char *data_str(const event_t *ev, const char *key)
{
    return json_string_value(json_object_get(ev->data, key));
}

static void cmd_request(cmd_t *c);

static void on_cmd_persisted(rotation_t *r, int status);

/* The persisted callback carries only the rotation; commands come one at a time, so the engine
 * keeps the one whose write is in flight. */
static void on_cmd_persisted(rotation_t *r, int status)
{
    cmd_t *c = r->eng->pending_cmd;
    r->eng->pending_cmd = NULL;
    if (status == ROTOR_ECONFLICT) {
        /* The row moved under us (a stage finished meanwhile): decide again on fresh state. */
        reload_row(r);
        c->cb(c->arg, ROTOR_EDB, "rotation moved on; command will be retried");
        free(c);
        return;
    }
    cmd_finish(c, status == 0 ? 0 : ROTOR_EDB, status == 0 ? NULL : "journal unavailable");
    if (status == 0)
        step(r);
}

static void on_absorbed(void *arg, int status)
{
    cmd_t *c = arg;
    if (status == 0)
        log_info("rotation.request_absorbed", "rotation", c->row.id, "secret", c->row.secret,
                 "request", c->ev->id);
    cmd_finish(c, status == 0 ? 0 : ROTOR_EDB, status == 0 ? NULL : "journal unavailable");
}

/* A request for a secret that already has a rotation in flight: recorded, not queued. */
static void absorb(cmd_t *c, const journal_rot_t *open)
{
    c->row = *open;
    json_t *out = json_array();
    json_t *d = rot_data(open);
    json_object_set_new(d, "request_id", json_string(c->ev->id));
    json_object_set_new(d, "state", json_string(rotor_stage_name(open->stage)));
    outbox_add(c->e, out, "rotation.absorbed", open->secret, open->traceparent, d);
    const char *by = data_str(c->ev, "requested_by");
    json_t *h = history(open, "absorbed", by, -1, NULL, c->ev->id);
    char *hs = json_dumps(h, JSON_COMPACT), *os = json_dumps(out, JSON_COMPACT);
    json_decref(h);
    json_decref(out);
    int rc = journal_note(c->e->journal, open->id, hs, os, on_absorbed, c);
    free(hs);
    free(os);
    if (rc < 0)
        cmd_finish(c, ROTOR_EDB, "journal unavailable");
}

static void on_created(void *arg, int status)
{
    cmd_t *c = arg;
    engine_t *e = c->e;
    if (status == ROTOR_ECONFLICT && ++c->tries < 3) {
        /* Another rotation is open, or the active slot changed: read the journal and decide. */
        cmd_request(c);
        return;
    }
    if (status != 0) {
        cmd_finish(c, ROTOR_EDB, "journal unavailable");
        return;
    }
    log_info("rotation.created", "rotation", c->row.id, "secret", c->row.secret, "from",
             rotor_slot_name(c->row.from_slot), "to", rotor_slot_name(c->row.to_slot));
    rotation_t *r = rotation_add(e, c->sec, &c->row);
    cmd_finish(c, 0, NULL);
    step(r);
}

static void create_rotation(cmd_t *c, rotor_slot_t active)
{
    const event_t *ev = c->ev;
    journal_rot_t *row = &c->row;
    memset(row, 0, sizeof *row);
    util_uuid4(row->id);
    util_strlcpy(row->secret, c->sec->cfg->name, sizeof row->secret);
    row->stage = STAGE_PREPARE;
    row->status = RS_PENDING;
    row->seq = 1;
    row->from_slot = active;
    row->to_slot = rotor_slot_other(active);
    const char *trigger = data_str(ev, "trigger");
    util_strlcpy(row->trigger, trigger ? trigger : "manual", sizeof row->trigger);
    util_strlcpy(row->request_id, ev->id, sizeof row->request_id);
    const char *reason = data_str(ev, "reason");
    util_strlcpy(row->reason, reason ? reason : "", sizeof row->reason);
    util_strlcpy(row->traceparent, ev->traceparent ? ev->traceparent : "", sizeof row->traceparent);
    int64_t now = util_now_ms();
    row->next_at_ms = now;
    row->created_at_ms = now;
    /* Fixed at creation so that every stage (store exp, VALID UNTIL) uses the same instant. */
    row->expires_at_ms = now + (int64_t)c->sec->cfg->validity_ms;

    json_t *out = json_array();
    json_t *d = rot_data(row);
    json_object_set_new(d, "from_slot", json_string(rotor_slot_name(row->from_slot)));
    json_object_set_new(d, "to_slot", json_string(rotor_slot_name(row->to_slot)));
    json_object_set_new(d, "trigger", json_string(row->trigger));
    json_object_set_new(d, "request_id", json_string(ev->id));
    if (row->reason[0])
        json_object_set_new(d, "reason", json_string(row->reason));
    outbox_add(c->e, out, "rotation.started", row->secret, row->traceparent, d);
    json_t *h = history(row, "requested", data_str(ev, "requested_by"), -1, NULL, ev->id);
    char *hs = json_dumps(h, JSON_COMPACT), *os = json_dumps(out, JSON_COMPACT);
    json_decref(h);
    json_decref(out);
    int rc = journal_create(c->e->journal, row, hs, os, on_created, c);
    free(hs);
    free(os);
    if (rc < 0)
        cmd_finish(c, ROTOR_EDB, "journal unavailable");
}

static void on_latest_for_request(void *arg, int status, const journal_rot_t *rows, int n);

static void on_secret_for_request(void *arg, int status, rotor_slot_t active, int64_t first,
                                  int64_t last)
{
    (void)first;
    (void)last;
    cmd_t *c = arg;
    if (status != 0) {
        cmd_finish(c, ROTOR_EDB, "journal unavailable");
        return;
    }
    c->row.from_slot = active;
    if (journal_latest(c->e->journal, c->sec->cfg->name, on_latest_for_request, c) < 0)
        cmd_finish(c, ROTOR_EDB, "journal unavailable");
}

static void on_latest_for_request(void *arg, int status, const journal_rot_t *rows, int n)
{
    cmd_t *c = arg;
    if (status != 0) {
        cmd_finish(c, ROTOR_EDB, "journal unavailable");
        return;
    }
    if (n > 0 && journal_status_open(rows[0].status)) {
        /* Open in the journal but not here (taken over in a rebalance): hold it and absorb. */
        if (!rotation_find(c->e, rows[0].id) && c->e->owns(c->e->owns_arg, rows[0].secret))
            step(rotation_add(c->e, c->sec, &rows[0]));
        absorb(c, &rows[0]);
        return;
    }
    create_rotation(c, c->row.from_slot);
}

/* A request whose id the journal already knows was applied before a crash took its offset
 * commit: applying it again would start a second rotation. */
static void on_request_seen(void *arg, int status, const journal_rot_t *rows, int n)
{
    cmd_t *c = arg;
    if (status != 0) {
        cmd_finish(c, ROTOR_EDB, "journal unavailable");
        return;
    }
    if (n > 0) {
        log_info("rotation.request_redelivered", "request", c->ev->id, "rotation", rows[0].id,
                 "note", "already applied; nothing to do");
        cmd_finish(c, 0, NULL);
        return;
    }
    rotation_t *open = rotation_of_secret(c->e, c->sec->cfg->name);
    if (open) {
        absorb(c, &open->row);
        return;
    }
    if (journal_secret(c->e->journal, c->sec->cfg->name, c->sec->cfg->active, on_secret_for_request,
                       c) < 0)
        cmd_finish(c, ROTOR_EDB, "journal unavailable");
}

static void cmd_request(cmd_t *c)
{
    const char *secret = data_str(c->ev, "secret");
    char reason[256];
    if (!secret || !(c->sec = secret_ctx(c->e, secret))) {
        snprintf(reason, sizeof reason, "unknown secret \"%.128s\": not in the configuration",
                 secret ? secret : "");
        cmd_finish(c, ROTOR_EINVALID, reason);
        return;
    }
    if (c->ev->subject && strcmp(c->ev->subject, secret) != 0) {
        snprintf(reason, sizeof reason, "subject \"%.100s\" does not match data.secret \"%.100s\"",
                 c->ev->subject, secret);
        cmd_finish(c, ROTOR_EINVALID, reason);
        return;
    }
    if (journal_by_request(c->e->journal, c->ev->id, on_request_seen, c) < 0)
        cmd_finish(c, ROTOR_EDB, "journal unavailable");
}

/* Decisions about an existing rotation: approve, reject, retry, abort. */
typedef enum { DEC_APPROVE, DEC_REJECT, DEC_RETRY, DEC_ABORT } decision_t;

static const char *const decision_names[] = {"approve", "reject", "retry", "abort"};

static bool decision_fits(decision_t d, const journal_rot_t *row)
{
    switch (d) {
    case DEC_APPROVE:
    case DEC_REJECT:
        return row->stage == STAGE_APPROVE && row->status == RS_WAITING;
    case DEC_RETRY:
        return row->status == RS_FAILED;
    case DEC_ABORT:
        return journal_status_open(row->status);
    }
    return false;
}

static void apply_decision(cmd_t *c, rotation_t *r, decision_t d)
{
    const char *by = data_str(c->ev, "by");
    const char *why = data_str(c->ev, "reason");
    c->e->pending_cmd = c;
    if (d == DEC_APPROVE || d == DEC_REJECT) {
        approve_decided(r, d == DEC_APPROVE ? ON_APPROVED : ON_REJECTED, by ? by : "operator", why,
                        on_cmd_persisted);
        return;
    }
    r->next = r->row;
    json_t *out = json_array();
    json_t *hist;
    util_strlcpy(r->next.actor, by ? by : "operator", sizeof r->next.actor);
    if (d == DEC_RETRY) {
        r->next.status = RS_PENDING;
        r->next.attempt = 0;
        r->next.next_at_ms = util_now_ms();
        r->next.error[0] = '\0';
        hist = history(&r->row, "retry", r->next.actor, -1, NULL, NULL);
    } else {
        stop_effect(r); /* a running effect's result is dropped; its effects are idempotent */
        r->next.status = RS_ABORTED;
        json_t *dd = rot_data(&r->row);
        json_object_set_new(dd, "stage", json_string(rotor_stage_name(r->row.stage)));
        json_object_set_new(dd, "by", json_string(r->next.actor));
        if (why)
            json_object_set_new(dd, "reason", json_string(why));
        outbox_add(c->e, out, "rotation.aborted", r->row.secret, r->row.traceparent, dd);
        hist = history(&r->row, "aborted", r->next.actor, -1, why, NULL);
    }
    persist(r, hist, out, on_cmd_persisted);
}

static void on_find_for_decision(void *arg, int status, const journal_rot_t *rows, int n)
{
    cmd_t *c = arg;
    if (status != 0) {
        cmd_finish(c, ROTOR_EDB, "journal unavailable");
        return;
    }
    const char *id = data_str(c->ev, "rotation_id");
    char reason[256];
    if (n == 0)
        snprintf(reason, sizeof reason, "unknown rotation %s", id);
    else
        snprintf(reason, sizeof reason, "rotation %s is %s at %s: %s is out of place", id,
                 journal_status_name(rows[0].status), rotor_stage_name(rows[0].stage), c->ev->type);
    cmd_finish(c, ROTOR_EINVALID, reason);
}

static void on_cmd_timer(uv_timer_t *t);

static void cmd_decide(cmd_t *c, decision_t d)
{
    const char *id = data_str(c->ev, "rotation_id");
    rotation_t *r = id ? rotation_find(c->e, id) : NULL;
    if (!r) {
        if (journal_find(c->e->journal, id ? id : "", on_find_for_decision, c) < 0)
            cmd_finish(c, ROTOR_EDB, "journal unavailable");
        return;
    }
    char reason[512];
    if (c->ev->subject && strcmp(c->ev->subject, r->row.secret) != 0) {
        snprintf(reason, sizeof reason, "subject \"%.100s\" is not rotation %s's secret \"%s\"",
                 c->ev->subject, id, r->row.secret);
        cmd_finish(c, ROTOR_EINVALID, reason);
        return;
    }
    if (r->writing) {
        /* A stage transition is being written: decide on the state it leaves. */
        c->e->deferred_cmd = c;
        uv_timer_start(&c->e->cmd_timer, on_cmd_timer, 20, 0);
        return;
    }
    if (!decision_fits(d, &r->row)) {
        snprintf(reason, sizeof reason, "rotation %s is %s at %s: %s is out of place", id,
                 journal_status_name(r->row.status), rotor_stage_name(r->row.stage),
                 decision_names[d]);
        cmd_finish(c, ROTOR_EINVALID, reason);
        return;
    }
    apply_decision(c, r, d);
}

static void cmd_dispatch(cmd_t *c)
{
    const char *type = c->ev->type;
    if (strcmp(type, "rotation.requested") == 0)
        cmd_request(c);
    else if (strcmp(type, "rotation.approved") == 0)
        cmd_decide(c, DEC_APPROVE);
    else if (strcmp(type, "rotation.rejected") == 0)
        cmd_decide(c, DEC_REJECT);
    else if (strcmp(type, "rotation.retry") == 0)
        cmd_decide(c, DEC_RETRY);
    else if (strcmp(type, "rotation.abort") == 0)
        cmd_decide(c, DEC_ABORT);
    else {
        char reason[160];
        snprintf(reason, sizeof reason, "event type %.100s is not a command rotor accepts", type);
        cmd_finish(c, ROTOR_EINVALID, reason);
    }
}

static void on_cmd_timer(uv_timer_t *t)
{
    engine_t *e = t->data;
    cmd_t *c = e->deferred_cmd;
    e->deferred_cmd = NULL;
    if (c)
        cmd_dispatch(c);
}

int engine_command(engine_t *e, const event_t *ev, engine_cmd_cb cb, void *arg)
{
    cmd_t *c = util_calloc(1, sizeof *c);
    c->e = e;
    c->cb = cb;
    c->arg = arg;
    c->ev = ev;
    cmd_dispatch(c);
    return 0;
}

/* ---- start, ownership, stop ---------------------------------------------------------------- */

bool engine_has_open(engine_t *e, const char *secret)
{
    return rotation_of_secret(e, secret) != NULL;
}

int engine_open_count(engine_t *e)
{
    int n = 0;
    for (rotation_t *r = e->rotations; r; r = r->next_rot)
        n++;
    return n;
}

static void on_open_rows(void *arg, int status, const journal_rot_t *rows, int n)
{
    engine_t *e = arg;
    if (status != 0) {
        log_error("engine.load_failed", "error", rotor_strerror(status));
        return;
    }
    for (int i = 0; i < n; i++) {
        secret_ctx_t *sec = secret_ctx(e, rows[i].secret);
        if (!sec) {
            log_warn("engine.unknown_secret", "rotation", rows[i].id, "secret", rows[i].secret,
                     "note", "open rotation of a secret no longer configured; left as it is");
            continue;
        }
        if (rotation_find(e, rows[i].id) || !e->owns(e->owns_arg, rows[i].secret))
            continue;
        rotation_t *r = rotation_add(e, sec, &rows[i]);
        log_rot(LOG_INFO, "rotation.resumed", r, "status", journal_status_name(r->row.status));
        step(r);
    }
}

void engine_rebalanced(engine_t *e)
{
    if (e->stopping)
        return;
    /* Let go of rotations we no longer own once idle; step() does that. */
    for (rotation_t *r = e->rotations, *next; r; r = next) {
        next = r->next_rot;
        if (!e->owns(e->owns_arg, r->row.secret) && !r->writing && r->inflight == 0)
            rotation_remove(r);
    }
    if (journal_load_open(e->journal, on_open_rows, e) < 0)
        log_error("engine.load_failed", "error", "journal unavailable");
}

static void on_secret_registered(void *arg, int status, rotor_slot_t active, int64_t first,
                                 int64_t last)
{
    (void)active;
    (void)first;
    (void)last;
    engine_t *e = arg;
    if (status != 0 && e->ready_cb) {
        engine_ready_cb cb = e->ready_cb;
        e->ready_cb = NULL;
        cb(e, status, "cannot register the managed secrets in the journal", e->ready_arg);
        return;
    }
    if (--e->registering == 0 && e->ready_cb) {
        engine_ready_cb cb = e->ready_cb;
        e->ready_cb = NULL;
        cb(e, 0, NULL, e->ready_arg);
    }
}

int engine_start(const engine_opts_t *opts, engine_ready_cb cb, void *arg, engine_t **out,
                 char *err, size_t errlen)
{
    engine_t *e = util_calloc(1, sizeof *e);
    e->loop = opts->loop;
    e->cfg = opts->cfg;
    e->journal = opts->journal;
    e->source = util_strdup(opts->source);
    e->owns = opts->owns;
    e->owns_arg = opts->owns_arg;
    e->ready_cb = cb;
    e->ready_arg = arg;
    e->nsecrets = opts->cfg->nsecrets;
    e->secrets = util_calloc(e->nsecrets, sizeof *e->secrets);
    uv_timer_init(e->loop, &e->cmd_timer);
    uv_timer_init(e->loop, &e->stop_timer);
    uv_timer_init(e->loop, &e->stop_deadline);
    e->cmd_timer.data = e;
    e->stop_timer.data = e;
    e->stop_deadline.data = e;
    e->handles_open = 3;
    for (size_t i = 0; i < e->nsecrets; i++) {
        const cfg_secret_t *s = &opts->cfg->secrets[i];
        e->secrets[i].cfg = s;
        char key[160];
        snprintf(key, sizeof key, "secrets[%zu].database", i);
        int rc = config_dsn(s->database.dsn_env, s->database.dsn_file, key, &e->secrets[i].dsn, err,
                            errlen);
        if (rc == 0)
            rc = store_open(e->loop, s, &e->secrets[i].store, err, errlen);
        if (rc < 0) {
            e->nsecrets = i + 1;
            engine_free(e);
            return rc;
        }
    }
    e->registering = (int)e->nsecrets;
    for (size_t i = 0; i < e->nsecrets; i++) {
        const cfg_secret_t *s = e->secrets[i].cfg;
        if (journal_secret(e->journal, s->name, s->active, on_secret_registered, e) < 0) {
            snprintf(err, errlen, "journal unavailable");
            return ROTOR_EDB; /* callbacks already queued will see the journal close */
        }
    }
    *out = e;
    return 0;
}

static bool engine_idle(engine_t *e)
{
    for (rotation_t *r = e->rotations; r; r = r->next_rot) {
        if (r->writing || r->inflight > 0)
            return false;
    }
    return true;
}

static void stop_finish(engine_t *e)
{
    uv_timer_stop(&e->stop_timer);
    uv_timer_stop(&e->stop_deadline);
    void (*cb)(void *) = e->stop_cb;
    e->stop_cb = NULL;
    if (cb)
        cb(e->stop_arg);
}

static void on_stop_poll(uv_timer_t *t)
{
    engine_t *e = t->data;
    if (engine_idle(e))
        stop_finish(e);
}

static void on_stop_timeout(uv_timer_t *t)
{
    engine_t *e = t->data;
    for (rotation_t *r = e->rotations; r; r = r->next_rot)
        stop_effect(r); /* parked: journaled as running, resumed on the next start */
    log_warn("engine.stop_timeout", "note", "in-flight effects parked; they resume on restart");
    stop_finish(e);
}

void engine_stop(engine_t *e, uint64_t timeout_ms, void (*done)(void *arg), void *arg)
{
    e->stopping = true;
    e->stop_cb = done;
    e->stop_arg = arg;
    for (rotation_t *r = e->rotations; r; r = r->next_rot) {
        if (!r->writing && r->inflight == 0)
            uv_timer_stop(&r->timer);
    }
    if (engine_idle(e)) {
        stop_finish(e);
        return;
    }
    /* Poll every 20 ms for in-flight work to reach the journal; give up at the timeout. */
    uv_timer_start(&e->stop_timer, on_stop_poll, 20, 20);
    uv_timer_start(&e->stop_deadline, on_stop_timeout, timeout_ms, 0);
}

static void on_engine_handle_closed(uv_handle_t *h)
{
    engine_t *e = h->data;
    if (--e->handles_open == 0) {
        free(e->secrets);
        free(e->source);
        free(e);
    }
}

void engine_free(engine_t *e)
{
    if (!e)
        return;
    while (e->rotations)
        rotation_remove(e->rotations);
    for (size_t i = 0; i < e->nsecrets; i++) {
        if (e->secrets[i].store)
            e->secrets[i].store->ops->close(e->secrets[i].store);
        if (e->secrets[i].dsn) {
            secret_wipe(e->secrets[i].dsn, strlen(e->secrets[i].dsn));
            free(e->secrets[i].dsn);
        }
    }
    uv_close((uv_handle_t *)&e->cmd_timer, on_engine_handle_closed);
    uv_close((uv_handle_t *)&e->stop_timer, on_engine_handle_closed);
    uv_close((uv_handle_t *)&e->stop_deadline, on_engine_handle_closed);
}
