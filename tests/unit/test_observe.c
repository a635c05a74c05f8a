/* test_observe.c: the engine's metrics: which rotation ends move the per-secret expiry gauges,
 * and that a late start-up read of the journal never puts older figures over newer ones. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "journal.h"
#include "log.h"
#include "metrics.h"
#include "observe.h"
#include "util.h"

#define LAST "rotor_secret_last_rotation_timestamp_seconds"
#define VALID "rotor_secret_valid_until_timestamp_seconds"

static int teardown(void **state)
{
    (void)state;
    metrics_reset();
    return 0;
}

static double value(const char *name, const char *labels)
{
    double v = -1;
    return metrics_value(name, labels, &v) == 0 ? v : -1;
}

static journal_rot_t ended(const char *secret, journal_status_t status, bool swapped,
                           int64_t expires_at_ms)
{
    journal_rot_t r;
    memset(&r, 0, sizeof r);
    util_strlcpy(r.secret, secret, sizeof r.secret);
    r.status = status;
    r.swapped = swapped;
    r.expires_at_ms = expires_at_ms;
    r.created_at_ms = util_now_ms() - 1500;
    return r;
}

/* Only an end that leaves production on the new password moves the gauges. */
static void test_which_ends_move_the_gauges(void **state)
{
    (void)state;
    int64_t before = util_now_ms();
    journal_rot_t r = ended("a", RS_COMPLETED, true, 4000000000000);
    observe_rotation_ended(&r);
    assert_true(value(VALID, "secret=\"a\"") == 4000000000.0);
    assert_true(value(LAST, "secret=\"a\"") >= (double)before / 1000.0);

    r = ended("b", RS_ROLLED_BACK, false, 4000000000000);
    observe_rotation_ended(&r);
    r = ended("b", RS_ABORTED, false, 4000000000000);
    observe_rotation_ended(&r);
    assert_true(value(VALID, "secret=\"b\"") == -1);

    r = ended("c", RS_ABORTED, true, 4100000000000);
    observe_rotation_ended(&r);
    assert_true(value(VALID, "secret=\"c\"") == 4100000000.0);

    assert_true(value("rotor_rotations_total", "status=\"completed\"") == 1);
    assert_true(value("rotor_rotations_total", "status=\"rolled-back\"") == 1);
    assert_true(value("rotor_rotations_total", "status=\"aborted\"") == 2);
    /* a histogram's value is its count */
    assert_true(value("rotor_rotation_duration_seconds", "status=\"aborted\"") == 2);
}

/* The start-up read may answer after this process completed a rotation of the same secret: the
 * journal's older row must not overwrite it. A newer one does. */
static void test_older_figures_ignored(void **state)
{
    (void)state;
    observe_secret("s", 2000000000000, 2007776000000);
    observe_secret("s", 1990000000000, 1997776000000);
    assert_true(value(LAST, "secret=\"s\"") == 2000000000.0);
    assert_true(value(VALID, "secret=\"s\"") == 2007776000.0);
    observe_secret("s", 2001000000000, 2008776000000);
    assert_true(value(LAST, "secret=\"s\"") == 2001000000.0);
    assert_true(value(VALID, "secret=\"s\"") == 2008776000.0);
}

/* An attempt whose start this process did not see has no duration to report. */
static void test_unseen_start_not_observed(void **state)
{
    (void)state;
    observe_attempt(STAGE_APPROVE, "ok", -1);
    assert_true(value("rotor_stage_duration_seconds", "stage=\"approve\",outcome=\"ok\"") == -1);
    observe_attempt(STAGE_DEPLOY, "retry", 2500);
    assert_true(value("rotor_stage_duration_seconds", "stage=\"deploy\",outcome=\"retry\"") == 1);
    char *text = metrics_render(NULL);
    assert_non_null(strstr(text, "rotor_stage_duration_seconds_bucket{outcome=\"retry\","
                                 "stage=\"deploy\",le=\"2.5\"} 1\n"));
    assert_non_null(strstr(text, "rotor_stage_duration_seconds_bucket{outcome=\"retry\","
                                 "stage=\"deploy\",le=\"1\"} 0\n"));
    assert_non_null(
        strstr(text, "rotor_stage_duration_seconds_sum{outcome=\"retry\",stage=\"deploy\"} 2.5\n"));
    free(text);
}

int main(void)
{
    FILE *devnull = fopen("/dev/null", "w");
    log_init(LOG_ERROR, devnull);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_which_ends_move_the_gauges, teardown),
        cmocka_unit_test_teardown(test_older_figures_ignored, teardown),
        cmocka_unit_test_teardown(test_unseen_start_not_observed, teardown),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    if (devnull)
        fclose(devnull);
    return rc;
}
