/* bench_common.c: clock, command line and result lines shared by the benchmarks. */
#include "bench_common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "util.h"

static void usage(const char *prog)
{
    fprintf(stderr, "usage: %s [--iterations N] [--only baseline|subject|none]\n", prog);
    exit(2);
}

void bench_parse_args(int argc, char **argv, long default_iterations, bench_opts_t *out)
{
    out->iterations = default_iterations;
    out->only = BENCH_BOTH;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--iterations") == 0 && i + 1 < argc) {
            char *end;
            out->iterations = strtol(argv[++i], &end, 10);
            if (*end || out->iterations <= 0)
                usage(argv[0]);
        } else if (strcmp(argv[i], "--only") == 0 && i + 1 < argc) {
            const char *o = argv[++i];
            if (strcmp(o, "baseline") == 0)
                out->only = BENCH_BASELINE;
            else if (strcmp(o, "subject") == 0)
                out->only = BENCH_SUBJECT;
            else if (strcmp(o, "none") == 0)
                out->only = BENCH_NONE;
            else
                usage(argv[0]);
        } else {
            usage(argv[0]);
        }
    }
}

uint64_t bench_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

void bench_report(const char *bench, const char *subject, const char *baseline, long iterations,
                  uint64_t subject_ns, uint64_t baseline_ns)
{
    double s = (double)subject_ns / (double)iterations;
    double b = (double)baseline_ns / (double)iterations;
    printf("RESULT\t%s\t%s\t%s\t%.0f\t%.0f\t%.2f\n", bench, subject, baseline, s, b,
           b > 0 ? s / b : 0.0);
    fflush(stdout);
}

char *bench_source_path(const char *rel)
{
    const char *root = getenv("ROTOR_SOURCE_DIR");
    if (!root || !*root)
        root = ".";
    size_t n = strlen(root) + strlen(rel) + 2;
    char *p = util_malloc(n);
    snprintf(p, n, "%s/%s", root, rel);
    return p;
}
