/* kv_event.c: Key Vault's Event Grid notifications (Event Grid or CloudEvents schema) as input. */
#include "kv_event.h"

#include <ctype.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>

#include "rotor.h"
#include "util.h"

#define KV_TYPE_PREFIX "Microsoft.KeyVault."
/* 9999-12-31T23:59:59Z: larger NBF/EXP values are garbage, and would overflow as milliseconds. */
#define KV_MAX_SECONDS 253402300799LL
/* No reason quotes more than this many bytes of any one input value. */
#define KV_QUOTE_MAX 64

static const struct {
    const char *type;
    kv_kind_t kind;
} kv_types[] = {
    {KV_TYPE_PREFIX "SecretNearExpiry", KV_NEAR_EXPIRY},
    {KV_TYPE_PREFIX "SecretExpired", KV_EXPIRED},
    {KV_TYPE_PREFIX "SecretNewVersionCreated", KV_NEW_VERSION},
};

const char *kv_kind_name(kv_kind_t kind)
{
    static const char *const names[] = {"near-expiry", "expired", "new-version", "ignored"};
    return (unsigned)kind < sizeof names / sizeof names[0] ? names[kind] : "unknown";
}

/* Where the attributes live in each schema Event Grid can deliver in. */
typedef struct {
    const char *id, *type, *source, *subject, *time;
    bool time_required;
} kv_schema_t;

static const kv_schema_t kv_eventgrid = {"id", "eventType", "topic", "subject", "eventTime", true};
static const kv_schema_t kv_cloudevents = {"id", "type", "source", "subject", "time", false};

/* Data keys arrive in either case convention, depending on the subscription's schema. */
typedef struct {
    const char *pascal, *camel;
} kv_key_t;

static const kv_key_t kv_key_id = {"Id", "id"}, kv_key_vault = {"VaultName", "vaultName"},
                      kv_key_otype = {"ObjectType", "objectType"},
                      kv_key_oname = {"ObjectName", "objectName"},
                      kv_key_version = {"Version", "version"}, kv_key_nbf = {"NBF", "nbf"},
                      kv_key_exp = {"EXP", "exp"};

/* Parsing state of one message: where reasons go and the JSON pointer of the current event. */
typedef struct {
    char *reason;
    size_t reasonlen;
    char at[24]; /* "" for a single event, "/3" for the fourth of an array */
} kv_ctx_t;

static int kv_fail(kv_ctx_t *c, const char *where, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Writes "<pointer>: <what>"; the pointer of the envelope itself is "/". */
static int kv_fail(kv_ctx_t *c, const char *where, const char *fmt, ...)
{
    if (!c->reason || !c->reasonlen)
        return ROTOR_EINVALID;
    int n = snprintf(c->reason, c->reasonlen, "%s%s: ", c->at, where);
    if (!*c->at && !*where)
        n = snprintf(c->reason, c->reasonlen, "/: ");
    if (n >= 0 && (size_t)n < c->reasonlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(c->reason + n, c->reasonlen - (size_t)n, fmt, ap);
        va_end(ap);
    }
    util_utf8_trim(c->reason); /* cut mid-character when it overflows */
    return ROTOR_EINVALID;
}

/* Copies at most KV_QUOTE_MAX bytes of s into out (>= KV_QUOTE_MAX + 1), cut at a UTF-8
 * boundary, control characters as spaces, so that a reason quotes little of the input and stays
 * one line of valid UTF-8. */
static const char *kv_quote(const char *s, char *out)
{
    size_t n = strlen(s);
    if (n > KV_QUOTE_MAX) {
        n = KV_QUOTE_MAX;
        while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80)
            n--;
    }
    for (size_t i = 0; i < n; i++)
        out[i] = (unsigned char)s[i] < 0x20 ? ' ' : s[i];
    out[n] = '\0';
    return out;
}

static const char *kv_json_kind(const json_t *v)
{
    static const char *const kinds[] = {"an object", "an array",  "a string",  "a number",
                                        "a number",  "a boolean", "a boolean", "null"};
    return kinds[json_typeof(v)];
}

/* Copies the string v into dst. A missing (NULL) value is fine unless required. */
static int kv_copy(kv_ctx_t *c, const char *where, const json_t *v, char *dst, size_t dstlen,
                   bool required)
{
    dst[0] = '\0';
    if (!v || (json_is_null(v) && !required)) {
        if (required)
            return kv_fail(c, where, "required property missing");
        return 0;
    }
    if (!json_is_string(v))
        return kv_fail(c, where, "expected a string, got %s", kv_json_kind(v));
    size_t n = json_string_length(v);
    if (required && n == 0)
        return kv_fail(c, where, "must not be empty");
    if (n >= dstlen || memchr(json_string_value(v), '\0', n))
        return kv_fail(c, where, "longer than %zu bytes or holds a NUL", dstlen - 1);
    memcpy(dst, json_string_value(v), n + 1);
    return 0;
}

