/* rotation.c: the rotation engine: state machine, attempts, timeouts, retries, commands. */
#include "rotation_int.h"

#include <ctype.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backoff.h"
#include "log.h"
#include "metrics.h"
#include "observe.h"
#include "util.h"

/* ---- the transition table --------------------------------------------------------------- */

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
    /* production probes failing after the swap, or through the auto approval's soak */
    {STAGE_SWAP, ON_PROBE_FAILED, IF_ANY, STAGE_ROLLBACK},
    {STAGE_APPROVE, ON_PROBE_FAILED, IF_ANY, STAGE_ROLLBACK},
};

static const char *const event_labels[] = {"ok", "approved", "rejected", "probe failed"};
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

/* ---- fault injection for the crash tests ---------------------------------------------------- */

/* ROTOR_CRASH_POINT="<stage>:<point>" kills the process with SIGKILL, exactly as `kill -9` would,
 * at a chosen point: begin (attempt journaled, effect not started), inside (set-db: password read
 * back, ALTER ROLE not sent; rollback: production back on the old slot, NOLOGIN not sent), effect
 * (effect done, not journaled), done (journaled, in the same statement as the next stage's first
 * attempt, whose effect has not begun; a stage folded into another's write is done at that write;
 * approve:done is also a decision's write). abort:begin (an abort received, its write not sent)
 * and abort:done (journaled, the command not acknowledged) are the abort command's. Tests use it
 * to prove recovery from every point (tests/e2e/crashlab.py). */
void rot_crash_point_named(const rotation_t *r, const char *here)
{
    static bool loaded;
    static const char *want;
    if (!loaded) {
        want = getenv("ROTOR_CRASH_POINT");
        loaded = true;
    }
    if (want && strcmp(want, here) == 0) {
        log_warn("crash_point", "point", here, "rotation", r->row.id);
        raise(SIGKILL);
    }
}

void rot_crash_point_at(const rotation_t *r, rotor_stage_t stage, const char *point)
{
    char here[64];
    snprintf(here, sizeof here, "%s:%s", rotor_stage_name(stage), point);
    rot_crash_point_named(r, here);
}

void rot_crash_point(const rotation_t *r, const char *point)
{
    rot_crash_point_at(r, r->row.stage, point);
}

/* ---- helpers ----------------------------------------------------------------------------- */

char *rot_itoa(char *buf, size_t len, long long v)
{
    snprintf(buf, len, "%lld", v);
    return buf;
}

const cfg_stage_policy_t *rot_policy(const rotation_t *r)
{
    return &r->sec->cfg->stages[r->row.stage];
}

const char *rot_role(const rotation_t *r, rotor_slot_t s)
{
    return r->sec->cfg->database.roles[s];
}

const char *rot_store_name(const rotation_t *r, rotor_slot_t s)
{
    return r->sec->cfg->store.names[s];
}

void rot_log(log_level_t lvl, const char *msg, const rotation_t *r, const char *k1, const char *v1)
{
    char attempt[16];
    log_write(lvl, msg, "rotation", r->row.id, "secret", r->row.secret, "stage",
              rotor_stage_name(r->row.stage), "attempt",
              rot_itoa(attempt, sizeof attempt, r->row.attempt), k1, v1, NULL);
}

/* Builds an outbox entry for an event rotor emits; steals data. */
void rot_outbox_add(engine_t *e, json_t *outbox, const char *type, const char *secret,
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
json_t *rot_data(const journal_rot_t *row)
{
    return json_pack("{s:s, s:s}", "rotation_id", row->id, "secret", row->secret);
}

json_t *rot_history(const journal_rot_t *row, const char *outcome, const char *actor,
                    int64_t duration_ms, const char *error, const char *request_id)
{
    json_t *h =
        json_pack("{s:s, s:s, s:s, s:i}", "trigger", row->trigger, "stage",
                  rotor_stage_name(row->stage), "outcome", outcome, "attempt", row->attempt);
    if (actor && *actor)
        json_object_set_new(h, "actor", json_string(actor));
    if (duration_ms >= 0)
        json_object_set_new(h, "duration_ms", json_integer(duration_ms));
    if (error && *error) {
        /* Every reason is journaled as one line of valid UTF-8 (an abort's reason comes from a
         * command; the rest were made so in rot_effect_done). */
        char text[sizeof row->error];
        util_utf8_sanitize(text, sizeof text, error);
        json_object_set_new(h, "error", json_string(text));
    }
    if (request_id && *request_id)
        json_object_set_new(h, "request_id", json_string(request_id));
    return h;
}

/* ---- lifetime ------------------------------------------------------------------------------ */

void rot_maybe_free(rotation_t *r)
{
    if (r->gone && r->inflight == 0 && r->handles == 0 && !r->writing) {
        rot_left(r);
        free(r);
    }
}

static void on_rot_handle_closed(uv_handle_t *h)
{
    rotation_t *r = h->data;
    r->handles--;
    rot_maybe_free(r);
}

/* Makes every callback of the current effect stale and stops what it still has running: the
 * deadline, the drain timer, a database or store request (a Key Vault write retried after a
 * 429 must not land once the attempt is over: after the deadline another attempt may have
 * written its own version, and a process that lost the secret must not complete an effect),
 * deploy requests and probes. */
void rot_stop_effect(rotation_t *r)
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
    if (r->storereq) {
        store_req_t *q = r->storereq;
        r->storereq = NULL;
        r->sec->store->ops->cancel(r->sec->store, q);
    }
    stage_cancel_deploy(r);
}

