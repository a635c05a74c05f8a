/* stage.c: each stage's effect, through the secret store, database and deploy drivers. An
 * effect reports back with rot_effect_done(); it never touches the journal. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "password.h"
#include "rotation_int.h"
#include "util.h"

/* ---- effects ----------------------------------------------------------------------------- */

/* A callback's ticket: which rotation, and which effect it belongs to. */
typedef struct {
    rotation_t *r;
    unsigned token;
} eff_t;

/* The ticket made last: a request that fails to start never took it (loop thread only). */
static eff_t *eff_latest;

static eff_t *eff_new(rotation_t *r)
{
    eff_t *x = util_malloc(sizeof *x);
    eff_latest = x;
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
        rot_maybe_free(r);
        return NULL;
    }
    return r;
}

/* The ticket of a request's callback: the rotation's slot for that request is cleared only if the
 * request still belongs to the current effect (a later attempt may have put its own there), then
 * the ticket is taken as eff_take does. */
#define EFF_TAKE_REQ(x, field)                                                                     \
    ((x)->token == (x)->r->token ? (void)((x)->r->field = NULL) : (void)0, eff_take(x))

/* Takes back the ticket of a request that failed to start. */
static void eff_abandon(rotation_t *r)
{
    free(eff_latest);
    eff_latest = NULL;
    r->inflight--;
}

/* Store requests: one at a time per rotation, tracked so that the attempt's deadline or a
 * revocation cancels it (rot_stop_effect), and bounded by the attempt's deadline. The last two
 * arguments of every store operation. */
#define STORE_REQ(r) (r)->attempt_until_ms, &(r)->storereq

/* A store callback's ticket. */
static rotation_t *store_take(void *arg)
{
    eff_t *x = arg;
    return EFF_TAKE_REQ(x, storereq);
}