/* True when s is min..max characters, each alphanumeric or (if dash) '-'. */
static bool kv_name_ok(const char *s, size_t min, size_t max, bool dash)
{
    size_t n = strlen(s);
    if (n < min || n > max)
        return false;
    for (const char *p = s; *p; p++) {
        if (!isalnum((unsigned char)*p) && !(dash && *p == '-'))
            return false;
    }
    return true;
}

/* Finds a data key in either convention; both at once is ambiguous, as duplicate keys are. */
static int kv_data_get(kv_ctx_t *c, const json_t *data, const kv_key_t *k, const json_t **v,
                       char *where, size_t wherelen)
{
    const json_t *p = json_object_get(data, k->pascal), *cc = json_object_get(data, k->camel);
    snprintf(where, wherelen, "/data/%s", p ? k->pascal : k->camel);
    if (p && cc)
        return kv_fail(c, "/data", "both \"%s\" and \"%s\" present", k->pascal, k->camel);
    *v = p ? p : cc;
    return 0;
}

static int kv_data_string(kv_ctx_t *c, const json_t *data, const kv_key_t *k, char *dst,
                          size_t dstlen, char *where, size_t wherelen)
{
    const json_t *v = NULL;
    if (kv_data_get(c, data, k, &v, where, wherelen) < 0)
        return ROTOR_EINVALID;
    return kv_copy(c, where, v, dst, dstlen, false);
}

/* NBF/EXP: Unix seconds as a string of digits, a number, or null (0). */
static int kv_data_seconds(kv_ctx_t *c, const json_t *data, const kv_key_t *k, int64_t *ms)
{
    char where[32];
    const json_t *v = NULL;
    *ms = 0;
    if (kv_data_get(c, data, k, &v, where, sizeof where) < 0)
        return ROTOR_EINVALID;
    long long s = 0;
    if (!v || json_is_null(v))
        return 0;
    if (json_is_string(v)) {
        const char *t = json_string_value(v);
        size_t n = json_string_length(v);
        if (n == 0 || n > 12 || strspn(t, "0123456789") != n)
            return kv_fail(c, where, "expected Unix seconds as a string of digits");
        s = strtoll(t, NULL, 10);
    } else if (json_is_integer(v)) {
        s = json_integer_value(v);
    } else if (json_is_real(v)) {
        double d = json_real_value(v);
        if (d != floor(d) || d < 0 || d > (double)KV_MAX_SECONDS)
            return kv_fail(c, where, "expected whole Unix seconds");
        s = (long long)d;
    } else {
        return kv_fail(c, where, "expected Unix seconds as a string, a number or null, got %s",
                       kv_json_kind(v));
    }
    if (s < 0 || s > KV_MAX_SECONDS)
        return kv_fail(c, where, "%lld is out of range", s);
    *ms = (int64_t)s * 1000;
    return 0;
}

/* The parts of data.Id, "https://HOST/COLLECTION/NAME[/VERSION]"; empty when absent. */
typedef struct {
    char vault[128], name[128], version[64];
} kv_url_t;

/* Copies the n bytes at s into dst, or fails when they do not fit. */
static bool kv_take(const char *s, size_t n, char *dst, size_t dstlen)
{
    if (n >= dstlen)
        return false;
    memcpy(dst, s, n);
    dst[n] = '\0';
    return true;
}

