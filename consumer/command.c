/* command.c: commands from Kafka: requests (new, absorbed or redelivered) and the decisions
 * about a rotation (approve, reject, retry, abort). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rotation_int.h"
#include "util.h"

/* ---- commands ---------------------------------------------------------------------------- */

typedef struct cmd_s {
    engine_t *e;
    engine_cmd_cb cb;
    void *arg;
    const event_t *ev;
    rotation_t *r;
    secret_ctx_t *sec;
    journal_rot_t row;
    int tries;
    int decision;        /* decision_t of a decision command, to decide again after a load */
    char refusal[512];   /* why the command is out of place, unless it was applied before */
    bool absorb_checked; /* absorbed without a lookup: journal_absorb refuses a known id */
    struct cmd_s *next_deferred; /* the engine's queue of commands that came during a write */
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

/* A command for a secret this process does not own (yet): it is retried, and said once per
 * message (a retry comes every second), with the secret and its partition. */
static void unclaimed(cmd_t *c, secret_ctx_t *sec, const char *note)
{
    engine_t *e = c->e;
    int32_t part = -1;
    bool pending = e->claim_pending && e->claim_pending(e->owns_arg, sec->cfg->name, &part);
    if (strcmp(sec->unclaimed_logged, c->ev->id) != 0) {
        util_strlcpy(sec->unclaimed_logged, c->ev->id, sizeof sec->unclaimed_logged);
        char ps[16];
        snprintf(ps, sizeof ps, "%d", (int)part);
        log_warn("command.not_owner", "secret", sec->cfg->name, "partition",
                 part < 0 ? "unknown" : ps, "command", c->ev->id, "type", c->ev->type, "note",
                 pending ? "partition assigned here, not claimed yet: retried" : note);
    }
    cmd_finish(c, ROTOR_EDB, "not the secret's owner (partition not claimed yet)");
}

/* The secret's partition is assigned here but not claimed (yet, or lost until the next
 * assignment): a decision about its rotation waits for the claim instead of being refused. */
static bool claim_pending(cmd_t *c, const secret_ctx_t *sec)
{
    int32_t part;
    return c->e->claim_pending && c->e->claim_pending(c->e->owns_arg, sec->cfg->name, &part);
}

static void on_cmd_persisted(rotation_t *r, int status);

/* A copy of a command applied before (redelivered after a crash or a rebalance, or published
 * twice): nothing changes, its offset is committed, and it is said once, here. */
static void already_applied(cmd_t *c, const char *rotation_id)
{
    log_info("command.already_applied", "rotation", rotation_id, "command", c->ev->id, "type",
             c->ev->type);
    cmd_finish(c, 0, NULL);
}

static void on_refusal_checked(void *arg, int status, bool applied)
{
    cmd_t *c = arg;
    if (status != 0)
        cmd_finish(c, ROTOR_EDB, "journal unavailable");
    else if (applied)
        already_applied(c, c->row.id);
    else
        cmd_finish(c, ROTOR_EINVALID, c->refusal);
}

/* A command that does not fit rotation_id's state is out of place (dead-lettered with reason)
 * unless it is a copy of one applied to it before, which moved the rotation on: then it is
 * already applied. Asked of the journal, which records every applied command's id. */
static void refuse(cmd_t *c, const char *rotation_id, const char *reason)
{
    util_strlcpy(c->refusal, reason, sizeof c->refusal);
    if (rotation_id != c->row.id)
        util_strlcpy(c->row.id, rotation_id, sizeof c->row.id);
    if (journal_command_applied(c->e->journal, rotation_id, c->ev->id, on_refusal_checked, c) < 0)
        cmd_finish(c, ROTOR_EDB, "journal unavailable");
}

/* The persisted callback carries only the rotation: the command whose write is in flight is
 * kept on it (commands of other secrets arrive concurrently, one rotation writes one at a time).
 * A rotation removed during the write (let go, stopping) still finishes its command. */
static void on_cmd_persisted(rotation_t *r, int status)
{
    cmd_t *c = r->cmd;
    r->cmd = NULL;
    if (r->gone) {
        cmd_finish(c, status == 0 ? 0 : ROTOR_EDB, status == 0 ? NULL : "journal unavailable");
        rot_maybe_free(r);
        return;
    }
    if (status == ROTOR_EFENCED) {
        /* Not this process's secret any more: its new owner gets the command. */
        cmd_finish(c, ROTOR_EDB, "another process owns the secret now");
        rot_after_write(r, status);
        return;
    }
    if (status == ROTOR_EALREADY) {
        /* Applied before, when the rotation was last in this state (the first of two approval
         * gates, an earlier failure): nothing was written. Undo what deciding stopped (the
         * approval's timer, a soak) by reading the row again. */
        already_applied(c, r->row.id);
        rot_reload(r);
        return;
    }
    if (status == ROTOR_ECONFLICT) {
        /* The row moved under us (a stage finished meanwhile): decide again on fresh state. */
        rot_reload(r);
        c->cb(c->arg, ROTOR_EDB, "rotation moved on; command will be retried");
        free(c);
        return;
    }
    if (status == 0 && r->row.status == RS_ABORTED)
        rot_crash_point_named(r, "abort:done");
    else if (status == 0 && r->nfinished > 0 && r->finished[0] == STAGE_APPROVE)
        rot_crash_point_at(r, STAGE_APPROVE, "done"); /* a decision, journaled */
    cmd_finish(c, status == 0 ? 0 : ROTOR_EDB, status == 0 ? NULL : "journal unavailable");
    if (status == 0)
        rot_step(r);
}

static void on_request_seen(void *arg, int status, const journal_rot_t *rows, int n);

static void on_absorbed(void *arg, int status)
{
    cmd_t *c = arg;
    if (status == ROTOR_ECONFLICT && c->absorb_checked) {
        /* The journal knows the id (a redelivery) or not the rotation: look it up and decide. */
        c->absorb_checked = false;
        if (journal_by_request(c->e->journal, c->ev->id, on_request_seen, c) < 0)
            cmd_finish(c, ROTOR_EDB, "journal unavailable");
        return;
    }
    if (status == ROTOR_EALREADY)
        status = 0; /* a concurrent copy of the request was absorbed first */
    if (status == 0) {
        seen_add(c->e->seen, c->ev->id, c->row.id);
        log_info("rotation.request_absorbed", "rotation", c->row.id, "secret", c->row.secret,
                 "request", c->ev->id);
    }
    cmd_finish(c, status == 0 ? 0 : ROTOR_EDB, status == 0 ? NULL : "journal unavailable");
}

/* A request for a secret that already has a rotation in flight: recorded, not queued. With
 * c->absorb_checked the request has not been looked up: the write itself refuses a known id. */
static void absorb(cmd_t *c, const journal_rot_t *open)
{
    c->row = *open;
    json_t *out = json_array();
    json_t *d = rot_data(open);
    json_object_set_new(d, "request_id", json_string(c->ev->id));
    json_object_set_new(d, "state", json_string(rotor_stage_name(open->stage)));
    rot_outbox_add(c->e, out, "rotation.absorbed", open->secret, open->traceparent, d);
    const char *by = data_str(c->ev, "requested_by");
    json_t *h = rot_history(open, "absorbed", by, -1, NULL, c->ev->id);
    char *hs = json_dumps(h, JSON_COMPACT), *os = json_dumps(out, JSON_COMPACT);
    json_decref(h);
    json_decref(out);
    int rc =
        c->absorb_checked
            ? journal_absorb(c->e->journal, open->id, c->ev->id, hs, os, on_absorbed, c)
            : journal_note(c->e->journal, open->id, c->ev->id, c->ev->type, hs, os, on_absorbed, c);
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
        c->sec->active = -1;
        cmd_request(c);
        return;
    }
    if (status == ROTOR_EFENCED) {
        /* Another claim is in force (another owner, or one under a larger partition count):
         * the request waits for this process to own the secret again, or for its new owner. */
        log_warn("rotation.fenced", "secret", c->row.secret, "request", c->ev->id, "note",
                 "not created: another process owns the secret now");
        cmd_finish(c, ROTOR_EDB, "another process owns the secret now");
        return;
    }
    if (status != 0) {
        cmd_finish(c, ROTOR_EDB, "journal unavailable");
        return;
    }
    seen_add(e->seen, c->ev->id, c->row.id);
    log_info("rotation.created", "rotation", c->row.id, "secret", c->row.secret, "from",
             rotor_slot_name(c->row.from_slot), "to", rotor_slot_name(c->row.to_slot));
    rotation_t *r = rot_add(e, c->sec, &c->row);
    r->fresh_attempt = c->row.status == RS_RUNNING; /* prepare's attempt 1 began in the insert */
    cmd_finish(c, 0, NULL);
    rot_step(r);
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
    if (!rot_fence(c->e, row->secret, &row->fence)) {
        /* Not claimed here (yet): a rotation is created only by its secret's owner. */
        unclaimed(c, c->sec, "partition not owned here: retried");
        return;
    }

    json_t *out = json_array();
    json_t *d = rot_data(row);
    json_object_set_new(d, "from_slot", json_string(rotor_slot_name(row->from_slot)));
    json_object_set_new(d, "to_slot", json_string(rotor_slot_name(row->to_slot)));
    json_object_set_new(d, "trigger", json_string(row->trigger));
    json_object_set_new(d, "request_id", json_string(ev->id));
    if (row->reason[0])
        json_object_set_new(d, "reason", json_string(row->reason));
    rot_outbox_add(c->e, out, "rotation.started", row->secret, row->traceparent, d);
    json_t *h = json_array();
    json_array_append_new(
        h, rot_history(row, "requested", data_str(ev, "requested_by"), -1, NULL, ev->id));
    if (!c->e->stopping && c->e->owns(c->e->owns_arg, row->secret)) {
        /* prepare's first attempt starts in the same statement (rot_step begins its effect):
         * a write of its own would change nothing but add a commit. */
        row->status = RS_RUNNING;
        row->attempt = 1;
        /* the attempt's claim and deadline, as rot_fence_write gives a running write: a new
         * owner waits for it (prepare is never external: its bound is the stage's timeout) */
        row->run_until_ms = now + (int64_t)c->sec->cfg->stages[STAGE_PREPARE].timeout_ms;
        row->run_part = row->fence.part;
        row->run_epoch = row->fence.epoch;
        d = rot_data(row);
        json_object_set_new(d, "stage", json_string(rotor_stage_name(row->stage)));
        json_object_set_new(d, "attempt", json_integer(1));
        rot_outbox_add(c->e, out, "stage.started", row->secret, row->traceparent, d);
        json_array_append_new(h, rot_history(row, "started", NULL, -1, NULL, NULL));
    }
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
                                  int64_t last);

