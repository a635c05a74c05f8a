/* fuzz_event.c: event_parse on arbitrary bytes, in structured mode and in binary mode with
 * headers taken from the input, checking the parser's contract on every outcome. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "event.h"
#include "rotor.h"
#include "util.h"

#define FUZZ_MAX_HEADERS 16

typedef struct {
    event_header_t h[FUZZ_MAX_HEADERS];
    size_t n;
} fuzz_headers_t;

/* The contract of event.h: success fills every required field and an object as data; failure
 * is ROTOR_EINVALID with a reason and leaves the event cleared. */
static void check_parse(const uint8_t *data, size_t size, const event_header_t *h, size_t nh,
                        size_t max_bytes)
{
    event_t ev;
    memset(&ev, 0x5a, sizeof ev); /* garbage in: the parser must not read or keep it */
    char reason[256] = "";
    int rc = event_parse(data, size, h, nh, max_bytes, &ev, reason, sizeof reason);
    if (rc == 0) {
        if (!ev.id || !ev.type || !ev.source || !json_is_object(ev.data))
            abort();
        if (size > max_bytes)
            abort();
        event_clear(&ev);
        return;
    }
    if (rc != ROTOR_EINVALID || reason[0] == '\0' || strlen(reason) >= sizeof reason)
        abort();
    if (ev.id || ev.type || ev.source || ev.subject || ev.time || ev.traceparent || ev.data)
        abort();
}

/* A header block "name:value\n..." ended by an empty line becomes Kafka headers; the rest of the
 * input is the message value. Names and values are exact-size heap copies so ASan sees any read
 * past them. Returns the offset of the value, or 0 when the input has no header block. */
static size_t split_headers(const uint8_t *data, size_t size, fuzz_headers_t *hs)
{
    const uint8_t *end = memmem(data, size, "\n\n", 2);
    if (!end)
        return 0;
    size_t pos = 0, stop = (size_t)(end - data) + 1;
    while (pos < stop && hs->n < FUZZ_MAX_HEADERS) {
        const uint8_t *nl = memchr(data + pos, '\n', stop - pos);
        size_t linelen = (size_t)(nl - (data + pos));
        const uint8_t *colon = memchr(data + pos, ':', linelen);
        size_t namelen = colon ? (size_t)(colon - (data + pos)) : linelen;
        char *name = util_malloc(namelen + 1);
        memcpy(name, data + pos, namelen);
        name[namelen] = '\0';
        event_header_t *h = &hs->h[hs->n++];
        h->name = name;
        h->value = NULL; /* a header without ':' has a NULL value, as librdkafka allows */
        h->len = 0;
        if (colon) {
            h->len = linelen - namelen - 1;
            void *v = util_malloc(h->len ? h->len : 1);
            memcpy(v, colon + 1, h->len);
            h->value = v;
        }
        pos += linelen + 1;
    }
    return (size_t)(end - data) + 2;
}

static void free_headers(fuzz_headers_t *hs)
{
    for (size_t i = 0; i < hs->n; i++) {
        free((void *)hs->h[i].name);
        free((void *)hs->h[i].value);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    check_parse(data, size, NULL, 0, 1 << 20);
    /* A limit one byte short must refuse the message whatever it holds. */
    if (size > 0)
        check_parse(data, size, NULL, 0, size - 1);

    fuzz_headers_t hs = {.n = 0};
    size_t off = split_headers(data, size, &hs);
    if (hs.n > 0) {
        size_t vlen = size - off;
        uint8_t *value = util_malloc(vlen ? vlen : 1);
        memcpy(value, data + off, vlen);
        check_parse(value, vlen, hs.h, hs.n, 1 << 20);
        free(value);
    }
    free_headers(&hs);
    return 0;
}
