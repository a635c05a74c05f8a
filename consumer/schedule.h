/* schedule.h: each secret's own schedule (`every: 30d` or a cron expression, with an optional
 * daily window) turned into rotation.requested commands. A due slot is claimed in the journal
 * (rotor.schedule_claims) in the same statement that queues the command, so several replicas
 * never request the same scheduled rotation twice. */
#ifndef ROTOR_SCHEDULE_H
#define ROTOR_SCHEDULE_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "config.h"
#include "journal.h"
#include "rotation.h"

typedef struct schedule_s schedule_t;

/* All pointers are borrowed and must outlive the scheduler; source is copied. */
int schedule_start(uv_loop_t *loop, const rotor_config_t *cfg, journal_t *j, engine_t *e,
                   const char *source, bool (*owns)(void *arg, const char *secret), void *arg,
                   schedule_t **out);

/* The schedule slot of sec to request at now_ms (epoch ms), given when rotor first met the secret
 * and when it last completed a rotation (0 = never): the first slot after that, or, once several
 * slots have passed without a completed rotation (one that failed, rolled back or was aborted,
 * or rotor was down), the latest slot not after now, so each slot is claimed at most once and a
 * missed one is retried at the next. -1 when sec has no schedule. Pure. */
int64_t schedule_due(const cfg_secret_t *sec, int64_t first_seen_ms, int64_t last_rotated_ms,
                     int64_t now_ms);

void schedule_stop(schedule_t *s);

#endif