static int kv_parse_url(kv_ctx_t *c, const char *where, const char *url, kv_url_t *u)
{
    memset(u, 0, sizeof *u);
    char q[KV_QUOTE_MAX + 1];
    if (strncasecmp(url, "https://", 8) != 0)
        return kv_fail(c, where, "\"%s\" is not an https URL", kv_quote(url, q));
    const char *host = url + 8, *seg[4] = {0};
    size_t len[4] = {0}, nseg = 0;
    size_t hlen = strcspn(host, "/");
    for (const char *p = host + hlen; *p == '/' && p[1] && nseg < 4; nseg++) {
        seg[nseg] = p + 1;
        len[nseg] = strcspn(p + 1, "/");
        p = seg[nseg] + len[nseg];
    }
    /* Only a vault's own DNS name (NAME.vault.azure.net, .vault.azure.cn, .vault.usgovcloudapi.net)
     * names the vault; another host (a proxy, an emulator) names nothing. */
    const char *dot = memchr(host, '.', hlen);
    if (dot && strncasecmp(dot, ".vault.", 7) == 0 &&
        !kv_take(host, (size_t)(dot - host), u->vault, sizeof u->vault))
        u->vault[0] = '\0';
    bool ok = hlen > 0 && nseg >= 2 && nseg <= 3 &&
              kv_take(seg[1], len[1], u->name, sizeof u->name) &&
              (nseg < 3 || kv_take(seg[2], len[2], u->version, sizeof u->version));
    if (!ok)
        return kv_fail(c, where, "\"%s\" is not https://VAULT.vault.azure.net/secrets/NAME/VERSION",
                       kv_quote(url, q));
    return 0;
}

/* The NAME of ".../vaults/NAME[/...]" in an ARM resource id (case-insensitive, as ARM is). */
static void kv_vault_from_topic(const char *topic, char *dst, size_t dstlen)
{
    dst[0] = '\0';
    const char *hit = NULL;
    for (const char *p = topic; (p = strcasestr(p, "/vaults/")); p++)
        hit = p;
    if (hit) {
        hit += strlen("/vaults/");
        kv_take(hit, strcspn(hit, "/"), dst, dstlen);
    }
}

/* Picks the first known vault name and refuses any other that disagrees: a vault named in the
 * data but not in the topic is a mangled or forged event. */
static int kv_pick_vault(kv_ctx_t *c, kv_event_t *ev, const char *vault_at, const char *topic,
                         const char *topic_at, const char *from_url, const char *url_at)
{
    char from_topic[128];
    kv_vault_from_topic(topic, from_topic, sizeof from_topic);
    const struct {
        const char *name, *where;
    } cand[] = {{ev->vault, vault_at}, {from_topic, topic_at}, {from_url, url_at}};
    const char *chosen = NULL, *chosen_at = NULL;
    char q1[KV_QUOTE_MAX + 1], q2[KV_QUOTE_MAX + 1];
    for (size_t i = 0; i < sizeof cand / sizeof cand[0]; i++) {
        if (!*cand[i].name)
            continue;
        if (!chosen) {
            chosen = cand[i].name;
            chosen_at = cand[i].where;
        } else if (strcasecmp(chosen, cand[i].name) != 0) {
            return kv_fail(c, cand[i].where, "vault \"%s\" disagrees with \"%s\" from %s",
                           kv_quote(cand[i].name, q1), kv_quote(chosen, q2), chosen_at);
        }
    }
    if (!chosen)
        return kv_fail(c, "/data", "no vault name (VaultName, topic /vaults/NAME or Id)");
    if (!kv_name_ok(chosen, 3, 24, true))
        return kv_fail(c, chosen_at, "vault name \"%s\" is not 3-24 of [0-9a-zA-Z-]",
                       kv_quote(chosen, q1));
    if (chosen != ev->vault)
        util_strlcpy(ev->vault, chosen, sizeof ev->vault);
    return 0;
}

/* What the envelope gave that data may fall back on (borrowed, "" when absent). */
typedef struct {
    const char *topic, *topic_at, *subject, *subject_at;
} kv_fallback_t;

/* Object id, vault and type: the Id URL backs up the vault name and the version. */
static int kv_read_object(kv_ctx_t *c, const json_t *data, const kv_fallback_t *fb, kv_event_t *ev,
                          kv_url_t *url, char *url_at)
{
    char vault_at[32], where[32];
    if (kv_data_string(c, data, &kv_key_id, ev->object_id, sizeof ev->object_id, url_at, 32) < 0 ||
        (*ev->object_id && kv_parse_url(c, url_at, ev->object_id, url) < 0) ||
        kv_data_string(c, data, &kv_key_vault, ev->vault, sizeof ev->vault, vault_at,
                       sizeof vault_at) < 0 ||
        kv_pick_vault(c, ev, vault_at, fb->topic, fb->topic_at, url->vault, url_at) < 0)
        return ROTOR_EINVALID;
    return kv_data_string(c, data, &kv_key_otype, ev->object_type, sizeof ev->object_type, where,
                          sizeof where);
}

