/* test_schema.c: the embedded schemas and the validator's keyword semantics. */
#include <dirent.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "rotor.h"
#include "schema.h"

static const char *source_dir(void)
{
    const char *d = getenv("ROTOR_SOURCE_DIR");
    return d ? d : ".";
}

/* Loads events/<sub>/<name> (new reference) or fails the test. */
static json_t *load_doc(const char *sub, const char *name)
{
    char path[1024];
    json_error_t err;
    snprintf(path, sizeof path, "%s/events/%s/%s", source_dir(), sub, name);
    json_t *doc = json_load_file(path, JSON_DECODE_ANY, &err);
    if (!doc)
        fail_msg("%s: %s", path, err.text);
    return doc;
}

static json_t *load_example(const char *type)
{
    char name[256];
    snprintf(name, sizeof name, "%s.json", type);
    return load_doc("examples", name);
}

static int validate(const json_t *doc, char *reason, size_t len)
{
    return schema_validate(json_string_value(json_object_get(doc, "type")), doc, reason, len);
}

static void test_every_schema_has_a_valid_example(void **state)
{
    (void)state;
    size_t n = 0;
    for (const schema_source_t *s = schema_sources; s->type; s++, n++) {
        char reason[512];
        assert_true(schema_known(s->type));
        json_t *doc = load_example(s->type);
        assert_string_equal(json_string_value(json_object_get(doc, "type")), s->type);
        if (validate(doc, reason, sizeof reason) != 0)
            fail_msg("example %s: %s", s->type, reason);
        json_decref(doc);
    }
    assert_true(n >= 15);
}

static void test_every_example_file_has_a_schema(void **state)
{
    (void)state;
    char path[1024];
    snprintf(path, sizeof path, "%s/events/examples", source_dir());
    DIR *dir = opendir(path);
    assert_non_null(dir);
    size_t n = 0;
    for (struct dirent *d; (d = readdir(dir));) {
        size_t l = strlen(d->d_name);
        if (l < 6 || strcmp(d->d_name + l - 5, ".json") != 0)
            continue;
        json_t *doc = load_doc("examples", d->d_name);
        char reason[512];
        if (validate(doc, reason, sizeof reason) != 0)
            fail_msg("%s: %s", d->d_name, reason);
        json_decref(doc);
        n++;
    }
    closedir(dir);
    assert_true(n >= 15);
}

/* Each invalid file that reaches a schema (an object of a known type) must fail it, for the
 * reason its .reason file names. The others are the parser's business (test_event). */
static void test_invalid_objects_fail_their_schema(void **state)
{
    (void)state;
    char path[1024];
    snprintf(path, sizeof path, "%s/events/invalid", source_dir());
    DIR *dir = opendir(path);
    assert_non_null(dir);
    size_t checked = 0;
    for (struct dirent *d; (d = readdir(dir));) {
        size_t l = strlen(d->d_name);
        if (l < 6 || strcmp(d->d_name + l - 5, ".json") != 0)
            continue;
        char file[1400], expect[512] = "";
        snprintf(file, sizeof file, "%s/%.*s.reason", path, (int)(l - 5), d->d_name);
        FILE *f = fopen(file, "r");
        assert_non_null(f);
        assert_non_null(fgets(expect, sizeof expect, f));
        fclose(f);
        expect[strcspn(expect, "\n")] = '\0';
        snprintf(file, sizeof file, "%s/%s", path, d->d_name);
        json_t *doc = json_load_file(file, 0, NULL);
        const char *type = json_string_value(json_object_get(doc, "type"));
        if (doc && json_object_get(doc, "specversion") && schema_known(type)) {
            char reason[512];
            assert_int_equal(schema_validate(type, doc, reason, sizeof reason), ROTOR_EINVALID);
            if (!strstr(reason, expect))
                fail_msg("%s: reason \"%s\" lacks \"%s\"", d->d_name, reason, expect);
            checked++;
        }
        json_decref(doc);
    }
    closedir(dir);
    assert_true(checked >= 15);
}

static void test_unknown_type(void **state)
{
    (void)state;
    char reason[64];
    json_t *doc = json_object();
    assert_false(schema_known("rotation.exploded"));
    assert_false(schema_known(NULL));
    assert_int_equal(schema_validate("rotation.exploded", doc, reason, sizeof reason),
                     ROTOR_ENOTFOUND);
    json_decref(doc);
}

/* Runs one mutation of the stage.started example; returns the validator's verdict. */
static int check_attempt(json_t *attempt, char *reason, size_t len)
{
    json_t *doc = load_example("stage.started");
    json_object_set_new(json_object_get(doc, "data"), "attempt", attempt);
    int rc = validate(doc, reason, len);
    json_decref(doc);
    return rc;
}

static void test_integer_semantics(void **state)
{
    (void)state;
    char reason[256];
    /* JSON Schema counts 2.0 as an integer and true as no number at all. */
    assert_int_equal(check_attempt(json_real(2.0), reason, sizeof reason), 0);
    assert_int_equal(check_attempt(json_true(), reason, sizeof reason), ROTOR_EINVALID);
    assert_string_equal(reason, "/data/attempt: expected integer, got boolean");
    assert_int_equal(check_attempt(json_real(1e300), reason, sizeof reason), 0);
    assert_int_equal(check_attempt(json_real(0.0), reason, sizeof reason), ROTOR_EINVALID);
    assert_string_equal(reason, "/data/attempt: less than the minimum of 1");
    assert_int_equal(check_attempt(json_integer(1), reason, sizeof reason), 0);
}

