/* test_metrics.c: the Prometheus registry's exposition text: order, escaping, types and values. */
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
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    if (devnull)
        fclose(devnull);
    return rc;
}