/* A new request for a secret with no rotation open here. When this process knows the secret's
 * active slot, the rotation is inserted at once: the insert itself refuses it if the secret has
 * an open rotation or another active slot (then on_created reads the journal and decides).
 * Otherwise the journal is read first. */
static void request_new(cmd_t *c)
{
    if (c->sec->active >= 0) {
        create_rotation(c, (rotor_slot_t)c->sec->active);
        return;
    }
    if (journal_secret(c->e->journal, c->sec->cfg->name, c->sec->cfg->active, on_secret_for_request,
                       c) < 0)
        cmd_finish(c, ROTOR_EDB, "journal unavailable");
}

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
    c->sec->active = (int)active;
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
        if (!rot_find(c->e, rows[0].id) && !rot_leaving(c->e, rows[0].id) &&
            c->e->owns(c->e->owns_arg, rows[0].secret))
            rot_step(rot_add(c->e, c->sec, &rows[0]));
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
        seen_add(c->e->seen, c->ev->id, rows[0].id);
        /* Its rotation may be open and run by nobody (a lost commit result, a rebalance that
         * came between its creation and a load): take it in, as a load would. */
        secret_ctx_t *sec = rot_secret_ctx(c->e, rows[0].secret);
        bool pickup = sec && journal_status_open(rows[0].status) && !rot_find(c->e, rows[0].id) &&
                      !rot_leaving(c->e, rows[0].id) && c->e->owns(c->e->owns_arg, rows[0].secret);
        log_info("rotation.request_redelivered", "request", c->ev->id, "rotation", rows[0].id,
                 "note", pickup ? "open and not running here: resumed" : "already applied", "via",
                 "journal");
        if (pickup) {
            rotation_t *r = rot_add(c->e, sec, &rows[0]);
            rot_log(LOG_INFO, "rotation.resumed", r, "status", journal_status_name(r->row.status));
            cmd_finish(c, 0, NULL);
            rot_step(r);
            return;
        }
        cmd_finish(c, 0, NULL);
        return;
    }
    rotation_t *open = rot_of_secret(c->e, c->sec->cfg->name);
    if (open) {
        absorb(c, &open->row);
        return;
    }
    request_new(c);
}

