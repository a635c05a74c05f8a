/* kafka.c: librdkafka consumer and idempotent producer driven by the libuv loop. */
#include "kafka.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>

#include "log.h"
#include "metrics.h"
#include "rotor.h"
#include "util.h"

#define KAFKA_TICK_MS 50           /* progress check while stopping */
#define KAFKA_META_TIMEOUT_MS 2000 /* bounds one metadata request on the worker thread */
#define KAFKA_META_RETRY_MS 1000
#define KAFKA_META_REFRESH_MS 30000 /* the commands topic may grow: ownership follows its count */
#define KAFKA_FATAL_STOP_MS 5000
#define KAFKA_LAG_MS 1000 /* how often the consumer lag gauges are refreshed while input flows */
/* With no input, the lag timer only keeps the consumer polled (max.poll.interval.ms, 300 s by
 * default) and the gauges fresh: an idle daemon's loop wakes for it once in this long, or in a
 * third of max.poll.interval.ms when an operator set that lower. */
#define KAFKA_IDLE_POLL_MS 10000
/* Offsets are committed in batches by librdkafka's auto-commit of stored offsets (which also
 * commits a revoked partition's stored offset before it goes, and the last ones at close). */
#define KAFKA_COMMIT_INTERVAL_MS "1000"
/* One serve hands over or fetches at most this many messages, then yields to the loop (libpq,
 * curl and the HTTP server run on it too) and continues from an idle callback. */
#define KAFKA_SERVE_BUDGET 256
/* Bounds on what the consumer holds (handed over, waiting in a lane, or done but above a
 * partition's lowest undone offset). Messages are at most kafka.max_message_bytes each. */
#define KAFKA_PART_MAX 512
#define KAFKA_HELD_MAX 8192
#define KAFKA_HELD_BYTES ((size_t)64 << 20)
/* Past the overall bound, partitions holding fewer than this are left running, so that one busy
 * topic (Key Vault's events) cannot stop the commands of another. */
#define KAFKA_PART_RESERVE 8
#define KAFKA_LANE_BUCKETS 1024

typedef enum { KAFKA_RUNNING = 0, KAFKA_STOPPING, KAFKA_CLOSING, KAFKA_CLOSED } kafka_state_t;

enum { KAFKA_CONSUMER = 0, KAFKA_PRODUCER = 1 };

typedef struct {
    int fds[2]; /* librdkafka writes to [1] when its queue turns non-empty */
    uv_poll_t poll;
} kafka_pipe_t;

typedef struct kafka_part_s kafka_part_t;
typedef struct kafka_lane_s kafka_lane_t;
typedef struct kafka_held_s kafka_held_t;

/* A consumed message while the consumer holds it. */
struct kafka_held_s {
    kafka_msg_t pub;             /* first member: the owner's kafka_msg_t * is a kafka_held_t * */
    rd_kafka_message_t *raw;     /* NULL once done */
    kafka_part_t *part;          /* NULL once its partition was revoked: never stored then */
    kafka_lane_t *lane;          /* NULL once done; keyless messages share their partition's */
    kafka_held_t *pnext;         /* the partition's messages, in offset order */
    kafka_held_t *qnext;         /* the lane's waiting messages, or the ready list */
    kafka_held_t *gprev, *gnext; /* every held message, to free what is left at close */
    size_t bytes;
    uint64_t taken_ms; /* uv_now when fetched */
    bool handed, done;
};

/* A partition of an input topic, as far as this consumer has seen it. */
struct kafka_part_s {
    kafka_part_t *next;
    char *topic;
    int32_t partition;
    bool paused;
    bool pause_failed; /* the last pause or resume was refused: logged once, until one succeeds */
    kafka_held_t *head, *tail; /* held messages in offset order: head is the lowest not popped */
    int held;
    int64_t next_offset; /* after the last message fetched; -1 unknown */
};

/* The messages of one (topic, partition, key): one with the owner, the rest waiting in order. */
struct kafka_lane_s {
    kafka_lane_t *next; /* hash chain */
    kafka_part_t *part;
    uint32_t hash;
    size_t key_len;
    kafka_held_t *busy; /* with the owner or on the ready list */
    kafka_held_t *qhead, *qtail;
    unsigned char key[];
};

struct kafka_s {
    uv_loop_t *loop;
    const rotor_config_t *cfg;
    const kafka_callbacks_t *cbs;
    rd_kafka_t *consumer;
    rd_kafka_t *producer;
    rd_kafka_queue_t *cq; /* consumer queue; the consumer's main queue is forwarded into it */
    rd_kafka_queue_t *pq; /* producer's main queue: delivery reports and errors */
    rd_kafka_topic_t *cmd_topic; /* producer-side handle, for the partitioner */
    kafka_pipe_t pipes[2];       /* indexed by KAFKA_CONSUMER / KAFKA_PRODUCER */
    uv_idle_t resume;            /* hands over ready messages, drains the rest of the queue */
    uv_timer_t tick;             /* metadata retry while running; progress while stopping */
    uv_timer_t lag;        /* refreshes the consumer lag gauges; polls the consumer when idle */
    bool lag_busy;         /* input taken or done since the lag timer last ran */
    int lag_quiet;         /* lag timer runs in a row without input */
    uint64_t idle_poll_ms; /* the lag timer's period without input */
    uv_timer_t deadline;   /* bound on kafka_stop */
    uv_work_t meta_work;
    bool meta_busy;
    bool meta_again; /* a refresh was asked for while one ran */
    void (*on_count)(kafka_t *k, int32_t count, void *arg);
    void *on_count_arg;
    int meta_result;         /* written by the worker thread, read in the after-work callback */
    int32_t partition_cnt;   /* of the commands topic; -1 until known */
    kafka_part_t *parts;     /* every input partition seen (few: never freed before k) */
    kafka_part_t *last_part; /* the last one looked up: consecutive messages share one */
    kafka_lane_t *lanes[KAFKA_LANE_BUCKETS];
    kafka_held_t *ready, *ready_tail; /* lane heads to hand over on the next serve */
    kafka_held_t *all;                /* every held message */
    int held;                         /* messages held, and their bytes */
    size_t held_bytes;
    bool over; /* past the overall bound, not yet drained to half */
    kafka_state_t state;
    bool close_failed;
    bool deadline_passed;
    bool fatal;
    int open_handles;
    rd_kafka_resp_err_t last_err[2]; /* last logged error per client, so each is logged once */
    size_t max_message_bytes;        /* the producer's message.max.bytes, as configured */
};

static const char *const kafka_client_names[] = {"consumer", "producer"};

static void kafka_stop_check(kafka_t *k);
static void kafka_consumer_drain(kafka_t *k);

/* ---- configuration ---- */

