/* test_metrics.c: the Prometheus registry's exposition text: order, escaping, types and values,
 * and histograms (cumulative buckets, +Inf, _sum, _count). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "metrics.h"
#include "rotor.h"

static int teardown(void **state)
{
    (void)state;
    metrics_reset();
    return 0;
}

static void assert_rendered(const char *want)
{
    size_t len = 0;
    char *got = metrics_render(&len);
    assert_string_equal(got, want);
    assert_int_equal(len, strlen(want));
    free(got);
}

static void test_empty(void **state)
{
    (void)state;
    assert_rendered("");
}

static void test_order_and_headers_once(void **state)
{
    (void)state;
    /* Registered out of order on purpose: output must not depend on first use. */
    metrics_gauge("zeta", "Last family.", NULL, 3);
    metrics_count("alpha_total", "First family.", "stage=\"verify\"", 1);
    metrics_count("alpha_total", "First family.", "stage=\"deploy\"", 2);
    metrics_count("alpha_total", "First family.", NULL, 5);
    metrics_count("alpha_total", "First family.", "stage=\"deploy\"", 0.5);
    assert_rendered("# HELP alpha_total First family.\n"
                    "# TYPE alpha_total counter\n"
                    "alpha_total 5\n"
                    "alpha_total{stage=\"deploy\"} 2.5\n"
                    "alpha_total{stage=\"verify\"} 1\n"
                    "# HELP zeta Last family.\n"
                    "# TYPE zeta gauge\n"
                    "zeta 3\n");
}

static void test_gauge_overwrites_counter_adds(void **state)
{
    (void)state;
    metrics_gauge("g", "G.", NULL, 7);
    metrics_gauge("g", "G.", NULL, -2.25);
    metrics_count("c_total", "C.", NULL, 1);
    metrics_count("c_total", "C.", NULL, 1);
    metrics_count("c_total", "C.", NULL, -5); /* ignored: counters never go down */
    assert_rendered("# HELP c_total C.\n# TYPE c_total counter\nc_total 2\n"
                    "# HELP g G.\n# TYPE g gauge\ng -2.25\n");
}

static void test_label_values_escaped(void **state)
{
    (void)state;
    /* Raw value a"b\c<newline>d, formatted by a caller with snprintf("secret=\"%s\""). */
    metrics_count("esc_total", "Escapes.", "secret=\"a\"b\\c\nd\",stage=\"x\"", 1);
    assert_rendered("# HELP esc_total Escapes.\n# TYPE esc_total counter\n"
                    "esc_total{secret=\"a\\\"b\\\\c\\nd\",stage=\"x\"} 1\n");
}

static void test_help_escaped(void **state)
{
    (void)state;
    metrics_gauge("h", "back\\slash\nnew \"line\"", NULL, 1);
    assert_rendered("# HELP h back\\\\slash\\nnew \"line\"\n# TYPE h gauge\nh 1\n");
}

static void test_labels_canonical(void **state)
{
    (void)state;
    metrics_count("l_total", "L.", "b=\"2\",a=\"1\"", 1);
    metrics_count("l_total", "L.", "a=\"1\", b=\"2\"", 1);
    metrics_count("l_total", "L.", "a=\"0\",", 1);
    assert_rendered("# HELP l_total L.\n# TYPE l_total counter\n"
                    "l_total{a=\"0\"} 1\n"
                    "l_total{a=\"1\",b=\"2\"} 2\n");
}

static void test_invalid_dropped(void **state)
{
    (void)state;
    metrics_count("ok_total", "Ok.", NULL, 1);
    metrics_count("1bad", "Bad name.", NULL, 1);
    metrics_count("bad_labels_total", "Bad.", "stage=unquoted", 1);
    metrics_count("dup_total", "Dup.", "a=\"1\",a=\"2\"", 1);
    metrics_gauge("ok_total", "Clash.", NULL, 9); /* a counter cannot become a gauge */
    assert_rendered("# HELP ok_total Ok.\n# TYPE ok_total counter\nok_total 1\n");
}

