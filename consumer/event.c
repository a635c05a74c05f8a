/* event.c: CloudEvents 1.0 envelopes in and out: the only file that reads or builds them. */
#include "event.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "log.h"
#include "rotor.h"
#include "schema.h"
#include "util.h"

/* No reason carries more than this many bytes of any one input. */
#define EVENT_INPUT_MAX 200

/* Copies at most EVENT_INPUT_MAX bytes of s into out, cut at a UTF-8 boundary. */
static void event_excerpt(const char *s, size_t len, char *out, size_t outlen)
{
    size_t n = len < EVENT_INPUT_MAX ? len : EVENT_INPUT_MAX;
    if (n >= outlen)
        n = outlen - 1;
    if (n < len) {
        while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80)
            n--;
    }
    memcpy(out, s, n);
    out[n] = '\0';
}

static int event_fail(char *reason, size_t reasonlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int event_fail(char *reason, size_t reasonlen, const char *fmt, ...)
{
    if (reason && reasonlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(reason, reasonlen, fmt, ap);
        va_end(ap);
        /* A quote of the input (jansson's error text, a long name) may be cut mid-character,
         * not be UTF-8 at all, or hold a newline: a reason is one line of UTF-8 (it goes into
         * JSON and into a log line). */
        util_utf8_trim(reason);
        for (char *p = reason; *p; p++) {
            if ((unsigned char)*p < 0x20)
                *p = ' ';
        }
    }
    return ROTOR_EINVALID;
}

/* Returns the first header called name (borrowed), or NULL. Kafka header names are
 * case-sensitive, but content-type arrives in both spellings from HTTP bridges. */
static const event_header_t *event_header(const event_header_t *h, size_t n, const char *name,
                                          bool nocase)
{
    for (size_t i = 0; i < n; i++) {
        if (h[i].name && h[i].value &&
            (nocase ? strcasecmp(h[i].name, name) : strcmp(h[i].name, name)) == 0)
            return &h[i];
    }
    return NULL;
}

static bool event_header_is(const event_header_t *h, const char *prefix)
{
    size_t n = strlen(prefix);
    return h && h->len >= n && strncasecmp((const char *)h->value, prefix, n) == 0;
}

/* Header values are bytes; an attribute must be a UTF-8 string without NUL. New reference. */
static json_t *event_header_string(const event_header_t *h, char *reason, size_t reasonlen)
{
    json_t *s = memchr(h->value, '\0', h->len) ? NULL : json_stringn(h->value, h->len);
    if (!s) {
        char name[65]; /* a name is bytes too: quote what of it is UTF-8 */
        util_strlcpy(name, h->name, sizeof name);
        util_utf8_trim(name);
        event_fail(reason, reasonlen, "header %s is not a UTF-8 string", name);
    }
    return s;
}

static const char *event_json_kind(const json_t *v)
{
    static const char *const kinds[] = {"an object", "an array",  "a string",  "a number",
                                        "a number",  "a boolean", "a boolean", "null"};
    return kinds[json_typeof(v)];
}

/* Parses bytes as JSON (any top-level value). New reference or NULL with the reason. */
static json_t *event_load(const void *value, size_t len, char *reason, size_t reasonlen)
{
    json_error_t err;
    /* Duplicate keys are refused: two parsers could each pick a different one. */
    json_t *j = json_loadb(value, len, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, &err);
    if (!j)
        event_fail(reason, reasonlen, "not valid JSON at line %d column %d: %s", err.line,
                   err.column, err.text);
    return j;
}

/* Adds the ce_* headers as attributes. Extensions arrive as strings, which the schemas accept. */
static int event_binary_attrs(json_t *env, const event_header_t *h, size_t n, char *reason,
                              size_t reasonlen)
{
    for (size_t i = 0; i < n; i++) {
        if (!h[i].name || !h[i].value || strncmp(h[i].name, "ce_", 3) != 0)
            continue;
        const char *attr = h[i].name + 3;
        if (!*attr || strcmp(attr, "data") == 0 || json_object_get(env, attr))
            continue;
        json_t *s = event_header_string(&h[i], reason, reasonlen);
        if (!s)
            return ROTOR_EINVALID;
        json_object_set_new(env, attr, s);
    }
    return 0;
}

/* Binary mode: the envelope is in ce_* headers, the value is the data. New reference or NULL. */
static json_t *event_from_binary(const void *value, size_t len, const event_header_t *h, size_t n,
                                 char *reason, size_t reasonlen)
{
    json_t *data = event_load(value, len, reason, reasonlen);
    if (!data)
        return NULL;
    json_t *env = json_object();
    if (event_binary_attrs(env, h, n, reason, reasonlen) < 0) {
        json_decref(data);
        json_decref(env);
        return NULL;
    }
    const event_header_t *ct = event_header(h, n, "content-type", true);
    if (ct && !json_object_get(env, "datacontenttype")) {
        /* "application/json; charset=utf-8" is application/json. */
        const char *semi = memchr(ct->value, ';', ct->len);
        size_t l = semi ? (size_t)(semi - (const char *)ct->value) : ct->len;
        while (l > 0 && ((const char *)ct->value)[l - 1] == ' ')
            l--;
        event_header_t bare = {ct->name, ct->value, l};
        json_t *s = event_header_string(&bare, reason, reasonlen);
        if (!s) {
            json_decref(data);
            json_decref(env);
            return NULL;
        }
        json_object_set_new(env, "datacontenttype", s);
    }
    json_object_set_new(env, "data", data);
    return env;
}

/* The checks that pick a schema; the schema checks the rest. */
static int event_check(const json_t *env, char *reason, size_t reasonlen)
{
    if (!json_is_object(env))
        return event_fail(reason, reasonlen, "event must be a JSON object, not %s",
                          event_json_kind(env));
    if (!json_object_get(env, "specversion"))
        return event_fail(reason, reasonlen, "/: required property \"specversion\" missing");
    const json_t *type = json_object_get(env, "type");
    if (!type)
        return event_fail(reason, reasonlen, "/: required property \"type\" missing");
    if (!json_is_string(type))
        return event_fail(reason, reasonlen, "/type: expected string, got %s",
                          event_json_kind(type));
    if (!schema_known(json_string_value(type))) {
        char name[EVENT_INPUT_MAX + 1];
        event_excerpt(json_string_value(type), json_string_length(type), name, sizeof name);
        return event_fail(reason, reasonlen, "unknown event type \"%s\"", name);
    }
    int rc = schema_validate(json_string_value(type), env, reason, reasonlen);
    /* A broken embedded schema is a build bug, but the message is still unusable. */
    return rc < 0 ? ROTOR_EINVALID : 0;
}

static char *event_attr(const json_t *env, const char *name)
{
    return util_strdup(json_string_value(json_object_get(env, name)));
}

json_t *event_load_envelope(const void *value, size_t len, const event_header_t *headers,
                            size_t nheaders, size_t max_bytes, char *reason, size_t reasonlen)
{
    if (reason && reasonlen)
        reason[0] = '\0';
    if (len > max_bytes) {
        event_fail(reason, reasonlen, "message of %zu bytes exceeds the limit of %zu", len,
                   max_bytes);
        return NULL;
    }
    if (!value || len == 0) {
        event_fail(reason, reasonlen, "empty message");
        return NULL;
    }
    bool structured = event_header_is(event_header(headers, nheaders, "content-type", true),
                                      "application/cloudevents+json");
    return !structured && event_header(headers, nheaders, "ce_specversion", false)
               ? event_from_binary(value, len, headers, nheaders, reason, reasonlen)
               : event_load(value, len, reason, reasonlen);
}

int event_parse(const void *value, size_t len, const event_header_t *headers, size_t nheaders,
                size_t max_bytes, event_t *ev, char *reason, size_t reasonlen)
{
    memset(ev, 0, sizeof *ev);
    json_t *env = event_load_envelope(value, len, headers, nheaders, max_bytes, reason, reasonlen);
    if (!env)
        return ROTOR_EINVALID;

    /* Trace context may travel as a plain W3C header beside either mode. */
    const event_header_t *tp = event_header(headers, nheaders, "traceparent", false);
    if (tp && json_is_object(env) && !json_object_get(env, "traceparent")) {
        json_t *s = event_header_string(tp, reason, reasonlen);
        if (!s) {
            json_decref(env);
            return ROTOR_EINVALID;
        }
        json_object_set_new(env, "traceparent", s);
    }

    int rc = event_check(env, reason, reasonlen);
    if (rc == 0) {
        ev->id = event_attr(env, "id");
        ev->type = event_attr(env, "type");
        ev->source = event_attr(env, "source");
        ev->subject = event_attr(env, "subject");
        ev->time = event_attr(env, "time");
        ev->traceparent = event_attr(env, "traceparent");
        ev->data = json_incref(json_object_get(env, "data"));
    }
    json_decref(env);
    return rc;
}

void event_clear(event_t *ev)
{
    if (!ev)
        return;
    free(ev->id);
    free(ev->type);
    free(ev->source);
    free(ev->subject);
    free(ev->time);
    free(ev->traceparent);
    json_decref(ev->data);
    memset(ev, 0, sizeof *ev);
}

/* json_string(NULL) is NULL and json_object_set_new then refuses it: the attribute is simply
 * absent and the schema says which one. */
static void event_set(json_t *env, const char *name, const char *value)
{
    if (value)
        json_object_set_new(env, name, json_string(value));
}

char *event_build(const char *type, const char *source, const char *subject, json_t *data,
                  const char *traceparent)
{
    char id[37], ts[32], reason[512];
    const char *why = !type || !schema_known(type) ? "no schema for this type"
                      : !json_is_object(data)      ? "data is not an object"
                      : util_uuid4(id) < 0         ? "no randomness for the id"
                                                   : NULL;
    if (why) {
        log_error("event.build.failed", "type", type, "reason", why);
        json_decref(data);
        return NULL;
    }
    util_format_time(util_now_ms(), ts, sizeof ts);
    json_t *env = json_object();
    event_set(env, "specversion", "1.0");
    event_set(env, "id", id);
    event_set(env, "source", source);
    event_set(env, "type", type);
    event_set(env, "subject", subject);
    event_set(env, "time", ts);
    event_set(env, "datacontenttype", "application/json");
    event_set(env, "traceparent", traceparent);
    json_object_set_new(env, "data", data);

    char *out = NULL;
    /* Our own output failing our own schema is a bug in the caller: refuse to publish it. */
    if (schema_validate(type, env, reason, sizeof reason) < 0)
        log_error("event.build.invalid", "type", type, "reason", reason);
    else
        out = json_dumps(env, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(env);
    return out;
}
