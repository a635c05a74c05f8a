/* cron.h: schedules. Five-field cron expressions (minute hour day-of-month month day-of-week, UTC;
 * lists, ranges, steps, names such as MON and JAN, Vixie cron's day-of-month OR day-of-week rule),
 * "every" intervals and an optional daily window. Pure: no clock inside. */
#ifndef ROTOR_CRON_H
#define ROTOR_CRON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint64_t minute; /* bit i set: minute i allowed (0..59) */
    uint32_t hour;   /* 0..23 */
    uint32_t mday;   /* 1..31 */
    uint16_t month;  /* 1..12 */
    uint8_t wday;    /* 0..6, Sunday = 0 (7 is accepted as Sunday) */
    bool mday_star, wday_star;
} cron_t;

/* Parses expr. Returns 0 or ROTOR_EINVALID with a reason naming the field. */
int cron_parse(const char *expr, cron_t *out, char *reason, size_t reasonlen);

/* The first matching minute strictly after after_ms (epoch ms, UTC), or -1 if none within
 * five years. */
int64_t cron_next(const cron_t *c, int64_t after_ms);

/* True if epoch_ms falls in the daily window [start, end) given in minutes after midnight UTC;
 * end < start wraps midnight; start < 0 means no window (always true). */
bool cron_in_window(int64_t epoch_ms, int start, int end);

/* The first instant >= epoch_ms inside the window. */
int64_t cron_window_next(int64_t epoch_ms, int start, int end);

#endif
