/* test_event.c: CloudEvents parsing (structured and binary mode) and building, driven by events/.
 */
#include <dirent.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "event.h"
#include "rotor.h"
#include "schema.h"
#include "util.h"

#define MAX_BYTES (1024 * 1024)

static const char *source_dir(void)
{
    const char *d = getenv("ROTOR_SOURCE_DIR");
    return d ? d : ".";
}

/* Reads a whole file into a malloc'ed, NUL-terminated buffer the caller frees. */
static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        fail_msg("cannot open %s", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
    buf[n] = '\0';
    fclose(f);
    *len = (size_t)n;
    return buf;
}

static char *read_event_file(const char *sub, const char *name, size_t *len)
{
    char path[1400];
    snprintf(path, sizeof path, "%s/events/%s/%s", source_dir(), sub, name);
    return read_file(path, len);
}

static json_t *load_example(const char *type)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/events/examples/%s.json", source_dir(), type);
    json_t *doc = json_load_file(path, 0, NULL);
    assert_non_null(doc);
    return doc;
}

static int parse_json(const json_t *doc, const event_header_t *h, size_t nh, event_t *ev,
                      char *reason, size_t len)
{
    char *text = json_dumps(doc, JSON_COMPACT);
    int rc = event_parse(text, strlen(text), h, nh, MAX_BYTES, ev, reason, len);
    free(text);
    return rc;
}

static bool is_json_file(const char *name)
{
    size_t l = strlen(name);
    return l > 5 && strcmp(name + l - 5, ".json") == 0;
}

static void test_examples_parse(void **state)
{
    (void)state;
    char path[1024];
    snprintf(path, sizeof path, "%s/events/examples", source_dir());
    DIR *dir = opendir(path);
    assert_non_null(dir);
    size_t n = 0;
    for (struct dirent *d; (d = readdir(dir));) {
        if (!is_json_file(d->d_name))
            continue;
        size_t len;
        char *text = read_event_file("examples", d->d_name, &len);
        json_t *doc = json_loads(text, 0, NULL);
        event_t ev;
        char reason[512];
        if (event_parse(text, len, NULL, 0, MAX_BYTES, &ev, reason, sizeof reason) != 0)
            fail_msg("%s: %s", d->d_name, reason);
        assert_string_equal(ev.id, json_string_value(json_object_get(doc, "id")));
        assert_string_equal(ev.type, json_string_value(json_object_get(doc, "type")));
        assert_string_equal(ev.source, json_string_value(json_object_get(doc, "source")));
        assert_string_equal(ev.subject, json_string_value(json_object_get(doc, "subject")));
        assert_string_equal(ev.time, json_string_value(json_object_get(doc, "time")));
        assert_true(json_equal(ev.data, json_object_get(doc, "data")));
        event_clear(&ev);
        json_decref(doc);
        free(text);
        n++;
    }
    closedir(dir);
    assert_true(n >= 15);
}

static void test_invalid_rejected_with_reason(void **state)
{
    (void)state;
    char path[1024];
    snprintf(path, sizeof path, "%s/events/invalid", source_dir());
    DIR *dir = opendir(path);
    assert_non_null(dir);
    size_t n = 0;
    for (struct dirent *d; (d = readdir(dir));) {
        if (!is_json_file(d->d_name))
            continue;
        char name[300];
        size_t len, rlen;
        snprintf(name, sizeof name, "%.*s.reason", (int)(strlen(d->d_name) - 5), d->d_name);
        char *expect = read_event_file("invalid", name, &rlen);
        expect[strcspn(expect, "\n")] = '\0';
        assert_true(strlen(expect) > 0);
        char *text = read_event_file("invalid", d->d_name, &len);
        event_t ev;
        char reason[512];
        assert_int_equal(event_parse(text, len, NULL, 0, MAX_BYTES, &ev, reason, sizeof reason),
                         ROTOR_EINVALID);
        if (!strstr(reason, expect))
            fail_msg("%s: reason \"%s\" lacks \"%s\"", d->d_name, reason, expect);
        assert_null(ev.id);
        assert_null(ev.data);
        free(text);
        free(expect);
        n++;
    }
    closedir(dir);
    assert_true(n >= 15);
}

/* Turns a structured example into binary mode: ce_* headers plus the data as the value. */
typedef struct {
    event_header_t h[16];
    char names[16][64];
    size_t n;
    char *value;
} binary_t;