static int kafka_conf_set(rd_kafka_conf_t *conf, const char *name, const char *value, char *err,
                          size_t errlen)
{
    char errstr[512];
    if (rd_kafka_conf_set(conf, name, value, errstr, sizeof errstr) == RD_KAFKA_CONF_OK)
        return 0;
    snprintf(err, errlen, "kafka property %s: %s", name, errstr);
    return ROTOR_ECONFIG;
}

static int kafka_conf_table(rd_kafka_conf_t *conf, const char *const (*kv)[2], size_t n, char *err,
                            size_t errlen)
{
    for (size_t i = 0; i < n; i++) {
        int rc = kafka_conf_set(conf, kv[i][0], kv[i][1], err, errlen);
        if (rc)
            return rc;
    }
    return 0;
}

/* The operator's properties, with those taken from the environment or files (a SASL password,
 * an Event Hubs connection string) resolved now and wiped once librdkafka has its copy. */
static int kafka_conf_user(const kafka_t *k, rd_kafka_conf_t *conf, char *err, size_t errlen)
{
    cfg_kv_t *props = NULL;
    size_t n = 0;
    int rc = config_kafka_properties(k->cfg, &props, &n, err, errlen);
    for (size_t i = 0; rc == 0 && i < n; i++)
        rc = kafka_conf_set(conf, props[i].key, props[i].value, err, errlen);
    config_kv_free(props, n);
    return rc;
}

static void kafka_error_cb(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
    kafka_t *k = opaque;
    int who = rk == k->consumer ? KAFKA_CONSUMER : KAFKA_PRODUCER;
    if (err == RD_KAFKA_RESP_ERR__FATAL) {
        char buf[512];
        rd_kafka_resp_err_t orig = rd_kafka_fatal_error(rk, buf, sizeof buf);
        log_error("kafka.fatal", "client", kafka_client_names[who], "error",
                  rd_kafka_err2name(orig), "reason", buf);
        k->fatal = true;
        return;
    }
    /* librdkafka repeats transport errors while a broker stays away; one line is enough. */
    if (k->last_err[who] == (rd_kafka_resp_err_t)err)
        return;
    k->last_err[who] = (rd_kafka_resp_err_t)err;
    log_warn("kafka.error", "client", kafka_client_names[who], "error",
             rd_kafka_err2name((rd_kafka_resp_err_t)err), "reason", reason);
}

/* Settings both clients share: ours first, the operator's properties may override them. */
static rd_kafka_conf_t *kafka_conf_base(kafka_t *k, const char *brokers, char *err, size_t errlen)
{
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    if (kafka_conf_set(conf, "bootstrap.servers", brokers, err, errlen) ||
        kafka_conf_set(conf, "client.id", "rotor", err, errlen)) {
        rd_kafka_conf_destroy(conf);
        return NULL;
    }
    rd_kafka_conf_set_opaque(conf, k);
    rd_kafka_conf_set_error_cb(conf, kafka_error_cb);
    return conf;
}

/* ---- consumer ---- */

static bool kafka_list_has(const rd_kafka_topic_partition_list_t *parts, const char *topic,
                           int32_t partition)
{
    for (int i = 0; i < parts->cnt; i++) {
        if (parts->elems[i].partition == partition && strcmp(parts->elems[i].topic, topic) == 0)
            return true;
    }
    return false;
}

static void kafka_part_revoke(kafka_t *k, kafka_part_t *p);

static kafka_part_t *kafka_part_find(kafka_t *k, const char *topic, int32_t partition)
{
    for (kafka_part_t *p = k->parts; p; p = p->next) {
        if (p->partition == partition && strcmp(p->topic, topic) == 0)
            return p;
    }
    return NULL;
}

/* What was fetched for a partition we lose now belongs to the new owner: what waits is dropped,
 * what the owner holds is never stored. The offsets stored so far are committed by librdkafka
 * as the partition is unassigned (auto-commit of stored offsets), without blocking the loop. */
static void kafka_revoke(kafka_t *k, const rd_kafka_topic_partition_list_t *revoked, bool all)
{
    for (kafka_part_t *p = k->parts; p; p = p->next) {
        if (all || kafka_list_has(revoked, p->topic, p->partition))
            kafka_part_revoke(k, p);
    }
}

static void kafka_notify_rebalance(kafka_t *k, const rd_kafka_topic_partition_list_t *parts,
                                   int assigned)
{
    int32_t *ids = util_calloc((size_t)parts->cnt, sizeof *ids);
    int n = 0;
    char text[256] = "";
    size_t used = 0;
    for (int i = 0; i < parts->cnt; i++) {
        if (strcmp(parts->elems[i].topic, k->cfg->kafka.topic_commands) != 0)
            continue;
        ids[n++] = parts->elems[i].partition;
        if (used < sizeof text) {
            int w = snprintf(text + used, sizeof text - used, "%s%d", used ? "," : "",
                             (int)parts->elems[i].partition);
            used += w > 0 ? (size_t)w : 0;
        }
    }
    log_info("kafka.rebalance", "change", assigned ? "assigned" : "revoked", "partitions", text);
    if (k->cbs->on_rebalance)
        k->cbs->on_rebalance(k, ids, n, assigned, k->cbs->arg);
    free(ids);
}

/* Runs inside rd_kafka_consumer_poll(), so on the loop thread. */
static void kafka_rebalance_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                               rd_kafka_topic_partition_list_t *parts, void *opaque)
{
    kafka_t *k = opaque;
    bool coop = strcmp(rd_kafka_rebalance_protocol(rk), "COOPERATIVE") == 0;
    int assigned = err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS;
    if (!assigned && err != RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS)
        log_warn("kafka.rebalance.error", "reason", rd_kafka_err2str(err));
    if (!assigned)
        kafka_revoke(k, parts, !coop);

    rd_kafka_error_t *e = NULL;
    rd_kafka_resp_err_t re = RD_KAFKA_RESP_ERR_NO_ERROR;
    if (coop)
        e = assigned ? rd_kafka_incremental_assign(rk, parts)
                     : rd_kafka_incremental_unassign(rk, parts);
    else
        re = rd_kafka_assign(rk, assigned ? parts : NULL);
    if (e || re) {
        /* After close starts the assignment may already be gone; that is no news. */
        log_write(k->state == KAFKA_RUNNING ? LOG_WARN : LOG_DEBUG, "kafka.assign.failed", "reason",
                  e ? rd_kafka_error_string(e) : rd_kafka_err2str(re), NULL);
        if (e)
            rd_kafka_error_destroy(e);
    }
    if (assigned)
        k->last_err[KAFKA_CONSUMER] = RD_KAFKA_RESP_ERR_NO_ERROR;
    kafka_notify_rebalance(k, parts, assigned);
}

