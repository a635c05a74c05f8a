/* backoff.h: retry delays, exponential with full jitter, honouring a server's Retry-After. */
#ifndef ROTOR_BACKOFF_H
#define ROTOR_BACKOFF_H

#include <stdint.h>

/* Delay before attempt number `attempt` (1 = the first retry): a uniformly random value in
 * [initial * 2^(attempt-1) / 2, initial * 2^(attempt-1)], capped at max_ms ("equal jitter", so
 * the delay never collapses to zero). retry_after_ms > 0 (a server's hint) wins when larger. */
uint64_t backoff_delay(int attempt, uint64_t initial_ms, uint64_t max_ms, uint64_t retry_after_ms);

#endif