#define STORE_CALL(r, call)                                                                        \
    do {                                                                                           \
        int rc_ = (call);                                                                          \
        if (rc_ < 0) {                                                                             \
            eff_abandon(r);                                                                        \
            rot_effect_done((r), rc_, "secret store request failed to start");                     \
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
    rotation_t *r = EFF_TAKE_REQ(c->x, dbreq);
    free(c);
    if (!r)
        return;
    if (status < 0) {
        rot_effect_done(r, status, reason ? reason : rotor_strerror(status));
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
        rot_effect_done(r, rc, "database request failed to start");
        return;
    }
    r->dbreq = req;
}

static void effect_ok(rotation_t *r, long count)
{
    (void)count;
    rot_effect_done(r, 0, NULL);
}

/* NOLOGIN (retire, rollback): on a later attempt, first asked whether the role can still log
 * in: an attempt cut off after its ALTER ROLE and before its journal write (a crash) does not
 * send it twice. A first attempt sends it at once. role is the configuration's (borrowed). */
typedef struct {
    eff_t *x;
    db_next_fn next;
    const char *role;
} nologinctx_t;

static void send_nologin(rotation_t *r, const char *role, db_next_fn next)
{
    db_req_t *req = NULL;
    dbctx_t *c = dbctx(r, next);
    int rc = db_set_nologin(r->eng->loop, rot_admin_dsn(r), role, on_db, c, &req);
    db_started(r, c, rc, req);
}

static void on_nologin_checked(void *arg, int status, const char *reason, long count)
{
    nologinctx_t *c = arg;
    db_next_fn next = c->next;
    const char *role = c->role;
    rotation_t *r = EFF_TAKE_REQ(c->x, dbreq);
    free(c);
    if (!r)
        return;
    if (status < 0) {
        rot_effect_done(r, status, reason ? reason : rotor_strerror(status));
        return;
    }
    if (count == 0) {
        rot_log(LOG_INFO, "nologin.already_set", r, "role", role);
        next(r, 0);
        return;
    }
    send_nologin(r, role, next);
}

static void set_nologin(rotation_t *r, const char *role, db_next_fn next)
{
    if (r->row.attempt <= 1) {
        send_nologin(r, role, next);
        return;
    }
    nologinctx_t *c = util_malloc(sizeof *c);
    c->x = eff_new(r);
    c->next = next;
    c->role = role;
    db_req_t *req = NULL;
    int rc = db_can_login(r->eng->loop, rot_admin_dsn(r), role, on_nologin_checked, c, &req);
    if (rc < 0) {
        eff_abandon(r);
        free(c);
        rot_effect_done(r, rc, "database request failed to start");
        return;
    }
    r->dbreq = req;
}

/* ---- deploy actions: the driver's part of deploy, swap, retire and rollback ---------------- */

typedef void (*deploy_next_fn)(rotation_t *r);

bool stage_external_at(const rotation_t *r, rotor_stage_t st)
{
    return r->sec->cfg->deploy.kind_id == DEPLOY_EXTERNAL &&
           (st == STAGE_DEPLOY || st == STAGE_SWAP || st == STAGE_RETIRE || st == STAGE_ROLLBACK);
}

bool stage_is_external(const rotation_t *r)
{
    return stage_external_at(r, r->row.stage);
}

void stage_deploy_ctx(const rotation_t *r, deploy_ctx_t *ctx)
{
    /* deploy and swap bring the new slot in; retire and rollback are about the old one */
    rotor_stage_t st = r->row.stage;
    rotor_slot_t slot = st == STAGE_DEPLOY || st == STAGE_SWAP ? r->row.to_slot : r->row.from_slot;
    ctx->rotation_id = r->row.id;
    ctx->secret = r->row.secret;
    ctx->slot = slot;
    ctx->role = rot_role(r, slot);
    ctx->store_name = rot_store_name(r, slot);
    ctx->version = slot == r->row.to_slot ? r->row.version : r->row.old_version;
}

typedef struct {
    eff_t *x;
    deploy_next_fn next;
} depctx_t;

static void on_deploy_done(void *arg, int status, const char *reason)
{
    depctx_t *c = arg;
    deploy_next_fn next = c->next;
    rotation_t *r = EFF_TAKE_REQ(c->x, deployreq);
    free(c);
    if (!r)
        return;
    if (status < 0)
        rot_effect_done(r, status, reason ? reason : rotor_strerror(status));
    else
        next(r);
}

/* Runs the deploy driver's action for r's stage, then next: `none` has nothing to do; `external`
 * waits for the pipeline's answer to the stage.requested published when the attempt started. */
static void deploy_action(rotation_t *r, deploy_next_fn next)
{
    if (stage_is_external(r) && r->ext_early) {
        /* retire asks the pipeline at the attempt's start, then drains: an answer may be here. */
        r->ext_early = false;
        if (r->ext_early_status < 0)
            rot_effect_done(r, r->ext_early_status, r->ext_early_reason);
        else
            next(r);
        return;
    }
    if (stage_is_external(r)) {
        r->ext_next = next;
        rot_log(LOG_INFO, "deploy.external.waiting", r, "note",
                "waiting for the pipeline's stage.completed or stage.failed");
        return;
    }
    deploy_t *d = r->sec->deploy;
    if (!d) {
        next(r);
        return;
    }
    deploy_ctx_t ctx;
    stage_deploy_ctx(r, &ctx);
    int (*op)(deploy_t *, const deploy_ctx_t *, deploy_cb, void *, deploy_req_t **) =
        r->row.stage == STAGE_DEPLOY   ? d->ops->deploy
        : r->row.stage == STAGE_SWAP   ? d->ops->swap
        : r->row.stage == STAGE_RETIRE ? d->ops->retire
                                       : d->ops->rollback;
    depctx_t *c = util_malloc(sizeof *c);
    c->x = eff_new(r);
    c->next = next;
    deploy_req_t *req = NULL;
    int rc = op(d, &ctx, on_deploy_done, c, &req);
    if (rc < 0) {
        r->inflight--;
        free(c->x);
        free(c);
        rot_effect_done(r, rc, "deploy driver request failed to start");
        return;
    }
    r->deployreq = req;
}

bool stage_external_answer(rotation_t *r, int status, const char *reason)
{
    deploy_next_fn next = r->ext_next;
    if (!next) {
        /* The attempt runs but has not reached its wait yet (retire's drain): keep the answer. */
        r->ext_early = true;
        r->ext_early_status = status;
        util_strlcpy(r->ext_early_reason, reason ? reason : "", sizeof r->ext_early_reason);
        return true;
    }
    r->ext_next = NULL;
    if (status < 0)
        rot_effect_done(r, status, reason);
    else
        next(r);
    return true;
}

void stage_cancel_deploy(rotation_t *r)
{
    r->ext_next = NULL;
    r->ext_early = false;
    if (r->probereq) {
        probe_req_t *q = r->probereq;
        r->probereq = NULL;
        probe_cancel(q);
    }
    if (r->deployreq) {
        deploy_req_t *q = r->deployreq;
        r->deployreq = NULL;
        r->sec->deploy->ops->cancel(q);
    }
}

/* prepare's last check: what the deploy driver observes agrees with the journal's active slot
 * (a driver that cannot tell, or kinds without a driver, pass). */
static void on_observed(void *arg, int status, int observed, const char *reason)
{
    depctx_t *c = arg;
    rotation_t *r = EFF_TAKE_REQ(c->x, deployreq);
    free(c);
    if (!r)
        return;
    if (status < 0) {
        rot_effect_done(r, status, reason);
        return;
    }
    if (observed >= 0 && observed != (int)r->row.from_slot) {
        char why[256];
        snprintf(why, sizeof why,
                 "the deploy driver observes production on %s but the journal's active slot is %s",
                 rotor_slot_name((rotor_slot_t)observed), rotor_slot_name(r->row.from_slot));
        rot_effect_done(r, ROTOR_EFAIL, why);
        return;
    }
    rot_effect_done(r, 0, NULL);
}

static void prepare_observe(rotation_t *r)
{
    deploy_t *d = r->sec->deploy;
    if (!d || !d->ops->observe) {
        rot_effect_done(r, 0, NULL);
        return;
    }
    deploy_ctx_t ctx;
    stage_deploy_ctx(r, &ctx);
    ctx.slot = r->row.from_slot;
    depctx_t *c = util_malloc(sizeof *c);
    c->x = eff_new(r);
    c->next = NULL;
    deploy_req_t *req = NULL;
    int rc = d->ops->observe(d, &ctx, on_observed, c, &req);
    if (rc < 0) {
        r->inflight--;
        free(c->x);
        free(c);
        rot_effect_done(r, rc, "deploy driver request failed to start");
        return;
    }
    r->deployreq = req;
}

/* prepare: roles, the active slot's entry (it logs in; its version), and what the store's
 * `current` entry says. */
static void prepare_current_entry(rotation_t *r, int status, rotor_secret_t *value)
{
    if (status == ROTOR_ENOTFOUND || !value) {
        prepare_observe(r); /* no `current` entry yet: nothing to disagree with */
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
        rot_effect_done(r, ROTOR_EFAIL, reason);
        return;
    }
    if (strcmp(role, rot_role(r, r->row.from_slot)) != 0) {
        snprintf(reason, sizeof reason,
                 "store entry %s names role %s but the journal's active slot is %s (%s)",
                 r->sec->cfg->store.current, role, rotor_slot_name(r->row.from_slot),
                 rot_role(r, r->row.from_slot));
        json_decref(doc);
        rot_effect_done(r, ROTOR_EFAIL, reason);
        return;
    }
    json_decref(doc);
    prepare_observe(r);
}

static void on_prepare_current_value(void *arg, int status, rotor_secret_t *value,
                                     const char *version, const char *reason)
{
    (void)version;
    rotation_t *r = store_take(arg);
    if (!r) {
        secret_free(value);
        return;
    }
    if (status < 0 && status != ROTOR_ENOTFOUND) {
        secret_free(value);
        rot_effect_done(r, status, reason);
        return;
    }
    prepare_current_entry(r, status, value);
}

/* prepare, once the active slot's entry logged in: what the store's `current` entry says. */
static void prepare_current(rotation_t *r)
{
    const char *current = r->sec->cfg->store.current;
    if (!current) {
        prepare_observe(r);
        return;
    }
    store_t *s = r->sec->store;
    STORE_CALL(r,
               s->ops->get(s, current, NULL, on_prepare_current_value, eff_new(r), STORE_REQ(r)));
}

static void on_prepare_login(void *arg, int status, const char *reason, long count)
{
    dbctx_t *c = arg;
    rotation_t *r = EFF_TAKE_REQ(c->x, dbreq);
    free(c);
    if (!r)
        return;
    if (status < 0) {
        /* The reason is the server's or libpq's, redacted by the driver: never the value. */
        char why[1024];
        snprintf(why, sizeof why, "store entry %s does not log in as role %s: %s",
                 rot_store_name(r, r->row.from_slot), rot_role(r, r->row.from_slot),
                 reason ? reason : rotor_strerror(status));
        rot_effect_done(r, status, why);
        return;
    }
    /* A server that let the role in without asking for the password (pg_hba trust, peer, cert)
     * proved nothing about the store's entry: said once per rotation, not a failure, since such
     * setups exist (development). */
    if (count == 0 && !r->login_unproved_warned) {
        r->login_unproved_warned = true;
        log_warn("prepare.login_not_proved", "rotation", r->row.id, "secret", r->row.secret, "role",
                 rot_role(r, r->row.from_slot), "note",
                 "the server did not ask for a password (trust, peer or cert authentication): "
                 "the store entry's value was not checked");
    }
    prepare_current(r);
}

/* The active slot's entry in the store must be the password production logs in with, proved by
 * logging in with it, before anything changes. Otherwise (a mistyped store.dir, a vault never
 * seeded, a value typed wrong) the rotation would go through, and the only password the
 * application has would be one rotor cannot roll back to nor retire safely. Its version is the
 * one retire disables. */
static void on_prepare_active_value(void *arg, int status, rotor_secret_t *value,
                                    const char *version, const char *reason)
{
    rotation_t *r = store_take(arg);
    if (!r) {
        secret_free(value);
        return;
    }
    if (status < 0 || !value) {
        secret_free(value);
        char why[1024];
        if (status == ROTOR_ENOTFOUND)
            snprintf(why, sizeof why,
                     "store entry %s (the active slot %s, role %s) has no current value: the store "
                     "must hold the password production logs in with (%s)",
                     rot_store_name(r, r->row.from_slot), rotor_slot_name(r->row.from_slot),
                     rot_role(r, r->row.from_slot), reason ? reason : "not found");
        else
            snprintf(why, sizeof why, "%s", reason ? reason : rotor_strerror(status));
        rot_effect_done(r, status < 0 ? status : ROTOR_ESTORE, why);
        return;
    }
    util_strlcpy(r->row.old_version, version ? version : "", sizeof r->row.old_version);
    db_req_t *req = NULL;
    dbctx_t *c = dbctx(r, NULL);
    int rc = db_verify_login(r->eng->loop, rot_admin_dsn(r), rot_role(r, r->row.from_slot), value,
                             "SELECT 1", on_prepare_login, c, &req);
    secret_free(value); /* db_verify_login copied it */
    db_started(r, c, rc, req);
}

static void prepare_roles_ok(rotation_t *r, long count)
{
    (void)count;
    store_t *s = r->sec->store;
    STORE_CALL(r, s->ops->get(s, rot_store_name(r, r->row.from_slot), NULL, on_prepare_active_value,
                              eff_new(r), STORE_REQ(r)));
}

static void eff_prepare(rotation_t *r)
{
    db_req_t *req = NULL;
    dbctx_t *c = dbctx(r, prepare_roles_ok);
    int rc = db_check_roles(r->eng->loop, rot_admin_dsn(r), rot_role(r, r->row.from_slot),
                            rot_role(r, r->row.to_slot), on_db, c, &req);
    db_started(r, c, rc, req);
}

/* generate: reuse the version this rotation already wrote, or write one. */
static void on_generate_put(void *arg, int status, const char *version, const char *reason)
{
    rotation_t *r = store_take(arg);
    if (!r)
        return;
    if (status < 0 || !version) {
        rot_effect_done(r, status < 0 ? status : ROTOR_ESTORE, reason ? reason : "no version id");
        return;
    }
    util_strlcpy(r->row.version, version, sizeof r->row.version);
    rot_effect_done(r, 0, NULL);
}

static void on_generate_find(void *arg, int status, const char *version, const char *reason)
{
    rotation_t *r = store_take(arg);
    if (!r)
        return;
    if (status < 0) {
        rot_effect_done(r, status, reason);
        return;
    }
    if (version) {
        rot_log(LOG_INFO, "generate.reuse_version", r, "version", version);
        util_strlcpy(r->row.version, version, sizeof r->row.version);
        rot_effect_done(r, 0, NULL);
        return;
    }
    const cfg_secret_t *cfg = r->sec->cfg;
    password_policy_t pol = {cfg->password.length, cfg->password.classes, cfg->password.exclude};
    rotor_secret_t *pw = NULL;
    int rc = password_generate(&pol, &pw);
    if (rc < 0) {
        rot_effect_done(r, rc, "password generation failed");
        return;
    }
    store_tags_t tags = {r->row.id, rotor_slot_name(r->row.to_slot), rot_role(r, r->row.to_slot)};
    store_t *s = r->sec->store;
    rc = s->ops->put(s, rot_store_name(r, r->row.to_slot), pw, &tags, r->row.expires_at_ms,
                     on_generate_put, eff_new(r), STORE_REQ(r));
    secret_free(pw); /* the store copied it */
    if (rc < 0) {
        eff_abandon(r);
        rot_effect_done(r, rc, "secret store request failed to start");
    }
}

static void eff_generate(rotation_t *r)
{
    store_t *s = r->sec->store;
    STORE_CALL(r, s->ops->find(s, rot_store_name(r, r->row.to_slot), r->row.id, on_generate_find,
                               eff_new(r), STORE_REQ(r)));
}

/* set-db and verify both read this rotation's version back from the store first. */
static void read_new_version(rotation_t *r, store_value_cb cb)
{
    store_t *s = r->sec->store;
    STORE_CALL(r, s->ops->get(s, rot_store_name(r, r->row.to_slot), r->row.version, cb, eff_new(r),
                              STORE_REQ(r)));
}

static void on_setdb_value(void *arg, int status, rotor_secret_t *value, const char *version,
                           const char *reason);

/* set-db's check on a later attempt: logged in, the password is set; otherwise set it. */
static void on_setdb_checked(void *arg, int status, const char *reason, long count)
{
    (void)reason;
    eff_t *x = arg;
    rotation_t *r = EFF_TAKE_REQ(x, dbreq);
    if (!r)
        return;
    /* A login the server let in without asking for the password (pg_hba trust for the admin
     * DSN's host) proves nothing: the ALTER ROLE is sent. */
    if (status == 0 && count == 1) {
        rot_log(LOG_INFO, "set-db.already_set", r, "note", "the role logs in with this version");
        rot_effect_done(r, 0, NULL);
        return;
    }
    read_new_version(r, on_setdb_value);
}

static void on_setdb_value(void *arg, int status, rotor_secret_t *value, const char *version,
                           const char *reason)
{
    (void)version;
    rotation_t *r = store_take(arg);
    if (!r || status < 0) {
        secret_free(value);
        if (r)
            rot_effect_done(r, status, reason);
        return;
    }
    if (r->row.attempt > 1 && !r->setdb_checked) {
        /* An earlier attempt may have set the password and been cut off before its journal
         * write (a crash, a lost connection): a login with it proves the ALTER ROLE is done, and
         * it is not sent twice. Only on a later attempt: a first one would log a failed login. */
        r->setdb_checked = true;
        db_req_t *req = NULL;
        eff_t *x = eff_new(r);
        int rc = db_verify_login(r->eng->loop, rot_admin_dsn(r), rot_role(r, r->row.to_slot), value,
                                 r->sec->cfg->database.probe, on_setdb_checked, x, &req);
        secret_free(value);
        if (rc < 0) {
            eff_abandon(r);
            read_new_version(r, on_setdb_value); /* set it, then */
            return;
        }
        r->dbreq = req;
        return;
    }
    rot_crash_point(r, "inside");
    db_req_t *req = NULL;
    dbctx_t *c = dbctx(r, effect_ok);
    int rc = db_set_password(r->eng->loop, rot_admin_dsn(r), rot_role(r, r->row.to_slot), value,
                             r->row.expires_at_ms, on_db, c, &req);
    secret_free(value); /* db_set_password copied it */
    db_started(r, c, rc, req);
}

static void eff_set_db(rotation_t *r)
{
    read_new_version(r, on_setdb_value);
}

/* ---- probes ---------------------------------------------------------------------------- */

typedef void (*probe_next_fn)(rotation_t *r, int status, const char *reason);

typedef struct {
    eff_t *x;
    probe_next_fn next;
} prbctx_t;

static void on_probes(void *arg, int status, const char *reason)
{
    prbctx_t *c = arg;
    probe_next_fn next = c->next;
    rotation_t *r = EFF_TAKE_REQ(c->x, probereq);
    free(c);
    if (r)
        next(r, status, reason);
}

/* Runs a probe list (borrowed from the configuration) and hands its outcome to next. */
static void run_probes(rotation_t *r, const cfg_probe_t *probes, size_t n, const probe_sql_t *sql,
                       probe_next_fn next, const char *what)
{
    prbctx_t *c = util_malloc(sizeof *c);
    c->x = eff_new(r);
    c->next = next;
    probe_req_t *req = NULL;
    int rc = probe_run(r->eng->loop, r->eng->deps.http, probes, n, sql, on_probes, c, &req);
    if (rc < 0) {
        r->inflight--;
        free(c->x);
        free(c);
        char why[96];
        snprintf(why, sizeof why, "%s could not start: %s", what, rotor_strerror(rc));
        next(r, rc, why);
        return;
    }
    r->probereq = req;
}

static void verify_part_done(rotation_t *r, int status, const char *reason)
{
    if (status < 0) {
        rot_effect_done(r, status, reason); /* the other part's callback is stale from now on */
        return;
    }
    if (--r->verify_pending == 0)
        rot_effect_done(r, 0, NULL);
}

static void verify_login_done(rotation_t *r, long count)
{
    (void)count;
    verify_part_done(r, 0, NULL);
}

static void on_verify_value(void *arg, int status, rotor_secret_t *value, const char *version,
                            const char *reason)
{
    (void)version;
    rotation_t *r = store_take(arg);
    if (!r || status < 0) {
        secret_free(value);
        if (r)
            rot_effect_done(r, status, reason);
        return;
    }
    /* The login check and the verify probes run together; both must pass. */
    r->verify_pending = 2;
    probe_sql_t sql = {rot_admin_dsn(r), rot_role(r, r->row.to_slot), value,
                       r->sec->cfg->database.probe};
    unsigned token = r->token;
    run_probes(r, r->sec->cfg->probes.verify, r->sec->cfg->probes.nverify, &sql, verify_part_done,
               "verify probe");
    if (r->token != token) { /* the probes could not start: verify already failed */
        secret_free(value);
        return;
    }
    db_req_t *req = NULL;
    dbctx_t *c = dbctx(r, verify_login_done);
    int rc = db_verify_login(r->eng->loop, rot_admin_dsn(r), rot_role(r, r->row.to_slot), value,
                             r->sec->cfg->database.probe, on_db, c, &req);
    secret_free(value);
    db_started(r, c, rc, req);
}

static void eff_verify(rotation_t *r)
{
    read_new_version(r, on_verify_value);
}

/* deploy `none`: nothing to bring up; the credential alone rotates. */
static void deployed(rotation_t *r)
{
    rot_effect_done(r, 0, NULL);
}

static void eff_deploy(rotation_t *r)
{
    deploy_action(r, deployed);
}

/* Bytes of s once escaped inside a JSON string as current_entry escapes it. */
static size_t entry_escaped_len(const char *s, size_t len)
{
    size_t n = 0;
    for (size_t k = 0; k < len; k++) {
        unsigned char ch = (unsigned char)s[k];
        n += ch == '"' || ch == '\\' ? 2 : ch < 0x20 ? 6 : 1;
    }
    return n;
}

/* The `current` entry: {"role": ..., "password": ...}, built straight into a wiped buffer (a
 * JSON library would leave copies of the password in memory it does not wipe). The caller owns
 * the result; NULL when the entry would be over SECRET_MAX_LEN bytes (a value in the store that
 * is not a password rotor made: an operator's, or one damaged). */
static rotor_secret_t *current_entry(const char *role, const rotor_secret_t *pw)
{
    static const char head[] = "{\"role\":\"", mid[] = "\",\"password\":\"", tail[] = "\"}";
    size_t cap = sizeof head - 1 + entry_escaped_len(role, strlen(role)) + sizeof mid - 1 +
                 entry_escaped_len(pw->buf, pw->len) + sizeof tail - 1;
    rotor_secret_t *s = cap <= SECRET_MAX_LEN ? secret_new(cap) : NULL;
    if (!s)
        return NULL;
    size_t n = 0;
    const char *parts[] = {head, role, mid, NULL, tail};
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

/* After the swap, production must serve from the new slot: a failing production probe rolls
 * back rather than retrying (ROTOR_EPROBE). */
static void production_probed(rotation_t *r, int status, const char *reason)
{
    if (status < 0 && status != ROTOR_ECANCELED) {
        char why[1024];
        snprintf(why, sizeof why, "after the swap: %s", reason ? reason : rotor_strerror(status));
        rot_effect_done(r, ROTOR_EPROBE, why);
        return;
    }
    rot_effect_done(r, status, reason);
}

static void swapped(rotation_t *r)
{
    r->row.swapped = true;
    run_probes(r, r->sec->cfg->probes.production, r->sec->cfg->probes.nproduction, NULL,
               production_probed, "production probe");
}

static void on_current_written(void *arg, int status, const char *reason)
{
    rotation_t *r = store_take(arg);
    if (!r)
        return;
    if (status < 0) {
        rot_effect_done(r, status, reason);
        return;
    }
    if (r->row.stage == STAGE_SWAP) {
        swapped(r);
        return;
    }
    /* rollback: production is back on the old slot; now close the standby role again. */
    r->row.swapped = false;
    rot_crash_point(r, "inside");
    set_nologin(r, rot_role(r, r->row.to_slot), effect_ok);
}

/* Writes the `current` entry for slot with the value read from the store. */
static void on_current_value(void *arg, int status, rotor_secret_t *value, const char *version,
                             const char *reason)
{
    (void)version;
    rotation_t *r = store_take(arg);
    if (!r || status < 0) {
        secret_free(value);
        if (r)
            rot_effect_done(r, status, reason);
        return;
    }
    rotor_slot_t slot = r->row.stage == STAGE_SWAP ? r->row.to_slot : r->row.from_slot;
    rotor_secret_t *entry = value ? current_entry(rot_role(r, slot), value) : NULL;
    if (!entry) {
        /* The old slot's value is whatever the store holds (a rollback reads it back): one too
         * large for the entry fails the stage, with a reason an operator can act on. */
        char why[512];
        if (value)
            snprintf(why, sizeof why,
                     "secret %s: the value of %s (%zu bytes) does not fit the current entry %s, "
                     "which holds at most %d bytes once JSON-escaped",
                     r->row.secret, rot_store_name(r, slot), value->len, r->sec->cfg->store.current,
                     SECRET_MAX_LEN);
        else
            snprintf(why, sizeof why, "secret %s: the store returned no value for %s",
                     r->row.secret, rot_store_name(r, slot));
        secret_free(value);
        rot_effect_done(r, ROTOR_ESTORE, why);
        return;
    }
    secret_free(value);
    store_t *s = r->sec->store;
    int rc = s->ops->write_current(s, r->sec->cfg->store.current, entry, on_current_written,
                                   eff_new(r), STORE_REQ(r));
    secret_free(entry);
    if (rc < 0) {
        eff_abandon(r);
        rot_effect_done(r, rc, "secret store request failed to start");
    }
}

/* swap, after the driver pointed production at the new slot: the store's `current` entry. */
static void swap_current(rotation_t *r)
{
    /* Production points at the new slot from here on, even if writing `current` fails: an
     * abort must record the slot production really uses. */
    r->row.swapped = true;
    if (!r->sec->cfg->store.current) {
        /* Without a `current` entry there is nothing to point at: the application chooses its
         * slot itself; the swap is the moment rotor records the new active slot. */
        swapped(r);
        return;
    }
    read_new_version(r, on_current_value);
}

/* Before production moves: the standby slot's current version in the store must be the one
 * set-db gave the database (r->row.version, journaled). A write of another attempt or another
 * writer that landed later would be what the standby slot reads, a password the database never
 * received: production would fail after the swap (issue 8, item 3). */
static void on_swap_version(void *arg, int status, const char *version, const char *reason)
{
    rotation_t *r = store_take(arg);
    if (!r)
        return;
    if (status < 0) {
        rot_effect_done(r, status, reason);
        return;
    }
    if (!version || strcmp(version, r->row.version) != 0) {
        char why[768];
        snprintf(why, sizeof why,
                 "store entry %s: its current version is %s, not %s, the version set-db gave role "
                 "%s: production is not swapped to a password the database does not have",
                 rot_store_name(r, r->row.to_slot), version ? version : "(none)", r->row.version,
                 rot_role(r, r->row.to_slot));
        rot_effect_done(r, ROTOR_ESTORE, why);
        return;
    }
    deploy_action(r, swap_current);
}

static void eff_swap(rotation_t *r)
{
    store_t *s = r->sec->store;
    STORE_CALL(r, s->ops->current(s, rot_store_name(r, r->row.to_slot), on_swap_version, eff_new(r),
                                  STORE_REQ(r)));
}

/* rollback, after the driver pointed production back at the old slot. */
static void rollback_current(rotation_t *r)
{
    if (r->row.swapped && r->sec->cfg->store.current) {
        store_t *s = r->sec->store;
        STORE_CALL(r, s->ops->get(s, rot_store_name(r, r->row.from_slot), NULL, on_current_value,
                                  eff_new(r), STORE_REQ(r)));
        return;
    }
    r->row.swapped = false;
    rot_crash_point(r, "inside");
    set_nologin(r, rot_role(r, r->row.to_slot), effect_ok);
}

static void on_rollback_login(void *arg, int status, const char *reason, long count)
{
    (void)count;
    dbctx_t *c = arg;
    rotation_t *r = EFF_TAKE_REQ(c->x, dbreq);
    free(c);
    if (!r)
        return;
    if (status < 0) {
        /* The reason is the server's or libpq's, redacted by the driver: never the value. */
        char why[1024];
        snprintf(why, sizeof why,
                 "store entry %s does not log in as role %s: production stays on slot %s, whose "
                 "role keeps its login: %s",
                 rot_store_name(r, r->row.from_slot), rot_role(r, r->row.from_slot),
                 rotor_slot_name(r->row.to_slot), reason ? reason : rotor_strerror(status));
        rot_effect_done(r, status, why);
        return;
    }
    deploy_action(r, rollback_current);
}

/* The old slot's entry is whatever the store holds now (an operator may have replaced it since
 * prepare proved it): production goes back to it, and the new role is closed, only once it logs
 * in. Otherwise the rollback would leave production on a password that does not work with the
 * one that does disabled. */
static void on_rollback_old_value(void *arg, int status, rotor_secret_t *value, const char *version,
                                  const char *reason)
{
    (void)version;
    rotation_t *r = store_take(arg);
    if (!r) {
        secret_free(value);
        return;
    }
    if (status < 0 || !value) {
        secret_free(value);
        rot_effect_done(r, status < 0 ? status : ROTOR_ESTORE,
                        reason ? reason : "the store returned no value for the old slot");
        return;
    }
    db_req_t *req = NULL;
    dbctx_t *c = dbctx(r, NULL);
    int rc = db_verify_login(r->eng->loop, rot_admin_dsn(r), rot_role(r, r->row.from_slot), value,
                             "SELECT 1", on_rollback_login, c, &req);
    secret_free(value); /* db_verify_login copied it */
    db_started(r, c, rc, req);
}

static void eff_rollback(rotation_t *r)
{
    if (!r->row.swapped) {
        /* production never left the old slot (a rejection at the swap gate) */
        deploy_action(r, rollback_current);
        return;
    }
    store_t *s = r->sec->store;
    STORE_CALL(r, s->ops->get(s, rot_store_name(r, r->row.from_slot), NULL, on_rollback_old_value,
                              eff_new(r), STORE_REQ(r)));
}

/* retire: NOLOGIN for the old role now (no new sessions), end its remaining sessions after the
 * drain time, disable its secret version. Each effect is harmless to repeat. */
static void on_retire_disabled(void *arg, int status, const char *reason)
{
    rotation_t *r = store_take(arg);
    if (r)
        rot_effect_done(r, status, reason);
}

static void retire_sessions_ended(rotation_t *r, long count)
{
    r->sessions_ended = count;
    if (!r->row.old_version[0]) {
        rot_effect_done(r, 0, NULL);
        return;
    }
    store_t *s = r->sec->store;
    STORE_CALL(r, s->ops->disable(s, rot_store_name(r, r->row.from_slot), r->row.old_version,
                                  on_retire_disabled, eff_new(r), STORE_REQ(r)));
}

/* After the drain and the driver's scale-down, no one should hold a session of the old role. */
static void retire_end_sessions(rotation_t *r)
{
    db_req_t *req = NULL;
    dbctx_t *c = dbctx(r, retire_sessions_ended);
    int rc = db_end_sessions(r->eng->loop, rot_admin_dsn(r), rot_role(r, r->row.from_slot), on_db,
                             c, &req);
    db_started(r, c, rc, req);
}

static void on_drained(uv_timer_t *t)
{
    rotation_t *r = t->data;
    r->draining = false;
    r->inflight--;
    deploy_action(r, retire_end_sessions);
}

static void retire_nologin_done(rotation_t *r, long count)
{
    (void)count;
    char drain[32];
    util_format_duration(r->sec->cfg->database.drain_ms, drain, sizeof drain);
    rot_log(LOG_INFO, "retire.draining", r, "drain", drain);
    r->inflight++; /* the timer is part of the effect; a timeout or removal stops it */
    r->draining = true;
    uv_timer_start(&r->timer, on_drained, r->sec->cfg->database.drain_ms, 0);
}

static void eff_retire(rotation_t *r)
{
    set_nologin(r, rot_role(r, r->row.from_slot), retire_nologin_done);
}

typedef void (*effect_fn)(rotation_t *r);
static const effect_fn effects[STAGE__COUNT] = {
    [STAGE_PREPARE] = eff_prepare, [STAGE_GENERATE] = eff_generate, [STAGE_SET_DB] = eff_set_db,
    [STAGE_DEPLOY] = eff_deploy,   [STAGE_VERIFY] = eff_verify,     [STAGE_SWAP] = eff_swap,
    [STAGE_RETIRE] = eff_retire,   [STAGE_ROLLBACK] = eff_rollback,
};

void stage_run(rotation_t *r)
{
    effects[r->row.stage](r);
}

/* ---- the auto approval's soak ------------------------------------------------------------ */

static void on_soak(void *arg, int status, const char *reason)
{
    prbctx_t *c = arg;
    rotation_t *r = EFF_TAKE_REQ(c->x, probereq);
    free(c);
    if (!r || status == ROTOR_ECANCELED)
        return;
    if (status < 0) {
        char why[1024];
        snprintf(why, sizeof why, "during the soak: %s", reason ? reason : rotor_strerror(status));
        rot_approve_decided(r, ON_PROBE_FAILED, "auto", why, rot_on_effect_persisted);
        return;
    }
    rot_approve_decided(r, ON_APPROVED, "auto", NULL, rot_on_effect_persisted);
}

void stage_soak(rotation_t *r)
{
    int64_t left = r->row.next_at_ms - util_now_ms();
    prbctx_t *c = util_malloc(sizeof *c);
    c->x = eff_new(r);
    c->next = NULL;
    probe_req_t *req = NULL;
    int rc = probe_watch(r->eng->loop, r->eng->deps.http, r->sec->cfg->probes.production,
                         r->sec->cfg->probes.nproduction, left > 0 ? (uint64_t)left : 0, on_soak, c,
                         &req);
    if (rc < 0) {
        r->inflight--;
        free(c->x);
        free(c);
        rot_log(LOG_WARN, "soak.probes_failed_to_start", r, "error", rotor_strerror(rc));
        uv_timer_start(&r->timer, rot_on_timer, 1000, 0);
        return;
    }
    r->probereq = req;
}