static void kafka_commit_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                            rd_kafka_topic_partition_list_t *offsets, void *opaque)
{
    (void)rk;
    (void)opaque;
    if (err == RD_KAFKA_RESP_ERR__NO_OFFSET)
        return; /* nothing new was stored: no request was sent */
    metrics_count("rotor_offset_commits_total",
                  "Offset commit requests (stored offsets are committed in batches)", NULL, 1);
    /* A lost commit only means the message is consumed again: at-least-once, so warn only. */
    if (err)
        log_warn("kafka.commit.failed", "reason", rd_kafka_err2str(err));
    for (int i = 0; offsets && i < offsets->cnt; i++) {
        if (offsets->elems[i].err)
            log_warn("kafka.commit.failed", "topic", offsets->elems[i].topic, "reason",
                     rd_kafka_err2str(offsets->elems[i].err));
    }
}

static int kafka_make_consumer(kafka_t *k, const char *brokers, char *err, size_t errlen)
{
    static const char *const defaults[][2] = {
        {"partition.assignment.strategy", "range"},
        {"auto.offset.reset", "earliest"},
        {"enable.partition.eof", "false"},
        {"auto.commit.interval.ms", KAFKA_COMMIT_INTERVAL_MS},
    };
    /* Applied after the operator's properties: the at-least-once guarantee depends on them.
     * Only kafka_msg_done stores an offset (after the journal commit); auto-commit then sends
     * what is stored, in batches, and on revoke and close commits it before the partition goes
     * (librdkafka's documented pattern for at-least-once with asynchronous processing). */
    static const char *const enforced[][2] = {
        {"enable.auto.commit", "true"},
        {"enable.auto.offset.store", "false"},
    };
    rd_kafka_conf_t *conf = kafka_conf_base(k, brokers, err, errlen);
    if (!conf)
        return ROTOR_ECONFIG;
    int rc = kafka_conf_table(conf, defaults, sizeof defaults / sizeof defaults[0], err, errlen);
    if (!rc)
        rc = kafka_conf_set(conf, "group.id", k->cfg->kafka.group, err, errlen);
    if (!rc)
        rc = kafka_conf_user(k, conf, err, errlen);
    if (!rc)
        rc = kafka_conf_table(conf, enforced, sizeof enforced / sizeof enforced[0], err, errlen);
    if (rc) {
        rd_kafka_conf_destroy(conf);
        return rc;
    }
    char mpi[24];
    size_t mpi_len = sizeof mpi;
    k->idle_poll_ms = KAFKA_IDLE_POLL_MS;
    if (rd_kafka_conf_get(conf, "max.poll.interval.ms", mpi, &mpi_len) == RD_KAFKA_CONF_OK) {
        uint64_t third = strtoull(mpi, NULL, 10) / 3;
        if (third < k->idle_poll_ms)
            k->idle_poll_ms = third > KAFKA_LAG_MS ? third : KAFKA_LAG_MS;
    }
    rd_kafka_conf_set_rebalance_cb(conf, kafka_rebalance_cb);
    rd_kafka_conf_set_offset_commit_cb(conf, kafka_commit_cb);
    char errstr[512];
    k->consumer = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof errstr);
    if (!k->consumer) {
        rd_kafka_conf_destroy(conf);
        snprintf(err, errlen, "kafka consumer: %s", errstr);
        return ROTOR_EKAFKA;
    }
    rd_kafka_poll_set_consumer(k->consumer);
    k->cq = rd_kafka_queue_get_consumer(k->consumer);
    return 0;
}

static int kafka_subscribe(kafka_t *k, char *err, size_t errlen)
{
    rd_kafka_topic_partition_list_t *topics = rd_kafka_topic_partition_list_new(2);
    rd_kafka_topic_partition_list_add(topics, k->cfg->kafka.topic_commands, RD_KAFKA_PARTITION_UA);
    /* Key Vault's events (Event Grid through Event Hubs) come in on a topic of their own. */
    if (k->cfg->kafka.topic_keyvault)
        rd_kafka_topic_partition_list_add(topics, k->cfg->kafka.topic_keyvault,
                                          RD_KAFKA_PARTITION_UA);
    rd_kafka_resp_err_t e = rd_kafka_subscribe(k->consumer, topics);
    rd_kafka_topic_partition_list_destroy(topics);
    if (e) {
        snprintf(err, errlen, "kafka subscribe %s: %s", k->cfg->kafka.topic_commands,
                 rd_kafka_err2str(e));
        return ROTOR_EKAFKA;
    }
    return 0;
}

/* ---- held messages, lanes, flow control ---- */

static void kafka_uv_resume(kafka_t *k);
static void kafka_on_lag(uv_timer_t *t);

static uint32_t kafka_hash(const kafka_part_t *p, const void *key, size_t len)
{
    uint32_t h = 2166136261u ^ (uint32_t)p->partition; /* FNV-1a */
    for (size_t i = 0; i < len; i++)
        h = (h ^ ((const unsigned char *)key)[i]) * 16777619u;
    return h ^ (uint32_t)(uintptr_t)p;
}

static kafka_lane_t **kafka_lane_slot(kafka_t *k, kafka_part_t *p, const void *key, size_t len,
                                      uint32_t h)
{
    kafka_lane_t **l = &k->lanes[h % KAFKA_LANE_BUCKETS];
    for (; *l; l = &(*l)->next) {
        if ((*l)->hash == h && (*l)->part == p && (*l)->key_len == len &&
            (len == 0 || memcmp((*l)->key, key, len) == 0))
            break;
    }
    return l;
}

static void kafka_lane_free(kafka_t *k, kafka_lane_t *lane)
{
    kafka_lane_t **l = &k->lanes[lane->hash % KAFKA_LANE_BUCKETS];
    while (*l != lane)
        l = &(*l)->next;
    *l = lane->next;
    free(lane);
}

static void kafka_ready_push(kafka_t *k, kafka_held_t *h)
{
    h->qnext = NULL;
    if (k->ready_tail)
        k->ready_tail->qnext = h;
    else
        k->ready = h;
    k->ready_tail = h;
}

static void kafka_held_release(kafka_held_t *h)
{
    if (h->raw)
        rd_kafka_message_destroy(h->raw);
    h->raw = NULL;
    free(h->pub.headers);
    h->pub.headers = NULL;
}

static void kafka_held_free(kafka_t *k, kafka_held_t *h)
{
    kafka_held_release(h);
    if (h->gprev)
        h->gprev->gnext = h->gnext;
    else
        k->all = h->gnext;
    if (h->gnext)
        h->gnext->gprev = h->gprev;
    k->held--;
    k->held_bytes -= h->bytes;
    free(h);
}

