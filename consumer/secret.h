/* secret.h: a buffer for secret bytes (passwords). It is wiped before it is freed and has no
 * printing helper on purpose: log.c cannot format it. */
#ifndef ROTOR_SECRET_H
#define ROTOR_SECRET_H

#include <stddef.h>

typedef struct {
    char *buf; /* NUL-terminated; len bytes of secret */
    size_t len;
} rotor_secret_t;

/* The most bytes a secret buffer holds: far above any password, and a bound on what a store's
 * value can make rotor allocate. */
#define SECRET_MAX_LEN (64 * 1024)

/* Allocates a zeroed secret of len bytes (plus the terminator). The caller owns it and frees it
 * with secret_free(). Returns NULL when len is over SECRET_MAX_LEN. */
rotor_secret_t *secret_new(size_t len);

/* Copies len bytes of src into a new secret. The caller owns the result. */
rotor_secret_t *secret_from(const char *src, size_t len);

/* Wipes and frees s (NULL is fine). */
void secret_free(rotor_secret_t *s);

/* Makes jansson wipe every block it frees. JSON that carried a password (a store entry, a
 * version file) leaves copies inside jansson's own buffers, which rotor cannot reach to wipe;
 * called once at start-up, before any other thread exists. */
void secret_wipe_json_frees(void);

/* Wipes n bytes at p in a way the compiler cannot elide. */
void secret_wipe(void *p, size_t n);

#endif
