/* relay.c: outbox rows to Kafka, marked sent in batches on the delivery reports; a row Kafka
 * refuses for good is parked so that the rows behind it keep flowing. */
#include "relay.h"

#include <errno.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "log.h"
#include "metrics.h"
#include "util.h"

#define RELAY_FETCH 100         /* rows per outbox read */
#define RELAY_MAX_INFLIGHT 2000 /* handed to the producer, not reported: no more reads above */
/* Bytes, not only rows: an outbox row may hold a 1 MiB key and value (a dead letter of a hostile
 * input), and a broker outage keeps every row in flight. Past these the relay reads no more
 * until reports come back; one row is always let through, whatever its size. */
#define RELAY_MAX_INFLIGHT_BYTES (16u << 20) /* in the producer's queue, not reported */
#define RELAY_FETCH_BYTES (4u << 20)         /* per outbox read (hex-escaped twice that in libpq) */
#define RELAY_MARK_ROWS 500 /* delivered ids marked sent in one statement at this many... */
#define RELAY_MARK_MS 20    /* ...or this long after the first of them was reported */
/* New rows are read when the journal commits them (relay_kick), so the relay polls only for what
 * no kick announces: rows another instance left (adoption, after a minute), rows an operator
 * unparked or whose mark failed (behind the cursor), and the gauges. Every RELAY_SWEEP_MS it reads
 * the outbox from its start; after a failure (journal or producer) it tries again within
 * RELAY_RETRY_MS. An idle relay thus wakes the loop once in RELAY_SWEEP_MS, not every second. */
#define RELAY_SWEEP_MS 10000
#define RELAY_RETRY_MS 1000
#define RELAY_MAX_HEADERS 64 /* a row's own headers sent at most (a dead letter's input's) */
/* librdkafka counts a record's own framing (varints, timestamp, attributes) against
 * message.max.bytes, and the broker counts the record batch's (61 bytes) against its limit:
 * a cut dead letter leaves this much room for both. */
#define RELAY_FRAME_SLACK 512
/* The dead-letter header that says a row is one (journal_dead_letter), and those that say what
 * was cut of it. */
#define RELAY_DLQ_HEADER "rotor-dlq-reason"
#define RELAY_TRUNC_HEADER "rotor-truncated"
#define RELAY_KEY_HEADER "rotor-key-truncated"
#define RELAY_DROPPED_HEADER "rotor-headers-dropped"

#define PARKED_TOTAL "rotor_outbox_parked_total"
#define PARKED_TOTAL_HELP "Outbox rows parked because Kafka refused them for good"
#define BACKLOG_GAUGE "rotor_outbox_backlog"
#define BACKLOG_HELP "Outbox rows not yet published, all instances (parked ones excluded)"
#define PARKED_GAUGE "rotor_outbox_parked"
#define PARKED_HELP "Outbox rows parked and not replayed, all instances"

/* A row's key as the ordering knows it: its SHA-256, not its bytes (a key may be 1 MiB, and 2000
 * rows are in flight), or none. */
typedef struct {
    unsigned char sha[32];
    bool set;
} relay_key_t;

/* A row handed to the producer and not yet reported. The key is kept for ordering: a row
 * whose delivery failed holds back the later rows of its key (see relay_delivered). */
typedef struct {
    int64_t id;
    relay_key_t key;
    size_t bytes; /* value, key and headers as sent */
} relay_row_t;

/* A key whose row `floor` failed to deliver and was not delivered since: its later rows are
 * not marked sent, they are published again after it. */
typedef struct {
    relay_key_t key;
    int64_t floor;
} relay_block_t;

typedef struct {
    int64_t *v;
    int n, cap;
} relay_ids_t;