static void kafka_pause(kafka_t *k, kafka_part_t *p, bool pause)
{
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(l, p->topic, p->partition);
    rd_kafka_resp_err_t e = pause ? rd_kafka_pause_partitions(k->consumer, l)
                                  : rd_kafka_resume_partitions(k->consumer, l);
    if (!e)
        e = l->elems[0].err;
    rd_kafka_topic_partition_list_destroy(l);
    char part[16], held[16];
    snprintf(part, sizeof part, "%d", (int)p->partition);
    snprintf(held, sizeof held, "%d", p->held);
    if (e) {
        /* kafka_flow asks again on every serve: one line until it works. */
        if (!p->pause_failed)
            log_warn(pause ? "kafka.pause.failed" : "kafka.resume.failed", "topic", p->topic,
                     "partition", part, "reason", rd_kafka_err2str(e));
        p->pause_failed = true;
        return;
    }
    p->pause_failed = false;
    p->paused = pause;
    log_debug(pause ? "kafka.paused" : "kafka.resumed", "topic", p->topic, "partition", part,
              "held", held);
}

/* Pauses a partition that holds too much, resumes one that has drained to half. A paused
 * partition's prefetched messages are dropped by librdkafka and fetched again from the position
 * after the last message it gave us, so nothing is lost or seen twice. */
static void kafka_flow(kafka_t *k)
{
    if (k->state != KAFKA_RUNNING)
        return;
    if (!k->over && (k->held >= KAFKA_HELD_MAX || k->held_bytes >= KAFKA_HELD_BYTES))
        k->over = true;
    else if (k->over && k->held <= KAFKA_HELD_MAX / 2 && k->held_bytes <= KAFKA_HELD_BYTES / 2)
        k->over = false;
    for (kafka_part_t *p = k->parts; p; p = p->next) {
        bool stop = k->over ? p->held >= KAFKA_PART_RESERVE : false;
        if (!p->paused && (stop || p->held >= KAFKA_PART_MAX))
            kafka_pause(k, p, true);
        else if (p->paused && !stop && p->held <= KAFKA_PART_MAX / 2)
            kafka_pause(k, p, false);
    }
}

static void kafka_lag_gauge(const kafka_part_t *p, int64_t lag)
{
    char labels[256];
    snprintf(labels, sizeof labels, "topic=\"%s\",partition=\"%d\"", p->topic, (int)p->partition);
    metrics_gauge("rotor_consumer_lag",
                  "Messages of an input partition not yet handled here (high watermark minus the "
                  "offset to commit; 0 once the partition is revoked)",
                  labels, (double)lag);
}

/* How long the partition's lowest undone message has been here (0: none): a message retried for
 * long holds its partition's offset back, and this says so. */
static void kafka_age_gauge(const kafka_t *k, const kafka_part_t *p)
{
    char labels[256];
    snprintf(labels, sizeof labels, "topic=\"%s\",partition=\"%d\"", p->topic, (int)p->partition);
    uint64_t now = uv_now(k->loop);
    double age = p->head && now > p->head->taken_ms ? (double)(now - p->head->taken_ms) / 1000 : 0;
    metrics_gauge("rotor_consumer_oldest_undone_seconds",
                  "Age of the oldest input message of a partition not yet done here (its offset "
                  "is not committed past it)",
                  labels, age);
}

/* Forgets a partition's messages (it was revoked): waiting ones are freed, the owner's are kept
 * until done but will not be stored, and their lanes stay busy until then, so a key's next
 * message (after a reassignment) still waits for them. */
static void kafka_part_revoke(kafka_t *k, kafka_part_t *p)
{
    /* Ready messages have not reached the owner: unlink those of p. */
    kafka_held_t **r = &k->ready;
    k->ready_tail = NULL;
    while (*r) {
        if ((*r)->part == p) {
            if ((*r)->lane)
                (*r)->lane->busy = NULL;
            *r = (*r)->qnext;
        } else {
            k->ready_tail = *r;
            r = &(*r)->qnext;
        }
    }
    for (int i = 0; i < KAFKA_LANE_BUCKETS; i++) {
        kafka_lane_t *l = k->lanes[i];
        while (l) {
            kafka_lane_t *next = l->next;
            if (l->part == p) {
                l->qhead = l->qtail = NULL;
                if (!l->busy)
                    kafka_lane_free(k, l);
            }
            l = next;
        }
    }
    kafka_held_t *h = p->head;
    while (h) {
        kafka_held_t *next = h->pnext;
        h->pnext = NULL;
        if (h->handed && !h->done)
            h->part = NULL;
        else
            kafka_held_free(k, h);
        h = next;
    }
    p->head = p->tail = NULL;
    p->held = 0;
    /* librdkafka clears only its own pause on unassign and assign: the application's pause stays
     * on the partition, which would come back paused at the next assignment with nothing held to
     * resume it for (librdkafka issue #1849). Resume it while it is still assigned. */
    if (p->paused)
        kafka_pause(k, p, false);
    p->paused = false;
    p->pause_failed = false;
    p->next_offset = -1;
    kafka_lag_gauge(p, 0); /* not ours to catch up on any more */
    kafka_age_gauge(k, p);
}

/* Takes a fetched message: into its lane's queue if the lane is busy, else onto the ready list. */
/* Input moved: the gauges are refreshed within KAFKA_LAG_MS, and every KAFKA_LAG_MS while it
 * keeps moving. */
static void kafka_lag_busy(kafka_t *k)
{
    k->lag_busy = true;
    if (k->state == KAFKA_RUNNING && uv_timer_get_due_in(&k->lag) > KAFKA_LAG_MS)
        uv_timer_start(&k->lag, kafka_on_lag, KAFKA_LAG_MS, 0);
}

static void kafka_take(kafka_t *k, rd_kafka_message_t *m)
{
    kafka_lag_busy(k);
    const char *topic = rd_kafka_topic_name(m->rkt);
    kafka_part_t *p = k->last_part;
    if (!p || p->partition != m->partition || strcmp(p->topic, topic) != 0)
        p = kafka_part_find(k, topic, m->partition);
    if (!p) {
        p = util_calloc(1, sizeof *p);
        p->topic = util_strdup(topic);
        p->partition = m->partition;
        p->next_offset = -1;
        p->next = k->parts;
        k->parts = p;
    }
    k->last_part = p;

    kafka_held_t *h = util_calloc(1, sizeof *h);
    h->pub.topic = p->topic;
    h->pub.partition = m->partition;
    h->pub.offset = m->offset;
    h->pub.key = m->key;
    h->pub.key_len = m->key_len;
    h->pub.value = m->payload;
    h->pub.len = m->len;
    h->raw = m;
    h->part = p;
    h->taken_ms = uv_now(k->loop);
    h->bytes = sizeof *h + m->len + m->key_len;
    rd_kafka_headers_t *hdrs;
    if (rd_kafka_message_headers(m, &hdrs) == RD_KAFKA_RESP_ERR_NO_ERROR) {
        h->pub.nheaders = rd_kafka_header_cnt(hdrs);
        h->pub.headers = util_calloc(h->pub.nheaders, sizeof *h->pub.headers);
        for (size_t i = 0; i < h->pub.nheaders; i++) {
            event_header_t *e = &h->pub.headers[i];
            rd_kafka_header_get_all(hdrs, i, &e->name, &e->value, &e->len);
            h->bytes += sizeof *e;
        }
    }
    h->gnext = k->all;
    if (k->all)
        k->all->gprev = h;
    k->all = h;
    k->held++;
    k->held_bytes += h->bytes;
    if (p->tail)
        p->tail->pnext = h;
    else
        p->head = h;
    p->tail = h;
    p->held++;
    p->next_offset = m->offset + 1;

    /* Keyless messages share one lane per partition (the empty key): handed over one at a time,
     * so one redelivered after a revoke and reassignment waits for the copy still with the
     * owner, and a keyless backlog cannot send hundreds of vault requests out at once. */
    uint32_t hash = kafka_hash(p, m->key, m->key_len);
    kafka_lane_t **slot = kafka_lane_slot(k, p, m->key, m->key_len, hash);
    kafka_lane_t *lane = *slot;
    if (!lane) {
        lane = util_calloc(1, sizeof *lane + m->key_len);
        lane->part = p;
        lane->hash = hash;
        lane->key_len = m->key_len;
        if (m->key_len)
            memcpy(lane->key, m->key, m->key_len);
        *slot = lane;
    }
    h->lane = lane;
    if (lane->busy) {
        if (lane->qtail)
            lane->qtail->qnext = h;
        else
            lane->qhead = h;
        lane->qtail = h;
        return;
    }
    lane->busy = h;
    kafka_ready_push(k, h);
}