/* Reads data into ev's object, vault, name, version and time fields. */
static int kv_read_data(kv_ctx_t *c, const json_t *data, const kv_fallback_t *fb, kv_event_t *ev)
{
    char where[32], url_at[32], q[KV_QUOTE_MAX + 1];
    if (!data)
        return kv_fail(c, "/data", "required property missing");
    if (!json_is_object(data))
        return kv_fail(c, "/data", "expected an object, got %s", kv_json_kind(data));
    kv_url_t url = {0};
    if (kv_read_object(c, data, fb, ev, &url, url_at) < 0 ||
        kv_data_string(c, data, &kv_key_oname, ev->name, sizeof ev->name, where, sizeof where) < 0)
        return ROTOR_EINVALID;
    if (!*ev->name) {
        util_strlcpy(where, fb->subject_at, sizeof where);
        if (!kv_take(fb->subject, strlen(fb->subject), ev->name, sizeof ev->name))
            return kv_fail(c, where, "longer than %zu bytes", sizeof ev->name - 1);
    }
    if (!kv_name_ok(ev->name, 1, 127, true))
        return kv_fail(c, where, "secret name \"%s\" is not 1-127 of [0-9a-zA-Z-]",
                       kv_quote(ev->name, q));
    if (kv_data_string(c, data, &kv_key_version, ev->version, sizeof ev->version, where,
                       sizeof where) < 0)
        return ROTOR_EINVALID;
    if (!*ev->version && *url.version) {
        util_strlcpy(ev->version, url.version, sizeof ev->version);
        util_strlcpy(where, url_at, sizeof where);
    }
    if (!*ev->version)
        return kv_fail(c, "/data", "no version (Version, or the last segment of Id)");
    if (!kv_name_ok(ev->version, 1, 63, false))
        return kv_fail(c, where, "version \"%s\" is not 1-63 of [0-9a-zA-Z]",
                       kv_quote(ev->version, q));
    return kv_data_seconds(c, data, &kv_key_nbf, &ev->nbf_ms) < 0 ||
                   kv_data_seconds(c, data, &kv_key_exp, &ev->exp_ms) < 0
               ? ROTOR_EINVALID
               : 0;
}

/* A secret event about something other than a secret is not what its type says. */
static int kv_check_object_type(kv_ctx_t *c, const kv_event_t *ev, const json_t *data)
{
    char q[KV_QUOTE_MAX + 1];
    if (!*ev->object_type || strcasecmp(ev->object_type, "Secret") == 0)
        return 0;
    return kv_fail(c, json_object_get(data, "ObjectType") ? "/data/ObjectType" : "/data/objectType",
                   "\"%s\" is not Secret", kv_quote(ev->object_type, q));
}

static kv_kind_t kv_kind_of(const char *type)
{
    for (size_t i = 0; i < sizeof kv_types / sizeof kv_types[0]; i++) {
        if (strcmp(kv_types[i].type, type) == 0)
            return kv_types[i].kind;
    }
    return KV_IGNORED;
}

/* The envelope of either schema; s names its attributes. */
static int kv_read_envelope(kv_ctx_t *c, const json_t *env, const kv_schema_t *s, kv_event_t *ev,
                            char *topic, size_t topiclen, char *subject, size_t subjectlen)
{
    char where[32], q[KV_QUOTE_MAX + 1];
#define KV_AT(name) (snprintf(where, sizeof where, "/%s", (name)), where)
    const json_t *type = json_object_get(env, s->type);
    /* Anything else is refused as what it is, however long its type. */
    if (json_is_string(type) &&
        strncmp(json_string_value(type), KV_TYPE_PREFIX, strlen(KV_TYPE_PREFIX)) != 0)
        return kv_fail(c, KV_AT(s->type), "\"%s\" is not a Key Vault event",
                       kv_quote(json_string_value(type), q));
    if (kv_copy(c, KV_AT(s->type), type, ev->type, sizeof ev->type, true) < 0)
        return ROTOR_EINVALID;
    ev->kind = kv_kind_of(ev->type);
    if (kv_copy(c, KV_AT(s->id), json_object_get(env, s->id), ev->id, sizeof ev->id, true) < 0 ||
        kv_copy(c, KV_AT(s->source), json_object_get(env, s->source), topic, topiclen, true) < 0 ||
        kv_copy(c, KV_AT(s->subject), json_object_get(env, s->subject), subject, subjectlen,
                false) < 0 ||
        kv_copy(c, KV_AT(s->time), json_object_get(env, s->time), ev->event_time,
                sizeof ev->event_time, s->time_required) < 0)
        return ROTOR_EINVALID;
    int64_t t;
    if (*ev->event_time && util_parse_time(ev->event_time, &t) < 0)
        return kv_fail(c, where, "\"%s\" is not an RFC 3339 time", kv_quote(ev->event_time, q));
#undef KV_AT
    if (s == &kv_cloudevents) {
        const json_t *v = json_object_get(env, "specversion");
        if (!json_is_string(v) || strcmp(json_string_value(v), "1.0") != 0)
            return kv_fail(c, "/specversion", "expected \"1.0\"");
    }
    return 0;
}

