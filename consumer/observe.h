/* observe.h: what the engine reports to Prometheus beyond plain counters: how long stages and
 * rotations took (histograms), per secret when its password was last rotated and until when the
 * database accepts it (so an alert can fire before it expires), and rotor_build_info. The
 * families' names, help texts and buckets are defined once, in observe.c. Loop-thread only. */
#ifndef ROTOR_OBSERVE_H
#define ROTOR_OBSERVE_H

#include <stdint.h>

#include "config.h"
#include "journal.h"
#include "rotor.h"

/* An attempt of `stage` ended with outcome "ok", "retry" or "failed", now journaled. took_ms < 0
 * means this process did not see the attempt begin (an approval that was already waiting when
 * it started): no duration is observed then. */
void observe_attempt(rotor_stage_t stage, const char *outcome, int64_t took_ms);

/* The journal now holds row (borrowed), which ended its rotation (completed, rolled back,
 * aborted): counted and its duration observed by final status; one that changed the password
 * production uses (completed, or aborted after the swap) sets its secret's gauges
 * (observe_secret). Called once per rotation, by the process that ended it. */
void observe_rotation_ended(const journal_rot_t *row);

/* Sets secret's rotor_secret_last_rotation_timestamp_seconds (rotated_ms) and
 * rotor_secret_valid_until_timestamp_seconds (valid_until_ms; not set when 0). Figures older
 * than those already reported are ignored: the start-up read of the journal may answer after a
 * rotation of this process completed. */
void observe_secret(const char *secret, int64_t rotated_ms, int64_t valid_until_ms);

/* Reads the per-secret figures of cfg's secrets from the journal, so the gauges are right from
 * the start, not only after this process's first rotation. cfg is borrowed until the answer (the
 * daemon's lifetime). A failure is logged here and leaves the gauges to the next completion. */
void observe_load_secrets(journal_t *j, const rotor_config_t *cfg);

/* Sets rotor_build_info{version, and the versions of the libraries rotor runs on} to 1. */
void observe_build_info(void);

#endif