static void cmd_request(cmd_t *c)
{
    const char *secret = data_str(c->ev, "secret");
    char reason[256];
    if (!secret || !(c->sec = rot_secret_ctx(c->e, secret))) {
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
    if (c->tries == 0 && c->sec->active >= 0 && !rot_of_secret(c->e, secret)) {
        /* Nothing open here and the active slot known: insert at once. The insert refuses a
         * request the journal has seen, an open rotation and another active slot; on_created
         * then asks the journal (journal_by_request first). */
        create_rotation(c, (rotor_slot_t)c->sec->active);
        return;
    }
    /* A redelivery of a request whose rotation runs here: the journal would say "already
     * applied" (it names the id, and the rotation is not for picking up), so it is not asked.
     * Any other remembered id (its rotation ended, or is not held here) is asked about, since
     * only the journal knows whether that rotation waits for someone to pick it up. */
    const char *known = seen_find(c->e->seen, c->ev->id);
    if (known && rot_find(c->e, known)) {
        log_info("rotation.request_redelivered", "request", c->ev->id, "rotation", known, "note",
                 "already applied", "via", "memo");
        cmd_finish(c, 0, NULL);
        return;
    }
    rotation_t *open = c->tries == 0 ? rot_of_secret(c->e, secret) : NULL;
    if (open) {
        /* Absorbed unless the journal knows the id: one write rather than a lookup, then it. */
        c->absorb_checked = true;
        absorb(c, &open->row);
        return;
    }
    if (journal_by_request(c->e->journal, c->ev->id, on_request_seen, c) < 0)
        cmd_finish(c, ROTOR_EDB, "journal unavailable");
}

/* Decisions about an existing rotation: approve, reject, retry, abort. */
typedef enum {
    DEC_APPROVE,
    DEC_REJECT,
    DEC_RETRY,
    DEC_ABORT,
    DEC_STAGE_COMPLETED, /* a pipeline's answers (deploy kind external) */
    DEC_STAGE_FAILED
} decision_t;

static const char *const decision_names[] = {"approve", "reject",          "retry",
                                             "abort",   "stage.completed", "stage.failed"};

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
    case DEC_STAGE_COMPLETED:
    case DEC_STAGE_FAILED:
        return false; /* decided by stage_answer() */
    }
    return false;
}

