/* schema.c: validates JSON against the embedded events/ schemas (a draft 2020-12 subset). */
#include "schema.h"

#include <math.h>
#include <pthread.h>
#include <regex.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "rotor.h"
#include "util.h"

/* The keywords the schemas may use. Anything else is refused when a schema is compiled: a keyword
 * this validator silently ignored would make it disagree with python jsonschema. */
static const char *const schema_keywords[] = {
    "type",        "properties", "required", "additionalProperties",
    "enum",        "const",      "pattern",  "minLength",
    "maxLength",   "minimum",    "maximum",  "items",
    "minItems",    "maxItems",   "$defs",    "$ref",
    "description", "title",      "$schema",  "$id",
    "examples",
};

static const char *const schema_type_names[] = {"object", "array",   "string", "integer",
                                                "number", "boolean", "null"};

/* Input-derived text (property names in a pointer) is cut to this many bytes in a reason. */
#define SCHEMA_INPUT_MAX 200
/* $ref chains deeper than this are a schema bug (a cycle), not a document to validate. */
#define SCHEMA_MAX_DEPTH 64

typedef struct schema_regex {
    char *pattern;
    regex_t re;
    struct schema_regex *next;
} schema_regex_t;

typedef enum { SCHEMA_UNTRIED = 0, SCHEMA_READY, SCHEMA_BROKEN } schema_state_t;

typedef struct {
    schema_state_t state;
    json_t *root;
} schema_entry_t;

/* The cache lives for the process: parsed schemas and compiled patterns are reachable from these
 * globals, so the leak checker does not count them. The lock makes lazy compilation safe if a
 * worker thread ever validates; regexec itself is thread-safe. */
static pthread_mutex_t schema_lock = PTHREAD_MUTEX_INITIALIZER;
static schema_entry_t *schema_entries;
static size_t schema_count;
static schema_regex_t *schema_regexes;

typedef struct {
    const json_t *root; /* the schema being applied, for "#/$defs/..." */
    char path[SCHEMA_INPUT_MAX + 8];
    size_t pathlen;
    char *reason;
    size_t reasonlen;
    int depth;
} schema_ctx_t;

static size_t schema_index(const char *type)
{
    size_t i;
    for (i = 0; schema_sources[i].type; i++) {
        if (strcmp(schema_sources[i].type, type) == 0)
            break;
    }
    return i;
}

int schema_known(const char *type)
{
    return type && schema_sources[schema_index(type)].type != NULL;
}

/* Called with schema_lock held. Returns the compiled pattern or NULL if it does not compile. */
static const regex_t *schema_regex_locked(const char *pattern)
{
    for (schema_regex_t *r = schema_regexes; r; r = r->next) {
        if (strcmp(r->pattern, pattern) == 0)
            return &r->re;
    }
    schema_regex_t *r = util_calloc(1, sizeof *r);
    if (regcomp(&r->re, pattern, REG_EXTENDED | REG_NOSUB) != 0) {
        free(r);
        return NULL;
    }
    r->pattern = util_strdup(pattern);
    r->next = schema_regexes;
    schema_regexes = r;
    return &r->re;
}

static const regex_t *schema_regex(const char *pattern)
{
    pthread_mutex_lock(&schema_lock);
    const regex_t *re = schema_regex_locked(pattern);
    pthread_mutex_unlock(&schema_lock);
    return re;
}

/* Resolves "#/a/b" (JSON pointer, ~0 and ~1 unescaped) inside root. Borrowed result or NULL. */
static const json_t *schema_resolve(const json_t *root, const char *ref)
{
    if (strncmp(ref, "#", 1) != 0)
        return NULL;
    const json_t *node = root;
    const char *p = ref + 1;
    while (node && *p == '/') {
        p++;
        size_t n = strcspn(p, "/");
        char *tok = util_malloc(n + 1);
        size_t j = 0;
        for (size_t i = 0; i < n; i++) {
            if (p[i] == '~' && i + 1 < n && (p[i + 1] == '0' || p[i + 1] == '1')) {
                tok[j++] = p[i + 1] == '0' ? '~' : '/';
                i++;
            } else {
                tok[j++] = p[i];
            }
        }
        tok[j] = '\0';
        node = json_object_get(node, tok);
        free(tok);
        p += n;
    }
    return *p ? NULL : node;
}

