/* replay.c: feeds every file of the corpus directories (or files) on the command line to
 * LLVMFuzzerTestOneInput, so each fuzz target's corpus runs as an ordinary test in every build. */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Returns 1 if path was fed, 0 if skipped, -1 on a read error. */
static int replay_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return -1;
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(f);
        return 0;
    }
    /* An exact-size heap copy, so ASan catches a target that reads one byte past the input. */
    size_t size = (size_t)st.st_size;
    uint8_t *buf = util_malloc(size ? size : 1);
    size_t got = fread(buf, 1, size, f);
    fclose(f);
    if (got != size) {
        free(buf);
        return -1;
    }
    LLVMFuzzerTestOneInput(buf, size);
    free(buf);
    return 1;
}

static int name_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Feeds a directory's files in name order (so a failure names the same file every time). */
static int replay_dir(const char *dir, long *nfed)
{
    DIR *d = opendir(dir);
    if (!d)
        return -1;
    char **names = NULL;
    size_t n = 0, cap = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 64;
            char **grown = realloc(names, cap * sizeof *names);
            if (!grown)
                abort();
            names = grown;
        }
        names[n++] = util_strdup(e->d_name);
    }
    closedir(d);
    qsort(names, n, sizeof *names, name_cmp);
    int rc = 0;
    for (size_t i = 0; i < n; i++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        int r = replay_file(path);
        if (r < 0) {
            fprintf(stderr, "replay: cannot read %s\n", path);
            rc = -1;
        }
        *nfed += r > 0;
        free(names[i]);
    }
    free(names);
    return rc;
}

int main(int argc, char **argv)
{
    long nfed = 0;
    int failed = 0;
    for (int i = 1; i < argc; i++) {
        struct stat st;
        if (stat(argv[i], &st) != 0) {
            fprintf(stderr, "replay: %s: no such file or directory\n", argv[i]);
            failed = 1;
        } else if (S_ISDIR(st.st_mode)) {
            failed |= replay_dir(argv[i], &nfed) != 0;
        } else {
            int r = replay_file(argv[i]);
            failed |= r < 0;
            nfed += r > 0;
        }
    }
    printf("replay: %ld inputs\n", nfed);
    /* An empty corpus would make the test pass while testing nothing. */
    return failed || nfed == 0 ? 1 : 0;
}
