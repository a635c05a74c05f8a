/* relay.c: outbox rows to Kafka, marked sent on the delivery report. */
#include "relay.h"

#include <errno.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "log.h"
#include "util.h"

#define RELAY_BATCH 100

struct relay_s {
    journal_t *j;
    kafka_t *k;
    uv_timer_t timer;
    int64_t last_id; /* highest row handed to the producer */
    bool fetching;
    bool again;    /* a kick arrived during a fetch */
    int produced;  /* handed to the producer, not yet reported */
    int64_t *done; /* delivered, to be marked sent */
    int ndone, capdone;
    bool marking;
    bool adopting;
    int ticks;
    bool stopped;
    bool closed; /* the timer's close callback ran */
};

/* Frees the relay once stopped and no journal request can call back into it. */
static void maybe_free(relay_t *r)
{
    if (r->closed && !r->fetching && !r->marking && !r->adopting) {
        free(r->done);
        free(r);
    }
}

static void fetch(relay_t *r);

static void on_adopted(void *arg, int status, int64_t first_id)
{
    relay_t *r = arg;
    r->adopting = false;
    if (r->stopped) {
        maybe_free(r);
        return;
    }
    if (status == 0 && first_id > 0) {
        log_info("relay.adopted", "note", "publishing rows another instance left unsent");
        if (first_id - 1 < r->last_id)
            r->last_id = first_id - 1; /* the cursor must go back to reach them */
        fetch(r);
    }
}

static void on_timer(uv_timer_t *t)
{
    relay_t *r = t->data;
    if (++r->ticks % 10 == 0 && !r->adopting && !r->stopped) {
        r->adopting = true;
        if (journal_outbox_adopt(r->j, on_adopted, r) < 0)
            r->adopting = false;
    }
    fetch(r);
}

/* Headers stored as a JSON object of strings. */
static size_t headers_from_json(const char *text, event_header_t *out, size_t max, json_t **doc)
{
    *doc = text ? json_loads(text, 0, NULL) : NULL;
    size_t n = 0;
    const char *name;
    json_t *v;
    json_object_foreach(*doc, name, v)
    {
        if (n < max && json_is_string(v)) {
            out[n].name = name;
            out[n].value = json_string_value(v);
            out[n].len = json_string_length(v);
            n++;
        }
    }
    return n;
}

static void on_rows(void *arg, int status, const journal_outbox_row_t *rows, int n)
{
    relay_t *r = arg;
    r->fetching = false;
    if (r->stopped) {
        maybe_free(r);
        return;
    }
    if (status != 0)
        return; /* the next tick tries again */
    for (int i = 0; i < n; i++) {
        event_header_t hdrs[32];
        json_t *doc;
        size_t nh = headers_from_json(rows[i].headers, hdrs, 32, &doc);
        int rc = kafka_produce(r->k, rows[i].topic, rows[i].key, rows[i].key_len, rows[i].value,
                               rows[i].len, hdrs, nh, (void *)(intptr_t)rows[i].id);
        json_decref(doc);
        if (rc < 0) {
            /* Queue full or producer closing: the rest waits for the next tick. */
            if (rc != -ENOBUFS)
                log_warn("relay.produce_failed", "error", rotor_strerror(rc));
            return;
        }
        r->produced++;
        r->last_id = rows[i].id;
    }
    if (n == RELAY_BATCH || r->again) {
        r->again = false;
        fetch(r);
    }
}

static void fetch(relay_t *r)
{
    if (r->stopped)
        return;
    if (r->fetching) {
        r->again = true;
        return;
    }
    r->fetching = true;
    if (journal_outbox_fetch(r->j, r->last_id, RELAY_BATCH, on_rows, r) < 0)
        r->fetching = false;
}

void relay_kick(void *relay)
{
    fetch(relay);
}

static void mark(relay_t *r);

static void on_marked(void *arg, int status)
{
    relay_t *r = arg;
    r->marking = false;
    if (status != 0 && status != ROTOR_ECONFLICT)
        log_warn("relay.mark_failed", "error", rotor_strerror(status), "note",
                 "rows will be published again: consumers dedupe by event id");
    if (r->stopped)
        maybe_free(r);
    else if (r->ndone > 0)
        mark(r);
}

static void mark(relay_t *r)
{
    if (r->marking || r->ndone == 0 || r->stopped)
        return;
    r->marking = true;
    int rc = journal_outbox_sent(r->j, r->done, r->ndone, on_marked, r);
    r->ndone = 0;
    if (rc < 0)
        r->marking = false;
}

void relay_delivered(relay_t *r, void *opaque, int err, const char *reason)
{
    int64_t id = (int64_t)(intptr_t)opaque;
    r->produced--;
    if (err < 0) {
        char ids[24];
        snprintf(ids, sizeof ids, "%" PRId64, id);
        log_warn("relay.delivery_failed", "outbox_id", ids, "error", reason ? reason : "");
        /* Publish it (and what followed) again on the next fetch. */
        if (id <= r->last_id)
            r->last_id = id - 1;
        return;
    }
    if (r->ndone == r->capdone) {
        r->capdone = r->capdone ? r->capdone * 2 : 64;
        int64_t *d = realloc(r->done, (size_t)r->capdone * sizeof *d);
        if (!d)
            abort();
        r->done = d;
    }
    r->done[r->ndone++] = id;
    mark(r);
}

int relay_backlog(relay_t *r)
{
    return r->produced + r->ndone + (r->marking ? 1 : 0);
}

int relay_start(uv_loop_t *loop, journal_t *j, kafka_t *k, relay_t **out)
{
    relay_t *r = util_calloc(1, sizeof *r);
    r->j = j;
    r->k = k;
    uv_timer_init(loop, &r->timer);
    r->timer.data = r;
    uv_timer_start(&r->timer, on_timer, 0, 1000);
    *out = r;
    return 0;
}

static void on_closed(uv_handle_t *h)
{
    relay_t *r = h->data;
    r->closed = true;
    maybe_free(r);
}

void relay_stop(relay_t *r)
{
    if (!r)
        return;
    r->stopped = true;
    uv_close((uv_handle_t *)&r->timer, on_closed);
}