/* Removes r from the engine. Its memory goes when the last callback and handle are done. */
void rot_remove(rotation_t *r)
{
    engine_t *e = r->eng;
    for (rotation_t **p = &e->rotations; *p; p = &(*p)->next_rot) {
        if (*p == r) {
            *p = r->next_rot;
            break;
        }
    }
    r->gone = true;
    /* Until its last callback, its id is not loaded again (fence.c). */
    r->next_rot = e->leaving;
    e->leaving = r;
    rot_stop_effect(r);
    uv_close((uv_handle_t *)&r->timer, on_rot_handle_closed);
    uv_close((uv_handle_t *)&r->deadline, on_rot_handle_closed);
    rot_maybe_free(r);
}

secret_ctx_t *rot_secret_ctx(engine_t *e, const char *name)
{
    for (size_t i = 0; i < e->nsecrets; i++) {
        if (strcmp(e->secrets[i].cfg->name, name) == 0)
            return &e->secrets[i];
    }
    return NULL;
}

rotation_t *rot_find(engine_t *e, const char *id)
{
    for (rotation_t *r = e->rotations; r; r = r->next_rot) {
        if (strcmp(r->row.id, id) == 0)
            return r;
    }
    return NULL;
}

rotation_t *rot_of_secret(engine_t *e, const char *secret)
{
    for (rotation_t *r = e->rotations; r; r = r->next_rot) {
        if (strcmp(r->row.secret, secret) == 0)
            return r;
    }
    return NULL;
}

void rot_on_timer(uv_timer_t *t);
static void on_deadline(uv_timer_t *t);
static uint64_t stage_timeout(const rotation_t *r, rotor_stage_t st);

rotation_t *rot_add(engine_t *e, secret_ctx_t *sec, const journal_rot_t *row)
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
    r->fresh_attempt = status == 0 && r->next_starts;
    r->next_starts = false;
    if (status == 0) {
        if (!journal_status_open(r->next.status))
            observe_rotation_ended(&r->next); /* every write that ends one, an abort's too */
        r->row = r->next;
        r->row.seq++;
        if (!journal_status_open(r->row.status)) {
            /* what journal_update made the secret's active slot */
            bool moved =
                r->row.status == RS_COMPLETED || (r->row.status == RS_ABORTED && r->row.swapped);
            r->sec->active = (int)(moved ? r->row.to_slot : r->row.from_slot);
        }
    }
    if (r->gone && !r->cmd) {
        rot_maybe_free(r);
        return;
    }
    then(r, status); /* a command's callback finishes it, gone or not (command.c) */
}

void rot_reload(rotation_t *r);

/* Writes r->next over r->row by compare-and-set with its history line and events, and the
 * command r->cmd_event_id if set. Steals hist and outbox. then runs with 0, ROTOR_ECONFLICT,
 * ROTOR_EFENCED, ROTOR_EALREADY (the command was applied before) or ROTOR_EDB. */
void rot_persist(rotation_t *r, json_t *hist, json_t *outbox, persisted_fn then)
{
    char *h = json_dumps(hist, JSON_COMPACT);
    char *o = json_dumps(outbox, JSON_COMPACT);
    json_decref(hist);
    json_decref(outbox);
    persist_t *p = util_calloc(1, sizeof *p);
    p->r = r;
    p->then = then;
    r->next.seq = r->row.seq;
    const char *event_id = r->cmd_event_id, *type = r->cmd_type;
    r->cmd_event_id = NULL;
    r->cmd_type = NULL;
    if (!rot_fence_write(r, stage_timeout(r, r->next.stage))) {
        /* not (or no longer) the owner: nothing is written */
        free(h);
        free(o);
        free(p);
        r->next_starts = false; /* the write's flags go with it, as on_persisted resets them */
        then(r, ROTOR_EFENCED);
        return;
    }
    r->writing = true;
    int rc =
        journal_update_command(r->eng->journal, &r->next, event_id, type, h, o, on_persisted, p);
    free(h);
    free(o);
    if (rc < 0) {
        free(p);
        r->writing = false;
        r->next_starts = false;
        then(r, ROTOR_EDB);
    }
}

/* The default reaction to a write that did not land: a conflict means the row moved on
 * (another command or process): re-read it; a journal error: try the step again shortly. */
void rot_after_write(rotation_t *r, int status)
{
    if (status == 0) {
        rot_step(r);
    } else if (status == ROTOR_ECONFLICT) {
        rot_log(LOG_WARN, "rotation.conflict", r, "action", "reload");
        rot_reload(r);
    } else if (status == ROTOR_EFENCED) {
        /* Another process claimed the secret's partition: it is that process's now. */
        journal_fence_t f = r->next.fence;
        rot_log(LOG_WARN, "rotation.fenced", r, "action", "let go");
        rot_let_go(r, "fenced");
        if (f.epoch && r->eng->fenced)
            r->eng->fenced(r->eng->owns_arg, &f);
    } else {
        rot_log(LOG_WARN, "rotation.journal_unavailable", r, "retry_in", "1s");
        uv_timer_start(&r->timer, rot_on_timer, 1000, 0);
    }
}

static void on_reloaded(void *arg, int status, const journal_rot_t *rows, int n)
{
    rotation_t *r = arg;
    r->inflight--;
    if (r->gone) {
        rot_maybe_free(r);
        return;
    }
    if (status != 0) {
        uv_timer_start(&r->timer, rot_on_timer, 1000, 0);
        return;
    }
    if (n == 0 || !journal_status_open(rows[0].status)) {
        rot_remove(r);
        return;
    }
    r->row = rows[0];
    r->fresh_attempt = false;
    rot_step(r);
}

