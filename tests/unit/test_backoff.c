/* test_backoff.c: bounds of the jittered delays, the cap, Retry-After and huge attempt numbers. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "backoff.h"

static void test_bounds_per_attempt(void **state)
{
    (void)state;
    for (int attempt = 1; attempt <= 10; attempt++) {
        uint64_t hi = 100ULL << (attempt - 1), lo = hi / 2;
        uint64_t min = UINT64_MAX, max = 0;
        for (int i = 0; i < 2000; i++) {
            uint64_t d = backoff_delay(attempt, 100, 1000000, 0);
            assert_true(d >= lo && d <= hi);
            min = d < min ? d : min;
            max = d > max ? d : max;
        }
        /* Jitter really spreads: both ends of the range are approached. */
        assert_true(min < lo + (hi - lo) / 10);
        assert_true(max > hi - (hi - lo) / 10);
    }
}

static void test_cap(void **state)
{
    (void)state;
    for (int attempt = 5; attempt <= 30; attempt++) {
        for (int i = 0; i < 200; i++) {
            uint64_t d = backoff_delay(attempt, 1000, 10000, 0);
            assert_true(d >= 5000 && d <= 10000);
        }
    }
    /* An initial delay above the cap is capped too. */
    assert_true(backoff_delay(1, 50000, 10000, 0) <= 10000);
}

static void test_retry_after(void **state)
{
    (void)state;
    /* Larger than any jittered value: wins, even above the cap. */
    assert_int_equal(backoff_delay(1, 100, 1000, 30000), 30000);
    assert_int_equal(backoff_delay(3, 100, 1000, 5000), 5000);
    /* Smaller: the backoff wins. */
    for (int i = 0; i < 200; i++) {
        uint64_t d = backoff_delay(4, 1000, 60000, 10);
        assert_true(d >= 4000 && d <= 8000);
    }
}

static void test_no_overflow(void **state)
{
    (void)state;
    uint64_t max = 15ULL * 60 * 1000;
    for (int i = 0; i < 100; i++) {
        uint64_t d = backoff_delay(200, 250, max, 0);
        assert_true(d >= max / 2 && d <= max);
    }
    uint64_t d = backoff_delay(200, 1, UINT64_MAX, 0);
    assert_true(d >= UINT64_MAX / 4);
    assert_int_equal(backoff_delay(1, 0, 1000, 0), 0);
    assert_true(backoff_delay(0, 100, 1000, 0) <= 100);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bounds_per_attempt),
        cmocka_unit_test(test_cap),
        cmocka_unit_test(test_retry_after),
        cmocka_unit_test(test_no_overflow),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