struct relay_s {
    journal_t *j;
    kafka_t *k;
    uv_timer_t timer;      /* the sweep, or a retry after a failure */
    uv_timer_t mark_timer; /* flushes the delivered ids */
    int64_t last_id;       /* highest row handed to the producer (the read cursor) */
    int64_t fetch_from;    /* last_id when the read on its way was sent */
    int64_t rewound;       /* lowest rewind while that read was on its way, 0 = none */
    relay_row_t *inflight;
    int ninflight, capinflight;
    size_t inflight_bytes; /* sum of their bytes */
    relay_block_t *blocks;
    int nblocks, capblocks;
    relay_ids_t done;    /* delivered, waiting for the next mark statement */
    relay_ids_t marking; /* in the mark statement on its way */
    relay_ids_t parking; /* in park statements on their way */
    bool fetching;
    bool again;     /* a kick arrived during a fetch */
    bool throttled; /* a read stopped at RELAY_MAX_INFLIGHT or a full producer queue */
    bool marking_busy;
    bool adopting;
    bool counting;
    bool failing;   /* a delivery failed since the last success: one warning per outage */
    uint64_t swept; /* loop time of the last sweep, 0 = none yet */
    bool stopped;
    int closed; /* close callbacks run, out of 2 */
};

/* ---- small sets ---------------------------------------------------------------------------- */

static void *grow(void *p, int *cap, int first, size_t size)
{
    *cap = *cap ? *cap * 2 : first;
    void *q = realloc(p, (size_t)*cap * size);
    if (!q)
        abort(); /* as util_malloc does */
    return q;
}

static void ids_add(relay_ids_t *s, int64_t id)
{
    if (s->n == s->cap)
        s->v = grow(s->v, &s->cap, 64, sizeof *s->v);
    s->v[s->n++] = id;
}

static bool ids_has(const relay_ids_t *s, int64_t id)
{
    for (int i = 0; i < s->n; i++)
        if (s->v[i] == id)
            return true;
    return false;
}

static void ids_del(relay_ids_t *s, int64_t id)
{
    for (int i = 0; i < s->n; i++)
        if (s->v[i] == id) {
            s->v[i] = s->v[--s->n];
            return;
        }
}

static int inflight_find(const relay_t *r, int64_t id)
{
    /* Reports come back roughly in the order rows went out, and new rows are appended: search
     * from the oldest. Bounded by RELAY_MAX_INFLIGHT. */
    for (int i = 0; i < r->ninflight; i++)
        if (r->inflight[i].id == id)
            return i;
    return -1;
}

static relay_key_t key_of(const unsigned char *key, size_t key_len)
{
    relay_key_t k = {.set = key != NULL};
    if (key)
        util_sha256(key, key_len, k.sha);
    return k;
}

static void inflight_add(relay_t *r, int64_t id, relay_key_t key, size_t bytes)
{
    if (r->ninflight == r->capinflight)
        r->inflight = grow(r->inflight, &r->capinflight, 128, sizeof *r->inflight);
    r->inflight[r->ninflight++] = (relay_row_t){id, key, bytes};
    r->inflight_bytes += bytes;
}

static bool same_key(const relay_key_t *a, const relay_key_t *b)
{
    if (!a->set || !b->set)
        return a->set == b->set;
    return memcmp(a->sha, b->sha, sizeof a->sha) == 0;
}

static relay_block_t *block_find(relay_t *r, const relay_key_t *key)
{
    for (int i = 0; i < r->nblocks; i++)
        if (same_key(&r->blocks[i].key, key))
            return &r->blocks[i];
    return NULL;
}

static void block_set(relay_t *r, const relay_key_t *key, int64_t floor)
{
    relay_block_t *b = block_find(r, key);
    if (b) {
        if (floor < b->floor)
            b->floor = floor;
        return;
    }
    if (r->nblocks == r->capblocks)
        r->blocks = grow(r->blocks, &r->capblocks, 8, sizeof *r->blocks);
    r->blocks[r->nblocks++] = (relay_block_t){*key, floor};
}

static void block_drop(relay_t *r, relay_block_t *b)
{
    *b = r->blocks[--r->nblocks];
}

