/* seen.h: a bounded, in-memory memo of request ids that the journal holds as applied. */
#ifndef ROTOR_SEEN_H
#define ROTOR_SEEN_H

#include <stddef.h>

/* Request ids (CloudEvent ids of rotation.requested) this process has seen the journal commit,
 * each with the rotation it started or was absorbed into. Only a cache of journal facts, which
 * never change once committed (history is append-only, a rotation's request_id is fixed): a
 * hit may answer a redelivered request without a round trip; a miss says nothing, and the
 * journal is asked. The oldest entries go first once `capacity` is reached. */
typedef struct seen_s seen_t;

/* Returns a new, empty memo of at most capacity (>= 1) entries; the caller owns it (seen_free). */
seen_t *seen_new(size_t capacity);
void seen_free(seen_t *s);

/* Records that the journal holds request_id as applied to rotation_id (both copied; ids longer
 * than the journal's columns are not recorded). Recording a known id again updates it. */
void seen_add(seen_t *s, const char *request_id, const char *rotation_id);

/* The rotation the journal names for request_id, or NULL when not remembered. The string is
 * owned by s, valid until the next seen_add or seen_free. */
const char *seen_find(const seen_t *s, const char *request_id);

/* Entries held now (for tests). */
size_t seen_count(const seen_t *s);

#endif
