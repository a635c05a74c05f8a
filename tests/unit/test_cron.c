/* test_cron.c: cron parsing, next-run computation on known dates, and daily windows. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "cron.h"
#include "rotor.h"
#include "util.h"

static int64_t at(const char *rfc3339)
{
    int64_t ms;
    assert_int_equal(util_parse_time(rfc3339, &ms), 0);
    return ms;
}

static cron_t parse_ok(const char *expr)
{
    cron_t c;
    char reason[128] = "";
    int rc = cron_parse(expr, &c, reason, sizeof reason);
    if (rc != 0)
        fail_msg("cron_parse(\"%s\"): %s", expr, reason);
    return c;
}

/* Asserts the run after `from` is `want` (NULL: none within five years). */
static void expect_next(const char *expr, const char *from, const char *want)
{
    cron_t c = parse_ok(expr);
    int64_t got = cron_next(&c, at(from));
    if (!want) {
        assert_int_equal(got, -1);
        return;
    }
    char buf[32];
    util_format_time(got, buf, sizeof buf);
    if (got != at(want))
        fail_msg("%s after %s: got %s, want %s", expr, from, buf, want);
}

static void test_every_quarter_hour(void **state)
{
    (void)state;
    expect_next("*/15 * * * *", "2026-03-10T10:00:00Z", "2026-03-10T10:15:00.000Z");
    /* Strictly after: a time on a match moves to the next one; seconds are dropped. */
    expect_next("*/15 * * * *", "2026-03-10T10:14:59.999Z", "2026-03-10T10:15:00Z");
    expect_next("*/15 * * * *", "2026-03-10T23:50:00Z", "2026-03-11T00:00:00Z");
    expect_next("*/15 * * * *", "2026-12-31T23:45:00Z", "2027-01-01T00:00:00Z");
}

static void test_sunday_and_names(void **state)
{
    (void)state;
    /* 2026-03-10 is a Tuesday; the next Sunday is the 15th. */
    expect_next("0 3 * * SUN", "2026-03-10T12:00:00Z", "2026-03-15T03:00:00Z");
    expect_next("0 3 * * 0", "2026-03-15T03:00:00Z", "2026-03-22T03:00:00Z");
    expect_next("0 3 * * 7", "2026-03-15T02:59:00Z", "2026-03-15T03:00:00Z");
    expect_next("0 3 * * sun", "2026-03-10T12:00:00Z", "2026-03-15T03:00:00Z");
    expect_next("0 9 * * Mon-Fri", "2026-03-13T10:00:00Z", "2026-03-16T09:00:00Z");
    expect_next("0 0 1 jun,DEC *", "2026-03-10T00:00:00Z", "2026-06-01T00:00:00Z");
    expect_next("0 0 1 JUN,DEC *", "2026-06-01T00:00:00Z", "2026-12-01T00:00:00Z");
}

static void test_monthly_and_ranges(void **state)
{
    (void)state;
    expect_next("30 2 1 * *", "2026-01-31T12:00:00Z", "2026-02-01T02:30:00Z");
    expect_next("30 2 1 * *", "2026-02-01T02:30:00Z", "2026-03-01T02:30:00Z");
    expect_next("30 2 1 * *", "2026-02-01T02:29:00Z", "2026-02-01T02:30:00Z");
    /* 1-5/2 is 1, 3, 5. */
    expect_next("1-5/2 0 * * *", "2026-03-10T00:01:00Z", "2026-03-10T00:03:00Z");
    expect_next("1-5/2 0 * * *", "2026-03-10T00:05:00Z", "2026-03-11T00:01:00Z");
    /* "10/20" means 10, 30, 50 (Vixie). */
    expect_next("10/20 * * * *", "2026-03-10T00:31:00Z", "2026-03-10T00:50:00Z");
}

static void test_leap_day(void **state)
{
    (void)state;
    expect_next("0 0 29 2 *", "2025-03-01T00:00:00Z", "2028-02-29T00:00:00Z");
    expect_next("0 0 29 2 *", "2028-02-29T00:00:00Z", "2032-02-29T00:00:00Z");
    /* 2100 is not a leap year: from 2097 the next 29 February (2104) is past the horizon. */
    expect_next("0 0 29 2 *", "2097-03-01T00:00:00Z", NULL);
    expect_next("0 0 31 2 *", "2026-01-01T00:00:00Z", NULL);
    expect_next("0 0 31 4,6,9,11 *", "2026-01-01T00:00:00Z", NULL);
}

static void test_vixie_or_rule(void **state)
{
    (void)state;
    /* Both restricted: the 13th OR any Friday. 2026-03-10 is a Tuesday: Friday the 13th comes
     * first, then Friday the 20th; the 13th of April (a Monday) also runs. */
    expect_next("0 0 13 * FRI", "2026-03-10T00:00:00Z", "2026-03-13T00:00:00Z");
    expect_next("0 0 13 * FRI", "2026-03-13T00:00:00Z", "2026-03-20T00:00:00Z");
    expect_next("0 0 13 * FRI", "2026-04-10T00:00:00Z", "2026-04-13T00:00:00Z");
    expect_next("0 0 1 * MON", "2026-03-02T00:00:00Z", "2026-03-09T00:00:00Z");
    /* One side starred: AND, so only Fridays (the star side matches every day). */
    expect_next("0 0 * * FRI", "2026-03-13T00:00:00Z", "2026-03-20T00:00:00Z");
    /* "*\/2" starts with a star: AND with the weekday, as Vixie cron does. 2026-03-17 is a
     * Tuesday and an odd day; the next odd Tuesday is 31 March. */
    expect_next("0 0 */2 * TUE", "2026-03-17T00:00:00Z", "2026-03-31T00:00:00Z");
    cron_t c = parse_ok("0 0 13 * 5");
    assert_false(c.mday_star);
    assert_false(c.wday_star);
    c = parse_ok("0 0 * * *");
    assert_true(c.mday_star && c.wday_star);
}