static void to_binary(const json_t *doc, binary_t *b)
{
    const char *key;
    json_t *v;
    b->n = 0;
    json_object_foreach((json_t *)doc, key, v)
    {
        if (strcmp(key, "data") == 0)
            continue;
        if (strcmp(key, "datacontenttype") == 0)
            snprintf(b->names[b->n], sizeof b->names[0], "content-type");
        else
            snprintf(b->names[b->n], sizeof b->names[0], "ce_%s", key);
        b->h[b->n].name = b->names[b->n];
        b->h[b->n].value = json_string_value(v);
        b->h[b->n].len = strlen(json_string_value(v));
        b->n++;
    }
    b->value = json_dumps(json_object_get(doc, "data"), JSON_COMPACT);
}

static void test_binary_mode_round_trip(void **state)
{
    (void)state;
    json_t *doc = load_example("stage.completed");
    binary_t b;
    to_binary(doc, &b);
    event_t ev;
    char reason[512];
    assert_int_equal(
        event_parse(b.value, strlen(b.value), b.h, b.n, MAX_BYTES, &ev, reason, sizeof reason), 0);
    assert_string_equal(ev.type, "stage.completed");
    assert_string_equal(ev.id, json_string_value(json_object_get(doc, "id")));
    assert_string_equal(ev.subject, "pg-orders");
    assert_string_equal(ev.traceparent, json_string_value(json_object_get(doc, "traceparent")));
    assert_true(json_equal(ev.data, json_object_get(doc, "data")));
    event_clear(&ev);

    /* A media-type parameter does not change the type; another type is refused. */
    b.h[6].value = "application/json; charset=utf-8";
    b.h[6].len = strlen(b.h[6].value);
    assert_string_equal(b.h[6].name, "content-type");
    assert_int_equal(
        event_parse(b.value, strlen(b.value), b.h, b.n, MAX_BYTES, &ev, reason, sizeof reason), 0);
    event_clear(&ev);
    b.h[6].value = "text/plain";
    b.h[6].len = strlen(b.h[6].value);
    assert_int_equal(
        event_parse(b.value, strlen(b.value), b.h, b.n, MAX_BYTES, &ev, reason, sizeof reason),
        ROTOR_EINVALID);
    assert_string_equal(reason, "/datacontenttype: must be \"application/json\"");

    /* Without ce_type the event cannot be typed. */
    assert_string_equal(b.h[3].name, "ce_type");
    b.h[3].name = "x_type";
    assert_int_equal(
        event_parse(b.value, strlen(b.value), b.h, b.n, MAX_BYTES, &ev, reason, sizeof reason),
        ROTOR_EINVALID);
    assert_string_equal(reason, "/: required property \"type\" missing");
    free(b.value);
    json_decref(doc);
}

static void test_binary_mode_checks_headers_and_data(void **state)
{
    (void)state;
    json_t *doc = load_example("rotation.retry");
    binary_t b;
    to_binary(doc, &b);
    event_t ev;
    char reason[512];
    /* An extension header arrives as a string attribute; bytes that are not UTF-8 are refused. */
    b.h[b.n++] = (event_header_t){"ce_tenant", "\xff\xfe", 2};
    assert_int_equal(
        event_parse(b.value, strlen(b.value), b.h, b.n, MAX_BYTES, &ev, reason, sizeof reason),
        ROTOR_EINVALID);
    assert_string_equal(reason, "header ce_tenant is not a UTF-8 string");
    b.h[b.n - 1] = (event_header_t){"ce_tenant", "contoso", 7};
    assert_int_equal(
        event_parse(b.value, strlen(b.value), b.h, b.n, MAX_BYTES, &ev, reason, sizeof reason), 0);
    event_clear(&ev);
    const char *not_object = "[1,2]";
    assert_int_equal(event_parse(not_object, 5, b.h, b.n, MAX_BYTES, &ev, reason, sizeof reason),
                     ROTOR_EINVALID);
    assert_string_equal(reason, "/data: expected object, got array");
    assert_int_equal(event_parse("{", 1, b.h, b.n, MAX_BYTES, &ev, reason, sizeof reason),
                     ROTOR_EINVALID);
    assert_non_null(strstr(reason, "not valid JSON at line 1"));
    free(b.value);
    json_decref(doc);
}