static void kafka_consumer_error(kafka_t *k, const rd_kafka_message_t *m)
{
    if (k->last_err[KAFKA_CONSUMER] == m->err)
        return;
    k->last_err[KAFKA_CONSUMER] = m->err;
    log_warn("kafka.error", "client", "consumer", "topic",
             m->rkt ? rd_kafka_topic_name(m->rkt) : NULL, "error", rd_kafka_err2name(m->err),
             "reason", rd_kafka_message_errstr(m));
}

/* Serves the consumer queue with zero timeouts: hands the ready messages over, takes what is
 * fetched into lanes. Stops after KAFKA_SERVE_BUDGET steps and continues from the idle handle:
 * the pipe is written only when the queue turns non-empty, so what is left must be asked for. */
static void kafka_consumer_serve(kafka_t *k)
{
    int budget = KAFKA_SERVE_BUDGET;
    while ((k->state == KAFKA_RUNNING || k->state == KAFKA_STOPPING) && budget-- > 0) {
        if (k->state == KAFKA_RUNNING && k->ready) {
            kafka_held_t *h = k->ready;
            k->ready = h->qnext;
            if (!k->ready)
                k->ready_tail = NULL;
            h->qnext = NULL;
            h->handed = true;
            k->cbs->on_message(k, &h->pub, k->cbs->arg);
            continue;
        }
        rd_kafka_message_t *m = rd_kafka_consumer_poll(k->consumer, 0);
        if (!m)
            break;
        if (m->err) {
            kafka_consumer_error(k, m);
            rd_kafka_message_destroy(m);
        } else if (k->state != KAFKA_RUNNING) {
            rd_kafka_message_destroy(m); /* closing: the next owner gets it again */
        } else {
            kafka_take(k, m);
        }
    }
    kafka_flow(k);
    if (budget < 0 || (k->state == KAFKA_RUNNING && k->ready))
        kafka_uv_resume(k);
}

/* ---- producer ---- */

/* One message's failure as a rotor error: a message that Kafka will never take as it is (too
 * large, malformed, for a topic or partition that does not exist) as a negative errno that
 * kafka_err_permanent() recognises; what passes (queue full, broker away, timed out, purged at
 * shutdown) as -ENOBUFS or ROTOR_EKAFKA. librdkafka has already retried what it could retry. */
static int kafka_msg_err(rd_kafka_resp_err_t e)
{
    switch (e) {
    case RD_KAFKA_RESP_ERR_NO_ERROR:
        return 0;
    case RD_KAFKA_RESP_ERR__QUEUE_FULL:
        return -ENOBUFS;
    case RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE:
    case RD_KAFKA_RESP_ERR_INVALID_MSG_SIZE:
    case RD_KAFKA_RESP_ERR_RECORD_LIST_TOO_LARGE:
        return -EMSGSIZE;
    case RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC:
    case RD_KAFKA_RESP_ERR__UNKNOWN_PARTITION:
    case RD_KAFKA_RESP_ERR_TOPIC_EXCEPTION:
        return -ENOENT;
    case RD_KAFKA_RESP_ERR__INVALID_ARG:
    case RD_KAFKA_RESP_ERR_INVALID_MSG:
    case RD_KAFKA_RESP_ERR_INVALID_RECORD:
        return -EINVAL;
    default:
        return ROTOR_EKAFKA;
    }
}

bool kafka_err_permanent(int err)
{
    return err == -EMSGSIZE || err == -ENOENT || err == -EINVAL;
}

static void kafka_dr_msg_cb(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    (void)rk;
    kafka_t *k = opaque;
    if (!m->err)
        k->last_err[KAFKA_PRODUCER] = RD_KAFKA_RESP_ERR_NO_ERROR;
    if (k->cbs->on_delivery)
        k->cbs->on_delivery(k, m->_private, kafka_msg_err(m->err),
                            m->err ? rd_kafka_err2str(m->err) : NULL, k->cbs->arg);
}

static int kafka_make_producer(kafka_t *k, const char *brokers, char *err, size_t errlen)
{
    /* murmur2_random is the Java client's partitioner, so kafka_partition_of() can predict it
     * and other Kafka clients put a secret's events on the same partition. */
    static const char *const defaults[][2] = {
        {"partitioner", "murmur2_random"},
        {"linger.ms", "5"},
        /* librdkafka's 1 GiB default would let a broker outage fill memory: the relay keeps
         * its own byte budget below this, and an operator's property still wins. */
        {"queue.buffering.max.kbytes", "65536"},
    };
    static const char *const enforced[][2] = {
        {"enable.idempotence", "true"},
        {"acks", "all"},
    };
    rd_kafka_conf_t *conf = kafka_conf_base(k, brokers, err, errlen);
    if (!conf)
        return ROTOR_ECONFIG;
    int rc = kafka_conf_table(conf, defaults, sizeof defaults / sizeof defaults[0], err, errlen);
    /* kafka.max_message_bytes is the largest Kafka message rotor handles, in and out: the
     * producer takes the same limit (librdkafka's own default, 1000000, is below the input
     * limit's default of 1 MiB, so a dead letter of an accepted input could never be sent). An
     * operator's message.max.bytes still wins; the relay reads the result back
     * (kafka_max_message_bytes) to cut dead letters to it. */
    char maxb[24];
    snprintf(maxb, sizeof maxb, "%zu", k->cfg->kafka.max_message_bytes);
    if (!rc && k->cfg->kafka.max_message_bytes >= 1000)
        rc = kafka_conf_set(conf, "message.max.bytes", maxb, err, errlen);
    if (!rc)
        rc = kafka_conf_user(k, conf, err, errlen);
    if (!rc)
        rc = kafka_conf_table(conf, enforced, sizeof enforced / sizeof enforced[0], err, errlen);
    size_t len = sizeof maxb;
    if (!rc && rd_kafka_conf_get(conf, "message.max.bytes", maxb, &len) == RD_KAFKA_CONF_OK)
        k->max_message_bytes = (size_t)strtoull(maxb, NULL, 10);
    if (rc) {
        rd_kafka_conf_destroy(conf);
        return rc;
    }
    rd_kafka_conf_set_dr_msg_cb(conf, kafka_dr_msg_cb);
    char errstr[512];
    k->producer = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr);
    if (!k->producer) {
        rd_kafka_conf_destroy(conf);
        snprintf(err, errlen, "kafka producer: %s", errstr);
        return ROTOR_EKAFKA;
    }
    k->pq = rd_kafka_queue_get_main(k->producer);
    k->cmd_topic = rd_kafka_topic_new(k->producer, k->cfg->kafka.topic_commands, NULL);
    if (!k->cmd_topic) {
        snprintf(err, errlen, "kafka topic %s: %s", k->cfg->kafka.topic_commands,
                 rd_kafka_err2str(rd_kafka_last_error()));
        return ROTOR_EKAFKA;
    }
    return 0;
}

