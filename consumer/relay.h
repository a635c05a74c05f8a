/* relay.h: the outbox relay: publishes journal outbox rows with the idempotent producer and
 * marks them sent on the delivery reports, in batches (one statement per burst of reports). A row
 * Kafka refuses for good is parked in the outbox (journal_outbox_park) and the relay goes on; a
 * dead letter is cut to the producer's message.max.bytes. The journal's outbox alone feeds the
 * producer. Loop thread only. */
#ifndef ROTOR_RELAY_H
#define ROTOR_RELAY_H

#include <uv.h>

#include "journal.h"
#include "kafka.h"

typedef struct relay_s relay_t;

/* j and k are borrowed and must outlive the relay. Reads the outbox at once, on every
 * relay_kick(), and from its start every 10 s (every second after a failure), so rows left by a
 * crash, by another instance (adopted after a minute) or unparked by hand are published too. */
int relay_start(uv_loop_t *loop, journal_t *j, kafka_t *k, relay_t **out);

/* New outbox rows were committed. */
void relay_kick(void *relay);

/* The producer's delivery report for a row (opaque from kafka_produce; reason borrowed for the
 * call, may be NULL). err 0: marked sent with the next batch, unless an earlier row of its key
 * failed and was not delivered since (then it is sent again after that row); a permanent error
 * (kafka_err_permanent): parked; any other: sent again, with the later rows of its key. */
void relay_delivered(relay_t *r, void *opaque, int err, const char *reason);

/* Rows produced and not yet marked sent by this process. */
int relay_backlog(relay_t *r);

/* Sends the last batch of marks, stops polling; memory freed once the timers' close callbacks
 * ran and no journal request of the relay is pending (each calls back with ROTOR_ECANCELED when
 * the journal closes). */
void relay_stop(relay_t *r);

#endif