static bool schema_keyword_known(const char *key)
{
    for (size_t i = 0; i < sizeof schema_keywords / sizeof schema_keywords[0]; i++) {
        if (strcmp(key, schema_keywords[i]) == 0)
            return true;
    }
    return false;
}

static bool schema_type_name_known(const json_t *t)
{
    for (size_t i = 0; json_is_string(t) && i < 7; i++) {
        if (strcmp(json_string_value(t), schema_type_names[i]) == 0)
            return true;
    }
    return false;
}

static int schema_lint(const json_t *root, const json_t *s, char *why, size_t whylen);

static int schema_lint_map(const json_t *root, const json_t *map, char *why, size_t whylen)
{
    const char *key;
    json_t *sub;
    if (!json_is_object(map)) {
        snprintf(why, whylen, "properties and $defs must be objects");
        return ROTOR_EINVALID;
    }
    json_object_foreach((json_t *)map, key, sub)
    {
        if (schema_lint(root, sub, why, whylen) < 0)
            return ROTOR_EINVALID;
    }
    return 0;
}

static int schema_lint_type(const json_t *t, char *why, size_t whylen)
{
    size_t i;
    json_t *v;
    if (json_is_array(t)) {
        json_array_foreach(t, i, v)
        {
            if (!schema_type_name_known(v))
                break;
        }
        if (i == json_array_size(t) && i > 0)
            return 0;
    } else if (schema_type_name_known(t)) {
        return 0;
    }
    snprintf(why, whylen, "bad \"type\"");
    return ROTOR_EINVALID;
}