void rot_reload(rotation_t *r)
{
    r->inflight++;
    r->token++;
    if (journal_find(r->eng->journal, r->row.id, on_reloaded, r) < 0) {
        r->inflight--;
        uv_timer_start(&r->timer, rot_on_timer, 1000, 0);
    }
}

/* ---- attempts ------------------------------------------------------------------------------ */

/* An attempt's bound at stage st: the stage's timeout, or the pipeline's when a pipeline does
 * the work. */
static uint64_t stage_timeout(const rotation_t *r, rotor_stage_t st)
{
    uint64_t t = r->sec->cfg->stages[st].timeout_ms;
    uint64_t ext = r->sec->cfg->deploy.external.timeout_ms;
    if (stage_external_at(r, st) && ext > t)
        t = ext;
    /* retire waits the drain inside its attempt: the bound is on top of it */
    return st == STAGE_RETIRE ? t + r->sec->cfg->database.drain_ms : t;
}

static uint64_t attempt_timeout(const rotation_t *r)
{
    return stage_timeout(r, r->row.stage);
}

static void on_deadline(uv_timer_t *t)
{
    rotation_t *r = t->data;
    char timeout[32];
    util_format_duration(attempt_timeout(r), timeout, sizeof timeout);
    char reason[96];
    snprintf(reason, sizeof reason, "stage %s timed out after %s", rotor_stage_name(r->row.stage),
             timeout);
    rot_stop_effect(r);
    rot_effect_done(r, ROTOR_ETIMEOUT, reason);
}

/* Azure Database for PostgreSQL's audience: an Entra access token is the admin's password. */
#define ENTRA_PG_SCOPE "https://ossrdbms-aad.database.windows.net/.default"

const char *rot_admin_dsn(const rotation_t *r)
{
    return r->sec->dsn_entra ? r->sec->dsn_entra : r->sec->dsn;
}

/* dsn with password=token: a URI gets a query parameter, key=value text a quoted keyword.
 * Returns malloc'ed text (wipe it: it holds the token). */
static char *dsn_with_password(const char *dsn, const char *token)
{
    size_t cap = strlen(dsn) + strlen(token) * 3 + 32, n = strlen(dsn);
    char *out = util_malloc(cap);
    memcpy(out, dsn, n);
    bool uri = strncmp(dsn, "postgres://", 11) == 0 || strncmp(dsn, "postgresql://", 13) == 0;
    if (uri) {
        n += (size_t)snprintf(out + n, cap - n, "%spassword=", strchr(dsn, '?') ? "&" : "?");
        for (const unsigned char *p = (const unsigned char *)token; *p; p++) {
            if (isalnum(*p) || strchr("-._~", *p))
                out[n++] = (char)*p;
            else
                n += (size_t)snprintf(out + n, cap - n, "%%%02X", *p);
        }
    } else {
        n += (size_t)snprintf(out + n, cap - n, " password='");
        for (const char *p = token; *p; p++) {
            if (*p == '\\' || *p == '\'')
                out[n++] = '\\';
            out[n++] = *p;
        }
        out[n++] = '\'';
    }
    out[n] = '\0';
    return out;
}

typedef struct {
    rotation_t *r;
    unsigned token;
} pgtok_t;

static void on_pg_token(void *arg, int status, const char *token, int64_t expires_on_ms,
                        const char *reason)
{
    (void)expires_on_ms;
    pgtok_t *t = arg;
    rotation_t *r = t->r;
    bool current = t->token == r->token;
    free(t);
    r->inflight--;
    if (r->gone || !current) {
        rot_maybe_free(r);
        return;
    }
    if (status < 0) {
        char why[512];
        snprintf(why, sizeof why, "no Entra token for the database: %s",
                 reason ? reason : rotor_strerror(status));
        rot_effect_done(r, status, why);
        return;
    }
    char *dsn = dsn_with_password(r->sec->dsn, token);
    if (r->sec->dsn_entra) {
        secret_wipe(r->sec->dsn_entra, strlen(r->sec->dsn_entra));
        free(r->sec->dsn_entra);
    }
    r->sec->dsn_entra = dsn;
    stage_run(r);
}

/* Starts the attempt's effect, first fetching an Entra token for the database when the admin
 * connection authenticates with one (the credential caches it until shortly before expiry). */
static void run_effect(rotation_t *r)
{
    if (!r->sec->cfg->database.entra_token) {
        stage_run(r);
        return;
    }
    pgtok_t *t = util_malloc(sizeof *t);
    t->r = r;
    t->token = r->token;
    r->inflight++;
    int rc = azure_token(r->eng->deps.cred, ENTRA_PG_SCOPE, NULL, on_pg_token, t);
    if (rc < 0) {
        r->inflight--;
        free(t);
        rot_effect_done(r, rc, "cannot request an Entra token for the database");
    }
}

/* The attempt that r->row records as running, journaled by this process, begins its effect. A
 * process that stops or loses the secret before this leaves it running in the journal: the next
 * owner runs it again (rot_step). */
static void begin_attempt(rotation_t *r)
{
    if (!rot_fence_holds(r)) {
        /* lost the secret since the write: no effect starts under a stale claim */
        rot_let_go(r, "revoked before the effect");
        return;
    }
    rot_crash_point(r, "begin");
    r->token++; /* a new attempt: nothing of an earlier one counts */
    r->setdb_checked = false;
    r->attempt_started_ms = util_now_ms();
    r->sessions_ended = -1;
    /* The effect ends by the deadline journaled with the attempt, which a new owner honours. */
    int64_t left = r->row.run_until_ms ? r->row.run_until_ms - r->attempt_started_ms
                                       : (int64_t)attempt_timeout(r);
    r->attempt_until_ms = r->attempt_started_ms + left;
    uv_timer_start(&r->deadline, on_deadline, left > 0 ? (uint64_t)left : 0, 0);
    rot_log(LOG_INFO, "stage.started", r, NULL, NULL);
    run_effect(r);
}