/* Frees the relay once stopped and no journal request can call back into it. */
static void maybe_free(relay_t *r)
{
    if (r->closed < 2 || r->fetching || r->marking_busy || r->adopting || r->counting ||
        r->parking.n > 0)
        return;
    free(r->inflight);
    free(r->blocks);
    free(r->done.v);
    free(r->marking.v);
    free(r->parking.v);
    free(r);
}

/* The next read starts at row id again (ids below it that are still unsent are not re-read). A
 * read on its way moves the cursor when it lands: the rewind is applied again then. */
static void rewind_to(relay_t *r, int64_t id)
{
    if (id - 1 < r->last_id)
        r->last_id = id - 1;
    if (r->fetching && (r->rewound == 0 || id < r->rewound))
        r->rewound = id;
}

static void fetch(relay_t *r);
static void retry_soon(relay_t *r);

/* ---- gauges, adoption ------------------------------------------------------------------------ */

static void on_stats(void *arg, int status, int64_t backlog, int64_t parked)
{
    relay_t *r = arg;
    r->counting = false;
    if (status == 0) {
        metrics_gauge(BACKLOG_GAUGE, BACKLOG_HELP, NULL, (double)backlog);
        metrics_gauge(PARKED_GAUGE, PARKED_HELP, NULL, (double)parked);
    }
    if (r->stopped)
        maybe_free(r);
}

static void count(relay_t *r)
{
    if (r->counting || r->stopped)
        return;
    r->counting = true;
    if (journal_outbox_stats(r->j, on_stats, r) < 0)
        r->counting = false;
}

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
        rewind_to(r, first_id); /* the cursor must go back to reach them */
        fetch(r);
    }
}

/* Something failed that the next read retries (a row to publish again, a read or produce that
 * did not happen): the timer comes due within RELAY_RETRY_MS instead of at the next sweep. */
static void on_timer(uv_timer_t *t);

static void retry_soon(relay_t *r)
{
    if (!r->stopped && uv_timer_get_due_in(&r->timer) > RELAY_RETRY_MS)
        uv_timer_start(&r->timer, on_timer, RELAY_RETRY_MS, RELAY_SWEEP_MS);
}

static void on_timer(uv_timer_t *t)
{
    relay_t *r = t->data;
    uint64_t now = uv_now(t->loop);
    if ((r->swept == 0 || now - r->swept >= RELAY_SWEEP_MS - RELAY_RETRY_MS / 2) && !r->stopped) {
        r->swept = now;
        /* Read the outbox from its start now and then: a row an operator unparked, or one
         * whose mark statement failed, sits behind the cursor. Rows still in flight or
         * waiting for their mark are skipped (on_rows), so this sends no duplicate itself. */
        rewind_to(r, 1);
        count(r);
        if (!r->adopting) {
            r->adopting = true;
            if (journal_outbox_adopt(r->j, on_adopted, r) < 0)
                r->adopting = false;
        }
    }
    fetch(r);
}

/* ---- parking ----------------------------------------------------------------------------------
 */

typedef struct {
    relay_t *r;
    int64_t id;
} relay_park_t;

static void on_parked(void *arg, int status)
{
    relay_park_t *p = arg;
    relay_t *r = p->r;
    ids_del(&r->parking, p->id);
    if (status == 0) {
        metrics_count(PARKED_TOTAL, PARKED_TOTAL_HELP, NULL, 1);
        count(r);
    } else if (!r->stopped) {
        rewind_to(r, p->id); /* refused again on the next read, and parked then */
        retry_soon(r);
    }
    free(p);
    if (r->stopped)
        maybe_free(r);
}

/* Kafka will never take row id as it is: record that in the outbox, once, and go on with the
 * rows behind it. The operator sees it in rotor.outbox, the log and the metrics, and replays it
 * by clearing parked_at (docs/operations.md). */
