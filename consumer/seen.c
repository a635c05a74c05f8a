/* seen.c: a bounded memo of applied request ids (a hash over a ring; the oldest is dropped). */
#include "seen.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

#define SEEN_REQ_MAX 128 /* journal_rot_t's request_id */
#define SEEN_ROT_MAX 37  /* a UUID */

typedef struct {
    char req[SEEN_REQ_MAX];
    char rot[SEEN_ROT_MAX];
    int32_t chain; /* next entry in the bucket, -1 at the end */
    uint32_t hash;
    bool used;
} seen_entry_t;

struct seen_s {
    seen_entry_t *ring; /* entries in insertion order; `next` is the oldest once full */
    int32_t *buckets;   /* first entry of each bucket, -1 when empty */
    size_t cap, nbuckets, next, count;
};

static uint32_t seen_hash(const char *s)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 16777619u;
    return h;
}

seen_t *seen_new(size_t capacity)
{
    seen_t *s = util_calloc(1, sizeof *s);
    s->cap = capacity ? capacity : 1;
    s->nbuckets = 1;
    while (s->nbuckets < s->cap * 2)
        s->nbuckets <<= 1;
    /* calloc'ed: pages of the ring not used yet stay untouched (idle RSS) */
    s->ring = util_calloc(s->cap, sizeof *s->ring);
    s->buckets = util_malloc(s->nbuckets * sizeof *s->buckets);
    for (size_t i = 0; i < s->nbuckets; i++)
        s->buckets[i] = -1;
    return s;
}

void seen_free(seen_t *s)
{
    if (!s)
        return;
    free(s->ring);
    free(s->buckets);
    free(s);
}

static int32_t seen_lookup(const seen_t *s, const char *req, uint32_t h)
{
    for (int32_t i = s->buckets[h & (s->nbuckets - 1)]; i >= 0; i = s->ring[i].chain) {
        if (s->ring[i].hash == h && strcmp(s->ring[i].req, req) == 0)
            return i;
    }
    return -1;
}

static void seen_unlink(seen_t *s, int32_t idx)
{
    int32_t *p = &s->buckets[s->ring[idx].hash & (s->nbuckets - 1)];
    while (*p != idx)
        p = &s->ring[*p].chain;
    *p = s->ring[idx].chain;
    s->ring[idx].used = false;
    s->count--;
}

void seen_add(seen_t *s, const char *request_id, const char *rotation_id)
{
    if (!request_id || !rotation_id || strlen(request_id) >= SEEN_REQ_MAX ||
        strlen(rotation_id) >= SEEN_ROT_MAX)
        return;
    uint32_t h = seen_hash(request_id);
    int32_t i = seen_lookup(s, request_id, h);
    if (i >= 0) {
        util_strlcpy(s->ring[i].rot, rotation_id, sizeof s->ring[i].rot);
        return;
    }
    i = (int32_t)s->next;
    s->next = (s->next + 1) % s->cap;
    if (s->ring[i].used)
        seen_unlink(s, i); /* the oldest */
    seen_entry_t *e = &s->ring[i];
    util_strlcpy(e->req, request_id, sizeof e->req);
    util_strlcpy(e->rot, rotation_id, sizeof e->rot);
    e->hash = h;
    e->used = true;
    int32_t *b = &s->buckets[h & (s->nbuckets - 1)];
    e->chain = *b;
    *b = i;
    s->count++;
}

const char *seen_find(const seen_t *s, const char *request_id)
{
    if (!request_id)
        return NULL;
    int32_t i = seen_lookup(s, request_id, seen_hash(request_id));
    return i >= 0 ? s->ring[i].rot : NULL;
}

size_t seen_count(const seen_t *s)
{
    return s->count;
}