/* Checks one schema node before it is ever used, so validation cannot meet a surprise. */
static int schema_lint(const json_t *root, const json_t *s, char *why, size_t whylen)
{
    if (json_is_boolean(s))
        return 0;
    if (!json_is_object(s)) {
        snprintf(why, whylen, "a schema must be an object or a boolean");
        return ROTOR_EINVALID;
    }
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)s, key, v)
    {
        int rc = 0;
        if (!schema_keyword_known(key)) {
            snprintf(why, whylen, "unsupported keyword \"%s\"", key);
            rc = ROTOR_EINVALID;
        } else if (strcmp(key, "properties") == 0 || strcmp(key, "$defs") == 0) {
            rc = schema_lint_map(root, v, why, whylen);
        } else if (strcmp(key, "additionalProperties") == 0 || strcmp(key, "items") == 0) {
            rc = schema_lint(root, v, why, whylen);
        } else if (strcmp(key, "type") == 0) {
            rc = schema_lint_type(v, why, whylen);
        } else if (strcmp(key, "pattern") == 0) {
            if (!json_is_string(v) || !schema_regex_locked(json_string_value(v))) {
                snprintf(why, whylen, "pattern does not compile as a POSIX ERE");
                rc = ROTOR_EINVALID;
            }
        } else if (strcmp(key, "$ref") == 0) {
            if (!json_is_string(v) || !schema_resolve(root, json_string_value(v))) {
                snprintf(why, whylen, "unresolvable $ref");
                rc = ROTOR_EINVALID;
            }
        } else if (strcmp(key, "enum") == 0 || strcmp(key, "required") == 0) {
            if (!json_is_array(v)) {
                snprintf(why, whylen, "\"%s\" must be an array", key);
                rc = ROTOR_EINVALID;
            }
        }
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* Returns the parsed schema of type (borrowed, lives for the process) or NULL. */
static const json_t *schema_get(const char *type, char *why, size_t whylen)
{
    size_t idx = schema_index(type);
    if (!schema_sources[idx].type)
        return NULL;
    pthread_mutex_lock(&schema_lock);
    if (!schema_entries) {
        schema_count = idx;
        while (schema_sources[schema_count].type)
            schema_count++;
        schema_entries = util_calloc(schema_count, sizeof *schema_entries);
    }
    schema_entry_t *e = &schema_entries[idx];
    if (e->state == SCHEMA_UNTRIED) {
        json_error_t err;
        e->root = json_loads(schema_sources[idx].text, 0, &err);
        if (!e->root)
            snprintf(why, whylen, "line %d: %.100s", err.line, err.text);
        if (e->root && schema_lint(e->root, e->root, why, whylen) < 0) {
            json_decref(e->root);
            e->root = NULL;
        }
        e->state = e->root ? SCHEMA_READY : SCHEMA_BROKEN;
        if (!e->root)
            log_error("schema.broken", "type", type, "reason", why);
    } else if (e->state == SCHEMA_BROKEN) {
        snprintf(why, whylen, "see the schema.broken log line");
    }
    const json_t *root = e->root;
    pthread_mutex_unlock(&schema_lock);
    return root;
}

/* Writes "<pointer>: <what>" once; the first failure wins. */
static int schema_fail(schema_ctx_t *c, const char *fmt, ...)
{
    if (c->reason && c->reasonlen) {
        int n = snprintf(c->reason, c->reasonlen, "%s: ", c->pathlen ? c->path : "/");
        if (n >= 0 && (size_t)n < c->reasonlen) {
            va_list ap;
            va_start(ap, fmt);
            vsnprintf(c->reason + n, c->reasonlen - (size_t)n, fmt, ap);
            va_end(ap);
        }
    }
    return ROTOR_EINVALID;
}

/* Appends "/token" (escaped) to the pointer; returns the length to restore. Long pointers are cut
 * at a UTF-8 boundary and marked with "...", since property names come from the input. */
static size_t schema_path_push(schema_ctx_t *c, const char *tok)
{
    size_t saved = c->pathlen;
    size_t n = c->pathlen;
    char *p = c->path;
    if (n >= SCHEMA_INPUT_MAX)
        return saved; /* already cut and marked */
    p[n++] = '/';
    for (; *tok && n < SCHEMA_INPUT_MAX; tok++) {
        if (*tok == '~' || *tok == '/') {
            if (n + 2 > SCHEMA_INPUT_MAX)
                break;
            p[n++] = '~';
            p[n++] = *tok == '~' ? '0' : '1';
        } else {
            p[n++] = *tok;
        }
    }
    if (*tok) {
        if (((unsigned char)*tok & 0xC0) == 0x80) {
            while (n > saved && ((unsigned char)p[n - 1] & 0xC0) == 0x80)
                n--;
            n -= n > saved;
        }
        memcpy(p + n, "...", 3);
        n += 3;
    }
    p[n] = '\0';
    c->pathlen = n;
    return saved;
}

static void schema_path_pop(schema_ctx_t *c, size_t saved)
{
    c->pathlen = saved;
    c->path[saved] = '\0';
}

static const char *schema_json_type(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        return "object";
    case JSON_ARRAY:
        return "array";
    case JSON_STRING:
        return "string";
    case JSON_INTEGER:
        return "integer";
    case JSON_REAL:
        return "number";
    case JSON_TRUE:
    case JSON_FALSE:
        return "boolean";
    default:
        return "null";
    }
}

/* JSON Schema's notion of type: 2.0 is an integer, true is not a number. */
static bool schema_is_type(const json_t *v, const char *name)
{
    if (strcmp(name, "integer") == 0)
        return json_is_integer(v) || (json_is_real(v) && isfinite(json_real_value(v)) &&
                                      floor(json_real_value(v)) == json_real_value(v));
    if (strcmp(name, "number") == 0)
        return json_is_number(v);
    return strcmp(name, schema_json_type(v)) == 0;
}

/* Equality as JSON Schema defines it: 1 equals 1.0, true does not equal 1. */
static bool schema_equal(const json_t *a, const json_t *b)
{
    if (json_is_number(a) && json_is_number(b))
        return json_number_value(a) == json_number_value(b) &&
               (!json_is_integer(a) || !json_is_integer(b) ||
                json_integer_value(a) == json_integer_value(b));
    if (json_typeof(a) != json_typeof(b))
        return false;
    if (json_is_array(a)) {
        if (json_array_size(a) != json_array_size(b))
            return false;
        for (size_t i = 0; i < json_array_size(a); i++) {
            if (!schema_equal(json_array_get(a, i), json_array_get(b, i)))
                return false;
        }
        return true;
    }
    if (json_is_object(a)) {
        const char *key;
        json_t *v;
        if (json_object_size(a) != json_object_size(b))
            return false;
        json_object_foreach((json_t *)a, key, v)
        {
            const json_t *w = json_object_get(b, key);
            if (!w || !schema_equal(v, w))
                return false;
        }
        return true;
    }
    return json_equal((json_t *)a, (json_t *)b);
}