static void enter_approval(rotation_t *r, json_t *out);
static void start_next(rotation_t *r, json_t *out, json_t *hist);

/* deploy kind external: the attempt's start asks the pipeline to act, in the same statement
 * that journals the start, so the request is published exactly when the attempt exists. */
static void add_stage_requested(rotation_t *r, json_t *out)
{
    deploy_ctx_t ctx;
    stage_deploy_ctx(r, &ctx);
    json_t *d = rot_data(&r->next);
    json_object_set_new(d, "stage", json_string(rotor_stage_name(r->row.stage)));
    json_object_set_new(d, "attempt", json_integer(r->next.attempt));
    json_object_set_new(d, "slot", json_string(rotor_slot_name(ctx.slot)));
    json_object_set_new(d, "role", json_string(ctx.role));
    json_object_set_new(d, "store_name", json_string(ctx.store_name));
    if (ctx.version && *ctx.version)
        json_object_set_new(d, "version", json_string(ctx.version));
    json_object_set_new(d, "timeout_ms", json_integer((json_int_t)attempt_timeout(r)));
    rot_outbox_add(r->eng, out, "stage.requested", r->row.secret, r->row.traceparent, d);
}

static void start_attempt(rotation_t *r)
{
    const cfg_stage_policy_t *pol = rot_policy(r);
    r->next = r->row;
    if (r->row.stage == STAGE_APPROVE) {
        /* approve has no effect to attempt: it waits (back here after `rotor retry`). */
        json_t *out = json_array();
        enter_approval(r, out);
        rot_persist(r, rot_history(&r->next, "started", NULL, -1, NULL, NULL), out,
                    rot_after_write);
        return;
    }
    if (r->row.attempt >= pol->max_attempts) {
        /* Attempts were spent by earlier runs (a crash loop, say): give up, visibly. */
        rot_effect_done(r, ROTOR_EFAIL, "no attempts left");
        return;
    }
    json_t *out = json_array();
    json_t *hist = json_array();
    start_next(r, out, hist);
    if (stage_is_external(r))
        add_stage_requested(r, out);
    r->nfinished = 0;
    rot_persist(r, hist, out, rot_after_write);
}

/* Moves r->next (pending at its stage) to a running attempt, with its event and history line.
 * rot_step() begins the effect once the write is in the journal (fresh_attempt). */
static void start_next(rotation_t *r, json_t *out, json_t *hist)
{
    r->next.status = RS_RUNNING;
    r->next.attempt++;
    json_t *d = rot_data(&r->next);
    json_object_set_new(d, "stage", json_string(rotor_stage_name(r->next.stage)));
    json_object_set_new(d, "attempt", json_integer(r->next.attempt));
    rot_outbox_add(r->eng, out, "stage.started", r->next.secret, r->next.traceparent, d);
    json_array_append_new(hist, rot_history(&r->next, "started", NULL, -1, NULL, NULL));
    r->next_starts = true;
}

/* Enters the approve stage: waiting for a decision (manual) or for the soak (auto). */
static void enter_approval(rotation_t *r, json_t *out)
{
    const cfg_secret_t *cfg = r->sec->cfg;
    r->next.status = RS_WAITING;
    r->next.attempt = 1;
    int64_t now = util_now_ms();
    r->attempt_started_ms = now; /* an approval's wait is its attempt: its duration is measured */
    r->next.next_at_ms = now + (int64_t)(cfg->approval.mode == APPROVAL_AUTO
                                             ? cfg->approval.soak_ms
                                             : cfg->stages[STAGE_APPROVE].timeout_ms);
    json_t *d = rot_data(&r->next);
    json_object_set_new(d, "stage", json_string("approve"));
    json_object_set_new(d, "attempt", json_integer(1));
    rot_outbox_add(r->eng, out, "stage.started", r->row.secret, r->row.traceparent, d);
    if (cfg->approval.mode == APPROVAL_MANUAL) {
        d = rot_data(&r->next);
        json_object_set_new(d, "gate", json_string(r->next.swapped ? "retire" : "swap"));
        json_object_set_new(
            d, "active_slot",
            json_string(rotor_slot_name(r->next.swapped ? r->next.to_slot : r->next.from_slot)));
        rot_outbox_add(r->eng, out, "rotation.awaiting-approval", r->row.secret, r->row.traceparent,
                       d);
    }
}

/* Moves r->next to what follows the current stage on `on`, adding the events. */
static void rot_advance(rotation_t *r, trans_event_t on, json_t *out)
{
    int to = next_stage(r->sec->cfg, &r->next, on);
    int64_t now = util_now_ms();
    if (to == T_COMPLETED) {
        r->next.status = RS_COMPLETED;
        json_t *d = rot_data(&r->next);
        json_object_set_new(d, "active_slot", json_string(rotor_slot_name(r->next.to_slot)));
        json_object_set_new(d, "active_role", json_string(rot_role(r, r->next.to_slot)));
        json_object_set_new(d, "version", json_string(r->next.version));
        json_object_set_new(d, "duration_ms", json_integer(now - r->next.created_at_ms));
        rot_outbox_add(r->eng, out, "rotation.completed", r->row.secret, r->row.traceparent, d);
        return;
    }
    if (to == T_ROLLED_BACK) {
        r->next.status = RS_ROLLED_BACK;
        json_t *d = rot_data(&r->next);
        json_object_set_new(d, "active_slot", json_string(rotor_slot_name(r->next.from_slot)));
        json_object_set_new(d, "reason",
                            json_string(r->next.error[0] ? r->next.error : "rejected"));
        rot_outbox_add(r->eng, out, "rotation.rolled-back", r->row.secret, r->row.traceparent, d);
        return;
    }
    r->next.stage = (rotor_stage_t)to;
    r->next.attempt = 0;
    r->next.next_at_ms = now;
    r->next.status = RS_PENDING;
    if (to == STAGE_APPROVE)
        enter_approval(r, out);
}

