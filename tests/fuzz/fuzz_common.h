/* fuzz_common.h: helpers shared by the fuzz targets (header-only: every tests/fuzz/fuzz_*.c is a
 * target of its own, built with replay.c or with libFuzzer). */
#ifndef ROTOR_FUZZ_COMMON_H
#define ROTOR_FUZZ_COMMON_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

/* An exact-size heap copy of n bytes plus a NUL, as http.c delivers a body (ASan then sees any
 * read past it). The caller frees. */
static inline char *fuzz_strndup(const uint8_t *data, size_t n)
{
    char *s = util_malloc(n + 1);
    if (n)
        memcpy(s, data, n);
    s[n] = '\0';
    return s;
}

/* Splits the input at its first "\n\n": *head (caller frees, NUL-terminated) is what comes
 * before, and the rest starts at the returned offset. Without "\n\n", *head is NULL and 0 is
 * returned. */
static inline size_t fuzz_split(const uint8_t *data, size_t size, char **head)
{
    const uint8_t *end = size >= 2 ? memmem(data, size, "\n\n", 2) : NULL;
    *head = NULL;
    if (!end)
        return 0;
    *head = fuzz_strndup(data, (size_t)(end - data));
    return (size_t)(end - data) + 2;
}

/* True when s is valid UTF-8 (what a reason must be to go into a JSON event or the journal). */
static inline bool fuzz_utf8_valid(const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        size_t n;
        uint32_t cp;
        if (*p < 0x80) {
            p++;
            continue;
        } else if ((*p & 0xE0) == 0xC0) {
            n = 1;
            cp = *p & 0x1F;
        } else if ((*p & 0xF0) == 0xE0) {
            n = 2;
            cp = *p & 0x0F;
        } else if ((*p & 0xF8) == 0xF0) {
            n = 3;
            cp = *p & 0x07;
        } else {
            return false;
        }
        for (size_t i = 1; i <= n; i++) {
            if ((p[i] & 0xC0) != 0x80)
                return false;
            cp = (cp << 6) | (p[i] & 0x3F);
        }
        if ((n == 1 && cp < 0x80) || (n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) ||
            cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return false;
        p += n + 1;
    }
    return true;
}

/* A reason as every caller needs it: set, terminated within its buffer, valid UTF-8. */
static inline bool fuzz_reason_ok(const char *reason, size_t len)
{
    return reason[0] != '\0' && memchr(reason, '\0', len) != NULL && fuzz_utf8_valid(reason);
}

/* A broken contract: says which and what the parser answered, then aborts (a finding). */
static inline void fuzz_fail(const char *what, const char *answer)
{
    fprintf(stderr, "fuzz: %s: \"%s\"\n", what, answer ? answer : "(null)");
    abort();
}

#endif
