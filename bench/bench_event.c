/* bench_event.c: what schema validation costs. event_parse (JSON, envelope checks and the type's
 * schema) against a baseline of json_loads of the same bytes, over every events/examples file. */
#include <dirent.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_common.h"
#include "event.h"
#include "util.h"

#define MAX_EXAMPLES 64

typedef struct {
    char *buf[MAX_EXAMPLES];
    size_t len[MAX_EXAMPLES];
    int n;
} examples_t;

static char *read_all(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    rewind(f);
    char *buf = util_malloc((size_t)size + 1);
    *len = fread(buf, 1, (size_t)size, f);
    buf[*len] = '\0';
    fclose(f);
    return buf;
}

static void load_examples(examples_t *ex)
{
    char *dir = bench_source_path("events/examples");
    DIR *d = opendir(dir);
    if (!d) {
        fprintf(stderr, "bench_event: cannot open %s (set ROTOR_SOURCE_DIR)\n", dir);
        exit(1);
    }
    struct dirent *e;
    ex->n = 0;
    while ((e = readdir(d)) != NULL && ex->n < MAX_EXAMPLES) {
        if (!strstr(e->d_name, ".json"))
            continue;
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        ex->buf[ex->n] = read_all(path, &ex->len[ex->n]);
        if (ex->buf[ex->n])
            ex->n++;
    }
    closedir(d);
    free(dir);
    if (ex->n == 0) {
        fprintf(stderr, "bench_event: no examples\n");
        exit(1);
    }
}

/* Both sides must do real work on every example: a parse that fails would be measured as cheap. */
static void parse_one(const char *buf, size_t len)
{
    event_t ev;
    char reason[256];
    if (event_parse(buf, len, NULL, 0, 1 << 20, &ev, reason, sizeof reason) != 0) {
        fprintf(stderr, "bench_event: example refused: %s\n", reason);
        exit(1);
    }
    event_clear(&ev);
}

static void load_one(const char *buf, size_t len)
{
    json_error_t err;
    json_t *doc = json_loadb(buf, len, 0, &err);
    if (!doc) {
        fprintf(stderr, "bench_event: not JSON: %s\n", err.text);
        exit(1);
    }
    json_decref(doc);
}

int main(int argc, char **argv)
{
    bench_opts_t o;
    bench_parse_args(argc, argv, 20000, &o);
    examples_t ex;
    load_examples(&ex);
    /* Warm-up: the schemas are compiled on first use, a one-time cost the daemon pays once. */
    for (int i = 0; i < ex.n; i++) {
        parse_one(ex.buf[i], ex.len[i]);
        load_one(ex.buf[i], ex.len[i]);
    }

    uint64_t base = 0, subj = 0;
    if (o.only == BENCH_BOTH || o.only == BENCH_BASELINE) {
        uint64_t t0 = bench_now_ns();
        for (long i = 0; i < o.iterations; i++)
            load_one(ex.buf[i % ex.n], ex.len[i % ex.n]);
        base = bench_now_ns() - t0;
    }
    if (o.only == BENCH_BOTH || o.only == BENCH_SUBJECT) {
        uint64_t t0 = bench_now_ns();
        for (long i = 0; i < o.iterations; i++)
            parse_one(ex.buf[i % ex.n], ex.len[i % ex.n]);
        subj = bench_now_ns() - t0;
    }
    if (o.only == BENCH_BOTH)
        bench_report("event", "event_parse", "json_loadb", o.iterations, subj, base);
    for (int i = 0; i < ex.n; i++)
        free(ex.buf[i]);
    return 0;
}