/* Records a stage whose end the write being built journals. */
static void add_finished(rotation_t *r, rotor_stage_t st)
{
    if (r->nfinished < (int)(sizeof r->finished / sizeof r->finished[0]))
        r->finished[r->nfinished++] = st;
}

/* deploy kind none with no driver: nothing to bring up, the stage completes at once. */
static bool stage_is_noop(const rotation_t *r, rotor_stage_t st)
{
    return st == STAGE_DEPLOY && !r->sec->deploy && r->sec->cfg->deploy.kind_id == DEPLOY_NONE;
}

/* Folds into the write that ends a stage what would otherwise be journaled by writes of their own
 * right after it, with nothing to wait for in between: an approve that decides by itself at once
 * (mode auto, soak 0), a deploy with nothing to bring up (kind none), and the start of the next
 * stage's first attempt. Each keeps its events and its history line, in the same statement, in
 * the order separate writes gave them: the events contract and the audit trail are unchanged,
 * only the commits between them are gone. A process that is stopping or no longer owns the
 * secret folds nothing: the next owner starts the stage. */
static void rot_chain(rotation_t *r, json_t *out, json_t *hist)
{
    engine_t *e = r->eng;
    const cfg_secret_t *cfg = r->sec->cfg;
    if (e->stopping || !e->owns(e->owns_arg, r->next.secret))
        return;
    for (;;) {
        int64_t now = util_now_ms();
        if (r->next.status == RS_WAITING && r->next.stage == STAGE_APPROVE &&
            cfg->approval.mode == APPROVAL_AUTO && r->next.next_at_ms <= now) {
            /* what rot_step would do at once: rot_approve_decided(ON_APPROVED, "auto") */
            json_t *d = rot_data(&r->next);
            json_object_set_new(d, "stage", json_string("approve"));
            json_object_set_new(d, "attempt", json_integer(1));
            json_object_set_new(d, "duration_ms", json_integer(0));
            rot_outbox_add(e, out, "stage.completed", r->next.secret, r->next.traceparent, d);
            json_array_append_new(hist, rot_history(&r->next, "approved", "auto", -1, NULL, NULL));
            util_strlcpy(r->next.actor, "auto", sizeof r->next.actor);
            add_finished(r, STAGE_APPROVE);
            rot_advance(r, ON_APPROVED, out);
            continue;
        }
        if (r->next.status != RS_PENDING || r->next.next_at_ms > now ||
            r->next.stage == STAGE_APPROVE ||
            (cfg->deploy.kind_id == DEPLOY_EXTERNAL &&
             (r->next.stage == STAGE_DEPLOY || r->next.stage == STAGE_SWAP ||
              r->next.stage == STAGE_RETIRE || r->next.stage == STAGE_ROLLBACK)))
            return; /* a wait, or a pipeline to ask (start_attempt publishes stage.requested) */
        start_next(r, out, hist);
        if (!stage_is_noop(r, r->next.stage))
            return;
        r->next_starts = false;
        json_t *d = rot_data(&r->next);
        json_object_set_new(d, "stage", json_string(rotor_stage_name(r->next.stage)));
        json_object_set_new(d, "attempt", json_integer(r->next.attempt));
        json_object_set_new(d, "duration_ms", json_integer(0));
        rot_outbox_add(e, out, "stage.completed", r->next.secret, r->next.traceparent, d);
        json_array_append_new(hist, rot_history(&r->next, "completed", NULL, 0, NULL, NULL));
        r->next.error[0] = '\0';
        add_finished(r, r->next.stage);
        rot_advance(r, ON_OK, out);
    }
}

/* Counts what a journaled transition did for one of the stages it ended, once it is in the
 * journal. Only the first can have failed or be retried: later ones were folded in after an ok. */
static void count_transition(const rotation_t *r, int i)
{
    char labels[96];
    rotor_stage_t st = r->finished[i];
    const char *outcome = i > 0                                               ? "ok"
                          : r->row.status == RS_PENDING && r->row.stage == st ? "retry"
                          : r->row.status == RS_FAILED                        ? "failed"
                                                                              : "ok";
    snprintf(labels, sizeof labels, "stage=\"%s\",outcome=\"%s\"", rotor_stage_name(st), outcome);
    metrics_count("rotor_stage_attempts_total", "Stage attempts that ended, by stage and outcome",
                  labels, 1);
    /* a stage folded into the write took no time of its own */
    observe_attempt(st, outcome, i > 0 ? 0 : r->took_ms);
    if (i > 0)
        return;
    metrics_gauge("rotor_rotations_open", "Rotations open in this process", NULL,
                  engine_open_count(r->eng) - (journal_status_open(r->row.status) ? 0 : 1));
}