static int schema_check_type(schema_ctx_t *c, const json_t *t, const json_t *v)
{
    char want[96] = "";
    if (json_is_string(t)) {
        if (schema_is_type(v, json_string_value(t)))
            return 0;
        util_strlcpy(want, json_string_value(t), sizeof want);
    } else {
        size_t i, n = json_array_size(t);
        for (i = 0; i < n; i++) {
            const char *name = json_string_value(json_array_get(t, i));
            if (schema_is_type(v, name))
                return 0;
            size_t used = strlen(want);
            snprintf(want + used, sizeof want - used, "%s%s",
                     i == 0       ? ""
                     : i + 1 == n ? " or "
                                  : ", ",
                     name);
        }
    }
    return schema_fail(c, "expected %s, got %s", want, schema_json_type(v));
}

/* Schema values (const, enum) are ours, not input: printing them whole is fine. */
static int schema_fail_value(schema_ctx_t *c, const char *prefix, const json_t *expect)
{
    char *text = json_dumps(expect, JSON_COMPACT | JSON_ENCODE_ANY);
    int rc = schema_fail(c, "%s%s", prefix, text ? text : "?");
    free(text);
    return rc;
}

static int schema_check_enum(schema_ctx_t *c, const json_t *values, const json_t *v)
{
    size_t i;
    json_t *e;
    json_array_foreach(values, i, e)
    {
        if (schema_equal(e, v))
            return 0;
    }
    return schema_fail_value(c, "must be one of ", values);
}

static size_t schema_utf8_length(const char *s, size_t bytes)
{
    size_t n = 0;
    for (size_t i = 0; i < bytes; i++)
        n += ((unsigned char)s[i] & 0xC0) != 0x80;
    return n;
}

static int schema_check_string(schema_ctx_t *c, const json_t *s, const json_t *v)
{
    const char *str = json_string_value(v);
    size_t bytes = json_string_length(v);
    size_t chars = schema_utf8_length(str, bytes);
    const json_t *k;
    if ((k = json_object_get(s, "minLength")) && (json_int_t)chars < json_integer_value(k))
        return schema_fail(c, "shorter than %" JSON_INTEGER_FORMAT " character(s)",
                           json_integer_value(k));
    if ((k = json_object_get(s, "maxLength")) && (json_int_t)chars > json_integer_value(k))
        return schema_fail(c, "longer than %" JSON_INTEGER_FORMAT " characters",
                           json_integer_value(k));
    if ((k = json_object_get(s, "pattern"))) {
        const char *pattern = json_string_value(k);
        const regex_t *re = schema_regex(pattern);
        /* An embedded NUL would hide the rest of the string from regexec. */
        if (!re || strlen(str) != bytes || regexec(re, str, 0, NULL, 0) != 0)
            return schema_fail(c, "does not match pattern %s", pattern);
    }
    return 0;
}

/* Compares exactly when both are integers, so large ids do not round through double. */
static int schema_compare(const json_t *a, const json_t *b)
{
    if (json_is_integer(a) && json_is_integer(b)) {
        json_int_t x = json_integer_value(a), y = json_integer_value(b);
        return x < y ? -1 : x > y;
    }
    double x = json_number_value(a), y = json_number_value(b);
    return x < y ? -1 : x > y;
}

static int schema_check_number(schema_ctx_t *c, const json_t *s, const json_t *v)
{
    const json_t *k;
    if ((k = json_object_get(s, "minimum")) && schema_compare(v, k) < 0)
        return schema_fail_value(c, "less than the minimum of ", k);
    if ((k = json_object_get(s, "maximum")) && schema_compare(v, k) > 0)
        return schema_fail_value(c, "greater than the maximum of ", k);
    return 0;
}

static int schema_apply(schema_ctx_t *c, const json_t *s, const json_t *v);

static int schema_apply_at(schema_ctx_t *c, const char *tok, const json_t *s, const json_t *v)
{
    size_t saved = schema_path_push(c, tok);
    int rc = schema_apply(c, s, v);
    schema_path_pop(c, saved);
    return rc;
}

