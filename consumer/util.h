/* util.h: small pure helpers: durations, time stamps, UUIDs, string copies. */
#ifndef ROTOR_UTIL_H
#define ROTOR_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Parses "250ms", "30s", "5m", "2h", "90d" (and combinations such as "1h30m") into
 * milliseconds. A bare "0" is zero. Returns 0 or ROTOR_EINVALID. */
int util_parse_duration(const char *text, uint64_t *ms);

/* Formats ms as the shortest exact duration ("90d", "1h30m", "250ms"). buf >= 32 bytes. */
void util_format_duration(uint64_t ms, char *buf, size_t len);

/* Wall clock in milliseconds since the epoch. */
int64_t util_now_ms(void);

/* RFC 3339 UTC time stamp with milliseconds ("2026-11-28T20:07:51.123Z"). buf >= 32 bytes. */
void util_format_time(int64_t epoch_ms, char *buf, size_t len);

/* Parses an RFC 3339 time stamp (any offset, optional fraction). Returns 0 or ROTOR_EINVALID. */
int util_parse_time(const char *text, int64_t *epoch_ms);

/* A random (version 4) UUID from getrandom(). out >= 37 bytes. Returns 0 or a negative errno. */
int util_uuid4(char *out);

/* True when text is a UUID in canonical 8-4-4-4-12 lower- or upper-case hex form. */
bool util_is_uuid(const char *text);

/* Returns a malloc'ed copy of s (NULL for NULL); aborts on out-of-memory, which rotor treats as
 * fatal everywhere. The caller owns the copy. */
char *util_strdup(const char *s);

/* Hands the allocator's free pages back to the kernel (glibc: malloc_trim, which also releases
 * whole free pages inside the heap and every thread's arena, not only the top). For a quiet
 * moment: it walks every arena under its lock. */
void util_release_free_memory(void);

/* malloc/calloc that abort on out-of-memory. The caller owns the memory. */
void *util_malloc(size_t n);
void *util_calloc(size_t n, size_t size);

/* Copies at most len-1 bytes of src into dst and terminates it, never splitting a UTF-8
 * character. */
void util_strlcpy(char *dst, const char *src, size_t len);

/* Cuts s at its first byte that does not continue valid UTF-8 (a reason built with %.100s may end
 * in half a character; PostgreSQL and jansson refuse it). */
void util_utf8_trim(char *s);

/* Copies src into dst (len >= 1 bytes) as one line of valid UTF-8 text, for a reason that is
 * journaled (PostgreSQL refuses invalid UTF-8) and published (jansson's json_string returns NULL
 * for it): a byte that does not begin a well-formed sequence (overlong forms, surrogates and code
 * points past U+10FFFF included) becomes U+FFFD, tabs and line breaks a space, other control
 * characters (C0, DEL, C1) are dropped, and trailing spaces too. What does not fit is left off,
 * never half a character. dst and src must not overlap; src NULL is "". Returns strlen(dst). */
size_t util_utf8_sanitize(char *dst, size_t len, const char *src);

/* Reads at most max bytes of the file at path into buf (max + 1 bytes), drops trailing
 * whitespace and terminates it; *len gets what is left. Blocking: for the threadpool, never the
 * loop. Returns 0, a negative errno, or -ENODATA when nothing is left. buf is the caller's, and
 * so is wiping it when it holds a token. */
int util_read_token_file(const char *path, char *buf, size_t max, size_t *len);

/* SHA-256 of len bytes; util_sha256_hex writes it as 64 lower-case hex digits and a NUL. */
void util_sha256(const void *data, size_t len, unsigned char out[32]);
void util_sha256_hex(const void *data, size_t len, char out[65]);

/* The longest instance name kept as it is: "rotor/" and it fill PostgreSQL's 63 bytes of
 * application_name, which the journal's ownership (outbox, fencing) is keyed on. */
#define UTIL_INSTANCE_MAX 57

/* The instance name for name (ROTOR_INSTANCE or the host name): name itself when it is at most
 * UTIL_INSTANCE_MAX bytes of printable ASCII without spaces, else a prefix of it (other bytes
 * as '_'), '-' and 16 hex digits of its SHA-256, UTIL_INSTANCE_MAX bytes at most. out >=
 * UTIL_INSTANCE_MAX + 1 bytes. */
void util_instance_name(const char *name, char *out, size_t len);

#endif