void rot_on_effect_persisted(rotation_t *r, int status)
{
    for (int i = 0; status == 0 && i < r->nfinished; i++)
        count_transition(r, i);
    /* <stage>:done of every stage this write ended: a stage folded into the write of another
     * (deploy none, approve auto with soak 0) is journaled done at the same instant. */
    for (int i = 0; status == 0 && i < r->nfinished; i++)
        rot_crash_point_at(r, r->finished[i], "done");
    rot_after_write(r, status);
}

void rot_effect_done(rotation_t *r, int status, const char *reason)
{
    if (r->gone || r->writing)
        return; /* a second report of an attempt that already ended */
    /* Late callbacks of this attempt are stale from now on, and whatever it still has running
     * (probes beside a failed login, a database request) is cancelled. */
    rot_stop_effect(r);
    if (status == 0)
        rot_crash_point(r, "effect");
    int64_t took = r->attempt_started_ms ? util_now_ms() - r->attempt_started_ms : 0;
    r->took_ms = r->attempt_started_ms ? took : -1;
    /* r->row was updated in place by the effect (version, swapped, old_version); the journal
     * still holds the old values, and r->row.seq is still the token it holds. */
    r->next = r->row;
    r->nfinished = 0;
    add_finished(r, r->row.stage);
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
        rot_outbox_add(r->eng, out, "stage.completed", r->row.secret, r->row.traceparent, d);
        hist = rot_history(&r->row, "completed", NULL, took, NULL, NULL);
        if (r->row.stage != STAGE_ROLLBACK)
            r->next.error[0] = '\0'; /* a rollback keeps the rejection's reason */
        rot_log(LOG_INFO, "stage.completed", r, NULL, NULL);
        rot_advance(r, ON_OK, out);
    } else if (status == ROTOR_EPROBE) {
        /* Production no longer serves after the swap: swap back at once, do not retry. */
        util_utf8_sanitize(r->next.error, sizeof r->next.error,
                           reason ? reason : rotor_strerror(status));
        json_t *d = rot_data(&r->row);
        json_object_set_new(d, "stage", json_string(rotor_stage_name(r->row.stage)));
        json_object_set_new(d, "attempt", json_integer(r->row.attempt > 0 ? r->row.attempt : 1));
        json_object_set_new(d, "error", json_string(r->next.error));
        json_object_set_new(d, "final", json_true());
        rot_outbox_add(r->eng, out, "stage.failed", r->row.secret, r->row.traceparent, d);
        hist = rot_history(&r->row, "probe-failed", NULL, took, r->next.error, NULL);
        rot_log(LOG_ERROR, "stage.probe_failed", r, "error", r->next.error);
        rot_advance(r, ON_PROBE_FAILED, out);
    } else {
        const cfg_stage_policy_t *pol = rot_policy(r);
        /* An approval that timed out is not retried by itself: a person has to decide. */
        bool final = r->row.attempt >= pol->max_attempts || r->row.stage == STAGE_APPROVE;
        util_utf8_sanitize(r->next.error, sizeof r->next.error,
                           reason ? reason : rotor_strerror(status));
        json_t *d = rot_data(&r->row);
        json_object_set_new(d, "stage", json_string(rotor_stage_name(r->row.stage)));
        json_object_set_new(d, "attempt", json_integer(r->row.attempt > 0 ? r->row.attempt : 1));
        json_object_set_new(d, "error", json_string(r->next.error));
        json_object_set_new(d, "final", json_boolean(final));
        hist = rot_history(&r->row, final ? "failed" : "retrying", NULL, took, r->next.error, NULL);
        rot_log(final ? LOG_ERROR : LOG_WARN, "stage.failed", r, "error", r->next.error);
        if (final) {
            r->next.status = RS_FAILED;
            rot_outbox_add(r->eng, out, "stage.failed", r->row.secret, r->row.traceparent, d);
            json_t *f = rot_data(&r->row);
            json_object_set_new(f, "stage", json_string(rotor_stage_name(r->row.stage)));
            json_object_set_new(f, "error", json_string(r->next.error));
            rot_outbox_add(r->eng, out, "rotation.failed", r->row.secret, r->row.traceparent, f);
        } else {
            uint64_t delay =
                backoff_delay(r->row.attempt, pol->backoff_initial_ms, pol->backoff_max_ms, 0);
            json_object_set_new(d, "retry_in_ms", json_integer((json_int_t)delay));
            rot_outbox_add(r->eng, out, "stage.failed", r->row.secret, r->row.traceparent, d);
            r->next.status = RS_PENDING;
            r->next.next_at_ms = util_now_ms() + (int64_t)delay;
        }
    }
    json_t *lines = json_array();
    json_array_append_new(lines, hist);
    rot_chain(r, out, lines);
    rot_persist(r, lines, out, rot_on_effect_persisted);
}

/* ---- the step function: what to do next for a rotation ------------------------------------- */

void rot_on_timer(uv_timer_t *t)
{
    rot_step(t->data);
}

void rot_approve_decided(rotation_t *r, trans_event_t on, const char *actor, const char *why,
                         persisted_fn then);

