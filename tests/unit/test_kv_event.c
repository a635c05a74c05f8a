/* test_kv_event.c: Key Vault's Event Grid events in both schemas, driven by events/keyvault/. */
#include <dirent.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "kv_event.h"
#include "rotor.h"

#define MAX_BYTES (1024 * 1024)
#define MAX_EVENTS 8

static const char *source_dir(void)
{
    const char *d = getenv("ROTOR_SOURCE_DIR");
    return d ? d : ".";
}

/* Reads events/keyvault/<name> into a malloc'ed, NUL-terminated buffer the caller frees. */
static char *read_kv_file(const char *name, size_t *len)
{
    char path[1400];
    snprintf(path, sizeof path, "%s/events/keyvault/%s", source_dir(), name);
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

/* Names of the *.json files in events/keyvault/<sub> (NULL-terminated, caller frees). */
static char **list_json(const char *sub)
{
    char path[1200];
    snprintf(path, sizeof path, "%s/events/keyvault/%s", source_dir(), sub);
    DIR *dir = opendir(path);
    assert_non_null(dir);
    char **names = calloc(256, sizeof *names);
    size_t n = 0;
    for (struct dirent *d; (d = readdir(dir)) && n < 255;) {
        size_t l = strlen(d->d_name);
        if (l > 5 && strcmp(d->d_name + l - 5, ".json") == 0)
            names[n++] = strdup(d->d_name);
    }
    closedir(dir);
    return names;
}

static void free_list(char **names)
{
    for (char **p = names; *p; p++)
        free(*p);
    free(names);
}

static int parse_text(const char *text, const event_header_t *h, size_t nh, kv_event_t *out,
                      int max, char *reason, size_t reasonlen)
{
    return kv_event_parse(text, strlen(text), h, nh, MAX_BYTES, out, max, reason, reasonlen);
}

static const char *wanted_string(const json_t *exp, const char *key)
{
    const char *s = json_string_value(json_object_get(exp, key));
    return s ? s : "";
}

/* Holds one parsed event against its expectation; keys absent from it mean empty or 0. */
static void check_event(const char *file, int i, const kv_event_t *ev, const json_t *exp)
{
    static const struct {
        const char *key;
        size_t off;
    } strings[] = {
        {"type", offsetof(kv_event_t, type)},
        {"id", offsetof(kv_event_t, id)},
        {"object_id", offsetof(kv_event_t, object_id)},
        {"vault", offsetof(kv_event_t, vault)},
        {"object_type", offsetof(kv_event_t, object_type)},
        {"name", offsetof(kv_event_t, name)},
        {"version", offsetof(kv_event_t, version)},
        {"event_time", offsetof(kv_event_t, event_time)},
    };
    if (strcmp(kv_kind_name(ev->kind), wanted_string(exp, "kind")) != 0)
        fail_msg("%s[%d]: kind %s, expected %s", file, i, kv_kind_name(ev->kind),
                 wanted_string(exp, "kind"));
    for (size_t k = 0; k < sizeof strings / sizeof strings[0]; k++) {
        const char *got = (const char *)ev + strings[k].off;
        if (strcmp(got, wanted_string(exp, strings[k].key)) != 0)
            fail_msg("%s[%d]: %s is \"%s\", expected \"%s\"", file, i, strings[k].key, got,
                     wanted_string(exp, strings[k].key));
    }
    assert_int_equal(ev->nbf_ms, json_integer_value(json_object_get(exp, "nbf_ms")));
    assert_int_equal(ev->exp_ms, json_integer_value(json_object_get(exp, "exp_ms")));
}

static void test_examples_parse_as_expected(void **state)
{
    (void)state;
    char **names = list_json("");
    size_t files = 0;
    for (char **p = names; *p; p++, files++) {
        char expname[300], reason[512];
        snprintf(expname, sizeof expname, "%.*s.expect", (int)(strlen(*p) - 5), *p);
        size_t len, elen;
        char *text = read_kv_file(*p, &len), *etext = read_kv_file(expname, &elen);
        json_t *expect = json_loads(etext, 0, NULL);
        assert_true(json_is_array(expect));
        kv_event_t out[MAX_EVENTS];
        int n =
            kv_event_parse(text, len, NULL, 0, MAX_BYTES, out, MAX_EVENTS, reason, sizeof reason);
        if (n < 0)
            fail_msg("%s: %s", *p, reason);
        if ((size_t)n != json_array_size(expect))
            fail_msg("%s: %d events, expected %zu", *p, n, json_array_size(expect));
        for (int i = 0; i < n; i++)
            check_event(*p, i, &out[i], json_array_get(expect, (size_t)i));
        json_decref(expect);
        free(text);
        free(etext);
    }
    free_list(names);
    assert_true(files >= 13);
}

static void test_invalid_rejected_with_reason(void **state)
{
    (void)state;
    char **names = list_json("invalid");
    size_t files = 0;
    for (char **p = names; *p; p++, files++) {
        char rname[300], path[320], reason[512];
        snprintf(rname, sizeof rname, "%.*s.reason", (int)(strlen(*p) - 5), *p);
        snprintf(path, sizeof path, "invalid/%s", *p);
        size_t len, rlen;
        char *text = read_kv_file(path, &len);
        snprintf(path, sizeof path, "invalid/%s", rname);
        char *want = read_kv_file(path, &rlen);
        want[strcspn(want, "\n")] = '\0';
        assert_true(strlen(want) > 0);
        kv_event_t out[MAX_EVENTS];
        memset(out, 0x5a, sizeof out);
        int rc =
            kv_event_parse(text, len, NULL, 0, MAX_BYTES, out, MAX_EVENTS, reason, sizeof reason);
        if (rc != ROTOR_EINVALID)
            fail_msg("%s: accepted (rc %d)", *p, rc);
        if (!strstr(reason, want))
            fail_msg("%s: reason \"%s\" lacks \"%s\"", *p, reason, want);
        assert_null(strchr(reason, '\n'));
        free(text);
        free(want);
    }
    free_list(names);
    assert_true(files >= 25);
}

static void test_array_of_three(void **state)
{
    (void)state;
    size_t len;
    char reason[256];
    char *text = read_kv_file("eventgrid-batch.json", &len);
    kv_event_t out[3];
    int n = kv_event_parse(text, len, NULL, 0, MAX_BYTES, out, 3, reason, sizeof reason);
    assert_int_equal(n, 3);
    assert_int_equal(out[0].kind, KV_NEAR_EXPIRY);
    assert_int_equal(out[1].kind, KV_EXPIRED);
    assert_int_equal(out[2].kind, KV_NEW_VERSION);
    assert_string_equal(out[1].name, "pg-green");
    /* One more than the caller can hold refuses the whole message: it is dead-lettered whole. */
    assert_int_equal(kv_event_parse(text, len, NULL, 0, MAX_BYTES, out, 2, reason, sizeof reason),
                     ROTOR_EINVALID);
    assert_non_null(strstr(reason, "3 events exceed the limit of 2"));
    free(text);
}

static void test_empty_array_and_empty_message(void **state)
{
    (void)state;
    char reason[256];
    kv_event_t out[1];
    assert_int_equal(parse_text("[]", NULL, 0, out, 1, reason, sizeof reason), 0);
    assert_int_equal(kv_event_parse("", 0, NULL, 0, MAX_BYTES, out, 1, reason, sizeof reason),
                     ROTOR_EINVALID);
    assert_string_equal(reason, "empty message");
}

/* Event Grid schema around a given type and data, for table-driven cases. */
static char *eventgrid_with(const char *type, const char *data)
{
    static const char fmt[] =
        "{\"id\":\"e1\",\"topic\":\"/subscriptions/s/resourceGroups/g/providers/"
        "Microsoft.KeyVault/vaults/myvault\",\"subject\":\"mysecret\",\"eventType\":\"%s\","
        "\"eventTime\":\"2019-05-28T21:34:13Z\",\"dataVersion\":\"1\",\"data\":%s}";
    size_t n = strlen(fmt) + strlen(type) + strlen(data) + 1;
    char *s = malloc(n);
    snprintf(s, n, fmt, type, data);
    return s;
}

static void test_other_key_vault_types_ignored(void **state)
{
    (void)state;
    static const char *const types[] = {
        "Microsoft.KeyVault.KeyNearExpiry",
        "Microsoft.KeyVault.CertificateNewVersionCreated",
        "Microsoft.KeyVault.SecretSomethingNew",
    };
    /* Data rotor would refuse on a secret event: not ours, so not an error either. */
    static const char *const data[] = {
        ("{\"Id\":\"https://myvault.vault.azure.net/keys/k1/abc\",\"ObjectType\":\"Key\","
         "\"ObjectName\":\"k1\",\"Version\":\"abc\",\"NBF\":null,\"EXP\":\"1559082102\"}"),
        "{\"EXP\":true,\"ObjectName\":\"bad_name\"}",
        "[1]",
    };
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
        for (size_t j = 0; j < sizeof data / sizeof data[0]; j++) {
            char reason[256], *text = eventgrid_with(types[i], data[j]);
            kv_event_t out[1];
            int n = parse_text(text, NULL, 0, out, 1, reason, sizeof reason);
            if (n != 1)
                fail_msg("%s with %s: %s", types[i], data[j], reason);
            assert_int_equal(out[0].kind, KV_IGNORED);
            assert_string_equal(out[0].type, types[i]);
            assert_string_equal(out[0].id, "e1");
            /* Clean data is still read for the log line; broken data leaves the fields empty. */
            assert_string_equal(out[0].name, j == 0 ? "k1" : "");
            assert_int_equal(out[0].exp_ms, j == 0 ? 1559082102000 : 0);
            free(text);
        }
    }
}