/* The approval gate r waits at: before the swap, or before retire once swapped. */
static const char *waiting_gate(const rotation_t *r)
{
    return r->row.swapped ? "retire" : "swap";
}

/* An approval or rejection names the gate it decides (data.gate): one for another gate is out
 * of place. One that names none (sent by an older client) is taken for the gate the rotation
 * waits at only when its secret has one gate: under approval.gate both it could be a copy of
 * the swap gate's decision arriving at retire, so it is refused. Returns false with the reason
 * in buf when the decision is out of place. */
static bool gate_fits(const cmd_t *c, const rotation_t *r, char *buf, size_t len)
{
    const char *gate = data_str(c->ev, "gate");
    const char *at = waiting_gate(r);
    if (gate && strcmp(gate, at) != 0) {
        snprintf(buf, len,
                 "rotation %s waits for approval at gate %s: a decision for gate %.16s is out of "
                 "place",
                 r->row.id, at, gate);
        return false;
    }
    if (!gate && r->sec->cfg->approval.gate == GATE_BOTH) {
        snprintf(buf, len,
                 "rotation %s waits for approval at gate %s of two (approval.gate both): the "
                 "decision must name its gate (data.gate)",
                 r->row.id, at);
        return false;
    }
    return true;
}

static void apply_decision(cmd_t *c, rotation_t *r, decision_t d)
{
    const char *by = data_str(c->ev, "by");
    const char *why = data_str(c->ev, "reason");
    r->cmd = c;
    /* recorded with the write, which is refused if this command was applied before */
    r->cmd_event_id = c->ev->id;
    r->cmd_type = c->ev->type;
    if (d == DEC_APPROVE || d == DEC_REJECT) {
        rot_approve_decided(r, d == DEC_APPROVE ? ON_APPROVED : ON_REJECTED, by ? by : "operator",
                            why, on_cmd_persisted);
        return;
    }
    r->next = r->row;
    r->nfinished = 0; /* this write ends no stage */
    json_t *out = json_array();
    json_t *hist;
    util_strlcpy(r->next.actor, by ? by : "operator", sizeof r->next.actor);
    if (d == DEC_RETRY) {
        r->next.status = RS_PENDING;
        r->next.attempt = 0;
        r->next.next_at_ms = util_now_ms();
        r->next.error[0] = '\0';
        hist = rot_history(&r->row, "retry", r->next.actor, -1, NULL, c->ev->id);
    } else {
        rot_stop_effect(r); /* a running effect's result is dropped; its effects are idempotent */
        rot_crash_point_named(r, "abort:begin");
        r->next.status = RS_ABORTED;
        json_t *dd = rot_data(&r->row);
        json_object_set_new(dd, "stage", json_string(rotor_stage_name(r->row.stage)));
        json_object_set_new(dd, "by", json_string(r->next.actor));
        if (why)
            json_object_set_new(dd, "reason", json_string(why));
        rot_outbox_add(c->e, out, "rotation.aborted", r->row.secret, r->row.traceparent, dd);
        hist = rot_history(&r->row, "aborted", r->next.actor, -1, why, c->ev->id);
    }
    rot_persist(r, hist, out, on_cmd_persisted);
}

