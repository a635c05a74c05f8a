/* cron.c: five-field cron expressions (Vixie semantics, UTC) and daily maintenance windows. */
#include "cron.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "rotor.h"

#define MS_PER_MIN INT64_C(60000)
#define MIN_PER_DAY 1440
/* Five years, counting the two leap days they may hold. */
#define HORIZON_DAYS (5 * 365 + 2)

static const char *const month_names[] = {"jan", "feb", "mar", "apr", "may", "jun",
                                          "jul", "aug", "sep", "oct", "nov", "dec"};
static const char *const wday_names[] = {"sun", "mon", "tue", "wed", "thu", "fri", "sat"};

typedef struct {
    const char *name;
    int min, max;
    const char *const *names; /* names[i] stands for value i + names_base */
    int nnames, names_base;
} cron_field_t;

static const cron_field_t cron_fields[5] = {
    {"minute", 0, 59, NULL, 0, 0},           {"hour", 0, 23, NULL, 0, 0},
    {"day-of-month", 1, 31, NULL, 0, 0},     {"month", 1, 12, month_names, 12, 1},
    {"day-of-week", 0, 7, wday_names, 7, 0},
};

/* Reads a number or a name at *p; advances *p. Returns 0 or -1 with reason set. */
static int parse_value(const cron_field_t *f, const char **p, int *out, char *reason,
                       size_t reasonlen)
{
    const char *s = *p;
    if (isdigit((unsigned char)*s)) {
        long v = 0;
        while (isdigit((unsigned char)*s) && v < 1000)
            v = v * 10 + (*s++ - '0');
        if (v < f->min || v > f->max) {
            snprintf(reason, reasonlen, "%s: value %ld out of range %d-%d", f->name, v, f->min,
                     f->max);
            return -1;
        }
        *out = (int)v;
        *p = s;
        return 0;
    }
    for (int i = 0; i < f->nnames; i++) {
        if (strncasecmp(s, f->names[i], 3) == 0 && !isalpha((unsigned char)s[3])) {
            *out = i + f->names_base;
            *p = s + 3;
            return 0;
        }
    }
    int n = 0;
    while (s[n] && s[n] != ',' && s[n] != '-' && s[n] != '/' && n < 16)
        n++;
    snprintf(reason, reasonlen, "%s: unexpected \"%.*s\"", f->name, n ? n : 1, s);
    return -1;
}

/* One list item: "*", "a", "a-b", each optionally followed by "/step". */
static int parse_item(const cron_field_t *f, const char **p, uint64_t *bits, char *reason,
                      size_t reasonlen)
{
    int lo = f->min, hi = f->max, step = 1;
    if (**p == '*') {
        (*p)++;
    } else {
        if (parse_value(f, p, &lo, reason, reasonlen) < 0)
            return -1;
        hi = lo;
        if (**p == '-') {
            (*p)++;
            if (parse_value(f, p, &hi, reason, reasonlen) < 0)
                return -1;
            if (hi < lo) {
                snprintf(reason, reasonlen, "%s: range %d-%d runs backwards", f->name, lo, hi);
                return -1;
            }
        } else if (**p == '/') {
            hi = f->max; /* Vixie: "a/n" means "a-max/n" */
        }
    }
    if (**p == '/') {
        (*p)++;
        if (!isdigit((unsigned char)**p)) {
            snprintf(reason, reasonlen, "%s: step must be a positive number", f->name);
            return -1;
        }
        char *end;
        long v = strtol(*p, &end, 10);
        if (v < 1 || v > f->max) {
            snprintf(reason, reasonlen, "%s: step %ld out of range 1-%d", f->name, v, f->max);
            return -1;
        }
        step = (int)v;
        *p = end;
    }
    for (int v = lo; v <= hi; v += step)
        *bits |= UINT64_C(1) << v;
    return 0;
}

static int parse_field(const cron_field_t *f, const char *text, uint64_t *bits, char *reason,
                       size_t reasonlen)
{
    const char *p = text;
    *bits = 0;
    for (;;) {
        if (parse_item(f, &p, bits, reason, reasonlen) < 0)
            return -1;
        if (*p == '\0')
            return 0;
        if (*p != ',') {
            snprintf(reason, reasonlen, "%s: unexpected \"%c\" in \"%s\"", f->name, *p, text);
            return -1;
        }
        p++;
    }
}

