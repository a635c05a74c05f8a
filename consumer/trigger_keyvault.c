/* trigger_keyvault.c: Key Vault's own events as triggers. Near-expiry or expiry of the version
 * production uses requests a rotation; events about the standby slot, old versions or versions
 * rotor wrote are recorded (logged) and ignored; a new version someone else wrote is reported as
 * secret.changed-out-of-band.
 *
 * A request goes to the commands topic through the outbox, keyed by the secret, like any other:
 * Event Hubs partitions Key Vault's events its own way, so the process that reads one is not
 * necessarily the one that owns the secret. The owner absorbs it if a rotation is in flight. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "metrics.h"
#include "rotation_int.h"
#include "util.h"

typedef struct {
    engine_t *e;
    const kv_event_t *ev;
    secret_ctx_t *sec;
    rotor_slot_t slot; /* the slot whose store entry the event is about */
    engine_cmd_cb cb;
    void *arg;
} kvt_t;

static void kvt_finish(kvt_t *t, int status, const char *outcome, const char *why)
{
    if (outcome) {
        char labels[64];
        snprintf(labels, sizeof labels, "outcome=\"%s\"", outcome);
        metrics_count("rotor_keyvault_events_total", "Key Vault events, by what rotor did", labels,
                      1);
        log_info("keyvault.event", "outcome", outcome, "type", t->ev->type, "vault", t->ev->vault,
                 "name", t->ev->name, "version", t->ev->version, "why", why);
    }
    /* why, for a failure: what the caller records if it gives up on the event. */
    t->cb(t->arg, status, status == 0 ? NULL : why ? why : "journal unavailable");
    free(t);
}

/* The vault a store points at: the first label of its URL's host ("myvault" of
 * https://myvault.vault.azure.net). */
static bool vault_is(const cfg_secret_t *s, const char *vault)
{
    const char *url = s->store.vault_url;
    if (!url || strncmp(url, "https://", 8) != 0)
        return false;
    const char *host = url + 8;
    size_t n = strcspn(host, ".:/");
    return n == strlen(vault) && strncasecmp(host, vault, n) == 0;
}

/* Key Vault compares names case-insensitively; so does the mapping to a managed secret. */
static secret_ctx_t *find_secret(engine_t *e, const kv_event_t *ev, int *slot)
{
    for (size_t i = 0; i < e->nsecrets; i++) {
        const cfg_secret_t *s = e->secrets[i].cfg;
        if (s->store.kind_id != STORE_KEYVAULT || !vault_is(s, ev->vault))
            continue;
        for (int k = 0; k < 2; k++) {
            if (strcasecmp(s->store.names[k], ev->name) == 0) {
                *slot = k;
                return &e->secrets[i];
            }
        }
        if (s->store.current && strcasecmp(s->store.current, ev->name) == 0) {
            *slot = -1;
            return &e->secrets[i];
        }
    }
    return NULL;
}

static void on_queued(void *arg, int status)
{
    kvt_t *t = arg;
    if (status != 0 && status != ROTOR_ECONFLICT) {
        kvt_finish(t, ROTOR_EDB, NULL, NULL);
        return;
    }
    bool changed = t->ev->kind == KV_NEW_VERSION;
    kvt_finish(t, 0, changed ? "out-of-band" : "requested",
               changed ? "a version rotor did not write" : "the version production uses");
}

/* Queues one event (steals data) on topic, keyed by the managed secret. */
static void queue(kvt_t *t, const char *topic, const char *type, json_t *data)
{
    const char *secret = t->sec->cfg->name;
    char *value = event_build(type, t->e->source, secret, data, NULL);
    if (!value) {
        kvt_finish(t, 0, "ignored", "event_build failed");
        return;
    }
    json_t *out = json_pack("[{s:s, s:s, s:s, s:{s:s}}]", "topic", topic, "key", secret, "value",
                            value, "headers", "content-type", "application/cloudevents+json");
    char *text = json_dumps(out, JSON_COMPACT);
    json_decref(out);
    free(value);
    int rc = journal_outbox_add(t->e->journal, text, on_queued, t);
    free(text);
    if (rc < 0)
        kvt_finish(t, ROTOR_EDB, NULL, NULL);
}