static void test_nbf_exp_forms(void **state)
{
    (void)state;
    static const struct {
        const char *json;
        int64_t ms; /* -1: refused */
    } cases[] = {
        {"\"1559082102\"", 1559082102000},
        {"1559082102", 1559082102000},
        {"1559082102.0", 1559082102000},
        {"null", 0},
        {"\"0\"", 0},
        {"\"253402300799\"", 253402300799000},
        {"253402300800", -1},
        {"\"1234567890123\"", -1},
        {"\"\"", -1},
        {"\" 1559082102\"", -1},
        {"\"+1559082102\"", -1},
        {"\"-1\"", -1},
        {"-1", -1},
        {"1.5", -1},
        {"1e300", -1},
        {"false", -1},
        {"[]", -1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char data[512], reason[256];
        snprintf(data, sizeof data,
                 "{\"VaultName\":\"myvault\",\"ObjectName\":\"mysecret\",\"Version\":\"v1\","
                 "\"NBF\":null,\"EXP\":%s}",
                 cases[i].json);
        char *text = eventgrid_with("Microsoft.KeyVault.SecretExpired", data);
        kv_event_t out[1];
        int n = parse_text(text, NULL, 0, out, 1, reason, sizeof reason);
        if (cases[i].ms < 0) {
            if (n != ROTOR_EINVALID)
                fail_msg("EXP %s accepted", cases[i].json);
            assert_non_null(strstr(reason, "/data/EXP: "));
        } else {
            if (n != 1)
                fail_msg("EXP %s: %s", cases[i].json, reason);
            assert_int_equal(out[0].exp_ms, cases[i].ms);
        }
        free(text);
    }
}

/* CloudEvents binary mode: the attributes in ce_* headers, the data in the value. */
static void test_binary_mode(void **state)
{
    (void)state;
    static const char value[] =
        "{\"id\":\"https://myvault.vault.azure.net/secrets/pg-blue/0123abcd\",\"vaultName\":"
        "\"myvault\",\"objectType\":\"Secret\",\"objectName\":\"pg-blue\",\"version\":"
        "\"0123abcd\",\"nbf\":null,\"exp\":1769904000}";
#define H(n, v) {n, v, sizeof v - 1}
    event_header_t h[] = {
        H("aeg-event-type", "Notification"),
        H("aeg-subscription-name", "ROTOR-KV"),
        H("aeg-data-version", "1"),
        H("ce_specversion", "1.0"),
        H("ce_id", "b1n4ry"),
        H("ce_source", "/subscriptions/s/resourceGroups/g/providers/Microsoft.KeyVault/vaults/"
                       "myvault"),
        H("ce_type", "Microsoft.KeyVault.SecretNearExpiry"),
        H("ce_subject", "pg-blue"),
        H("ce_time", "2026-01-31T00:00:00Z"),
        H("content-type", "application/json; charset=utf-8"),
    };
    size_t nh = sizeof h / sizeof h[0];
    char reason[256];
    kv_event_t out[2];
    int n = parse_text(value, h, nh, out, 2, reason, sizeof reason);
    if (n != 1)
        fail_msg("binary mode: %s", reason);
    assert_int_equal(out[0].kind, KV_NEAR_EXPIRY);
    assert_string_equal(out[0].id, "b1n4ry");
    assert_string_equal(out[0].vault, "myvault");
    assert_string_equal(out[0].name, "pg-blue");
    assert_string_equal(out[0].version, "0123abcd");
    assert_string_equal(out[0].event_time, "2026-01-31T00:00:00Z");
    assert_int_equal(out[0].nbf_ms, 0);
    assert_int_equal(out[0].exp_ms, 1769904000000);

    /* Without ce_type there is no event type: the message is refused, not guessed at. */
    event_header_t *no_type = h + 6;
    *no_type = (event_header_t)H("ce_typo", "x");
    assert_int_equal(parse_text(value, h, nh, out, 2, reason, sizeof reason), ROTOR_EINVALID);
    assert_non_null(strstr(reason, "/type: required property missing"));

    /* A type that is not Key Vault's is a dead letter too. */
    *no_type = (event_header_t)H("ce_type", "rotation.requested");
    assert_int_equal(parse_text(value, h, nh, out, 2, reason, sizeof reason), ROTOR_EINVALID);
    assert_non_null(strstr(reason, "is not a Key Vault event"));
#undef H
}

/* content-type application/cloudevents+json says structured mode whatever ce_* headers say. */
static void test_structured_content_type_wins(void **state)
{
    (void)state;
    size_t len;
    char reason[256];
    char *text = read_kv_file("cloudevents-near-expiry.json", &len);
    event_header_t h[] = {
        {"content-type", "application/cloudevents+json", 28},
        {"ce_specversion", "1.0", 3},
        {"ce_type", "Microsoft.KeyVault.SecretExpired", 32},
    };
    kv_event_t out[1];
    assert_int_equal(kv_event_parse(text, len, h, 3, MAX_BYTES, out, 1, reason, sizeof reason), 1);
    assert_int_equal(out[0].kind, KV_NEAR_EXPIRY);
    free(text);
}

static void test_aeg_event_type_must_be_notification(void **state)
{
    (void)state;
    size_t len;
    char reason[256];
    char *text = read_kv_file("eventgrid-near-expiry.json", &len);
    event_header_t h[] = {{"aeg-event-type", "SubscriptionValidation", 22}};
    kv_event_t out[1];
    assert_int_equal(kv_event_parse(text, len, h, 1, MAX_BYTES, out, 1, reason, sizeof reason),
                     ROTOR_EINVALID);
    assert_string_equal(reason,
                        "header aeg-event-type: \"SubscriptionValidation\" is not Notification");
    h[0] = (event_header_t){"aeg-event-type", "Notification", 12};
    assert_int_equal(kv_event_parse(text, len, h, 1, MAX_BYTES, out, 1, reason, sizeof reason), 1);
    free(text);
}

/* The limit is checked before anything is parsed, so an oversized message costs no parsing. */
static void test_size_limit_first(void **state)
{
    (void)state;
    size_t len;
    char reason[256];
    char *text = read_kv_file("eventgrid-near-expiry.json", &len);
    kv_event_t out[1];
    assert_int_equal(kv_event_parse(text, len, NULL, 0, len - 1, out, 1, reason, sizeof reason),
                     ROTOR_EINVALID);
    char want[128];
    snprintf(want, sizeof want, "message of %zu bytes exceeds the limit of %zu", len, len - 1);
    assert_string_equal(reason, want);
    assert_int_equal(kv_event_parse(text, len, NULL, 0, len, out, 1, reason, sizeof reason), 1);
    assert_int_equal(
        kv_event_parse("not json at all", 15, NULL, 0, 4, out, 1, reason, sizeof reason),
        ROTOR_EINVALID);
    assert_non_null(strstr(reason, "exceeds the limit of 4"));
    free(text);
}

/* A reason quotes little of the input, whatever the input holds. */
static void test_reason_quotes_little(void **state)
{
    (void)state;
    char type[2048];
    memset(type, 'A', sizeof type - 1);
    type[sizeof type - 1] = '\0';
    memcpy(type, "Contoso.", 8);
    char *text = eventgrid_with(type, "{}");
    char reason[4096];
    kv_event_t out[1];
    assert_int_equal(parse_text(text, NULL, 0, out, 1, reason, sizeof reason), ROTOR_EINVALID);
    assert_non_null(strstr(reason, "Contoso.AAA"));
    assert_true(strlen(reason) < 200);
    free(text);
}

static void test_refused_message_leaves_nothing(void **state)
{
    (void)state;
    size_t len;
    char reason[256];
    char *text = read_kv_file("invalid/array-second-bad.json", &len);
    kv_event_t out[3], zero;
    memset(&zero, 0, sizeof zero);
    assert_int_equal(kv_event_parse(text, len, NULL, 0, MAX_BYTES, out, 3, reason, sizeof reason),
                     ROTOR_EINVALID);
    /* The first event parsed before the second failed; none of it may be acted on. */
    assert_memory_equal(&out[0], &zero, sizeof zero);
    free(text);
}

static void test_kind_names(void **state)
{
    (void)state;
    assert_string_equal(kv_kind_name(KV_NEAR_EXPIRY), "near-expiry");
    assert_string_equal(kv_kind_name(KV_EXPIRED), "expired");
    assert_string_equal(kv_kind_name(KV_NEW_VERSION), "new-version");
    assert_string_equal(kv_kind_name(KV_IGNORED), "ignored");
    assert_string_equal(kv_kind_name((kv_kind_t)42), "unknown");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_examples_parse_as_expected),
        cmocka_unit_test(test_invalid_rejected_with_reason),
        cmocka_unit_test(test_array_of_three),
        cmocka_unit_test(test_empty_array_and_empty_message),
        cmocka_unit_test(test_other_key_vault_types_ignored),
        cmocka_unit_test(test_nbf_exp_forms),
        cmocka_unit_test(test_binary_mode),
        cmocka_unit_test(test_structured_content_type_wins),
        cmocka_unit_test(test_aeg_event_type_must_be_notification),
        cmocka_unit_test(test_size_limit_first),
        cmocka_unit_test(test_reason_quotes_little),
        cmocka_unit_test(test_refused_message_leaves_nothing),
        cmocka_unit_test(test_kind_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
