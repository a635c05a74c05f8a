/* daemon.h: `rotor run`, the daemon on one libuv loop. */
#ifndef ROTOR_DAEMON_H
#define ROTOR_DAEMON_H

#include "config.h"

/* Runs until SIGINT or SIGTERM; returns the process exit code (0 after a clean stop). cfg is
 * borrowed. The environment variable ROTOR_INSTANCE names this process (default: the host name):
 * outbox rows are relayed by the instance that wrote them. */
int daemon_run(const rotor_config_t *cfg);

#endif
