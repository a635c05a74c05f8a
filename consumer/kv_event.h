/* kv_event.h: Azure Key Vault's Event Grid notifications (delivered through Event Hubs) as input.
 *
 * These are Microsoft's events, not rotor's catalogue: events/<type>.schema.json do not describe
 * them and event_parse() would refuse them as unknown types. This module reads both of the schemas
 * an Event Grid subscription can deliver in:
 *  - Event Grid schema: {id, topic, subject, eventType, eventTime, data, dataVersion, ...};
 *  - CloudEvents 1.0 schema: {specversion, id, source, type, subject, time, data}, structured, or
 *    binary (ce_* Kafka headers, the value is data); the envelope is read by event.c
 *    (event_load_envelope), the only module that reads CloudEvents, and the fields here.
 * A message holds one event or a JSON array of them. Data keys come in PascalCase (Id, VaultName,
 * ObjectType, ObjectName, Version, NBF, EXP) or camelCase (id, vaultName, ...); NBF and EXP are
 * Unix seconds as a string of digits, a number, or null. Event Grid's own Kafka headers
 * (aeg-event-type, aeg-subscription-name, aeg-data-version, ...) are accepted; aeg-event-type, when
 * present, must say Notification. Examples and refused inputs: events/keyvault/. */
#ifndef ROTOR_KV_EVENT_H
#define ROTOR_KV_EVENT_H

#include <stddef.h>
#include <stdint.h>

#include "event.h"

typedef enum {
    KV_NEAR_EXPIRY, /* Microsoft.KeyVault.SecretNearExpiry */
    KV_EXPIRED,     /* Microsoft.KeyVault.SecretExpired */
    KV_NEW_VERSION, /* Microsoft.KeyVault.SecretNewVersionCreated */
    KV_IGNORED,     /* any other Microsoft.KeyVault.* type (certificates, keys, access policy) */
} kv_kind_t;

/* One Key Vault event. Strings are empty when unknown; Key Vault compares vault and object names
 * case-insensitively, so should whoever maps them to a managed secret. For a KV_IGNORED event only
 * kind, type, id and event_time are sure to be set: the data of types rotor does not act on is
 * read on a best-effort basis and never refused. */
typedef struct {
    kv_kind_t kind;
    char type[96];       /* the event type as delivered */
    char id[128];        /* the event's id (Event Grid id or CloudEvents id): unique per delivery */
    char object_id[256]; /* data.Id: https://VAULT.vault.azure.net/secrets/NAME/VERSION */
    char vault[128];     /* vault name: 3-24 of [0-9a-zA-Z-] */
    char object_type[32]; /* data.ObjectType ("Secret"), empty when absent */
    char name[128];       /* secret name: 1-127 of [0-9a-zA-Z-] */
    char version[64];     /* the version the event is about: 1-63 of [0-9a-zA-Z] */
    int64_t nbf_ms;       /* not-before, ms since the epoch; 0 when null or absent */
    int64_t exp_ms;       /* expiry, ms since the epoch; 0 when null or absent */
    char event_time[40];  /* eventTime / time as delivered (RFC 3339), empty when absent */
} kv_event_t;

/* "near-expiry", "expired", "new-version", "ignored" (static strings). */
const char *kv_kind_name(kv_kind_t kind);

/* Parses one Kafka message (value and headers borrowed) into up to max events, written to out
 * (caller-owned, max entries). Returns the count (>= 0: an empty array holds none) or
 * ROTOR_EINVALID with a one-line reason for the dead-letter topic: the size limit is checked first
 * ("message of N bytes exceeds the limit of M", as event_parse), then JSON, then each event; a
 * reason about one event of an array starts with its JSON pointer ("/2/data/EXP: ..."). One bad
 * event refuses the whole message, which is dead-lettered as a unit; so does an array of more than
 * max events. Vault name: data VaultName, else the /vaults/NAME of topic or source, else the host
 * of data.Id; any two of these that disagree refuse the event. Object name: ObjectName, else
 * subject. Version: Version, else the last segment of data.Id. Anything that is not a
 * Microsoft.KeyVault.* event is refused. */
int kv_event_parse(const void *value, size_t len, const event_header_t *headers, size_t nheaders,
                   size_t max_bytes, kv_event_t *out, int max, char *reason, size_t reasonlen);

#endif