static void cmd_decide(cmd_t *c, decision_t d);

static void on_find_for_decision(void *arg, int status, const journal_rot_t *rows, int n)
{
    cmd_t *c = arg;
    if (status != 0) {
        cmd_finish(c, ROTOR_EDB, "journal unavailable");
        return;
    }
    const char *id = data_str(c->ev, "rotation_id");
    if (!id)
        id = "";
    /* Open and ours, but not loaded yet (a restart or a rebalance is loading it): take it in
     * and decide on it now, rather than dead-lettering a valid decision. */
    secret_ctx_t *sec = n > 0 ? rot_secret_ctx(c->e, rows[0].secret) : NULL;
    if (n > 0 && rot_leaving(c->e, rows[0].id)) {
        /* let go a moment ago: its owner (this process again, or another) takes it next */
        cmd_finish(c, ROTOR_EDB, "rotation changing owner; command will be retried");
        return;
    }
    bool open = sec && journal_status_open(rows[0].status);
    if (open && !c->e->owns(c->e->owns_arg, rows[0].secret) && claim_pending(c, sec)) {
        /* assigned here, the claim still to come (or retried): not out of place, just early */
        unclaimed(c, sec, "partition assigned here, not claimed yet: retried");
        return;
    }
    if (open && c->e->owns(c->e->owns_arg, rows[0].secret) && c->tries++ == 0) {
        if (!rot_find(c->e, rows[0].id) && !rot_leaving(c->e, rows[0].id))
            rot_step(rot_add(c->e, sec, &rows[0]));
        cmd_decide(c, (decision_t)c->decision);
        return;
    }
    char reason[256];
    if (n == 0) {
        snprintf(reason, sizeof reason, "unknown rotation %s", id);
        cmd_finish(c, ROTOR_EINVALID, reason);
        return;
    }
    snprintf(reason, sizeof reason, "rotation %s is %s at %s: %s is out of place", id,
             journal_status_name(rows[0].status), rotor_stage_name(rows[0].stage), c->ev->type);
    refuse(c, rows[0].id, reason);
}

static void on_cmd_timer(uv_timer_t *t);

/* A pipeline's answer to stage.requested (deploy kind external): it ends the attempt that
 * waits for it; the attempt's own journal write records it. An answer nobody waits for (another
 * stage, a finished attempt, a rotation that is not external) is out of place. */
static bool answer_fits(const cmd_t *c, const rotation_t *r)
{
    const char *stage = data_str(c->ev, "stage");
    rotor_stage_t st;
    /* An answer that names its attempt must be for the attempt that runs: a late answer to an
     * attempt that timed out must not complete the next one. */
    json_t *attempt = json_object_get(c->ev->data, "attempt");
    if (attempt && json_integer_value(attempt) != r->row.attempt)
        return false;
    return stage && rotor_stage_parse(stage, &st) == 0 && st == r->row.stage &&
           r->row.status == RS_RUNNING && stage_is_external(r);
}

static void answer_out_of_place(cmd_t *c, const rotation_t *r)
{
    const char *stage = data_str(c->ev, "stage");
    char reason[512];
    snprintf(reason, sizeof reason, "rotation %s is %s at %s: %s for %.32s is out of place",
             r->row.id, journal_status_name(r->row.status), rotor_stage_name(r->row.stage),
             c->ev->type, stage ? stage : "?");
    refuse(c, r->row.id, reason);
}

