/* test_password.c: password policies, class coverage, exclusions and the uniformity of the draw. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>
#include <sys/random.h>

#include "config.h"
#include "password.h"
#include "rotor.h"

static const char *const upper = "ABCDEFGHIJKLMNOPQRSTUVWXYZ";
static const char *const lower = "abcdefghijklmnopqrstuvwxyz";
static const char *const digit = "0123456789";
static const char *const symbol = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";

static bool contains_any(const char *s, const char *set)
{
    return strpbrk(s, set) != NULL;
}

static void test_length_and_classes(void **state)
{
    (void)state;
    const unsigned sets[] = {PW_UPPER | PW_LOWER | PW_DIGIT | PW_SYMBOL, PW_LOWER | PW_DIGIT,
                             PW_DIGIT, PW_UPPER | PW_SYMBOL};
    for (size_t s = 0; s < sizeof sets / sizeof sets[0]; s++) {
        for (int len = 4; len <= 64; len += 12) {
            password_policy_t p = {.length = len, .classes = sets[s], .exclude = NULL};
            rotor_secret_t *pw = NULL;
            assert_int_equal(password_generate(&p, &pw), 0);
            assert_non_null(pw);
            assert_int_equal(pw->len, (size_t)len);
            assert_int_equal(strlen(pw->buf), (size_t)len);
            assert_true(contains_any(pw->buf, upper) == !!(sets[s] & PW_UPPER));
            assert_true(contains_any(pw->buf, lower) == !!(sets[s] & PW_LOWER));
            assert_true(contains_any(pw->buf, digit) == !!(sets[s] & PW_DIGIT));
            assert_true(contains_any(pw->buf, symbol) == !!(sets[s] & PW_SYMBOL));
            secret_free(pw);
        }
    }
}

static void test_every_class_present_short(void **state)
{
    (void)state;
    /* Length equal to the number of classes, with a single allowed digit: the hardest case. */
    password_policy_t p = {
        .length = 4, .classes = PW_UPPER | PW_LOWER | PW_DIGIT | PW_SYMBOL, .exclude = "012345678"};
    for (int i = 0; i < 200; i++) {
        rotor_secret_t *pw = NULL;
        assert_int_equal(password_generate(&p, &pw), 0);
        assert_true(contains_any(pw->buf, upper));
        assert_true(contains_any(pw->buf, lower));
        assert_non_null(strchr(pw->buf, '9'));
        assert_true(contains_any(pw->buf, symbol));
        secret_free(pw);
    }
}

static void test_exclude_never_appears(void **state)
{
    (void)state;
    const char *exclude = "O0Il1|'\"`\\";
    password_policy_t p = {
        .length = 32, .classes = PW_UPPER | PW_LOWER | PW_DIGIT | PW_SYMBOL, .exclude = exclude};
    int seen[256] = {0};
    for (int i = 0; i < 2000; i++) {
        rotor_secret_t *pw = NULL;
        assert_int_equal(password_generate(&p, &pw), 0);
        assert_null(strpbrk(pw->buf, exclude));
        for (size_t k = 0; k < pw->len; k++)
            seen[(unsigned char)pw->buf[k]]++;
        secret_free(pw);
    }
    /* 64000 characters over 84 symbols: every allowed character shows up. */
    const char *all[] = {upper, lower, digit, symbol};
    for (size_t c = 0; c < 4; c++) {
        for (const char *ch = all[c]; *ch; ch++) {
            if (!strchr(exclude, *ch))
                assert_true(seen[(unsigned char)*ch] > 0);
        }
    }
}

/* Pearson's statistic of counts against the uniform distribution. */
static double chi_square(const unsigned *counts, unsigned bins, unsigned draws)
{
    double expected = (double)draws / bins, stat = 0;
    for (unsigned i = 0; i < bins; i++) {
        double d = counts[i] - expected;
        stat += d * d / expected;
    }
    return stat;
}

/* 61 degrees of freedom: mean 61, standard deviation 11. 150 is 8 deviations out, so a fair
 * generator essentially never trips it, while byte % 62 scores above 1000 at 200k draws. */
#define CHI_THRESHOLD 150.0
#define DRAWS 200000u

static void test_random_below_uniform(void **state)
{
    (void)state;
    unsigned counts[62] = {0};
    for (unsigned i = 0; i < DRAWS; i++) {
        uint32_t v;
        assert_int_equal(password_random_below(62, &v), 0);
        assert_true(v < 62);
        counts[v]++;
    }
    assert_true(chi_square(counts, 62, DRAWS) < CHI_THRESHOLD);

    /* The same check must flag the classic mistake, or it proves nothing. */
    unsigned biased[62] = {0};
    unsigned char bytes[4096];
    for (unsigned i = 0; i < DRAWS; i++) {
        if (i % sizeof bytes == 0)
            assert_int_equal(getrandom(bytes, sizeof bytes, 0), (ssize_t)sizeof bytes);
        biased[bytes[i % sizeof bytes] % 62]++;
    }
    assert_true(chi_square(biased, 62, DRAWS) > CHI_THRESHOLD);
}

static void test_random_below_edges(void **state)
{
    (void)state;
    uint32_t v = 7;
    assert_int_equal(password_random_below(1, &v), 0);
    assert_int_equal(v, 0);
    assert_true(password_random_below(0, &v) < 0);
    /* A bound just over 2^31 rejects almost half the values: still terminates and stays below. */
    for (int i = 0; i < 1000; i++) {
        assert_int_equal(password_random_below(0x80000001u, &v), 0);
        assert_true(v < 0x80000001u);
    }
}

static void expect_invalid(int length, unsigned classes, const char *exclude, const char *why)
{
    password_policy_t p = {.length = length, .classes = classes, .exclude = exclude};
    char reason[128] = "";
    assert_int_equal(password_policy_check(&p, reason, sizeof reason), ROTOR_EINVALID);
    assert_string_equal(reason, why);
    rotor_secret_t *pw = NULL;
    assert_int_equal(password_generate(&p, &pw), ROTOR_EINVALID);
    assert_null(pw);
}

static void test_invalid_policies(void **state)
{
    (void)state;
    expect_invalid(16, PW_UPPER | PW_DIGIT, "0123456789", "class digit is empty after exclude");
    expect_invalid(2, PW_UPPER | PW_LOWER | PW_DIGIT, NULL,
                   "length 2 is shorter than the 3 required classes");
    expect_invalid(0, PW_LOWER, "", "length 0 is shorter than the 1 required classes");
    char reason[128];
    password_policy_t none = {.length = 16, .classes = 0};
    assert_int_equal(password_policy_check(&none, reason, sizeof reason), ROTOR_EINVALID);
    password_policy_t unknown = {.length = 16, .classes = PW_LOWER | 0x40};
    assert_int_equal(password_policy_check(&unknown, reason, sizeof reason), ROTOR_EINVALID);
    password_policy_t ok = {.length = 3, .classes = PW_UPPER | PW_LOWER | PW_DIGIT, .exclude = "x"};
    assert_int_equal(password_policy_check(&ok, reason, sizeof reason), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_length_and_classes),
        cmocka_unit_test(test_every_class_present_short),
        cmocka_unit_test(test_exclude_never_appears),
        cmocka_unit_test(test_random_below_uniform),
        cmocka_unit_test(test_random_below_edges),
        cmocka_unit_test(test_invalid_policies),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