int cron_parse(const char *expr, cron_t *out, char *reason, size_t reasonlen)
{
    char buf[256], *fields[6], *save = NULL;
    if (!expr || strlen(expr) >= sizeof buf) {
        snprintf(reason, reasonlen, "cron expression missing or too long");
        return ROTOR_EINVALID;
    }
    strcpy(buf, expr);
    int n = 0;
    for (char *tok = strtok_r(buf, " \t", &save); tok; tok = strtok_r(NULL, " \t", &save)) {
        if (n == 6)
            break;
        fields[n++] = tok;
    }
    if (n != 5) {
        snprintf(reason, reasonlen,
                 "expected 5 fields (minute hour day-of-month month "
                 "day-of-week), got %s%d",
                 n == 6 ? "more than " : "", n == 6 ? 5 : n);
        return ROTOR_EINVALID;
    }
    uint64_t bits[5];
    for (int i = 0; i < 5; i++) {
        if (parse_field(&cron_fields[i], fields[i], &bits[i], reason, reasonlen) < 0)
            return ROTOR_EINVALID;
    }
    /* 7 is another name for Sunday. */
    if (bits[4] & (UINT64_C(1) << 7))
        bits[4] = (bits[4] & ~(UINT64_C(1) << 7)) | 1;
    *out = (cron_t){
        .minute = bits[0],
        .hour = (uint32_t)bits[1],
        .mday = (uint32_t)bits[2],
        .month = (uint16_t)bits[3],
        .wday = (uint8_t)bits[4],
        /* As in Vixie cron, a field that starts with '*' ("*" or "*\/2") counts as
         * unrestricted for the day-of-month OR day-of-week rule. */
        .mday_star = fields[2][0] == '*',
        .wday_star = fields[4][0] == '*',
    };
    return 0;
}

static int64_t floor_div(int64_t a, int64_t b)
{
    int64_t q = a / b;
    return (a % b != 0 && (a < 0) != (b < 0)) ? q - 1 : q;
}

/* Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil). */
static int64_t days_from_civil(int64_t y, int m, int d)
{
    y -= m <= 2;
    int64_t era = floor_div(y, 400);
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

static void civil_from_days(int64_t z, int64_t *y, int *m, int *d)
{
    z += 719468;
    int64_t era = floor_div(z, 146097);
    int64_t doe = z - era * 146097;
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    int64_t mp = (5 * doy + 2) / 153;
    *d = (int)(doy - (153 * mp + 2) / 5 + 1);
    *m = (int)(mp < 10 ? mp + 3 : mp - 9);
    *y = yoe + era * 400 + (*m <= 2);
}

/* First set bit at or after `from`, or -1. */
static int next_bit(uint64_t bits, int from, int max)
{
    for (int i = from; i <= max; i++) {
        if (bits & (UINT64_C(1) << i))
            return i;
    }
    return -1;
}

static bool day_matches(const cron_t *c, int64_t days, int mday)
{
    int wday = (int)(((days % 7) + 11) % 7); /* 1970-01-01 was a Thursday */
    bool dom = c->mday & (UINT32_C(1) << mday);
    bool dow = c->wday & (1u << wday);
    if (c->mday_star || c->wday_star)
        return dom && dow;
    return dom || dow;
}

/* Walks forward day by day, skipping whole months that cannot match, and scans only the hours
 * and minutes of a matching day: at most ~1830 day steps for an impossible expression. */
int64_t cron_next(const cron_t *c, int64_t after_ms)
{
    int64_t t = floor_div(after_ms, MS_PER_MIN) + 1;
    int64_t days = floor_div(t, MIN_PER_DAY);
    int64_t limit = days + HORIZON_DAYS;
    int minute_of_day = (int)(t - days * MIN_PER_DAY);
    int hour = minute_of_day / 60, minute = minute_of_day % 60;

    while (days <= limit) {
        int64_t y;
        int m, d;
        civil_from_days(days, &y, &m, &d);
        if (!(c->month & (1u << m))) {
            days = m == 12 ? days_from_civil(y + 1, 1, 1) : days_from_civil(y, m + 1, 1);
            hour = minute = 0;
            continue;
        }
        if (day_matches(c, days, d)) {
            for (int h = next_bit(c->hour, hour, 23); h >= 0; h = next_bit(c->hour, h + 1, 23)) {
                int mi = next_bit(c->minute, h == hour ? minute : 0, 59);
                if (mi >= 0)
                    return ((days * MIN_PER_DAY) + h * 60 + mi) * MS_PER_MIN;
            }
        }
        days++;
        hour = minute = 0;
    }
    return -1;
}

static int minute_of_day(int64_t epoch_ms)
{
    int64_t mins = floor_div(epoch_ms, MS_PER_MIN);
    return (int)(mins - floor_div(mins, MIN_PER_DAY) * MIN_PER_DAY);
}

/* start == end is read as a window of the whole day, the limit of "end <= start wraps". */
bool cron_in_window(int64_t epoch_ms, int start, int end)
{
    if (start < 0 || start == end)
        return true;
    int m = minute_of_day(epoch_ms);
    if (start < end)
        return m >= start && m < end;
    return m >= start || m < end;
}

int64_t cron_window_next(int64_t epoch_ms, int start, int end)
{
    if (cron_in_window(epoch_ms, start, end))
        return epoch_ms;
    /* Outside the window the next instant inside it is always the next opening. */
    int64_t day = floor_div(epoch_ms, MS_PER_MIN * MIN_PER_DAY) * MS_PER_MIN * MIN_PER_DAY;
    int64_t open = day + start * MS_PER_MIN;
    return open > epoch_ms ? open : open + MS_PER_MIN * MIN_PER_DAY;
}