int kafka_produce(kafka_t *k, const char *topic, const void *key, size_t key_len, const void *value,
                  size_t len, const event_header_t *headers, size_t nheaders, void *opaque)
{
    if (k->state != KAFKA_RUNNING && k->state != KAFKA_STOPPING)
        return ROTOR_ECANCELED;
    rd_kafka_headers_t *hdrs = rd_kafka_headers_new(nheaders);
    for (size_t i = 0; i < nheaders; i++)
        rd_kafka_header_add(hdrs, headers[i].name, -1, headers[i].value,
                            headers[i].value ? (ssize_t)headers[i].len : 0);
    /* On success librdkafka owns hdrs; on failure we still do. */
    rd_kafka_resp_err_t e = rd_kafka_producev(
        k->producer, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_KEY((void *)key, key_len),
        RD_KAFKA_V_VALUE((void *)value, len), RD_KAFKA_V_HEADERS(hdrs), RD_KAFKA_V_OPAQUE(opaque),
        RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END);
    if (!e)
        return 0;
    rd_kafka_headers_destroy(hdrs);
    return kafka_msg_err(e);
}

int kafka_outq_len(kafka_t *k)
{
    return rd_kafka_outq_len(k->producer);
}

size_t kafka_max_message_bytes(kafka_t *k)
{
    return k->max_message_bytes;
}

/* ---- partitioning ---- */

/* Worker thread: rd_kafka_metadata blocks, which the loop must not. */
static void kafka_meta_work(uv_work_t *req)
{
    kafka_t *k = req->data;
    const struct rd_kafka_metadata *md;
    k->meta_result = -1;
    if (rd_kafka_metadata(k->producer, 0, k->cmd_topic, &md, KAFKA_META_TIMEOUT_MS))
        return;
    if (md->topic_cnt == 1 && !md->topics[0].err)
        k->meta_result = md->topics[0].partition_cnt;
    rd_kafka_metadata_destroy(md);
}

static void kafka_on_tick(uv_timer_t *h);

static void kafka_meta_fetch(kafka_t *k);

/* The count is fetched again every KAFKA_META_REFRESH_MS and on every rebalance: partitions
 * added to the commands topic move secrets to other partitions, and so to other owners. */
static void kafka_meta_done(uv_work_t *req, int status)
{
    kafka_t *k = req->data;
    k->meta_busy = false;
    bool ok = status == 0 && k->meta_result > 0;
    int32_t was = k->partition_cnt;
    if (ok)
        k->partition_cnt = k->meta_result;
    if (k->state == KAFKA_RUNNING) {
        if (k->meta_again) {
            k->meta_again = false;
            kafka_meta_fetch(k);
        } else {
            uv_timer_start(&k->tick, kafka_on_tick,
                           ok ? KAFKA_META_REFRESH_MS : KAFKA_META_RETRY_MS, 0);
        }
        if (ok && was != k->partition_cnt && k->on_count)
            k->on_count(k, k->partition_cnt, k->on_count_arg);
    }
    if (k->state == KAFKA_STOPPING)
        kafka_stop_check(k);
}

static void kafka_meta_fetch(kafka_t *k)
{
    k->meta_work.data = k;
    if (uv_queue_work(k->loop, &k->meta_work, kafka_meta_work, kafka_meta_done) == 0)
        k->meta_busy = true;
}

void kafka_meta_refresh(kafka_t *k)
{
    if (k->state != KAFKA_RUNNING)
        return;
    if (k->meta_busy) {
        k->meta_again = true;
        return;
    }
    uv_timer_stop(&k->tick);
    kafka_meta_fetch(k);
}

void kafka_meta_on_count(kafka_t *k, void (*fn)(kafka_t *k, int32_t count, void *arg), void *arg)
{
    k->on_count = fn;
    k->on_count_arg = arg;
}

int32_t kafka_partition_count(kafka_t *k)
{
    return k->partition_cnt;
}

int32_t kafka_partition_of(kafka_t *k, const char *key)
{
    if (k->partition_cnt <= 0 || !key)
        return -1;
    return rd_kafka_msg_partitioner_murmur2(k->cmd_topic, key, strlen(key), k->partition_cnt, NULL,
                                            NULL);
}

/* ---- loop integration ---- */

static void kafka_after_serve(kafka_t *k)
{
    if (k->fatal && k->state == KAFKA_RUNNING)
        kafka_stop(k, KAFKA_FATAL_STOP_MS);
    if (k->state == KAFKA_STOPPING)
        kafka_stop_check(k);
}

static void kafka_consumer_drain(kafka_t *k)
{
    kafka_consumer_serve(k);
    kafka_after_serve(k);
}

static void kafka_producer_drain(kafka_t *k)
{
    if (k->state == KAFKA_RUNNING || k->state == KAFKA_STOPPING)
        rd_kafka_poll(k->producer, 0);
    kafka_after_serve(k);
}

static void kafka_on_pipe(uv_poll_t *h, int status, int events)
{
    (void)events;
    kafka_t *k = h->data;
    int who = h == &k->pipes[KAFKA_CONSUMER].poll ? KAFKA_CONSUMER : KAFKA_PRODUCER;
    char buf[64];
    /* Empty the pipe first: a write that races with the serve below then wakes us again. */
    while (read(k->pipes[who].fds[0], buf, sizeof buf) > 0)
        ;
    if (status < 0)
        log_warn("kafka.poll.error", "client", kafka_client_names[who], "reason",
                 uv_strerror(status));
    if (who == KAFKA_CONSUMER)
        kafka_consumer_drain(k);
    else
        kafka_producer_drain(k);
}

