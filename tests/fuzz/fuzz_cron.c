/* fuzz_cron.c: cron_parse on arbitrary text, then cron_next and the daily window, each result
 * checked against an independent calendar (gmtime_r) rather than against cron.c itself. */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cron.h"
#include "rotor.h"
#include "util.h"

#define MS_PER_MIN INT64_C(60000)
/* after_ms is kept within years 0001..9999, the range of RFC 3339 time stamps rotor reads. */
#define FUZZ_MIN_MS INT64_C(-62135596800000)
#define FUZZ_SPAN_MS INT64_C(315537897600000)
#define FUZZ_DEFAULT_MS INT64_C(1767225600000) /* 2026-01-01T00:00:00Z */

/* Vixie cron's rule, restated from cron.h: both day fields must match when either is "*",
 * otherwise either may. */
static bool cron_matches(const cron_t *c, int64_t ms)
{
    time_t secs = (time_t)(ms / 1000);
    struct tm tm;
    if (!gmtime_r(&secs, &tm))
        abort();
    if (!(c->minute & (UINT64_C(1) << tm.tm_min)) || !(c->hour & (UINT32_C(1) << tm.tm_hour)) ||
        !(c->month & (1u << (tm.tm_mon + 1))))
        return false;
    bool dom = c->mday & (UINT32_C(1) << tm.tm_mday);
    bool dow = c->wday & (1u << tm.tm_wday);
    return c->mday_star || c->wday_star ? dom && dow : dom || dow;
}

static void check_next(const cron_t *c, int64_t after)
{
    int64_t next = cron_next(c, after);
    if (next == -1)
        return;
    if (next <= after || next % MS_PER_MIN != 0 || !cron_matches(c, next))
        abort();
    /* Nothing was skipped: brute force when the gap is short enough to walk. */
    if (next - after <= 3 * 24 * 60 * MS_PER_MIN) {
        int64_t first = (after / MS_PER_MIN + 1) * MS_PER_MIN;
        if (after < 0 && after % MS_PER_MIN != 0)
            first -= MS_PER_MIN;
        for (int64_t t = first; t < next; t += MS_PER_MIN) {
            if (t > after && cron_matches(c, t))
                abort();
        }
    }
    /* Asking again from just before the answer gives the same answer. */
    if (cron_next(c, next - 1) != next)
        abort();
}

static void check_window(int64_t t, const uint8_t *b)
{
    int start = (int)((b[0] | b[1] << 8) % 1441) - 1; /* -1 means no window */
    int end = (int)((b[2] | b[3] << 8) % 1440);
    int64_t open = cron_window_next(t, start, end);
    if (open < t || !cron_in_window(open, start, end))
        abort();
}

/* Input: the expression, optionally followed by '\n' and 12 bytes: after_ms and a window. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *nl = memchr(data, '\n', size);
    size_t exprlen = nl ? (size_t)(nl - data) : size;
    char *expr = util_malloc(exprlen + 1);
    memcpy(expr, data, exprlen);
    expr[exprlen] = '\0';

    int64_t after = FUZZ_DEFAULT_MS;
    uint8_t win[4] = {0};
    if (nl && size - exprlen - 1 >= 12) {
        uint64_t raw;
        memcpy(&raw, nl + 1, sizeof raw);
        after = FUZZ_MIN_MS + (int64_t)(raw % (uint64_t)FUZZ_SPAN_MS);
        memcpy(win, nl + 9, sizeof win);
    }

    cron_t c;
    char reason[256] = "";
    int rc = cron_parse(expr, &c, reason, sizeof reason);
    if (rc == 0)
        check_next(&c, after);
    else if (rc != ROTOR_EINVALID || reason[0] == '\0')
        abort();
    check_window(after, win);
    free(expr);
    return 0;
}