static int schema_check_object(schema_ctx_t *c, const json_t *s, const json_t *v)
{
    const json_t *req = json_object_get(s, "required");
    const json_t *props = json_object_get(s, "properties");
    const json_t *extra = json_object_get(s, "additionalProperties");
    size_t i;
    json_t *name;
    json_array_foreach(req, i, name)
    {
        if (!json_object_get(v, json_string_value(name)))
            return schema_fail(c, "required property \"%s\" missing", json_string_value(name));
    }
    const char *key;
    json_t *sub;
    json_object_foreach((json_t *)props, key, sub)
    {
        const json_t *pv = json_object_get(v, key);
        if (pv && schema_apply_at(c, key, sub, pv) < 0)
            return ROTOR_EINVALID;
    }
    if (!extra || json_is_true(extra))
        return 0;
    json_object_foreach((json_t *)v, key, sub)
    {
        if (json_object_get(props, key))
            continue;
        if (json_is_false(extra)) {
            size_t saved = schema_path_push(c, key);
            schema_fail(c, "additional property not allowed");
            schema_path_pop(c, saved);
            return ROTOR_EINVALID;
        }
        if (schema_apply_at(c, key, extra, sub) < 0)
            return ROTOR_EINVALID;
    }
    return 0;
}

static int schema_check_array(schema_ctx_t *c, const json_t *s, const json_t *v)
{
    const json_t *k;
    size_t n = json_array_size(v);
    if ((k = json_object_get(s, "minItems")) && (json_int_t)n < json_integer_value(k))
        return schema_fail(c, "fewer than %" JSON_INTEGER_FORMAT " item(s)", json_integer_value(k));
    if ((k = json_object_get(s, "maxItems")) && (json_int_t)n > json_integer_value(k))
        return schema_fail(c, "more than %" JSON_INTEGER_FORMAT " item(s)", json_integer_value(k));
    if (!(k = json_object_get(s, "items")))
        return 0;
    for (size_t i = 0; i < n; i++) {
        char tok[24];
        snprintf(tok, sizeof tok, "%zu", i);
        if (schema_apply_at(c, tok, k, json_array_get(v, i)) < 0)
            return ROTOR_EINVALID;
    }
    return 0;
}

/* Applies schema node s to instance v; the keywords are checked in a fixed order so the reason
 * for a given document is always the same. */
static int schema_apply(schema_ctx_t *c, const json_t *s, const json_t *v)
{
    const json_t *k;
    if (json_is_true(s))
        return 0;
    if (json_is_false(s))
        return schema_fail(c, "not allowed");
    if ((k = json_object_get(s, "$ref"))) {
        if (++c->depth > SCHEMA_MAX_DEPTH)
            return schema_fail(c, "$ref nested too deeply");
        int rc = schema_apply(c, schema_resolve(c->root, json_string_value(k)), v);
        c->depth--;
        if (rc < 0)
            return rc;
    }
    if ((k = json_object_get(s, "type")) && schema_check_type(c, k, v) < 0)
        return ROTOR_EINVALID;
    if ((k = json_object_get(s, "const")) && !schema_equal(k, v))
        return schema_fail_value(c, "must be ", k);
    if ((k = json_object_get(s, "enum")) && schema_check_enum(c, k, v) < 0)
        return ROTOR_EINVALID;
    if (json_is_string(v))
        return schema_check_string(c, s, v);
    if (json_is_number(v))
        return schema_check_number(c, s, v);
    if (json_is_object(v))
        return schema_check_object(c, s, v);
    if (json_is_array(v))
        return schema_check_array(c, s, v);
    return 0;
}

int schema_validate(const char *type, const json_t *doc, char *reason, size_t reasonlen)
{
    char why[160] = "";
    if (reason && reasonlen)
        reason[0] = '\0';
    if (!type || !schema_known(type))
        return ROTOR_ENOTFOUND;
    const json_t *root = schema_get(type, why, sizeof why);
    if (!root) {
        if (reason && reasonlen)
            snprintf(reason, reasonlen, "schema of %s is broken: %s", type, why);
        return ROTOR_EFAIL;
    }
    schema_ctx_t c = {.root = root, .reason = reason, .reasonlen = reasonlen};
    if (!doc)
        return schema_fail(&c, "no document");
    return schema_apply(&c, root, doc);
}
