/* broker.h: the embedded Kafka broker for local runs and tests: librdkafka's mock cluster
 * (rdkafka_mock.h), which speaks the Kafka wire protocol, so kcat and any client can talk to it.
 * Not for production: it keeps everything in memory. */
#ifndef ROTOR_BROKER_H
#define ROTOR_BROKER_H

#include <stdbool.h>

#include "config.h"

typedef struct broker_s broker_t;

/* Starts a one-broker mock cluster, creates the configured topics with cfg->kafka.partitions
 * partitions, and writes the bootstrap address to cfg->kafka.bootstrap_file (if set).
 * Returns 0 and *out or a negative error with a message in err. The cluster runs on librdkafka's
 * own thread; nothing here touches the loop. */
int broker_start(const rotor_config_t *cfg, broker_t **out, char *err, size_t errlen);

/* "127.0.0.1:PORT" (borrowed, valid until broker_stop). */
const char *broker_bootstrap(const broker_t *b);

/* Takes the broker down (up = false: every connection closed, new ones refused at once) or brings
 * it back up, as a broker outage would, without losing a topic or a committed offset. For tests
 * (`rotor broker` on SIGUSR1 and SIGUSR2). Returns 0 or ROTOR_EKAFKA. */
int broker_set_up(broker_t *b, bool up);

/* Destroys the cluster and removes the bootstrap file. */
void broker_stop(broker_t *b);

#endif
