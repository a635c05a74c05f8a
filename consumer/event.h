/* event.h: the only module that builds or reads CloudEvents JSON.
 *
 * Output is CloudEvents 1.0 structured mode (application/cloudevents+json). Input is structured
 * mode, or binary mode (ce_* Kafka headers, the value is the data). Every input is validated
 * against its type's schema from events/. Kafka key = the managed secret name = CloudEvents
 * subject. The catalogue of types is in events/README.md. */
#ifndef ROTOR_EVENT_H
#define ROTOR_EVENT_H

#include <jansson.h>
#include <stddef.h>

/* A Kafka header as rotor sees it (borrowed views). */
typedef struct {
    const char *name;
    const void *value; /* may be NULL */
    size_t len;
} event_header_t;

/* A parsed event. All strings are owned by the event; free with event_clear(). */
typedef struct {
    char *id;
    char *type;
    char *source;
    char *subject;     /* NULL if absent */
    char *time;        /* NULL if absent */
    char *traceparent; /* NULL if absent */
    json_t *data;      /* owned reference; an object (never NULL after a successful parse) */
} event_t;

/* Parses one Kafka message. max_bytes bounds the value. On success returns 0 and fills *ev.
 * On failure returns ROTOR_EINVALID and writes a one-line reason ("not valid JSON at line 1: ...",
 * "unknown event type \"x\"", "/data/secret: required property missing", "message of 2000000 bytes
 * exceeds the limit of 1048576") into reason; *ev is left cleared. */
int event_parse(const void *value, size_t len, const event_header_t *headers, size_t nheaders,
                size_t max_bytes, event_t *ev, char *reason, size_t reasonlen);

void event_clear(event_t *ev);

/* Reads a message's envelope without choosing a schema, for CloudEvents outside rotor's
 * catalogue (Key Vault's, through kv_event.c). Binary mode (ce_specversion header, unless
 * content-type says structured) gives an object of the ce_* attributes with the value as "data";
 * otherwise the value as it stands, any JSON value (Event Grid batches events in an array).
 * Checks the size limit first, as event_parse does. Returns a new reference the caller owns, or
 * NULL with the one-line reason. */
json_t *event_load_envelope(const void *value, size_t len, const event_header_t *headers,
                            size_t nheaders, size_t max_bytes, char *reason, size_t reasonlen);

/* Builds a structured-mode CloudEvent of type with a fresh id and the current time.
 * source is e.g. "/rotor/<host>"; subject the secret name; traceparent may be NULL.
 * Steals data (an object). Returns malloc'ed compact JSON the caller frees, or NULL if type has
 * no schema or the result fails its own schema (a programming error, logged). */
char *event_build(const char *type, const char *source, const char *subject, json_t *data,
                  const char *traceparent);

/* Header names used on dead-lettered messages. */
#define EVENT_DLQ_REASON "rotor-dlq-reason"
#define EVENT_DLQ_TOPIC "rotor-dlq-topic"
#define EVENT_DLQ_PARTITION "rotor-dlq-partition"
#define EVENT_DLQ_OFFSET "rotor-dlq-offset"

#endif
