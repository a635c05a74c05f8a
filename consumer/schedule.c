/* schedule.c: scheduled rotations, requested through Kafka like any other. */
#include "schedule.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cron.h"
#include "event.h"
#include "log.h"
#include "util.h"

struct schedule_s {
    const rotor_config_t *cfg;
    journal_t *j;
    engine_t *e;
    char *source;
    bool (*owns)(void *arg, const char *secret);
    void *owns_arg;
    uv_timer_t timer;
    /* A round reads every candidate secret in one statement, then claims the due ones one after
     * another: 100 secrets cost two wake-ups a round, not a hundred. */
    size_t *asked;      /* cfg->secrets index of each secret asked for in this round */
    size_t *due_at_idx; /* the due ones: their cfg->secrets index... */
    int64_t *due;       /* ...and their slot */
    int nasked;
    int ndue, next; /* claiming due[next] */
    bool busy;      /* a journal request is in flight */
    bool stopped;
    bool closed;
};

/* The first slot strictly after t; -1 when there is none. */
static int64_t next_slot(const cfg_secret_t *sec, const cron_t *c, int64_t t)
{
    int64_t due =
        sec->schedule.every_ms > 0 ? t + (int64_t)sec->schedule.every_ms : cron_next(c, t);
    if (due >= 0 && sec->schedule.window_start >= 0)
        due = cron_window_next(due, sec->schedule.window_start, sec->schedule.window_end);
    return due;
}

int64_t schedule_due(const cfg_secret_t *sec, int64_t first_seen_ms, int64_t last_rotated_ms,
                     int64_t now_ms)
{
    cron_t c = {0};
    if (sec->schedule.every_ms == 0) {
        char reason[128];
        if (!sec->schedule.cron || cron_parse(sec->schedule.cron, &c, reason, sizeof reason) < 0)
            return -1; /* no schedule (config.c validated any cron expression) */
    }
    int64_t due = next_slot(sec, &c, last_rotated_ms > 0 ? last_rotated_ms : first_seen_ms);
    /* Move up to the latest slot not after now; bounded, for a cron that fires every minute. */
    for (int i = 0; due >= 0 && i < 1000000; i++) {
        int64_t next = next_slot(sec, &c, due);
        if (next < 0 || next > now_ms)
            break;
        due = next;
    }
    return due;
}

static void claim_next(schedule_t *s);

static void maybe_free(schedule_t *s)
{
    if (s->closed && !s->busy) {
        free(s->asked);
        free(s->due_at_idx);
        free(s->due);
        free(s->source);
        free(s);
    }
}

static void on_claimed(void *arg, int status)
{
    schedule_t *s = arg;
    s->busy = false;
    if (s->stopped) {
        maybe_free(s);
        return;
    }
    const cfg_secret_t *sec = &s->cfg->secrets[s->due_at_idx[s->next]];
    if (status == 0)
        log_info("schedule.requested", "secret", sec->name);
    s->next++;
    claim_next(s);
}

/* Queues the request in the journal's outbox, claimed once for this due time. */
static void request(schedule_t *s, const cfg_secret_t *sec, int64_t due)
{
    char due_text[32];
    util_format_time(due, due_text, sizeof due_text);
    char reason[128];
    snprintf(reason, sizeof reason, "scheduled rotation due %s", due_text);
    json_t *data =
        json_pack("{s:s, s:s, s:s, s:s, s:s}", "secret", sec->name, "trigger", "schedule", "due",
                  due_text, "requested_by", "rotor-schedule", "reason", reason);
    char *value = event_build("rotation.requested", s->source, sec->name, data, NULL);
    if (!value) {
        s->next++;
        claim_next(s);
        return;
    }
    json_t *out = json_pack("[{s:s, s:s, s:s, s:{s:s}}]", "topic", s->cfg->kafka.topic_commands,
                            "key", sec->name, "value", value, "headers", "content-type",
                            "application/cloudevents+json");
    char *outbox = json_dumps(out, JSON_COMPACT);
    json_decref(out);
    free(value);
    s->busy = true;
    if (journal_schedule_claim(s->j, sec->name, due, outbox, on_claimed, s) < 0)
        s->busy = false;
    free(outbox);
}