static void kafka_on_resume(uv_idle_t *h)
{
    kafka_t *k = h->data;
    uv_idle_stop(h);
    kafka_consumer_drain(k);
}

static void kafka_uv_resume(kafka_t *k)
{
    uv_idle_start(&k->resume, kafka_on_resume);
}

static void kafka_on_tick(uv_timer_t *h)
{
    kafka_t *k = h->data;
    if (k->state == KAFKA_RUNNING) {
        kafka_meta_fetch(k);
        return;
    }
    kafka_consumer_drain(k);
    kafka_producer_drain(k);
}

static void kafka_on_deadline(uv_timer_t *h)
{
    kafka_t *k = h->data;
    k->deadline_passed = true;
    kafka_stop_check(k);
}

static int kafka_pipe_open(kafka_t *k, int who, rd_kafka_queue_t *q)
{
    kafka_pipe_t *p = &k->pipes[who];
    if (pipe2(p->fds, O_NONBLOCK | O_CLOEXEC) != 0)
        return -errno;
    rd_kafka_queue_io_event_enable(q, p->fds[1], "1", 1);
    return 0;
}

static void kafka_close_fds(kafka_t *k)
{
    for (int i = 0; i < 2; i++) {
        for (int j = 0; j < 2; j++) {
            if (k->pipes[i].fds[j] >= 0)
                close(k->pipes[i].fds[j]);
            k->pipes[i].fds[j] = -1;
        }
    }
}

/* Frees what kafka_start made before any uv handle existed. */
static void kafka_destroy_clients(kafka_t *k)
{
    if (k->cq) {
        rd_kafka_queue_io_event_enable(k->cq, -1, NULL, 0);
        rd_kafka_queue_destroy(k->cq);
    }
    if (k->pq) {
        rd_kafka_queue_io_event_enable(k->pq, -1, NULL, 0);
        rd_kafka_queue_destroy(k->pq);
    }
    if (k->cmd_topic)
        rd_kafka_topic_destroy(k->cmd_topic);
    /* A consumer whose close timed out is not closed again here: that would block. */
    if (k->consumer)
        rd_kafka_destroy_flags(k->consumer, RD_KAFKA_DESTROY_F_NO_CONSUMER_CLOSE);
    if (k->producer)
        rd_kafka_destroy(k->producer);
    kafka_close_fds(k);
}

static void kafka_on_failed_close(uv_handle_t *h)
{
    kafka_free(h->data);
}

static int kafka_watch(kafka_t *k)
{
    int rc = uv_poll_init(k->loop, &k->pipes[KAFKA_CONSUMER].poll, k->pipes[KAFKA_CONSUMER].fds[0]);
    if (rc)
        return rc;
    /* From here on every handle exists, so kafka_stop can always close them all. */
    rc = uv_poll_init(k->loop, &k->pipes[KAFKA_PRODUCER].poll, k->pipes[KAFKA_PRODUCER].fds[0]);
    if (rc) {
        /* k is freed once the loop has let go of the first handle. */
        k->pipes[KAFKA_CONSUMER].poll.data = k;
        uv_close((uv_handle_t *)&k->pipes[KAFKA_CONSUMER].poll, kafka_on_failed_close);
        return rc;
    }
    uv_idle_init(k->loop, &k->resume);
    uv_timer_init(k->loop, &k->tick);
    uv_timer_init(k->loop, &k->lag);
    uv_timer_init(k->loop, &k->deadline);
    k->pipes[KAFKA_CONSUMER].poll.data = k;
    k->pipes[KAFKA_PRODUCER].poll.data = k;
    k->resume.data = k;
    k->tick.data = k;
    k->lag.data = k;
    k->deadline.data = k;
    k->open_handles = 6;
    uv_poll_start(&k->pipes[KAFKA_CONSUMER].poll, UV_READABLE, kafka_on_pipe);
    uv_poll_start(&k->pipes[KAFKA_PRODUCER].poll, UV_READABLE, kafka_on_pipe);
    /* io events fire only on an empty -> non-empty transition: look once in case it was not
     * empty when they were enabled. */
    uv_idle_start(&k->resume, kafka_on_resume);
    return 0;
}

int kafka_start(uv_loop_t *loop, const rotor_config_t *cfg, const char *brokers,
                const kafka_callbacks_t *cbs, kafka_t **out, char *err, size_t errlen)
{
    kafka_t *k = util_calloc(1, sizeof *k);
    k->loop = loop;
    k->cfg = cfg;
    k->cbs = cbs;
    k->partition_cnt = -1;
    for (int i = 0; i < 2; i++)
        k->pipes[i].fds[0] = k->pipes[i].fds[1] = -1;

    int rc = kafka_make_consumer(k, brokers, err, errlen);
    if (!rc)
        rc = kafka_make_producer(k, brokers, err, errlen);
    if (!rc && (rc = kafka_pipe_open(k, KAFKA_CONSUMER, k->cq)) != 0)
        snprintf(err, errlen, "kafka: pipe: %s", strerror(-rc));
    if (!rc && (rc = kafka_pipe_open(k, KAFKA_PRODUCER, k->pq)) != 0)
        snprintf(err, errlen, "kafka: pipe: %s", strerror(-rc));
    if (!rc)
        rc = kafka_subscribe(k, err, errlen);
    if (rc) {
        kafka_free(k);
        return rc;
    }
    if ((rc = kafka_watch(k)) != 0) {
        snprintf(err, errlen, "kafka: uv_poll: %s", uv_strerror(rc));
        return rc; /* kafka_watch has arranged for k to be freed */
    }
    uv_timer_start(&k->tick, kafka_on_tick, 0, 0);
    uv_timer_start(&k->lag, kafka_on_lag, KAFKA_LAG_MS, 0);
    *out = k;
    return 0;
}

/* ---- messages ---- */

/* Stores the offset after p's done messages that no undone one precedes. The stored offset is
 * committed with the next batch; a store for a partition no longer assigned fails and is skipped:
 * its new owner's progress must not be overwritten with ours. */
static void kafka_store(kafka_t *k, kafka_part_t *p)
{
    int64_t next = -1;
    while (p->head && p->head->done) {
        kafka_held_t *h = p->head;
        p->head = h->pnext;
        if (!p->head)
            p->tail = NULL;
        p->held--;
        next = h->pub.offset + 1;
        kafka_held_free(k, h);
    }
    if (next < 0 || (k->state != KAFKA_RUNNING && k->state != KAFKA_STOPPING))
        return;
    rd_kafka_topic_partition_list_t *offs = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(offs, p->topic, p->partition)->offset = next;
    rd_kafka_resp_err_t e = rd_kafka_offsets_store(k->consumer, offs);
    if (!e)
        e = offs->elems[0].err;
    if (e) {
        char part[16];
        snprintf(part, sizeof part, "%d", (int)p->partition);
        /* While closing the assignment is already gone: expected, and the new owner redoes it. */
        log_write(k->state == KAFKA_RUNNING ? LOG_WARN : LOG_DEBUG, "kafka.store.skipped", "topic",
                  p->topic, "partition", part, "reason", rd_kafka_err2str(e), NULL);
    }
    rd_kafka_topic_partition_list_destroy(offs);
}