static int check_reason_text(const char *text, size_t copies, char *reason, size_t len)
{
    size_t n = strlen(text);
    char *s = malloc(n * copies + 1);
    for (size_t i = 0; i < copies; i++)
        memcpy(s + i * n, text, n);
    s[n * copies] = '\0';
    json_t *doc = load_example("rotation.requested");
    json_object_set_new(json_object_get(doc, "data"), "reason", json_string(s));
    int rc = validate(doc, reason, len);
    json_decref(doc);
    free(s);
    return rc;
}

static void test_length_counts_characters(void **state)
{
    (void)state;
    char reason[256];
    /* 1024 two-byte characters are 2048 bytes but within maxLength 1024. */
    assert_int_equal(check_reason_text("\xc3\xa9", 1024, reason, sizeof reason), 0);
    assert_int_equal(check_reason_text("\xc3\xa9", 1025, reason, sizeof reason), ROTOR_EINVALID);
    assert_string_equal(reason, "/data/reason: longer than 1024 characters");
}

static int check_subject(const char *subject, char *reason, size_t len)
{
    json_t *doc = load_example("rotation.requested");
    json_object_set_new(doc, "subject", json_string(subject));
    int rc = validate(doc, reason, len);
    json_decref(doc);
    return rc;
}

static void test_pattern_is_anchored(void **state)
{
    (void)state;
    char reason[256], name[140];
    memset(name, 'a', sizeof name);
    name[127] = '\0'; /* the longest name allowed: 1 + 126 characters */
    assert_int_equal(check_subject("pg-orders.v2_x", reason, sizeof reason), 0);
    assert_int_equal(check_subject(name, reason, sizeof reason), 0);
    name[127] = 'a';
    name[128] = '\0';
    assert_int_equal(check_subject(name, reason, sizeof reason), ROTOR_EINVALID);
    /* Python's "$" also matches before a final newline; POSIX's does not, and a secret name
     * with a newline must never pass. */
    assert_int_equal(check_subject("pg-orders\n", reason, sizeof reason), ROTOR_EINVALID);
    assert_int_equal(check_subject("x pg-orders", reason, sizeof reason), ROTOR_EINVALID);
    assert_non_null(strstr(reason, "/subject: does not match pattern ^"));
}

static void test_extension_attributes(void **state)
{
    (void)state;
    char reason[256];
    json_t *doc = load_example("rotation.approved");
    json_object_set_new(doc, "tenant", json_string("contoso"));
    json_object_set_new(doc, "priority", json_integer(3));
    json_object_set_new(doc, "weight", json_real(0.5));
    json_object_set_new(doc, "sampled", json_true());
    assert_int_equal(validate(doc, reason, sizeof reason), 0);
    json_object_set_new(doc, "partitionkey", json_null());
    assert_int_equal(validate(doc, reason, sizeof reason), ROTOR_EINVALID);
    assert_string_equal(reason, "/partitionkey: expected string, number or boolean, got null");
    json_decref(doc);
}

static void test_pointer_escaping_and_bound(void **state)
{
    (void)state;
    char reason[1024], key[1001];
    json_t *doc = load_example("rotation.retry");
    json_t *data = json_object_get(doc, "data");
    json_object_set_new(data, "a/b~c", json_true());
    assert_int_equal(validate(doc, reason, sizeof reason), ROTOR_EINVALID);
    assert_string_equal(reason, "/data/a~1b~0c: additional property not allowed");
    json_object_del(data, "a/b~c");

    memset(key, 'k', 1000);
    key[1000] = '\0';
    json_object_set_new(data, key, json_true());
    assert_int_equal(validate(doc, reason, sizeof reason), ROTOR_EINVALID);
    /* Property names come from the input: at most 200 bytes of them reach a reason. */
    assert_non_null(strstr(reason, "...: additional property not allowed"));
    assert_true(strlen(reason) < 260);
    json_decref(doc);
}

static void test_reason_truncated_to_buffer(void **state)
{
    (void)state;
    char reason[8];
    json_t *doc = json_object();
    assert_int_equal(schema_validate("stage.started", doc, reason, sizeof reason), ROTOR_EINVALID);
    assert_int_equal(strlen(reason), sizeof reason - 1);
    assert_int_equal(schema_validate("stage.started", doc, NULL, 0), ROTOR_EINVALID);
    json_decref(doc);
}

static void test_number_bounds(void **state)
{
    (void)state;
    char reason[256];
    json_t *doc = load_example("stage.completed");
    json_t *data = json_object_get(doc, "data");
    json_object_set_new(data, "duration_ms", json_integer(-1));
    assert_int_equal(validate(doc, reason, sizeof reason), ROTOR_EINVALID);
    assert_string_equal(reason, "/data/duration_ms: less than the minimum of 0");
    json_object_set_new(data, "duration_ms", json_integer(INT64_MAX));
    assert_int_equal(validate(doc, reason, sizeof reason), 0);
    json_object_set_new(data, "sessions_ended", json_real(-0.5));
    assert_int_equal(validate(doc, reason, sizeof reason), ROTOR_EINVALID);
    json_decref(doc);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_schema_has_a_valid_example),
        cmocka_unit_test(test_every_example_file_has_a_schema),
        cmocka_unit_test(test_invalid_objects_fail_their_schema),
        cmocka_unit_test(test_unknown_type),
        cmocka_unit_test(test_integer_semantics),
        cmocka_unit_test(test_length_counts_characters),
        cmocka_unit_test(test_pattern_is_anchored),
        cmocka_unit_test(test_extension_attributes),
        cmocka_unit_test(test_pointer_escaping_and_bound),
        cmocka_unit_test(test_reason_truncated_to_buffer),
        cmocka_unit_test(test_number_bounds),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
