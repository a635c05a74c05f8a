/* kafka.h: librdkafka consumer and idempotent producer on the libuv loop (prefix kafka_).
 *
 * Both clients route their events to queues with io events enabled
 * (rd_kafka_queue_io_event_enable) that write to non-blocking pipes watched by uv_poll; the loop
 * drains the queues with zero timeouts.
 *
 * Input is handed to the owner in lanes: at most one message of a (topic, partition, key) is
 * with the owner at a time, in offset order, while messages of other keys and other partitions
 * are handed over at the same time. Messages without a key share one lane per (topic,
 * partition): Kafka promises no order between them, but one at a time keeps a message redelivered
 * after a rebalance from running beside its first copy and bounds what a keyless backlog (Key
 * Vault's events) asks of a vault at once. The
 * owner calls kafka_msg_done() once the message's effect is in the journal. A partition's offset
 * is stored only up to its lowest message not yet done, and the stored offsets are committed in
 * batches (every kafka.c KAFKA_COMMIT_INTERVAL_MS unless the operator's auto.commit.interval.ms
 * says otherwise), and for a partition that is revoked or at close, before it goes.
 *
 * Memory is bounded: a partition holding KAFKA_PART_MAX messages (handed over or waiting in a
 * lane) is paused until it has drained to half of that; past KAFKA_HELD_MAX messages or
 * KAFKA_HELD_BYTES overall, every partition holding more than a few is paused as well. */
#ifndef ROTOR_KAFKA_H
#define ROTOR_KAFKA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "config.h"
#include "event.h"

typedef struct kafka_s kafka_t;

/* One input message: views into the consumed message, borrowed until kafka_msg_done(). */
typedef struct {
    const char *topic;
    int32_t partition;
    int64_t offset;
    const void *key;
    size_t key_len;
    const void *value;
    size_t len;
    event_header_t *headers; /* owned by the message */
    size_t nheaders;
} kafka_msg_t;

typedef struct {
    /* A consumed message; ownership passes to the callee until kafka_msg_done(). Several may be
     * with the owner at once (never two of one lane). Messages still with the owner when
     * on_closed runs are freed by kafka: the owner must not use them after on_closed. */
    void (*on_message)(kafka_t *k, kafka_msg_t *msg, void *arg);
    /* Delivery report for kafka_produce(opaque): err 0 or a negative error, permanent when
     * kafka_err_permanent(err). */
    void (*on_delivery)(kafka_t *k, void *opaque, int err, const char *reason, void *arg);
    /* Partitions of the commands topic assigned (assigned = 1) or revoked (0). */
    void (*on_rebalance)(kafka_t *k, const int32_t *partitions, int n, int assigned, void *arg);
    /* The consumer and producer are closed after kafka_stop(). */
    void (*on_closed)(kafka_t *k, void *arg);
    void *arg;
} kafka_callbacks_t;

/* Creates consumer and producer for cfg->kafka with bootstrap servers `brokers` (borrowed),
 * subscribes to the commands topic (and any extra input topics later), and starts watching.
 * cfg and cbs are borrowed and must outlive the handle. */
int kafka_start(uv_loop_t *loop, const rotor_config_t *cfg, const char *brokers,
                const kafka_callbacks_t *cbs, kafka_t **out, char *err, size_t errlen);

/* Produces one message (key, value and headers are copied). headers: name/value pairs, may be
 * NULL. opaque is handed back in on_delivery. Returns 0 or a negative error (no report then):
 * -ENOBUFS when the queue is full, an error for which kafka_err_permanent() holds when this
 * message can never be produced as it is. */
int kafka_produce(kafka_t *k, const char *topic, const void *key, size_t key_len, const void *value,
                  size_t len, const event_header_t *headers, size_t nheaders, void *opaque);

/* Whether an error of kafka_produce() or of a delivery report is the message's own fault and
 * would come back on every attempt (too large, malformed, unknown topic or partition), as
 * opposed to one that passes (queue full, broker away, timed out). */
bool kafka_err_permanent(int err);

/* The producer's message.max.bytes (kafka.max_message_bytes unless the operator's properties
 * set it): value, key and headers of one produced message must fit in it. */
size_t kafka_max_message_bytes(kafka_t *k);

/* The owner is done with msg (its effect is in the journal): frees msg, stores the partition's
 * offset if msg was its lowest message not yet done (committed with the next batch), and hands
 * the next message of msg's lane over on a later loop iteration. A message whose partition was
 * revoked meanwhile is only freed: the new owner handles it again. */
void kafka_msg_done(kafka_t *k, kafka_msg_t *msg);

/* Partition of the commands topic that key maps to (murmur2, as the producer partitions), or -1
 * when the partition count is not known yet. */
int32_t kafka_partition_of(kafka_t *k, const char *key);

/* The commands topic's partition count as last fetched (-1 = not yet known). It is fetched
 * again periodically and on kafka_meta_refresh(); fn runs on the loop whenever it changes (the
 * first time too). */
int32_t kafka_partition_count(kafka_t *k);
void kafka_meta_refresh(kafka_t *k);
void kafka_meta_on_count(kafka_t *k, void (*fn)(kafka_t *k, int32_t count, void *arg), void *arg);

/* Stops consuming (rd_kafka_consumer_close_queue), keeps serving until the consumer is closed,
 * flushes the producer without blocking the loop (bounded by timeout_ms), then calls on_closed.
 * Memory is freed by kafka_free() after on_closed. */
void kafka_stop(kafka_t *k, uint64_t timeout_ms);
void kafka_free(kafka_t *k);

/* Number of produced messages not yet delivered. */
int kafka_outq_len(kafka_t *k);

#endif
