/* schema_check: prints "valid" or "invalid<TAB>reason" per file, as event_parse judges it. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "event.h"
#include "rotor.h"
#include "util.h"

#define SCHEMA_CHECK_MAX (1024 * 1024)

/* Reads all of path into a malloc'ed buffer the caller frees. Returns 0 or a negative errno. */
static int schema_check_read(const char *path, char **buf, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return -errno;
    size_t cap = 4096, n = 0;
    char *b = util_malloc(cap);
    size_t got;
    while ((got = fread(b + n, 1, cap - n, f)) > 0) {
        n += got;
        if (n == cap) {
            char *bigger = util_malloc(cap * 2);
            memcpy(bigger, b, n);
            free(b);
            b = bigger;
            cap *= 2;
        }
    }
    int err = ferror(f) ? -EIO : 0;
    fclose(f);
    if (err < 0) {
        free(b);
        return err;
    }
    *buf = b;
    *len = n;
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: schema_check FILE...\n");
        return 2;
    }
    int status = 0;
    for (int i = 1; i < argc; i++) {
        char *buf = NULL;
        size_t len = 0;
        int rc = schema_check_read(argv[i], &buf, &len);
        if (rc < 0) {
            fprintf(stderr, "schema_check: %s: %s\n", argv[i], strerror(-rc));
            status = 2;
            continue;
        }
        event_t ev;
        char reason[512];
        if (event_parse(buf, len, NULL, 0, SCHEMA_CHECK_MAX, &ev, reason, sizeof reason) == 0)
            printf("valid\n");
        else
            printf("invalid\t%s\n", reason);
        event_clear(&ev);
        free(buf);
    }
    return status;
}
