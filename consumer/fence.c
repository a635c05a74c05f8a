/* fence.c: the engine's side of ownership (fencing): the claim each journal write carries, the
 * wait for an attempt a previous owner may still be running, and letting go of a secret this
 * process no longer owns. See docs/architecture.md, "Ownership and fencing". */
#include <stdlib.h>
#include <string.h>

#include "rotation_int.h"
#include "util.h"

/* A new owner waits this long past a previous owner's attempt deadline: the deadline was set by
 * another host's clock. */
#define FENCE_MARGIN_MS 5000
/* How often a rotation waiting for a previous owner's attempt reads its row again. */
#define FENCE_POLL_MS 1000

bool rot_fence(engine_t *e, const char *secret, journal_fence_t *out)
{
    memset(out, 0, sizeof *out);
    return e->fence && e->fence(e->owns_arg, secret, out);
}

bool rot_fence_write(rotation_t *r, uint64_t timeout_ms)
{
    journal_rot_t *n = &r->next;
    if (!rot_fence(r->eng, n->secret, &n->fence))
        return false;
    bool new_attempt =
        n->status == RS_RUNNING &&
        (r->row.status != RS_RUNNING || n->attempt != r->row.attempt || n->stage != r->row.stage);
    if (new_attempt) {
        n->run_until_ms = util_now_ms() + (int64_t)timeout_ms;
        n->run_part = n->fence.part;
        n->run_epoch = n->fence.epoch;
    } else if (n->status != RS_RUNNING) {
        n->run_until_ms = 0;
    }
    return true;
}

bool rot_fence_holds(const rotation_t *r)
{
    journal_fence_t f;
    return rot_fence(r->eng, r->row.secret, &f) && f.part == r->row.fence.part &&
           f.epoch == r->row.fence.epoch;
}

static void on_previous_poll(uv_timer_t *t)
{
    rot_reload(t->data);
}

bool rot_wait_previous_owner(rotation_t *r)
{
    const journal_rot_t *w = &r->row;
    if (w->status != RS_RUNNING || !w->run_until_ms || !w->run_live)
        return false;
    journal_fence_t f;
    if (rot_fence(r->eng, w->secret, &f) && f.part == w->run_part && f.epoch == w->run_epoch)
        return false; /* this process's own claim: nothing of that attempt runs any more */
    int64_t now = util_now_ms(), until = w->run_until_ms + FENCE_MARGIN_MS;
    if (until <= now)
        return false;
    if (!r->awaiting_previous) {
        r->awaiting_previous = true;
        char left[32];
        util_format_duration((uint64_t)(until - now), left, sizeof left);
        rot_log(LOG_INFO, "stage.awaiting_previous_owner", r, "at_most", left);
    }
    uv_timer_start(&r->timer, on_previous_poll,
                   (uint64_t)(until - now < FENCE_POLL_MS ? until - now : FENCE_POLL_MS), 0);
    return true;
}

void rot_let_go(rotation_t *r, const char *why)
{
    if (r->gone)
        return;
    if (!r->letting_go) {
        r->letting_go = true;
        rot_log(LOG_WARN, "rotation.let_go", r, "reason", why);
    }
    if (r->writing)
        return; /* the write's outcome comes first; rot_step() lets go after it */
    /* Only an attempt this process started is its to release (its last write set it running). */
    r->release = r->row.status == RS_RUNNING && r->row.run_until_ms && r->row.fence.epoch &&
                 r->row.run_epoch == r->row.fence.epoch && r->row.run_part == r->row.fence.part;
    rot_remove(r); /* cancels what can be cancelled; rot_left() runs once nothing is left */
}

static void on_released(void *arg, int status)
{
    if (status == ROTOR_ECANCELED)
        return; /* the journal closed: so did the engine */
    engine_t *e = arg;
    rot_load_soon(e);
}

void rot_left(rotation_t *r)
{
    engine_t *e = r->eng;
    if (r->orphan)
        return;
    for (rotation_t **p = &e->leaving; *p; p = &(*p)->next_rot) {
        if (*p == r) {
            *p = r->next_rot;
            break;
        }
    }
    if (!r->letting_go || e->stopping)
        return;
    if (!r->release) {
        rot_load_soon(e); /* owned again meanwhile (a rebalance that gave it back)? */
        return;
    }
    json_t *h = rot_history(&r->row, "released", NULL, -1, NULL, NULL);
    char *hs = json_dumps(h, JSON_COMPACT);
    json_decref(h);
    rot_log(LOG_INFO, "stage.released", r, NULL, NULL);
    if (journal_release(e->journal, r->row.id, r->row.run_part, r->row.run_epoch, hs, on_released,
                        e) < 0)
        rot_load_soon(e);
    free(hs);
}

bool rot_leaving(engine_t *e, const char *id)
{
    for (rotation_t *r = e->leaving; r; r = r->next_rot) {
        if (strcmp(r->row.id, id) == 0)
            return true;
    }
    return false;
}
