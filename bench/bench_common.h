/* bench_common.h: what every benchmark shares: a monotonic clock, the command line
 * (--iterations N, --only baseline|subject|none for callgrind runs) and one result line format. */
#ifndef ROTOR_BENCH_COMMON_H
#define ROTOR_BENCH_COMMON_H

#include <stdbool.h>
#include <stdint.h>

typedef enum { BENCH_BOTH = 0, BENCH_BASELINE, BENCH_SUBJECT, BENCH_NONE } bench_only_t;

typedef struct {
    long iterations;
    bench_only_t only;
} bench_opts_t;

/* Parses argv; exits with a usage message on anything it does not know. */
void bench_parse_args(int argc, char **argv, long default_iterations, bench_opts_t *out);

/* CLOCK_MONOTONIC in nanoseconds. */
uint64_t bench_now_ns(void);

/* Prints one tab-separated result line that bench/run.sh turns into a table:
 *   RESULT <bench> <subject> <baseline> <subject ns/op> <baseline ns/op> <ratio> */
void bench_report(const char *bench, const char *subject, const char *baseline, long iterations,
                  uint64_t subject_ns, uint64_t baseline_ns);

/* A path under the source tree ($ROTOR_SOURCE_DIR, else the current directory). Returns a
 * malloc'ed string the caller frees. */
char *bench_source_path(const char *rel);

#endif