void kafka_msg_done(kafka_t *k, kafka_msg_t *msg)
{
    kafka_held_t *h = (kafka_held_t *)msg;
    kafka_lane_t *lane = h->lane;
    if (lane) {
        lane->busy = lane->qhead;
        if (lane->qhead) {
            lane->qhead = lane->qhead->qnext;
            if (!lane->qhead)
                lane->qtail = NULL;
            /* Handed over by the next serve, not from here: no recursion into the owner. */
            kafka_ready_push(k, lane->busy);
        } else {
            kafka_lane_free(k, lane);
        }
        h->lane = NULL;
    }
    h->done = true;
    kafka_lag_busy(k);
    kafka_held_release(h); /* only its offset is needed until it is popped */
    kafka_part_t *p = h->part;
    if (p)
        kafka_store(k, p);
    else
        kafka_held_free(k, h); /* revoked meanwhile: not stored */
    if (k->state == KAFKA_RUNNING && (k->ready || (p && p->paused) || k->over))
        kafka_uv_resume(k);
}

/* Every KAFKA_LAG_MS while input moves, else every idle_poll_ms. Consumer lag per partition
 * (high watermark minus the offset we would commit), from the watermarks librdkafka caches with
 * every fetch response: no request, no blocking. */
static void kafka_on_lag(uv_timer_t *t)
{
    kafka_t *k = t->data;
    uv_timer_start(t, kafka_on_lag, k->lag_busy ? KAFKA_LAG_MS : k->idle_poll_ms, 0);
    k->lag_quiet = k->lag_busy ? 0 : k->lag_quiet + 1;
    k->lag_busy = false;
    /* Input has been quiet for a whole idle period (after start-up, or after a burst): what the
     * burst allocated and freed is handed back to the kernel once, rather than kept resident
     * until the next one. Freed chunks inside the heap are not returned by free() alone. */
    if (k->lag_quiet == 2)
        util_release_free_memory();
    /* librdkafka counts max.poll.interval.ms from the last rd_kafka_consumer_poll(), and an idle
     * queue never writes the pipe: without this poll an idle consumer leaves its group after 5
     * minutes (MAX_POLL_EXCEEDED) and every partition is rebalanced. */
    kafka_consumer_drain(k);
    for (kafka_part_t *p = k->parts; p; p = p->next) {
        kafka_age_gauge(k, p);
        int64_t lo = -1, hi = -1;
        int64_t pos = p->head ? p->head->pub.offset : p->next_offset;
        if (pos < 0 ||
            rd_kafka_get_watermark_offsets(k->consumer, p->topic, p->partition, &lo, &hi) !=
                RD_KAFKA_RESP_ERR_NO_ERROR ||
            hi < 0)
            continue;
        kafka_lag_gauge(p, hi > pos ? hi - pos : 0);
    }
}

/* ---- shutdown ---- */

static void kafka_free_held(kafka_t *k)
{
    while (k->all)
        kafka_held_free(k, k->all);
    k->ready = k->ready_tail = NULL;
    for (int i = 0; i < KAFKA_LANE_BUCKETS; i++) {
        while (k->lanes[i]) {
            kafka_lane_t *l = k->lanes[i];
            k->lanes[i] = l->next;
            free(l);
        }
    }
    for (kafka_part_t *p = k->parts; p; p = p->next) {
        p->head = p->tail = NULL;
        p->held = 0;
    }
}

static void kafka_on_closed(uv_handle_t *h)
{
    kafka_t *k = h->data;
    if (--k->open_handles > 0)
        return;
    k->state = KAFKA_CLOSED;
    kafka_free_held(k); /* never done: not committed, the next owner gets them again */
    if (k->cbs->on_closed)
        k->cbs->on_closed(k, k->cbs->arg);
}

static void kafka_stop_check(kafka_t *k)
{
    if (k->state != KAFKA_STOPPING || k->meta_busy)
        return;
    bool consumer_done = k->close_failed || rd_kafka_consumer_closed(k->consumer);
    int outq = rd_kafka_outq_len(k->producer);
    if (!(consumer_done && outq == 0) && !k->deadline_passed)
        return;
    if (!consumer_done || outq) {
        char n[16];
        snprintf(n, sizeof n, "%d", outq);
        log_warn("kafka.stop.timeout", "consumer_closed", consumer_done ? "true" : "false",
                 "undelivered", n);
    }
    k->state = KAFKA_CLOSING;
    rd_kafka_queue_io_event_enable(k->cq, -1, NULL, 0);
    rd_kafka_queue_io_event_enable(k->pq, -1, NULL, 0);
    uv_close((uv_handle_t *)&k->pipes[KAFKA_CONSUMER].poll, kafka_on_closed);
    uv_close((uv_handle_t *)&k->pipes[KAFKA_PRODUCER].poll, kafka_on_closed);
    uv_close((uv_handle_t *)&k->resume, kafka_on_closed);
    uv_close((uv_handle_t *)&k->tick, kafka_on_closed);
    uv_close((uv_handle_t *)&k->lag, kafka_on_closed);
    uv_close((uv_handle_t *)&k->deadline, kafka_on_closed);
}

void kafka_stop(kafka_t *k, uint64_t timeout_ms)
{
    if (k->state != KAFKA_RUNNING)
        return;
    k->state = KAFKA_STOPPING;
    uv_idle_stop(&k->resume);
    uv_timer_stop(&k->lag);
    rd_kafka_error_t *e = rd_kafka_consumer_close_queue(k->consumer, k->cq);
    if (e) {
        log_warn("kafka.close.failed", "reason", rd_kafka_error_string(e));
        rd_kafka_error_destroy(e);
        k->close_failed = true;
    }
    uv_timer_start(&k->deadline, kafka_on_deadline, timeout_ms, 0);
    /* The close op's reply normally wakes the pipe; the tick only guards against a missed one. */
    uv_timer_start(&k->tick, kafka_on_tick, KAFKA_TICK_MS, KAFKA_TICK_MS);
}

void kafka_free(kafka_t *k)
{
    if (!k)
        return;
    kafka_free_held(k);
    while (k->parts) {
        kafka_part_t *p = k->parts;
        k->parts = p->next;
        free(p->topic);
        free(p);
    }
    /* rd_kafka_destroy may block briefly (thread joins); it runs after the loop work is over. */
    kafka_destroy_clients(k);
    free(k);
}
