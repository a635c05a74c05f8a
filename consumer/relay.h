/* relay.h: the outbox relay: publishes journal outbox rows with the idempotent producer and
 * marks them sent on the delivery report. The journal's outbox alone feeds the producer. */
#ifndef ROTOR_RELAY_H
#define ROTOR_RELAY_H

#include <uv.h>

#include "journal.h"
#include "kafka.h"

typedef struct relay_s relay_t;

/* j and k are borrowed and must outlive the relay. Polls the outbox every second as well as on
 * relay_kick(), so rows left by a crash are published too. */
int relay_start(uv_loop_t *loop, journal_t *j, kafka_t *k, relay_t **out);

/* New outbox rows were committed. */
void relay_kick(void *relay);

/* The producer's delivery report for a row (opaque from kafka_produce). */
void relay_delivered(relay_t *r, void *opaque, int err, const char *reason);

/* Rows produced and not yet marked sent. */
int relay_backlog(relay_t *r);

/* Stops polling; memory freed in the close callback. */
void relay_stop(relay_t *r);

#endif