void rot_step(rotation_t *r)
{
    engine_t *e = r->eng;
    if (r->gone || r->writing || e->stopping)
        return;
    if (!journal_status_open(r->row.status)) {
        rot_log(LOG_INFO, "rotation.finished", r, "status", journal_status_name(r->row.status));
        rot_remove(r);
        return;
    }
    if (r->letting_go || !e->owns(e->owns_arg, r->row.secret)) {
        rot_let_go(r, "another process owns the secret now");
        return;
    }
    int64_t now = util_now_ms();
    switch (r->row.status) {
    case RS_PENDING:
    case RS_RUNNING: /* found at start-up, taken over, or just journaled here */
        if (r->fresh_attempt) {
            /* journaled as running by the write that just landed: its effect begins now */
            r->fresh_attempt = false;
            begin_attempt(r);
            return;
        }
        if (rot_wait_previous_owner(r))
            return;
        if (r->row.next_at_ms > now) {
            uv_timer_start(&r->timer, rot_on_timer, (uint64_t)(r->row.next_at_ms - now), 0);
            return;
        }
        start_attempt(r);
        return;
    case RS_WAITING:
        if (r->row.next_at_ms > now && r->sec->cfg->approval.mode == APPROVAL_AUTO &&
            r->sec->cfg->probes.nproduction > 0 && r->row.swapped) {
            /* The soak watches production; it approves or rolls back by itself. */
            if (!r->probereq)
                stage_soak(r);
            return;
        }
        if (r->row.next_at_ms > now) {
            uv_timer_start(&r->timer, rot_on_timer, (uint64_t)(r->row.next_at_ms - now), 0);
            return;
        }
        if (r->sec->cfg->approval.mode == APPROVAL_AUTO)
            rot_approve_decided(r, ON_APPROVED, "auto", NULL, rot_on_effect_persisted);
        else
            rot_effect_done(r, ROTOR_ETIMEOUT, "no approval decision before the approve timeout");
        return;
    default:
        return; /* failed: visible until an operator retries or aborts */
    }
}

void rot_approve_decided(rotation_t *r, trans_event_t on, const char *actor, const char *why,
                         persisted_fn then)
{
    uv_timer_stop(&r->timer);
    stage_cancel_deploy(r); /* a soak still watching production: the decision is made */
    r->token++;
    r->next = r->row;
    r->nfinished = 0;
    add_finished(r, STAGE_APPROVE);
    r->took_ms = r->attempt_started_ms ? util_now_ms() - r->attempt_started_ms : -1;
    json_t *out = json_array();
    json_t *hist;
    if (on == ON_APPROVED) {
        json_t *d = rot_data(&r->row);
        json_object_set_new(d, "stage", json_string("approve"));
        json_object_set_new(d, "attempt", json_integer(1));
        json_object_set_new(d, "duration_ms", json_integer(0));
        rot_outbox_add(r->eng, out, "stage.completed", r->row.secret, r->row.traceparent, d);
        hist = rot_history(&r->row, "approved", actor, -1, NULL, r->cmd_event_id);
    } else {
        util_utf8_sanitize(r->next.error, sizeof r->next.error, why && *why ? why : "rejected");
        hist = rot_history(&r->row, on == ON_PROBE_FAILED ? "probe-failed" : "rejected", actor, -1,
                           r->next.error, r->cmd_event_id);
    }
    util_strlcpy(r->next.actor, actor ? actor : "", sizeof r->next.actor);
    rot_advance(r, on, out);
    json_t *lines = json_array();
    json_array_append_new(lines, hist);
    rot_chain(r, out, lines);
    rot_persist(r, lines, out, then);
}

/* ---- start, ownership, stop ---------------------------------------------------------------- */

bool engine_has_open(engine_t *e, const char *secret)
{
    return rot_of_secret(e, secret) != NULL;
}

int engine_open_count(engine_t *e)
{
    int n = 0;
    for (rotation_t *r = e->rotations; r; r = r->next_rot)
        n++;
    return n;
}

static void on_load_timer(uv_timer_t *t)
{
    engine_rebalanced(t->data);
}

void rot_load_soon(engine_t *e)
{
    if (!e->stopping)
        uv_timer_start(&e->load_timer, on_load_timer, 0, 0);
}

static void on_open_rows(void *arg, int status, const journal_rot_t *rows, int n)
{
    engine_t *e = arg;
    if (status != 0) {
        /* The journal is away: this process's open rotations must still be resumed. */
        log_error("engine.load_failed", "error", rotor_strerror(status), "retry_in", "1s");
        if (!e->stopping)
            uv_timer_start(&e->load_timer, on_load_timer, 1000, 0);
        return;
    }
    for (int i = 0; i < n; i++) {
        secret_ctx_t *sec = rot_secret_ctx(e, rows[i].secret);
        if (!sec) {
            log_warn("engine.unknown_secret", "rotation", rows[i].id, "secret", rows[i].secret,
                     "note", "open rotation of a secret no longer configured; left as it is");
            continue;
        }
        if (rot_find(e, rows[i].id) || rot_leaving(e, rows[i].id) ||
            !e->owns(e->owns_arg, rows[i].secret))
            continue;
        rotation_t *r = rot_add(e, sec, &rows[i]);
        rot_log(LOG_INFO, "rotation.resumed", r, "status", journal_status_name(r->row.status));
        rot_step(r);
    }
}

void engine_rebalanced(engine_t *e)
{
    if (e->stopping)
        return;
    /* Let go of rotations we no longer own: their effects stop now (fence.c). */
    for (rotation_t *r = e->rotations, *next; r; r = next) {
        next = r->next_rot;
        if (!e->owns(e->owns_arg, r->row.secret))
            rot_let_go(r, "partition revoked");
    }
    if (journal_load_open(e->journal, on_open_rows, e) < 0) {
        log_error("engine.load_failed", "error", "journal unavailable", "retry_in", "1s");
        uv_timer_start(&e->load_timer, on_load_timer, 1000, 0);
    }
}