static void park(relay_t *r, int64_t id, const char *topic, int err, const char *why)
{
    char ids[24], reason[512];
    snprintf(ids, sizeof ids, "%" PRId64, id);
    snprintf(reason, sizeof reason, "%s", why && *why ? why : rotor_strerror(err));
    log_warn("relay.parked", "outbox_id", ids, "topic", topic, "error", reason, "note",
             "Kafka refuses this row for good; the relay goes on without it");
    relay_park_t *p = util_malloc(sizeof *p);
    p->r = r;
    p->id = id;
    ids_add(&r->parking, id);
    if (journal_outbox_park(r->j, id, reason, on_parked, p) < 0) {
        ids_del(&r->parking, id);
        rewind_to(r, id);
        free(p);
    }
}

/* ---- publishing -------------------------------------------------------------------------------
 */

/* What the headers add to a record, counting each varint at its widest. */
static size_t headers_size(const event_header_t *h, size_t n)
{
    size_t size = 5;
    for (size_t i = 0; i < n; i++)
        size += 10 + strlen(h[i].name) + (h[i].value ? h[i].len : 0);
    return size;
}

/* A row as it goes to the producer: its headers (borrowed from doc and the buffers here), the key
 * and the length of the value to send. */
typedef struct {
    event_header_t h[RELAY_MAX_HEADERS + 8];
    size_t n;
    const unsigned char *key;
    size_t key_len;
    size_t len;
    json_t *doc; /* owned: json_decref */
    char orig[24], keylen[24], dropped[24], keyhash[65];
} relay_msg_t;

static void msg_header(relay_msg_t *m, const char *name, const char *value, size_t len)
{
    m->h[m->n++] = (event_header_t){.name = name, .value = value, .len = len};
}

/* The headers journal_dead_letter adds, in this order: the first ones a dead letter carries. */
static const char *const relay_dlq_headers[] = {RELAY_DLQ_HEADER, "rotor-dlq-topic",
                                                "rotor-dlq-partition", "rotor-dlq-offset"};

/* A dead letter carries its input's original bytes, and an input can be as large as the consumer
 * takes (inputs over kafka.max_message_bytes are dead-lettered too, whole), with as many headers
 * and as long a key as the input had. So that a dead letter always fits the producer's
 * message.max.bytes and always says it is one: rotor's rotor-dlq-* headers come first, whatever
 * the input's headers (jsonb orders them by length, so 32 short names used to push rotor's out);
 * a key over a quarter of the limit is replaced by its SHA-256 in hex, its length in
 * rotor-key-truncated; input headers are dropped from the end until key and headers fit, their
 * count in rotor-headers-dropped; and the value is cut to what is left, its length in
 * rotor-truncated. Here and not in journal_dead_letter: the journal keeps every original byte for
 * the operator (rotor.outbox), only the producer knows its effective limit (an operator's
 * message.max.bytes may override kafka.max_message_bytes), and the journal knows nothing of
 * Kafka. The same row is cut the same way on every send, so a repeat is still an exact copy.
 * Any other row is never cut: a truncated CloudEvent is no event, and a row too large is parked
 * instead. */