static void test_traceparent_carried(void **state)
{
    (void)state;
    const char *tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    event_header_t plain = {"traceparent", tp, strlen(tp)};
    event_t ev;
    char reason[512];

    /* From the structured attribute, which wins over a header. */
    json_t *doc = load_example("rotation.approved");
    const char *attr = json_string_value(json_object_get(doc, "traceparent"));
    assert_non_null(attr);
    assert_int_equal(parse_json(doc, &plain, 1, &ev, reason, sizeof reason), 0);
    assert_string_equal(ev.traceparent, attr);
    event_clear(&ev);

    /* From the W3C header when the envelope has none. */
    json_object_del(doc, "traceparent");
    assert_int_equal(parse_json(doc, NULL, 0, &ev, reason, sizeof reason), 0);
    assert_null(ev.traceparent);
    event_clear(&ev);
    assert_int_equal(parse_json(doc, &plain, 1, &ev, reason, sizeof reason), 0);
    assert_string_equal(ev.traceparent, tp);
    event_clear(&ev);

    /* A header is validated like the attribute. */
    event_header_t bad = {"traceparent", "00-zz", 5};
    assert_int_equal(parse_json(doc, &bad, 1, &ev, reason, sizeof reason), ROTOR_EINVALID);
    assert_non_null(strstr(reason, "/traceparent: does not match pattern"));

    /* Binary mode: from ce_traceparent or the plain header. */
    binary_t b;
    to_binary(doc, &b);
    b.h[b.n++] = plain;
    assert_int_equal(
        event_parse(b.value, strlen(b.value), b.h, b.n, MAX_BYTES, &ev, reason, sizeof reason), 0);
    assert_string_equal(ev.traceparent, tp);
    event_clear(&ev);
    b.h[b.n - 1].name = "ce_traceparent";
    assert_int_equal(
        event_parse(b.value, strlen(b.value), b.h, b.n, MAX_BYTES, &ev, reason, sizeof reason), 0);
    assert_string_equal(ev.traceparent, tp);
    event_clear(&ev);
    free(b.value);
    json_decref(doc);
}

static void test_structured_content_type_wins(void **state)
{
    (void)state;
    json_t *doc = load_example("rotation.abort");
    event_header_t h[] = {{"Content-Type", "application/cloudevents+json; charset=UTF-8", 43},
                          {"ce_specversion", "1.0", 3}};
    event_t ev;
    char reason[512];
    /* A stray ce_specversion must not turn a declared structured event into binary mode. */
    assert_int_equal(parse_json(doc, h, 2, &ev, reason, sizeof reason), 0);
    assert_string_equal(ev.type, "rotation.abort");
    event_clear(&ev);
    assert_int_equal(parse_json(doc, h + 1, 1, &ev, reason, sizeof reason), ROTOR_EINVALID);
    json_decref(doc);
}

static void test_size_limit_and_empty(void **state)
{
    (void)state;
    json_t *doc = load_example("rotation.requested");
    char *text = json_dumps(doc, JSON_COMPACT);
    size_t len = strlen(text);
    event_t ev;
    char reason[512], want[128];
    assert_int_equal(event_parse(text, len, NULL, 0, len, &ev, reason, sizeof reason), 0);
    event_clear(&ev);
    assert_int_equal(event_parse(text, len, NULL, 0, len - 1, &ev, reason, sizeof reason),
                     ROTOR_EINVALID);
    snprintf(want, sizeof want, "message of %zu bytes exceeds the limit of %zu", len, len - 1);
    assert_string_equal(reason, want);
    assert_null(ev.id);
    assert_int_equal(event_parse(NULL, 0, NULL, 0, len, &ev, reason, sizeof reason),
                     ROTOR_EINVALID);
    assert_string_equal(reason, "empty message");
    free(text);
    json_decref(doc);
}

static void test_reason_bounds_input(void **state)
{
    (void)state;
    json_t *doc = load_example("rotation.retry");
    char *type = malloc(5001);
    memset(type, 'q', 5000);
    type[5000] = '\0';
    json_object_set_new(doc, "type", json_string(type));
    event_t ev;
    char reason[8192];
    assert_int_equal(parse_json(doc, NULL, 0, &ev, reason, sizeof reason), ROTOR_EINVALID);
    assert_non_null(strstr(reason, "unknown event type \"qqqq"));
    assert_true(strlen(reason) <= 200 + strlen("unknown event type \"\""));
    free(type);
    json_decref(doc);
}