static void test_parse_bits(void **state)
{
    (void)state;
    cron_t c = parse_ok("0,30 */6 1-3 */3 5-7");
    assert_true(c.minute == ((1ULL << 0) | (1ULL << 30)));
    assert_int_equal(c.hour, (1u << 0) | (1u << 6) | (1u << 12) | (1u << 18));
    assert_int_equal(c.mday, (1u << 1) | (1u << 2) | (1u << 3));
    assert_int_equal(c.month, (1u << 1) | (1u << 4) | (1u << 7) | (1u << 10));
    assert_int_equal(c.wday, (1u << 5) | (1u << 6) | (1u << 0));
    c = parse_ok("  * *\t* * *  ");
    assert_true(c.minute == (1ULL << 60) - 1);
    assert_int_equal(c.month, 0x1ffe);
}

static void expect_invalid(const char *expr, const char *field)
{
    cron_t c;
    char reason[128] = "";
    assert_int_equal(cron_parse(expr, &c, reason, sizeof reason), ROTOR_EINVALID);
    if (!strstr(reason, field))
        fail_msg("cron_parse(\"%s\"): reason \"%s\" does not name \"%s\"", expr, reason, field);
}

static void test_invalid(void **state)
{
    (void)state;
    expect_invalid("60 * * * *", "minute");
    expect_invalid("* 24 * * *", "hour");
    expect_invalid("* * 0 * *", "day-of-month");
    expect_invalid("* * 32 * *", "day-of-month");
    expect_invalid("* * * 13 *", "month");
    expect_invalid("* * * FOO *", "month");
    expect_invalid("* * * * 8", "day-of-week");
    expect_invalid("* * * * SUNDAY", "day-of-week");
    expect_invalid("5-1 * * * *", "minute");
    expect_invalid("0 22-2 * * *", "hour");
    expect_invalid("*/0 * * * *", "minute");
    expect_invalid("*/ * * * *", "minute");
    expect_invalid("1,,2 * * * *", "minute");
    expect_invalid("* * * *", "5 fields");
    expect_invalid("* * * * * *", "5 fields");
    expect_invalid("", "5 fields");
    expect_invalid("@daily", "5 fields");
}

static void test_windows(void **state)
{
    (void)state;
    /* 22:00-04:00 wraps midnight. */
    int s = 22 * 60, e = 4 * 60;
    assert_true(cron_in_window(at("2026-03-10T23:30:00Z"), s, e));
    assert_true(cron_in_window(at("2026-03-10T03:59:59Z"), s, e));
    assert_true(cron_in_window(at("2026-03-10T22:00:00Z"), s, e));
    assert_false(cron_in_window(at("2026-03-10T04:00:00Z"), s, e));
    assert_false(cron_in_window(at("2026-03-10T12:00:00Z"), s, e));
    assert_int_equal(cron_window_next(at("2026-03-10T12:00:00Z"), s, e),
                     at("2026-03-10T22:00:00Z"));
    assert_int_equal(cron_window_next(at("2026-03-10T01:00:00Z"), s, e),
                     at("2026-03-10T01:00:00Z"));
    /* 01:00-05:00, not wrapping: after the end the next opening is tomorrow. */
    s = 60, e = 300;
    assert_false(cron_in_window(at("2026-03-10T05:00:00Z"), s, e));
    assert_false(cron_in_window(at("2026-03-10T00:59:00Z"), s, e));
    assert_true(cron_in_window(at("2026-03-10T01:00:00Z"), s, e));
    assert_int_equal(cron_window_next(at("2026-03-10T06:00:00Z"), s, e),
                     at("2026-03-11T01:00:00Z"));
    assert_int_equal(cron_window_next(at("2026-03-10T00:10:00Z"), s, e),
                     at("2026-03-10T01:00:00Z"));
    assert_int_equal(cron_window_next(at("2026-12-31T23:00:00Z"), s, e),
                     at("2027-01-01T01:00:00Z"));
    /* No window. */
    assert_true(cron_in_window(at("2026-03-10T12:00:00Z"), -1, -1));
    assert_int_equal(cron_window_next(at("2026-03-10T12:00:00Z"), -1, -1),
                     at("2026-03-10T12:00:00Z"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_quarter_hour),
        cmocka_unit_test(test_sunday_and_names),
        cmocka_unit_test(test_monthly_and_ranges),
        cmocka_unit_test(test_leap_day),
        cmocka_unit_test(test_vixie_or_rule),
        cmocka_unit_test(test_parse_bits),
        cmocka_unit_test(test_invalid),
        cmocka_unit_test(test_windows),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