static void request_rotation(kvt_t *t)
{
    char exp[32] = "an unknown time", reason[512];
    if (t->ev->exp_ms)
        util_format_time(t->ev->exp_ms, exp, sizeof exp);
    bool expired = t->ev->kind == KV_EXPIRED;
    snprintf(reason, sizeof reason,
             expired
                 ? "WARNING: Key Vault reports %s version %s EXPIRED at %s before rotor rotated "
                   "it (%s)"
                 : "Key Vault reports %s version %s expires at %s (%s)",
             t->ev->name, t->ev->version, exp, t->ev->type);
    if (expired)
        log_warn("keyvault.secret_expired", "secret", t->sec->cfg->name, "name", t->ev->name,
                 "version", t->ev->version, "note", "rotating now; the rotation's reason says so");
    json_t *data = json_pack("{s:s, s:s, s:s, s:s}", "secret", t->sec->cfg->name, "trigger",
                             "keyvault", "requested_by", "keyvault-event", "reason", reason);
    queue(t, t->e->cfg->kafka.topic_commands, "rotation.requested", data);
}

static void on_current(void *arg, int status, const char *version, const char *reason)
{
    kvt_t *t = arg;
    if (status == ROTOR_ESTORE || status == ROTOR_ENOTFOUND) {
        /* The vault answered, and said no (deleted, forbidden): retrying would block every
         * later input message behind this one. Record it and go on. */
        kvt_finish(t, 0, "ignored",
                   reason ? reason : "the vault refused to say which version is current");
        return;
    }
    if (status < 0) {
        /* The vault is unreachable or throttling: try the event again later. */
        char why[256];
        snprintf(why, sizeof why, "vault unreachable (%s)",
                 reason ? reason : rotor_strerror(status));
        kvt_finish(t, ROTOR_ESTORE, NULL, why);
        return;
    }
    if (!version || strcasecmp(version, t->ev->version) != 0) {
        kvt_finish(t, 0, "ignored", "about an old version of the active slot");
        return;
    }
    request_rotation(t);
}

static void on_active(void *arg, int status, rotor_slot_t active, int64_t first, int64_t last)
{
    (void)first;
    (void)last;
    kvt_t *t = arg;
    if (status != 0) {
        kvt_finish(t, ROTOR_EDB, NULL, NULL);
        return;
    }
    if (t->slot != active) {
        kvt_finish(t, 0, "ignored", "about the standby slot");
        return;
    }
    store_t *s = t->sec->store;
    if (s->ops->current(s, t->ev->name, on_current, t, 0, NULL) < 0)
        kvt_finish(t, ROTOR_EDB, NULL, NULL);
}

static void on_written(void *arg, int status, const journal_rot_t *rows, int n)
{
    (void)rows;
    kvt_t *t = arg;
    if (status != 0) {
        kvt_finish(t, ROTOR_EDB, NULL, NULL);
        return;
    }
    if (n > 0) {
        kvt_finish(t, 0, "ignored", "a version rotor wrote");
        return;
    }
    json_t *data = json_pack("{s:s, s:s, s:s, s:s, s:s, s:s}", "secret", t->sec->cfg->name, "slot",
                             rotor_slot_name(t->slot), "store_name", t->ev->name, "version",
                             t->ev->version, "vault", t->ev->vault, "event_id", t->ev->id);
    log_warn("keyvault.out_of_band_change", "secret", t->sec->cfg->name, "name", t->ev->name,
             "version", t->ev->version);
    queue(t, t->e->cfg->kafka.topic_events, "secret.changed-out-of-band", data);
}

int engine_keyvault_event(engine_t *e, const kv_event_t *ev, engine_cmd_cb cb, void *arg)
{
    kvt_t *t = util_calloc(1, sizeof *t);
    t->e = e;
    t->ev = ev;
    t->cb = cb;
    t->arg = arg;
    if (ev->kind == KV_IGNORED) {
        kvt_finish(t, 0, "ignored", "not an event rotor acts on");
        return 0;
    }
    int slot = -1;
    t->sec = find_secret(e, ev, &slot);
    if (!t->sec) {
        kvt_finish(t, 0, "ignored", "not a secret rotor manages");
        return 0;
    }
    if (slot < 0) {
        kvt_finish(t, 0, "ignored", "the current entry rotor writes at each swap");
        return 0;
    }
    t->slot = (rotor_slot_t)slot;
    if (ev->kind == KV_NEW_VERSION) {
        /* A version an open rotation is writing may be announced before its journal write. */
        rotation_t *r = rot_of_secret(e, t->sec->cfg->name);
        if (r && (r->row.stage == STAGE_GENERATE || strcasecmp(r->row.version, ev->version) == 0)) {
            kvt_finish(t, 0, "ignored", "a version rotor is writing");
            return 0;
        }
        if (journal_version_written(e->journal, t->sec->cfg->name, ev->version, on_written, t) < 0)
            kvt_finish(t, ROTOR_EDB, NULL, NULL);
        return 0;
    }
    if (journal_secret(e->journal, t->sec->cfg->name, t->sec->cfg->active, on_active, t) < 0)
        kvt_finish(t, ROTOR_EDB, NULL, NULL);
    return 0;
}