static void test_duplicate_keys_rejected(void **state)
{
    (void)state;
    size_t len;
    char *text = read_event_file("examples", "rotation.retry.json", &len);
    /* Two parsers could each believe a different subject: refuse rather than pick one. */
    char *dup = malloc(len + 64);
    snprintf(dup, len + 64, "{\"subject\":\"pg-billing\",%s", strchr(text, '{') + 1);
    event_t ev;
    char reason[512];
    assert_int_equal(event_parse(dup, strlen(dup), NULL, 0, MAX_BYTES, &ev, reason, sizeof reason),
                     ROTOR_EINVALID);
    assert_non_null(strstr(reason, "duplicate"));
    free(dup);
    free(text);
}

static json_t *started_data(void)
{
    return json_pack("{s:s, s:s, s:s, s:s, s:s, s:s}", "rotation_id",
                     "3f0c9a52-7d1e-4b8a-9c61-2e5f8d4b7a10", "secret", "pg-orders", "from_slot",
                     "blue", "to_slot", "green", "trigger", "schedule", "reason", "every 30d");
}

static void test_build_round_trip(void **state)
{
    (void)state;
    const char *tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    int64_t before = util_now_ms();
    char *a = event_build("rotation.started", "/rotor/test", "pg-orders", started_data(), tp);
    char *b = event_build("rotation.started", "/rotor/test", "pg-orders", started_data(), NULL);
    assert_non_null(a);
    assert_non_null(b);
    json_t *doc = json_loads(a, 0, NULL);
    char reason[512];
    assert_int_equal(schema_validate("rotation.started", doc, reason, sizeof reason), 0);
    assert_string_equal(json_string_value(json_object_get(doc, "datacontenttype")),
                        "application/json");
    assert_null(strchr(a, '\n'));

    event_t ev, ev2;
    assert_int_equal(event_parse(a, strlen(a), NULL, 0, MAX_BYTES, &ev, reason, sizeof reason), 0);
    assert_int_equal(event_parse(b, strlen(b), NULL, 0, MAX_BYTES, &ev2, reason, sizeof reason), 0);
    assert_true(util_is_uuid(ev.id));
    assert_string_not_equal(ev.id, ev2.id);
    assert_string_equal(ev.type, "rotation.started");
    assert_string_equal(ev.source, "/rotor/test");
    assert_string_equal(ev.subject, "pg-orders");
    assert_string_equal(ev.traceparent, tp);
    assert_null(ev2.traceparent);
    int64_t t;
    assert_int_equal(util_parse_time(ev.time, &t), 0);
    assert_true(t >= before - 1 && t <= util_now_ms() + 1);
    json_t *want = started_data();
    assert_true(json_equal(ev.data, want));
    json_decref(want);
    event_clear(&ev);
    event_clear(&ev2);
    json_decref(doc);
    free(a);
    free(b);
}

static void test_build_refuses_invalid(void **state)
{
    (void)state;
    json_t *data = started_data();
    json_object_del(data, "to_slot");
    assert_null(event_build("rotation.started", "/rotor/test", "pg-orders", data, NULL));
    assert_null(event_build("rotation.started", "/rotor/test", "pg orders", started_data(), NULL));
    assert_null(event_build("rotation.started", "/rotor/test", "pg-orders", started_data(), "00"));
    assert_null(event_build("rotation.exploded", "/rotor/test", "pg-orders", started_data(), NULL));
    assert_null(event_build("rotation.started", NULL, "pg-orders", started_data(), NULL));
    assert_null(event_build("rotation.started", "/rotor/test", "pg-orders", json_array(), NULL));
    assert_null(event_build("rotation.started", "/rotor/test", "pg-orders", NULL, NULL));
}

static void test_clear_is_idempotent(void **state)
{
    (void)state;
    event_t ev;
    memset(&ev, 0, sizeof ev);
    event_clear(&ev);
    event_clear(&ev);
    event_clear(NULL);
    assert_null(ev.id);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_examples_parse),
        cmocka_unit_test(test_invalid_rejected_with_reason),
        cmocka_unit_test(test_binary_mode_round_trip),
        cmocka_unit_test(test_binary_mode_checks_headers_and_data),
        cmocka_unit_test(test_traceparent_carried),
        cmocka_unit_test(test_structured_content_type_wins),
        cmocka_unit_test(test_size_limit_and_empty),
        cmocka_unit_test(test_reason_bounds_input),
        cmocka_unit_test(test_duplicate_keys_rejected),
        cmocka_unit_test(test_build_round_trip),
        cmocka_unit_test(test_build_refuses_invalid),
        cmocka_unit_test(test_clear_is_idempotent),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
