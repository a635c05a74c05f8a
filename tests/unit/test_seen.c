/* test_seen.c: the bounded memo of applied request ids (seen.c): finds what was added, forgets
 * the oldest beyond its capacity, updates a known id, ignores ids the journal could not hold. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "seen.h"

static void test_add_find(void **state)
{
    (void)state;
    seen_t *s = seen_new(4);
    assert_null(seen_find(s, "a"));
    seen_add(s, "a", "rot-a");
    seen_add(s, "b", "rot-b");
    assert_string_equal(seen_find(s, "a"), "rot-a");
    assert_string_equal(seen_find(s, "b"), "rot-b");
    assert_null(seen_find(s, "c"));
    assert_null(seen_find(s, NULL));
    seen_add(s, "a", "rot-a2"); /* known: updated, not added twice */
    assert_string_equal(seen_find(s, "a"), "rot-a2");
    assert_int_equal(seen_count(s), 2);
    seen_free(s);
}

static void test_oldest_go_first(void **state)
{
    (void)state;
    seen_t *s = seen_new(100);
    char req[32], rot[32];
    for (int i = 0; i < 1000; i++) {
        snprintf(req, sizeof req, "req-%d", i);
        snprintf(rot, sizeof rot, "rot-%d", i);
        seen_add(s, req, rot);
        assert_true(seen_count(s) <= 100);
    }
    assert_int_equal(seen_count(s), 100);
    for (int i = 0; i < 1000; i++) {
        snprintf(req, sizeof req, "req-%d", i);
        snprintf(rot, sizeof rot, "rot-%d", i);
        if (i < 900)
            assert_null(seen_find(s, req));
        else
            assert_string_equal(seen_find(s, req), rot);
    }
    seen_free(s);
}

static void test_too_long_is_not_remembered(void **state)
{
    (void)state;
    seen_t *s = seen_new(8);
    char req[200];
    memset(req, 'x', sizeof req - 1);
    req[sizeof req - 1] = '\0';
    seen_add(s, req, "rot");
    assert_null(seen_find(s, req));
    seen_add(s, "r", "not-a-rotation-id-because-it-is-far-too-long-for-a-uuid");
    assert_null(seen_find(s, "r"));
    assert_int_equal(seen_count(s), 0);
    seen_free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_add_find),
        cmocka_unit_test(test_oldest_go_first),
        cmocka_unit_test(test_too_long_is_not_remembered),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
