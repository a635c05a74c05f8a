/* fuzz_kv_event.c: kv_event_parse (Key Vault's Event Grid notifications) on arbitrary bytes, as
 * a structured message and in binary mode with Kafka headers taken from the input, checking the
 * parser's contract on every outcome. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "fuzz_common.h"
#include "kv_event.h"
#include "rotor.h"
#include "util.h"

#define FUZZ_MAX_EVENTS 8
#define FUZZ_MAX_HEADERS 16

/* True when the n bytes at p are all zero. */
static bool all_zero(const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) {
        if (b[i])
            return false;
    }
    return true;
}

static bool name_ok(const char *s, size_t min, size_t max, bool dash)
{
    size_t n = strnlen(s, max + 1);
    if (n < min || n > max)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              (dash && c == '-')))
            return false;
    }
    return true;
}

/* The contract of kv_event.h: a count within max whose events are Key Vault events (those rotor
 * acts on with a valid vault, name and version), or ROTOR_EINVALID with a one-line UTF-8 reason
 * and nothing of the message left in out. */
static int check_parse(const uint8_t *data, size_t size, const event_header_t *h, size_t nh,
                       size_t max_bytes, int max)
{
    kv_event_t out[FUZZ_MAX_EVENTS];
    memset(out, 0, sizeof out);
    char reason[256] = "";
    int rc = kv_event_parse(data, size, h, nh, max_bytes, out, max, reason, sizeof reason);
    if (rc >= 0) {
        if (rc > max || size > max_bytes)
            abort();
        for (int i = 0; i < rc; i++) {
            const kv_event_t *ev = &out[i];
            if (strncmp(ev->type, "Microsoft.KeyVault.", 19) != 0 || !ev->id[0])
                abort();
            if (ev->kind == KV_IGNORED)
                continue;
            if (!name_ok(ev->vault, 3, 24, true) || !name_ok(ev->name, 1, 127, true) ||
                !name_ok(ev->version, 1, 63, false))
                abort();
            if (ev->nbf_ms < 0 || ev->exp_ms < 0)
                abort();
        }
        for (int i = rc; i < FUZZ_MAX_EVENTS; i++) {
            if (!all_zero(&out[i], sizeof out[i]))
                abort(); /* written past the count */
        }
        return rc;
    }
    if (rc != ROTOR_EINVALID || !fuzz_reason_ok(reason, sizeof reason) || strchr(reason, '\n'))
        fuzz_fail("refused without a one-line UTF-8 reason", reason);
    if (!all_zero(out, sizeof out))
        abort();
    return rc;
}

typedef struct {
    event_header_t h[FUZZ_MAX_HEADERS];
    size_t n;
} fuzz_headers_t;

/* "name:value" lines become Kafka headers (exact-size heap copies; a line without ':' is a
 * header with a NULL value, as librdkafka allows). */
static void parse_headers(const char *block, fuzz_headers_t *hs)
{
    const char *p = block;
    while (*p && hs->n < FUZZ_MAX_HEADERS) {
        size_t linelen = strcspn(p, "\n");
        const char *colon = memchr(p, ':', linelen);
        size_t namelen = colon ? (size_t)(colon - p) : linelen;
        event_header_t *h = &hs->h[hs->n++];
        h->name = fuzz_strndup((const uint8_t *)p, namelen);
        h->value = NULL;
        h->len = 0;
        if (colon) {
            h->len = linelen - namelen - 1;
            void *v = util_malloc(h->len ? h->len : 1);
            memcpy(v, colon + 1, h->len);
            h->value = v;
        }
        p += linelen + (p[linelen] == '\n');
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* A limit below the count must refuse the whole array (asked only of arrays, for speed). */
    if (check_parse(data, size, NULL, 0, 1 << 20, FUZZ_MAX_EVENTS) > 1)
        check_parse(data, size, NULL, 0, 1 << 20, 1);
    if (size > 0)
        check_parse(data, size, NULL, 0, size - 1, FUZZ_MAX_EVENTS);

    char *block;
    size_t off = fuzz_split(data, size, &block);
    if (block) {
        fuzz_headers_t hs = {.n = 0};
        parse_headers(block, &hs);
        size_t vlen = size - off;
        uint8_t *value = util_malloc(vlen ? vlen : 1);
        memcpy(value, data + off, vlen);
        check_parse(value, vlen, hs.h, hs.n, 1 << 20, FUZZ_MAX_EVENTS);
        free(value);
        for (size_t i = 0; i < hs.n; i++) {
            free((void *)hs.h[i].name);
            free((void *)hs.h[i].value);
        }
        free(block);
    }
    return 0;
}