static bool candidate(schedule_t *s, const cfg_secret_t *sec)
{
    bool scheduled = sec->schedule.every_ms > 0 || sec->schedule.cron;
    return scheduled && s->owns(s->owns_arg, sec->name) && !engine_has_open(s->e, sec->name);
}

/* Claims the due secrets in turn; ownership and open rotations are checked again, since the read
 * that found them due was a round trip ago. */
static void claim_next(schedule_t *s)
{
    for (; s->next < s->ndue; s->next++) {
        const cfg_secret_t *sec = &s->cfg->secrets[s->due_at_idx[s->next]];
        if (candidate(s, sec)) {
            request(s, sec, s->due[s->next]);
            return;
        }
    }
}

static void on_secrets(void *arg, int status, const journal_secret_row_t *rows, int n)
{
    schedule_t *s = arg;
    s->busy = false;
    if (s->stopped) {
        maybe_free(s);
        return;
    }
    s->ndue = s->next = 0;
    int64_t now = util_now_ms();
    for (int i = 0; status == 0 && i < n; i++) {
        if (rows[i].index < 0 || rows[i].index >= s->nasked)
            continue;
        const cfg_secret_t *sec = &s->cfg->secrets[s->asked[rows[i].index]];
        int64_t due = schedule_due(sec, rows[i].first_seen_ms, rows[i].last_rotated_ms, now);
        bool in_window = sec->schedule.window_start < 0 ||
                         cron_in_window(now, sec->schedule.window_start, sec->schedule.window_end);
        if (due >= 0 && due <= now && in_window) {
            s->due_at_idx[s->ndue] = s->asked[rows[i].index];
            s->due[s->ndue++] = due;
        }
    }
    claim_next(s);
}

static void on_tick(uv_timer_t *t)
{
    schedule_t *s = t->data;
    if (s->busy)
        return; /* the previous round is still going */
    size_t max = s->cfg->nsecrets;
    const char **names = util_calloc(max + 1, sizeof *names);
    rotor_slot_t *active = util_calloc(max + 1, sizeof *active);
    int n = 0;
    for (size_t i = 0; i < max; i++) {
        const cfg_secret_t *sec = &s->cfg->secrets[i];
        if (!candidate(s, sec))
            continue;
        s->asked[n] = i;
        names[n] = sec->name;
        active[n++] = sec->active;
    }
    s->nasked = n;
    s->ndue = s->next = 0;
    if (n > 0) {
        s->busy = true;
        if (journal_secrets(s->j, names, active, n, on_secrets, s) < 0)
            s->busy = false;
    }
    free(names);
    free(active);
}

int schedule_start(uv_loop_t *loop, const rotor_config_t *cfg, journal_t *j, engine_t *e,
                   const char *source, bool (*owns)(void *arg, const char *secret), void *arg,
                   schedule_t **out)
{
    schedule_t *s = util_calloc(1, sizeof *s);
    s->cfg = cfg;
    s->j = j;
    s->e = e;
    s->source = util_strdup(source);
    s->owns = owns;
    s->owns_arg = arg;
    s->asked = util_calloc(cfg->nsecrets + 1, sizeof *s->asked);
    s->due_at_idx = util_calloc(cfg->nsecrets + 1, sizeof *s->due_at_idx);
    s->due = util_calloc(cfg->nsecrets + 1, sizeof *s->due);
    uv_timer_init(loop, &s->timer);
    s->timer.data = s;
    uint64_t every = cfg->daemon.schedule_interval_ms ? cfg->daemon.schedule_interval_ms : 30000;
    uv_timer_start(&s->timer, on_tick, 1000, every);
    *out = s;
    return 0;
}

static void on_closed(uv_handle_t *h)
{
    schedule_t *s = h->data;
    s->closed = true;
    maybe_free(s);
}

void schedule_stop(schedule_t *s)
{
    if (!s)
        return;
    s->stopped = true;
    uv_close((uv_handle_t *)&s->timer, on_closed);
}