/* The answer is in the audit trail: now hand it to the attempt and commit its offset. A crash
 * from here on loses nothing the pipeline cannot see: the attempt re-runs and asks again. */
static void on_answer_noted(void *arg, int status)
{
    cmd_t *c = arg;
    if (status == ROTOR_EALREADY) {
        /* this answer was noted (and handed to its attempt) before: a redelivered copy */
        already_applied(c, c->row.id);
        return;
    }
    if (status != 0 && status != ROTOR_ECONFLICT) {
        cmd_finish(c, ROTOR_EDB, "journal unavailable");
        return;
    }
    rotation_t *r = rot_find(c->e, c->row.id);
    if (!r || !answer_fits(c, r)) {
        if (r)
            answer_out_of_place(c, r);
        else
            cmd_finish(c, ROTOR_EINVALID, "the rotation ended while its answer was recorded");
        return;
    }
    const char *err = data_str(c->ev, "error");
    char reason[512];
    snprintf(reason, sizeof reason, "pipeline: %s", err ? err : "failed");
    const char *by = data_str(c->ev, "by");
    rot_log(LOG_INFO, "deploy.external.answer", r, "by", by ? by : "pipeline");
    stage_external_answer(r, c->decision == DEC_STAGE_COMPLETED ? 0 : ROTOR_EFAIL, reason);
    cmd_finish(c, 0, NULL);
}

/* A pipeline's answer to stage.requested (deploy kind external) ends the attempt that waits for
 * it (or that will, once retire's drain is over). It is recorded in the history first, so that
 * its offset is committed only after its effect is in the journal. An answer nobody waits for
 * (another stage, a finished attempt, a rotation that is not external) is out of place. */
static void stage_answer(cmd_t *c, rotation_t *r, decision_t d)
{
    if (!answer_fits(c, r)) {
        answer_out_of_place(c, r);
        return;
    }
    c->row = r->row;
    const char *by = data_str(c->ev, "by");
    const char *err = data_str(c->ev, "error");
    json_t *h =
        rot_history(&r->row, d == DEC_STAGE_COMPLETED ? "pipeline-completed" : "pipeline-failed",
                    by ? by : "pipeline", -1, err, c->ev->id);
    char *hs = json_dumps(h, JSON_COMPACT);
    json_decref(h);
    int rc = journal_note(c->e->journal, r->row.id, c->ev->id, c->ev->type, hs, NULL,
                          on_answer_noted, c);
    free(hs);
    if (rc < 0)
        cmd_finish(c, ROTOR_EDB, "journal unavailable");
}

static void cmd_decide(cmd_t *c, decision_t d)
{
    c->decision = (int)d;
    const char *id = data_str(c->ev, "rotation_id");
    rotation_t *r = id ? rot_find(c->e, id) : NULL;
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
        /* A stage transition is being written: decide on the state it leaves. Several commands
         * (of this rotation or others) may wait at once: they queue, in arrival order. */
        cmd_t **tail = &c->e->deferred_cmd;
        while (*tail)
            tail = &(*tail)->next_deferred;
        *tail = c;
        if (!uv_is_active((uv_handle_t *)&c->e->cmd_timer))
            uv_timer_start(&c->e->cmd_timer, on_cmd_timer, 20, 0);
        return;
    }
    if (d == DEC_STAGE_COMPLETED || d == DEC_STAGE_FAILED) {
        stage_answer(c, r, d);
        return;
    }
    if (!decision_fits(d, &r->row)) {
        snprintf(reason, sizeof reason, "rotation %s is %s at %s: %s is out of place", id,
                 journal_status_name(r->row.status), rotor_stage_name(r->row.stage),
                 decision_names[d]);
        refuse(c, r->row.id, reason);
        return;
    }
    if ((d == DEC_APPROVE || d == DEC_REJECT) && !gate_fits(c, r, reason, sizeof reason)) {
        refuse(c, r->row.id, reason);
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
    else if (strcmp(type, "stage.completed") == 0)
        cmd_decide(c, DEC_STAGE_COMPLETED);
    else if (strcmp(type, "stage.failed") == 0)
        cmd_decide(c, DEC_STAGE_FAILED);
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
    e->deferred_cmd = NULL; /* one still meeting a write queues again */
    while (c) {
        cmd_t *next = c->next_deferred;
        c->next_deferred = NULL;
        cmd_dispatch(c);
        c = next;
    }
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