static void test_value_formats(void **state)
{
    (void)state;
    metrics_gauge("v", "V.", "k=\"a\"", INFINITY);
    metrics_gauge("v", "V.", "k=\"b\"", -INFINITY);
    metrics_gauge("v", "V.", "k=\"c\"", NAN);
    metrics_gauge("v", "V.", "k=\"d\"", 0.1);
    metrics_gauge("v", "V.", "k=\"e\"", 1e21);
    metrics_gauge("v", "V.", "k=\"f\"", 1234567890123.0);
    assert_rendered("# HELP v V.\n# TYPE v gauge\n"
                    "v{k=\"a\"} +Inf\n"
                    "v{k=\"b\"} -Inf\n"
                    "v{k=\"c\"} NaN\n"
                    "v{k=\"d\"} 0.1\n"
                    "v{k=\"e\"} 1e+21\n"
                    "v{k=\"f\"} 1234567890123\n");
}

static void test_value_round_trips(void **state)
{
    (void)state;
    double v = 0.1 + 0.2; /* needs 17 digits to read back exactly */
    metrics_gauge("r", "R.", NULL, v);
    char *text = metrics_render(NULL);
    const char *line = strstr(text, "\nr ");
    assert_non_null(line);
    assert_true(strtod(line + 3, NULL) == v);
    free(text);
}

static void test_reset_forgets(void **state)
{
    (void)state;
    metrics_count("gone_total", "Gone.", "a=\"1\"", 4);
    metrics_reset();
    assert_rendered("");
    metrics_count("gone_total", "Gone.", "a=\"1\"", 1);
    assert_rendered("# HELP gone_total Gone.\n# TYPE gone_total counter\ngone_total{a=\"1\"} 1\n");
}

static void test_many_series_sorted(void **state)
{
    (void)state;
    /* Enough inserts to exercise growth and binary insertion in reverse order. */
    for (int i = 99; i >= 0; i--) {
        char labels[32];
        snprintf(labels, sizeof labels, "n=\"%03d\"", i);
        metrics_count("many_total", "Many.", labels, i);
    }
    char *text = metrics_render(NULL);
    const char *p = text;
    for (int i = 0; i < 100; i++) {
        char want[64];
        snprintf(want, sizeof want, "many_total{n=\"%03d\"} %d\n", i, i);
        const char *q = strstr(p, want);
        assert_non_null(q);
        p = q + strlen(want);
    }
    free(text);
}

static const double bounds[] = {0.1, 0.5, 1};

static void test_histogram_exposition(void **state)
{
    (void)state;
    /* 0.5 sits exactly on a bound: le means "less than or equal", so it counts in le="0.5".
     * Values are exact in binary so that _sum is exact. */
    metrics_observe("d_seconds", "D.", "stage=\"deploy\"", bounds, 3, 0.5);
    metrics_observe("d_seconds", "D.", "stage=\"deploy\"", bounds, 3, 0.0625);
    metrics_observe("d_seconds", "D.", "stage=\"deploy\"", bounds, 3, 7);
    metrics_observe("d_seconds", "D.", "stage=\"deploy\"", bounds, 3, 0.75);
    metrics_observe("d_seconds", "D.", NULL, bounds, 3, 0.25);
    assert_rendered("# HELP d_seconds D.\n"
                    "# TYPE d_seconds histogram\n"
                    "d_seconds_bucket{le=\"0.1\"} 0\n"
                    "d_seconds_bucket{le=\"0.5\"} 1\n"
                    "d_seconds_bucket{le=\"1\"} 1\n"
                    "d_seconds_bucket{le=\"+Inf\"} 1\n"
                    "d_seconds_sum 0.25\n"
                    "d_seconds_count 1\n"
                    "d_seconds_bucket{stage=\"deploy\",le=\"0.1\"} 1\n"
                    "d_seconds_bucket{stage=\"deploy\",le=\"0.5\"} 2\n"
                    "d_seconds_bucket{stage=\"deploy\",le=\"1\"} 3\n"
                    "d_seconds_bucket{stage=\"deploy\",le=\"+Inf\"} 4\n"
                    "d_seconds_sum{stage=\"deploy\"} 8.3125\n"
                    "d_seconds_count{stage=\"deploy\"} 4\n");
    double v = 0;
    assert_int_equal(metrics_value("d_seconds", "stage=\"deploy\"", &v), 0);
    assert_true(v == 4);
}

