/* backoff.c: retry delays with equal jitter, so a fleet of retries spreads out but never bunches at
 * 0. */
#include "backoff.h"

#include "password.h"

/* Uniform in [0, n], from 32-bit draws: the delays that matter are far below 2^32 ms (49 days),
 * and for larger spans a coarser grain of n / 2^32 ms is still an even spread. */
static uint64_t random_upto(uint64_t n)
{
    uint32_t r;
    if (n < UINT32_MAX) {
        if (password_random_below((uint32_t)n + 1, &r) < 0)
            return n;
        return r;
    }
    if (password_random_below(UINT32_MAX, &r) < 0)
        return n;
    /* r <= UINT32_MAX - 1, so the product scaled back never exceeds n. */
    return (uint64_t)(((unsigned __int128)n * r) / (UINT32_MAX - 1));
}

uint64_t backoff_delay(int attempt, uint64_t initial_ms, uint64_t max_ms, uint64_t retry_after_ms)
{
    if (attempt < 1)
        attempt = 1;
    /* Doubling saturates at max_ms rather than overflowing for large attempt numbers. */
    uint64_t ceiling = initial_ms < max_ms ? initial_ms : max_ms;
    for (int i = 1; i < attempt && ceiling < max_ms; i++)
        ceiling = ceiling > max_ms / 2 ? max_ms : ceiling * 2;
    uint64_t floor = ceiling / 2;
    uint64_t delay = floor + random_upto(ceiling - floor);
    return retry_after_ms > delay ? retry_after_ms : delay;
}
