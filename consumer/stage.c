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
        rot_maybe_free(r);
        return NULL;
    }
    return r;
}

void rot_effect_done(rotation_t *r, int status, const char *reason);

#define STORE_CALL(r, call)                                                                        \
    do {                                                                                           \
        int rc_ = (call);                                                                          \
        if (rc_ < 0) {                                                                             \
            (r)->inflight--;                                                                       \
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
    rotation_t *r = c->x->r;
    if (c->x->token == r->token)
        r->dbreq = NULL;
    r = eff_take(c->x);
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

/* prepare: roles, the active slot's current version, and what the store says is current. */
static void prepare_current_entry(rotation_t *r, int status, rotor_secret_t *value)
{
    if (status == ROTOR_ENOTFOUND || !value) {
        rot_effect_done(r, 0, NULL); /* no `current` entry yet: nothing to disagree with */
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
    rot_effect_done(r, 0, NULL);
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
        rot_effect_done(r, status, reason);
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
        rot_effect_done(r, status, reason);
        return;
    }
    util_strlcpy(r->row.old_version, version ? version : "", sizeof r->row.old_version);
    const char *current = r->sec->cfg->store.current;
    if (!current) {
        rot_effect_done(r, 0, NULL);
        return;
    }
    store_t *s = r->sec->store;
    STORE_CALL(r, s->ops->get(s, current, NULL, on_prepare_current_value, eff_new(r)));
}

static void prepare_roles_ok(rotation_t *r, long count)
{
    (void)count;
    store_t *s = r->sec->store;
    STORE_CALL(
        r, s->ops->current(s, rot_store_name(r, r->row.from_slot), on_prepare_version, eff_new(r)));
}

static void eff_prepare(rotation_t *r)
{
    db_req_t *req = NULL;
    dbctx_t *c = dbctx(r, prepare_roles_ok);
    int rc = db_check_roles(r->eng->loop, r->sec->dsn, rot_role(r, r->row.from_slot),
                            rot_role(r, r->row.to_slot), on_db, c, &req);
    db_started(r, c, rc, req);
}

/* generate: reuse the version this rotation already wrote, or write one. */
static void on_generate_put(void *arg, int status, const char *version, const char *reason)
{
    rotation_t *r = eff_take(arg);
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
    rotation_t *r = eff_take(arg);
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
                     on_generate_put, eff_new(r));
    secret_free(pw); /* the store copied it */
    if (rc < 0) {
        r->inflight--;
        rot_effect_done(r, rc, "secret store request failed to start");
    }
}

static void eff_generate(rotation_t *r)
{
    store_t *s = r->sec->store;
    STORE_CALL(r, s->ops->find(s, rot_store_name(r, r->row.to_slot), r->row.id, on_generate_find,
                               eff_new(r)));
}

/* set-db and verify both read this rotation's version back from the store first. */
static void read_new_version(rotation_t *r, store_value_cb cb)
{
    store_t *s = r->sec->store;
    STORE_CALL(r,
               s->ops->get(s, rot_store_name(r, r->row.to_slot), r->row.version, cb, eff_new(r)));
}

static void on_setdb_value(void *arg, int status, rotor_secret_t *value, const char *version,
                           const char *reason)
{
    (void)version;
    rotation_t *r = eff_take(arg);
    if (!r || status < 0) {
        secret_free(value);
        if (r)
            rot_effect_done(r, status, reason);
        return;
    }
    rot_crash_point(r, "inside");
    db_req_t *req = NULL;
    dbctx_t *c = dbctx(r, effect_ok);
    int rc = db_set_password(r->eng->loop, r->sec->dsn, rot_role(r, r->row.to_slot), value,
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
            rot_effect_done(r, status, reason);
        return;
    }
    db_req_t *req = NULL;
    dbctx_t *c = dbctx(r, effect_ok);
    int rc = db_verify_login(r->eng->loop, r->sec->dsn, rot_role(r, r->row.to_slot), value,
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
    rot_effect_done(r, 0, NULL);
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
        rot_effect_done(r, status, reason);
        return;
    }
    if (r->row.stage == STAGE_SWAP) {
        r->row.swapped = true;
        rot_effect_done(r, 0, NULL);
        return;
    }
    /* rollback: production is back on the old slot; now close the standby role again. */
    r->row.swapped = false;
    db_req_t *req = NULL;
    dbctx_t *c = dbctx(r, effect_ok);
    int rc = db_set_nologin(r->eng->loop, r->sec->dsn, rot_role(r, r->row.to_slot), on_db, c, &req);
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
            rot_effect_done(r, status, reason);
        return;
    }
    rotor_slot_t slot = r->row.stage == STAGE_SWAP ? r->row.to_slot : r->row.from_slot;
    rotor_secret_t *entry = current_entry(rot_role(r, slot), value);
    secret_free(value);
    store_t *s = r->sec->store;
    int rc =
        s->ops->write_current(s, r->sec->cfg->store.current, entry, on_current_written, eff_new(r));
    secret_free(entry);
    if (rc < 0) {
        r->inflight--;
        rot_effect_done(r, rc, "secret store request failed to start");
    }
}

static void eff_swap(rotation_t *r)
{
    if (!r->sec->cfg->store.current) {
        /* Without a `current` entry there is nothing to point at: the application chooses its
         * slot itself; the swap is the moment rotor records the new active slot. */
        r->row.swapped = true;
        rot_effect_done(r, 0, NULL);
        return;
    }
    read_new_version(r, on_current_value);
}

static void eff_rollback(rotation_t *r)
{
    if (r->row.swapped && r->sec->cfg->store.current) {
        store_t *s = r->sec->store;
        STORE_CALL(r, s->ops->get(s, rot_store_name(r, r->row.from_slot), NULL, on_current_value,
                                  eff_new(r)));
        return;
    }
    r->row.swapped = false;
    db_req_t *req = NULL;
    dbctx_t *c = dbctx(r, effect_ok);
    int rc = db_set_nologin(r->eng->loop, r->sec->dsn, rot_role(r, r->row.to_slot), on_db, c, &req);
    db_started(r, c, rc, req);
}

/* retire: NOLOGIN for the old role now (no new sessions), end its remaining sessions after the
 * drain time, disable its secret version. Each effect is harmless to repeat. */
static void on_retire_disabled(void *arg, int status, const char *reason)
{
    rotation_t *r = eff_take(arg);
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
        db_end_sessions(r->eng->loop, r->sec->dsn, rot_role(r, r->row.from_slot), on_db, c, &req);
    db_started(r, c, rc, req);
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
    db_req_t *req = NULL;
    dbctx_t *c = dbctx(r, retire_nologin_done);
    int rc =
        db_set_nologin(r->eng->loop, r->sec->dsn, rot_role(r, r->row.from_slot), on_db, c, &req);
    db_started(r, c, rc, req);
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