static void build_message(const relay_t *r, const journal_outbox_row_t *row, relay_msg_t *m)
{
    m->n = 0;
    m->key = row->key;
    m->key_len = row->key_len;
    m->len = row->len;
    m->doc = row->headers ? json_loads(row->headers, 0, NULL) : NULL;
    bool dead = json_is_string(json_object_get(m->doc, RELAY_DLQ_HEADER));
    size_t max = dead ? kafka_max_message_bytes(r->k) : 0;
    size_t budget = max > RELAY_FRAME_SLACK ? max - RELAY_FRAME_SLACK : 0;
    if (dead) {
        for (size_t i = 0; i < sizeof relay_dlq_headers / sizeof *relay_dlq_headers; i++) {
            json_t *v = json_object_get(m->doc, relay_dlq_headers[i]);
            if (json_is_string(v))
                msg_header(m, relay_dlq_headers[i], json_string_value(v), json_string_length(v));
        }
        if (max > 0 && m->key && m->key_len > budget / 4) {
            snprintf(m->keylen, sizeof m->keylen, "%zu", m->key_len);
            util_sha256_hex(m->key, m->key_len, m->keyhash);
            m->key = (const unsigned char *)m->keyhash;
            m->key_len = 64;
            msg_header(m, RELAY_KEY_HEADER, m->keylen, strlen(m->keylen));
        }
    }
    size_t own = m->n, dropped = 0;
    const char *name;
    json_t *v;
    json_object_foreach(m->doc, name, v)
    {
        if (!json_is_string(v) || (dead && strncmp(name, "rotor-dlq-", 10) == 0))
            continue;
        if (m->n - own < RELAY_MAX_HEADERS)
            msg_header(m, name, json_string_value(v), json_string_length(v));
        else
            dropped++;
    }
    if (!dead || max == 0)
        return;
    /* Room for the two headers that may follow (names and values of at most 21 and 20 bytes). */
    size_t room = 2 * (10 + 21 + 20);
    while (m->n > own && m->key_len + headers_size(m->h, m->n) + room > budget) {
        m->n--;
        dropped++;
    }
    if (dropped) {
        snprintf(m->dropped, sizeof m->dropped, "%zu", dropped);
        msg_header(m, RELAY_DROPPED_HEADER, m->dropped, strlen(m->dropped));
    }
    size_t fixed = m->key_len + headers_size(m->h, m->n);
    if (row->len + fixed <= budget)
        return;
    snprintf(m->orig, sizeof m->orig, "%zu", row->len);
    msg_header(m, RELAY_TRUNC_HEADER, m->orig, strlen(m->orig));
    fixed = m->key_len + headers_size(m->h, m->n);
    m->len = fixed < budget ? budget - fixed : 0;
}

/* Whether the row is already on its way or waiting for its mark (a re-read must not send a
 * second copy of it). */
static bool tracked(const relay_t *r, int64_t id)
{
    return inflight_find(r, id) >= 0 || ids_has(&r->done, id) || ids_has(&r->marking, id) ||
           ids_has(&r->parking, id);
}

/* A block whose failed row this read passed over without finding it unsent (an operator marked,
 * parked or deleted it) would hold its key back for ever: it goes. */
static void drop_stale_blocks(relay_t *r, const journal_outbox_row_t *rows, int n, bool full)
{
    for (int b = 0; b < r->nblocks;) {
        int64_t floor = r->blocks[b].floor;
        bool covered = floor > r->fetch_from && (!full || rows[n - 1].id >= floor);
        bool found = false;
        for (int i = 0; covered && i < n && !found; i++)
            found = rows[i].id == floor;
        if (covered && !found)
            block_drop(r, &r->blocks[b]);
        else
            b++;
    }
}

/* Whether a read returned all it was asked for (rows or bytes, as journal_outbox_fetch counts
 * them): then more may follow at once. */
static bool read_full(const journal_outbox_row_t *rows, int n)
{
    size_t bytes = 0;
    for (int i = 0; i < n; i++)
        bytes += rows[i].key_len + rows[i].len + (rows[i].headers ? strlen(rows[i].headers) : 0);
    return n == RELAY_FETCH || bytes >= RELAY_FETCH_BYTES;
}

