/* owner.h: which partitions of the commands topic this process owns, and under which epoch
 * (prefix owner_). A partition assigned by the consumer group is owned only once it is claimed
 * in the journal (rotor.owners): the claim bumps the partition's epoch, and every rotation write
 * carries it (journal_fence_t), so a process that lost a partition can no longer write for its
 * secrets. Claims are made again when the topic's partition count changes. */
#ifndef ROTOR_OWNER_H
#define ROTOR_OWNER_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "journal.h"

typedef struct owner_s owner_t;

/* changed runs after ownership changed (a claim made, a partition revoked, the count changed).
 * journal is borrowed and must outlive the handle. */
owner_t *owner_new(uv_loop_t *loop, journal_t *journal, void (*changed)(void *arg), void *arg);

/* Partitions assigned (assigned = true) or revoked by the consumer group. */
void owner_assign(owner_t *o, const int32_t *parts, int n, bool assigned);

/* The commands topic's partition count (-1 = unknown): a new count is claimed again. */
void owner_set_count(owner_t *o, int32_t nparts);

/* The claim under which this process may write for partition part: true and *out when part is
 * assigned here and claimed under the current partition count. */
bool owner_fence(const owner_t *o, int32_t part, journal_fence_t *out);

/* Partition part is assigned here but has no claim in force: its claim is still to come, failed
 * (retried), or another process claimed it since (lost, until the next assignment). */
bool owner_claim_pending(const owner_t *o, int32_t part);

/* The journal refused a write made under f: another process claimed the partition since. It is
 * not owned here again before the consumer group assigns it anew. */
void owner_lost(owner_t *o, const journal_fence_t *f);

/* Stops claiming (closes the retry timer); results still to come are ignored. The memory is
 * freed by owner_free() once the loop is done. */
void owner_stop(owner_t *o);
void owner_free(owner_t *o);

#endif
