/* app_util.h: allocation helpers of the sample application, which treats out-of-memory as fatal. */
#ifndef SAMPLE_APP_UTIL_H
#define SAMPLE_APP_UTIL_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* calloc that aborts on out-of-memory. The caller owns the memory. */
static inline void *app_xcalloc(size_t n, size_t size)
{
    void *p = calloc(n, size);
    if (!p) {
        fputs("rotor-sample-app: out of memory\n", stderr);
        abort();
    }
    return p;
}

/* strdup that aborts on out-of-memory. The caller owns the copy. */
static inline char *app_xstrdup(const char *s)
{
    size_t n = strlen(s) + 1;
    return memcpy(app_xcalloc(1, n), s, n);
}

#endif