/* Hands rows to the producer; returns whether to read on at once. */
static bool publish_rows(relay_t *r, const journal_outbox_row_t *rows, int n)
{
    bool full = read_full(rows, n);
    drop_stale_blocks(r, rows, n, full);
    for (int i = 0; i < n; i++) {
        const journal_outbox_row_t *row = &rows[i];
        if (tracked(r, row->id)) {
            r->last_id = row->id;
            continue;
        }
        relay_msg_t m;
        build_message(r, row, &m);
        size_t total = m.len + m.key_len + headers_size(m.h, m.n);
        if (r->ninflight >= RELAY_MAX_INFLIGHT ||
            (r->ninflight > 0 && r->inflight_bytes + total > RELAY_MAX_INFLIGHT_BYTES)) {
            json_decref(m.doc);
            r->throttled = true; /* read on once reports have come back */
            return false;
        }
        int rc = kafka_produce(r->k, row->topic, m.key, m.key_len, row->value, m.len, m.h, m.n,
                               (void *)(intptr_t)row->id);
        json_decref(m.doc);
        relay_key_t key = key_of(row->key, row->key_len);
        if (rc == 0) {
            inflight_add(r, row->id, key, total);
            r->last_id = row->id;
        } else if (kafka_err_permanent(rc)) {
            /* Refused before it left (larger than message.max.bytes, unknown topic): it would
             * be refused on every tick, and everything behind it with it. */
            char why[160];
            if (rc == -EMSGSIZE)
                snprintf(why, sizeof why,
                         "message too large: %zu bytes of value, key and headers over the "
                         "producer's message.max.bytes (%zu)",
                         total, kafka_max_message_bytes(r->k));
            else
                snprintf(why, sizeof why, "refused by the producer: %s", rotor_strerror(rc));
            park(r, row->id, row->topic, rc, why);
            r->last_id = row->id;
            relay_block_t *b = block_find(r, &key);
            if (b && b->floor == row->id)
                block_drop(r, b); /* the rows behind it no longer wait for it */
        } else {
            /* Queue full, producer closing, or a producer error: this row and the rest wait. */
            if (rc == -ENOBUFS)
                r->throttled = true;
            else
                log_warn("relay.produce_failed", "error", rotor_strerror(rc));
            retry_soon(r); /* a full queue whose reports do not come back is retried too */
            return false;
        }
    }
    return full;
}

