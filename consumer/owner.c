/* owner.c: claims of the commands topic's partitions in the journal (fencing epochs). */
#include "owner.h"

#include <stdio.h>
#include <stdlib.h>

#include "log.h"
#include "rotor.h"
#include "util.h"

#define OWNER_MAX_PARTS 1024
#define OWNER_RETRY_MS 1000

typedef struct {
    bool assigned;
    bool claiming;
    bool lost;     /* claimed by another process since: not claimed again before a new assignment */
    unsigned gen;  /* bumped on every assign, revoke and count change: older claims are stale */
    int64_t epoch; /* the claim in force, 0 = none */
    int64_t held;  /* the last epoch claimed here: a claim again keeps it if nobody took over */
    int32_t nparts; /* the count the claim was made under */
} owner_part_t;

struct owner_s {
    journal_t *journal;
    uv_timer_t retry;
    void (*changed)(void *arg);
    void *arg;
    int32_t nparts;
    bool stopped;
    owner_part_t parts[OWNER_MAX_PARTS];
};

typedef struct {
    owner_t *o;
    int32_t part;
    unsigned gen;
    int32_t nparts;
} owner_claim_t;

static void owner_claim_all(owner_t *o);

static void owner_on_retry(uv_timer_t *t)
{
    owner_claim_all(t->data);
}

/* The journal is back: claims that failed while it was away are made now, not at the retry. */
static void owner_on_reconnect(void *arg)
{
    owner_t *o = arg;
    if (o->stopped)
        return;
    uv_timer_stop(&o->retry);
    owner_claim_all(o);
}

static void owner_on_claimed(void *arg, int status, int64_t epoch)
{
    owner_claim_t *c = arg;
    owner_t *o = c->o;
    owner_part_t *p = &o->parts[c->part];
    bool current = c->gen == p->gen;
    int32_t part = c->part, nparts = c->nparts;
    free(c);
    if (o->stopped || status == ROTOR_ECANCELED || !current)
        return;
    p->claiming = false;
    if (status != 0) {
        /* the journal is away: ownership waits for it, as every write would */
        uv_timer_start(&o->retry, owner_on_retry, OWNER_RETRY_MS, 0);
        return;
    }
    p->epoch = p->held = epoch;
    p->nparts = nparts;
    char ps[16], es[24], ns[16];
    snprintf(ps, sizeof ps, "%d", (int)part);
    snprintf(es, sizeof es, "%lld", (long long)epoch);
    snprintf(ns, sizeof ns, "%d", (int)nparts);
    log_info("owner.claimed", "partition", ps, "epoch", es, "partitions", ns);
    o->changed(o->arg);
}

/* Claims every assigned partition that has no claim under the current count. */
static void owner_claim_all(owner_t *o)
{
    if (o->stopped || o->nparts <= 0)
        return;
    for (int32_t i = 0; i < OWNER_MAX_PARTS; i++) {
        owner_part_t *p = &o->parts[i];
        if (!p->assigned || p->lost || p->claiming || (p->epoch && p->nparts == o->nparts))
            continue;
        owner_claim_t *c = util_malloc(sizeof *c);
        *c = (owner_claim_t){o, i, p->gen, o->nparts};
        p->claiming = true;
        if (journal_claim(o->journal, i, o->nparts, p->held, owner_on_claimed, c) < 0) {
            p->claiming = false;
            free(c);
            uv_timer_start(&o->retry, owner_on_retry, OWNER_RETRY_MS, 0);
            return;
        }
    }
}

owner_t *owner_new(uv_loop_t *loop, journal_t *journal, void (*changed)(void *arg), void *arg)
{
    owner_t *o = util_calloc(1, sizeof *o);
    o->journal = journal;
    o->changed = changed;
    o->arg = arg;
    o->nparts = -1;
    uv_timer_init(loop, &o->retry);
    o->retry.data = o;
    journal_on_reconnect(journal, owner_on_reconnect, o);
    return o;
}

void owner_assign(owner_t *o, const int32_t *parts, int n, bool assigned)
{
    bool lost = false;
    for (int i = 0; i < n; i++) {
        if (parts[i] < 0 || parts[i] >= OWNER_MAX_PARTS)
            continue;
        owner_part_t *p = &o->parts[parts[i]];
        lost |= !assigned && p->epoch != 0;
        p->assigned = assigned;
        p->lost = false;
        p->claiming = false;
        p->gen++;
        p->epoch = 0; /* owned again only once claimed again */
    }
    if (lost)
        o->changed(o->arg);
    owner_claim_all(o);
}

void owner_set_count(owner_t *o, int32_t nparts)
{
    if (nparts <= 0 || nparts == o->nparts)
        return;
    char was[16], now[16];
    snprintf(was, sizeof was, "%d", (int)o->nparts);
    snprintf(now, sizeof now, "%d", (int)nparts);
    log_info("owner.partition_count", "was", was, "now", now);
    bool had = o->nparts > 0;
    o->nparts = nparts;
    /* Secrets map to other partitions now: no claim under the old count may write any more. */
    for (int32_t i = 0; i < OWNER_MAX_PARTS; i++) {
        if (o->parts[i].epoch) {
            o->parts[i].epoch = 0;
            o->parts[i].claiming = false;
            o->parts[i].gen++;
        }
    }
    if (had)
        o->changed(o->arg);
    owner_claim_all(o);
}

bool owner_fence(const owner_t *o, int32_t part, journal_fence_t *out)
{
    if (!o || part < 0 || part >= OWNER_MAX_PARTS)
        return false;
    const owner_part_t *p = &o->parts[part];
    if (!p->assigned || !p->epoch || p->nparts != o->nparts)
        return false;
    *out = (journal_fence_t){.part = part, .nparts = p->nparts, .epoch = p->epoch};
    return true;
}

bool owner_claim_pending(const owner_t *o, int32_t part)
{
    journal_fence_t f;
    if (!o || part < 0 || part >= OWNER_MAX_PARTS)
        return false;
    return o->parts[part].assigned && !owner_fence(o, part, &f);
}

void owner_lost(owner_t *o, const journal_fence_t *f)
{
    if (!o || f->part < 0 || f->part >= OWNER_MAX_PARTS)
        return;
    owner_part_t *p = &o->parts[f->part];
    if (!p->epoch || p->epoch != f->epoch)
        return; /* already claimed again, or revoked */
    char ps[16], es[24];
    snprintf(ps, sizeof ps, "%d", (int)f->part);
    snprintf(es, sizeof es, "%lld", (long long)f->epoch);
    log_warn("owner.lost", "partition", ps, "epoch", es, "note",
             "another process claimed the partition; owned again after the next assignment");
    p->epoch = 0;
    p->lost = true;
    p->gen++;
    o->changed(o->arg);
}

void owner_stop(owner_t *o)
{
    if (!o || o->stopped)
        return;
    o->stopped = true;
    journal_on_reconnect(o->journal, NULL, NULL);
    uv_close((uv_handle_t *)&o->retry, NULL);
}

void owner_free(owner_t *o)
{
    free(o);
}