/* Whatever is observed, every bucket holds at least what the one below it holds, +Inf equals
 * _count, and _sum is the sum of the observations. */
static void test_histogram_cumulative(void **state)
{
    (void)state;
    static const double b[] = {0.001, 0.002, 0.005, 0.01};
    double sum = 0;
    for (int i = 0; i < 200; i++) {
        double v = (double)((i * 37) % 23) / 1000.0;
        sum += v;
        metrics_observe("lag_seconds", "Lag.", NULL, b, 4, v);
    }
    char *text = metrics_render(NULL);
    double prev = -1;
    const char *p = text;
    for (int k = 0; k < 5; k++) {
        p = strstr(p, "lag_seconds_bucket{le=\"");
        assert_non_null(p);
        const char *sp = strchr(p, ' ');
        double c = strtod(sp + 1, NULL);
        assert_true(c >= prev);
        prev = c;
        p = sp;
    }
    assert_non_null(strstr(text, "lag_seconds_bucket{le=\"+Inf\"} 200\n"));
    assert_non_null(strstr(text, "lag_seconds_count 200\n"));
    const char *s = strstr(text, "lag_seconds_sum ");
    assert_non_null(s);
    assert_true(fabs(strtod(s + strlen("lag_seconds_sum "), NULL) - sum) < 1e-9);
    free(text);
}

static void test_histogram_invalid_dropped(void **state)
{
    (void)state;
    static const double unsorted[] = {1, 0.5};
    static const double inf[] = {1, INFINITY};
    metrics_observe("h1_seconds", "H.", NULL, unsorted, 2, 1);
    metrics_observe("h2_seconds", "H.", NULL, inf, 2, 1);
    metrics_observe("h3_seconds", "H.", NULL, bounds, 0, 1);
    metrics_observe("h4_seconds", "H.", "le=\"1\"", bounds, 3, 1); /* le is the format's */
    metrics_observe("h5_seconds", "H.", NULL, bounds, 3, NAN);
    metrics_count("c_total", "C.", NULL, 1);
    metrics_observe("c_total", "C.", NULL, bounds, 3, 1); /* a counter stays a counter */
    assert_rendered("# HELP c_total C.\n# TYPE c_total counter\nc_total 1\n");
    double v;
    assert_int_equal(metrics_value("h1_seconds", NULL, &v), ROTOR_ENOTFOUND);
    assert_int_equal(metrics_value("c_total", "a=\"1\"", &v), ROTOR_ENOTFOUND);
    assert_int_equal(metrics_value("c_total", NULL, &v), 0);
    assert_true(v == 1);
}

int main(void)
{
    /* The dropped samples log a warning; keep the test output readable. */
    FILE *devnull = fopen("/dev/null", "w");
    log_init(LOG_ERROR, devnull);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_empty, teardown),
        cmocka_unit_test_teardown(test_order_and_headers_once, teardown),
        cmocka_unit_test_teardown(test_gauge_overwrites_counter_adds, teardown),
        cmocka_unit_test_teardown(test_label_values_escaped, teardown),
        cmocka_unit_test_teardown(test_help_escaped, teardown),
        cmocka_unit_test_teardown(test_labels_canonical, teardown),
        cmocka_unit_test_teardown(test_invalid_dropped, teardown),
        cmocka_unit_test_teardown(test_value_formats, teardown),
        cmocka_unit_test_teardown(test_value_round_trips, teardown),
        cmocka_unit_test_teardown(test_reset_forgets, teardown),
        cmocka_unit_test_teardown(test_many_series_sorted, teardown),
        cmocka_unit_test_teardown(test_histogram_exposition, teardown),
        cmocka_unit_test_teardown(test_histogram_cumulative, teardown),
        cmocka_unit_test_teardown(test_histogram_invalid_dropped, teardown),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    if (devnull)
        fclose(devnull);
    return rc;
}