static void on_secret_registered(void *arg, int status, rotor_slot_t active, int64_t first,
                                 int64_t last)
{
    (void)first;
    (void)last;
    secret_ctx_t *sec = arg;
    engine_t *e = sec->eng;
    if (status == 0)
        sec->active = (int)active;
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

/* Whether any secret talks to Azure: a Key Vault store, or an Entra token as database password. */
static bool needs_azure(const rotor_config_t *cfg)
{
    for (size_t i = 0; i < cfg->nsecrets; i++) {
        if (cfg->secrets[i].store.kind_id == STORE_KEYVAULT || cfg->secrets[i].database.entra_token)
            return true;
    }
    return false;
}

/* The drivers' shared parts: one HTTP client on the loop (Key Vault, Kubernetes, probes) and,
 * when a secret needs it, the Entra credential DefaultAzureCredential's order finds. */
static int open_deps(engine_t *e, const rotor_config_t *cfg, char *err, size_t errlen)
{
    int rc = http_init(e->loop, &e->deps.http);
    if (rc < 0) {
        snprintf(err, errlen, "cannot start the HTTP client: %s", rotor_strerror(rc));
        return rc;
    }
    if (!needs_azure(cfg))
        return 0;
    azure_cred_opts_t o = {
        .tenant_id = cfg->azure.tenant_id,
        .client_id = cfg->azure.client_id,
        .federated_token_file = cfg->azure.federated_token_file,
        .authority_host = cfg->azure.authority_host,
        .imds_endpoint = cfg->azure.imds_endpoint,
        .ca_file = cfg->azure.ca_file,
    };
    rc = azure_cred_new(e->loop, e->deps.http, &o, &e->deps.cred, err, errlen);
    if (rc == 0)
        log_info("azure.credential", "kind",
                 (const char *[]){"environment", "workload-identity",
                                  "managed-identity"}[azure_cred_kind(e->deps.cred)]);
    return rc;
}

int engine_start(const engine_opts_t *opts, engine_ready_cb cb, void *arg, engine_t **out,
                 char *err, size_t errlen)
{
    engine_t *e = util_calloc(1, sizeof *e);
    e->loop = opts->loop;
    e->cfg = opts->cfg;
    e->journal = opts->journal;
    e->source = util_strdup(opts->source);
    e->seen = seen_new(ENGINE_SEEN_MAX);
    e->owns = opts->owns;
    e->owns_arg = opts->owns_arg;
    e->fence = opts->fence;
    e->fenced = opts->fenced;
    e->claim_pending = opts->claim_pending;
    e->ready_cb = cb;
    e->ready_arg = arg;
    e->nsecrets = opts->cfg->nsecrets;
    e->secrets = util_calloc(e->nsecrets, sizeof *e->secrets);
    uv_timer_init(e->loop, &e->cmd_timer);
    uv_timer_init(e->loop, &e->stop_timer);
    uv_timer_init(e->loop, &e->stop_deadline);
    uv_timer_init(e->loop, &e->load_timer);
    e->load_timer.data = e;
    e->cmd_timer.data = e;
    e->stop_timer.data = e;
    e->stop_deadline.data = e;
    e->handles_open = 4;
    int rc = open_deps(e, opts->cfg, err, errlen);
    if (rc < 0) {
        engine_free(e);
        return rc;
    }
    for (size_t i = 0; i < e->nsecrets; i++) {
        const cfg_secret_t *s = &opts->cfg->secrets[i];
        e->secrets[i].cfg = s;
        e->secrets[i].eng = e;
        e->secrets[i].active = -1;
        char key[160];
        snprintf(key, sizeof key, "secrets[%zu].database", i);
        rc = config_dsn(s->database.dsn_env, s->database.dsn_file, key, &e->secrets[i].dsn, err,
                        errlen);
        if (rc == 0)
            rc = store_open(e->loop, s, &e->deps, &e->secrets[i].store, err, errlen);
        if (rc == 0)
            rc = deploy_open(e->loop, s, e->deps.http, &e->secrets[i].deploy, err, errlen);
        if (rc < 0) {
            e->nsecrets = i + 1;
            engine_free(e);
            return rc;
        }
    }
    e->registering = (int)e->nsecrets;
    for (size_t i = 0; i < e->nsecrets; i++) {
        const cfg_secret_t *s = e->secrets[i].cfg;
        if (journal_secret(e->journal, s->name, s->active, on_secret_registered, &e->secrets[i]) <
            0) {
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
        rot_stop_effect(r); /* parked: journaled as running, resumed on the next start */
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
        seen_free(e->seen);
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
        rot_remove(e->rotations);
    for (rotation_t *r = e->leaving; r; r = r->next_rot)
        r->orphan = true; /* their last callbacks come after the engine is gone */
    e->leaving = NULL;
    for (size_t i = 0; i < e->nsecrets; i++) {
        if (e->secrets[i].store)
            e->secrets[i].store->ops->close(e->secrets[i].store);
        if (e->secrets[i].deploy)
            e->secrets[i].deploy->ops->close(e->secrets[i].deploy);
        char *dsns[] = {e->secrets[i].dsn, e->secrets[i].dsn_entra};
        for (int k = 0; k < 2; k++) {
            if (dsns[k]) {
                secret_wipe(dsns[k], strlen(dsns[k]));
                free(dsns[k]);
            }
        }
    }
    db_close_idle(e->loop);
    azure_cred_free(e->deps.cred);
    e->deps.cred = NULL;
    if (e->deps.http)
        http_close(e->deps.http);
    e->deps.http = NULL;
    uv_close((uv_handle_t *)&e->cmd_timer, on_engine_handle_closed);
    uv_close((uv_handle_t *)&e->stop_timer, on_engine_handle_closed);
    uv_close((uv_handle_t *)&e->stop_deadline, on_engine_handle_closed);
    uv_close((uv_handle_t *)&e->load_timer, on_engine_handle_closed);
}
