/* test_schedule.c: which schedule slot is due (schedule_due), including slots missed because a
 * scheduled rotation did not complete. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "schedule.h"
#include "util.h"

#define DAY 86400000LL

static int64_t at(const char *text)
{
    int64_t ms = 0;
    assert_int_equal(util_parse_time(text, &ms), 0);
    return ms;
}

static cfg_secret_t every(uint64_t ms)
{
    cfg_secret_t s = {0};
    s.schedule.every_ms = ms;
    s.schedule.window_start = -1;
    return s;
}

static void test_every_counts_from_the_last_completed_rotation(void **state)
{
    (void)state;
    cfg_secret_t s = every(30 * DAY);
    int64_t first = at("2026-01-01T00:00:00Z"), last = at("2026-03-01T00:00:00Z");
    /* not yet due: the next slot is 30 days after the last rotation */
    assert_int_equal(schedule_due(&s, first, last, last + 10 * DAY), last + 30 * DAY);
    /* due */
    assert_int_equal(schedule_due(&s, first, last, last + 31 * DAY), last + 30 * DAY);
    /* never rotated: counted from when rotor first met the secret */
    assert_int_equal(schedule_due(&s, first, 0, first + DAY), first + 30 * DAY);
}

static void test_a_missed_slot_moves_on_to_the_latest(void **state)
{
    (void)state;
    cfg_secret_t s = every(30 * DAY);
    int64_t last = at("2026-03-01T00:00:00Z");
    /* the slot at +30d was claimed but its rotation rolled back: at +65d the slot is +60d, a new
     * claim, so the schedule does not stop for good */
    assert_int_equal(schedule_due(&s, 0, last, last + 65 * DAY), last + 60 * DAY);
    /* rotor down for a year: one request for the latest slot, not one per missed slot */
    assert_int_equal(schedule_due(&s, 0, last, last + 365 * DAY), last + 360 * DAY);
}

static void test_cron_and_window(void **state)
{
    (void)state;
    cfg_secret_t s = every(0);
    s.schedule.cron = "0 3 * * SUN";           /* Sundays 03:00 UTC */
    int64_t last = at("2026-11-01T03:00:00Z"); /* a Sunday */
    assert_int_equal(schedule_due(&s, 0, last, last + DAY), at("2026-11-08T03:00:00Z"));
    /* three Sundays missed: the latest one */
    assert_int_equal(schedule_due(&s, 0, last, at("2026-11-25T12:00:00Z")),
                     at("2026-11-22T03:00:00Z"));
    /* every 12h, but only inside 02:00-04:00 */
    cfg_secret_t w = every(12 * 3600000LL);
    w.schedule.window_start = 120;
    w.schedule.window_end = 240;
    int64_t base = at("2026-11-01T02:30:00Z");
    assert_int_equal(schedule_due(&w, 0, base, base + 3600000LL), at("2026-11-02T02:00:00Z"));
    /* no schedule at all */
    cfg_secret_t none = every(0);
    assert_int_equal(schedule_due(&none, 0, base, base), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_counts_from_the_last_completed_rotation),
        cmocka_unit_test(test_a_missed_slot_moves_on_to_the_latest),
        cmocka_unit_test(test_cron_and_window),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