/* Reads one event object of either schema into ev. */
static int kv_parse_one(kv_ctx_t *c, const json_t *env, kv_event_t *ev)
{
    memset(ev, 0, sizeof *ev);
    if (!json_is_object(env))
        return kv_fail(c, "", "expected an event object, got %s", kv_json_kind(env));
    const kv_schema_t *s = json_object_get(env, "specversion") ? &kv_cloudevents
                           : json_object_get(env, "eventType") ? &kv_eventgrid
                                                               : NULL;
    if (!s)
        return kv_fail(c, "",
                       "neither an Event Grid event (eventType) nor a CloudEvent "
                       "(specversion)");
    char topic[512], subject[256], topic_at[16], subject_at[16];
    if (kv_read_envelope(c, env, s, ev, topic, sizeof topic, subject, sizeof subject) < 0)
        return ROTOR_EINVALID;
    snprintf(topic_at, sizeof topic_at, "/%s", s->source);
    snprintf(subject_at, sizeof subject_at, "/%s", s->subject);
    const kv_fallback_t fb = {topic, topic_at, subject, subject_at};
    const json_t *data = json_object_get(env, "data");
    if (ev->kind != KV_IGNORED)
        return kv_read_data(c, data, &fb, ev) < 0 || kv_check_object_type(c, ev, data) < 0
                   ? ROTOR_EINVALID
                   : 0;
    /* Not ours: whatever of the data reads cleanly helps the log line, the rest stays empty. */
    kv_ctx_t quiet = {0};
    kv_event_t best = *ev;
    if (kv_read_data(&quiet, data, &fb, &best) == 0)
        *ev = best;
    return 0;
}

/* Event Grid marks what it delivers with aeg-event-type; only notifications carry events. */
static int kv_check_headers(kv_ctx_t *c, const event_header_t *h, size_t n)
{
    static const char want[] = "Notification";
    for (size_t i = 0; i < n; i++) {
        if (!h[i].name || strcasecmp(h[i].name, "aeg-event-type") != 0 || !h[i].value)
            continue;
        if (h[i].len != strlen(want) || memcmp(h[i].value, want, h[i].len) != 0) {
            char v[KV_QUOTE_MAX + 2], q[KV_QUOTE_MAX + 1];
            size_t l = h[i].len <= KV_QUOTE_MAX ? h[i].len : KV_QUOTE_MAX + 1;
            memcpy(v, h[i].value, l);
            v[l] = '\0';
            util_utf8_trim(v); /* a header is bytes: quote only what is UTF-8 */
            if (c->reason && c->reasonlen)
                snprintf(c->reason, c->reasonlen, "header aeg-event-type: \"%s\" is not %s",
                         kv_quote(v, q), want);
            return ROTOR_EINVALID;
        }
    }
    return 0;
}

int kv_event_parse(const void *value, size_t len, const event_header_t *headers, size_t nheaders,
                   size_t max_bytes, kv_event_t *out, int max, char *reason, size_t reasonlen)
{
    kv_ctx_t c = {reason, reasonlen, ""};
    json_t *doc = event_load_envelope(value, len, headers, nheaders, max_bytes, reason, reasonlen);
    if (!doc)
        return ROTOR_EINVALID;
    int rc = kv_check_headers(&c, headers, nheaders);
    size_t n = json_is_array(doc) ? json_array_size(doc) : 1;
    if (rc == 0 && (max < 0 || n > (size_t)max))
        rc = kv_fail(&c, "", "%zu events exceed the limit of %d per message", n, max);
    size_t i = 0;
    for (; rc == 0 && i < n; i++) {
        if (json_is_array(doc))
            snprintf(c.at, sizeof c.at, "/%zu", i);
        rc = kv_parse_one(&c, json_is_array(doc) ? json_array_get(doc, i) : doc, &out[i]);
    }
    json_decref(doc);
    if (rc < 0) {
        /* Nothing of a refused message is acted on, so leave nothing of it behind. */
        if (i > 0)
            memset(out, 0, i * sizeof *out);
        return rc;
    }
    return (int)n;
}