static void on_rows(void *arg, int status, const journal_outbox_row_t *rows, int n)
{
    relay_t *r = arg;
    r->fetching = false;
    if (r->stopped) {
        maybe_free(r);
        return;
    }
    int64_t rewound = r->rewound;
    r->rewound = 0;
    bool more = status == 0 && publish_rows(r, rows, n);
    /* A report that failed while this read was on its way asked for rows this read started
     * after (or that the cursor then passed): the next tick goes back for them. */
    if (rewound > 0 && rewound - 1 < r->last_id) {
        r->last_id = rewound - 1;
        retry_soon(r);
    }
    if (status != 0)
        retry_soon(r);
    if (status == 0 && (more || r->again)) {
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
    r->fetch_from = r->last_id;
    if (journal_outbox_fetch(r->j, r->last_id, RELAY_FETCH, RELAY_FETCH_BYTES, on_rows, r) < 0) {
        r->fetching = false;
        retry_soon(r);
    }
}

void relay_kick(void *relay)
{
    fetch(relay);
}

/* ---- marking sent -----------------------------------------------------------------------------
 */

static void mark(relay_t *r);
static void on_mark_timer(uv_timer_t *t);

static void on_marked(void *arg, int status)
{
    relay_t *r = arg;
    r->marking_busy = false;
    if (status != 0 && status != ROTOR_ECONFLICT && !r->stopped)
        log_warn("relay.mark_failed", "error", rotor_strerror(status), "note",
                 "rows will be published again: consumers dedupe by event id");
    r->marking.n = 0; /* if the mark failed, the next sweep re-reads and re-sends them */
    if (r->stopped) {
        maybe_free(r);
        return;
    }
    if (r->done.n >= RELAY_MARK_ROWS)
        mark(r);
    else if (r->done.n > 0 && !uv_is_active((uv_handle_t *)&r->mark_timer))
        uv_timer_start(&r->mark_timer, on_mark_timer, RELAY_MARK_MS, 0);
}

/* One statement for every id delivered since the last one: a burst of delivery reports (one
 * produce response carries many) costs one journal round trip, not one per row. */
static void mark(relay_t *r)
{
    if (r->marking_busy || r->done.n == 0 || r->stopped)
        return; /* on_marked sends what gathered meanwhile */
    uv_timer_stop(&r->mark_timer);
    relay_ids_t t = r->marking;
    r->marking = r->done;
    r->done = t;
    r->done.n = 0;
    r->marking_busy = true;
    if (journal_outbox_sent(r->j, r->marking.v, r->marking.n, on_marked, r) < 0) {
        r->marking_busy = false;
        r->marking.n = 0; /* journal down: the next sweep re-sends them */
    }
}

static void on_mark_timer(uv_timer_t *t)
{
    mark(t->data);
}

static void delivered_ok(relay_t *r, int64_t id)
{
    ids_add(&r->done, id);
    if (r->done.n >= RELAY_MARK_ROWS)
        mark(r);
    else if (!r->marking_busy && !uv_is_active((uv_handle_t *)&r->mark_timer))
        uv_timer_start(&r->mark_timer, on_mark_timer, RELAY_MARK_MS, 0);
}

/* Ordering per key (one secret's events). The idempotent producer delivers a partition's
 * messages in order and without duplicates, retrying what can be retried by itself; a failed
 * report means it gave up (message.timeout.ms), and later messages of the same partition may
 * still have been written: the log can hold B without the A before it. Sending A again then
 * puts A after B, so B is sent again too, after A: the key's last word in the topic is right
 * again, and B is not marked sent until then, so a crash before the re-send still re-sends
 * both, A first. Rows of other keys are marked as usual. */
void relay_delivered(relay_t *r, void *opaque, int err, const char *reason)
{
    int64_t id = (int64_t)(intptr_t)opaque;
    int at = inflight_find(r, id);
    relay_key_t key = {.set = false};
    if (at >= 0) {
        key = r->inflight[at].key;
        r->inflight_bytes -= r->inflight[at].bytes;
        r->inflight[at] = r->inflight[--r->ninflight];
    }
    relay_block_t *b = block_find(r, &key);
    char ids[24];
    snprintf(ids, sizeof ids, "%" PRId64, id);
    if (err == 0) {
        r->failing = false;
        if (b && b->floor < id) {
            rewind_to(r, id); /* sent again after the row that failed before it */
            retry_soon(r);
        } else {
            if (b && b->floor == id)
                block_drop(r, b);
            delivered_ok(r, id);
        }
    } else if (kafka_err_permanent(err)) {
        if (b && b->floor == id)
            block_drop(r, b); /* the rows behind it no longer wait for it */
        park(r, id, NULL, err, reason);
    } else {
        if (!r->failing)
            log_warn("relay.delivery_failed", "outbox_id", ids, "error", reason ? reason : "",
                     "note", "published again from this row on the next tick");
        r->failing = true;
        block_set(r, &key, id);
        rewind_to(r, id);
        retry_soon(r);
    }
    if (r->throttled && r->ninflight < RELAY_MAX_INFLIGHT / 2 &&
        r->inflight_bytes <= RELAY_MAX_INFLIGHT_BYTES / 2) {
        r->throttled = false;
        fetch(r);
    }
}

int relay_backlog(relay_t *r)
{
    return r->ninflight + r->done.n + r->marking.n;
}

int relay_start(uv_loop_t *loop, journal_t *j, kafka_t *k, relay_t **out)
{
    relay_t *r = util_calloc(1, sizeof *r);
    r->j = j;
    r->k = k;
    uv_timer_init(loop, &r->timer);
    uv_timer_init(loop, &r->mark_timer);
    r->timer.data = r;
    r->mark_timer.data = r;
    uv_timer_start(&r->timer, on_timer, 0, RELAY_SWEEP_MS);  /* at once: rows of a restart */
    metrics_count(PARKED_TOTAL, PARKED_TOTAL_HELP, NULL, 0); /* shown from the start, at 0 */
    *out = r;
    return 0;
}

static void on_closed(uv_handle_t *h)
{
    relay_t *r = h->data;
    r->closed++;
    maybe_free(r);
}

void relay_stop(relay_t *r)
{
    if (!r)
        return;
    /* Delivered rows not marked yet are marked now rather than at the timer, so that a clean
     * stop re-sends as little as it can after the restart. */
    mark(r);
    r->stopped = true;
    uv_close((uv_handle_t *)&r->timer, on_closed);
    uv_close((uv_handle_t *)&r->mark_timer, on_closed);
}
