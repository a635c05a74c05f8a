/* bench_password.c: password_generate (32 characters, upper/lower/digit, rejection sampling
 * from getrandom) against a baseline of one getrandom call for 32 bytes. */
#include <stdio.h>
#include <stdlib.h>
#include <sys/random.h>

#include "bench_common.h"
#include "config.h"
#include "password.h"
#include "secret.h"

static void generate_one(const password_policy_t *p)
{
    rotor_secret_t *s = NULL;
    if (password_generate(p, &s) != 0 || !s || s->len != (size_t)p->length) {
        fprintf(stderr, "bench_password: password_generate failed\n");
        exit(1);
    }
    secret_free(s);
}

static void random_one(void)
{
    unsigned char buf[32];
    if (getrandom(buf, sizeof buf, 0) != (ssize_t)sizeof buf) {
        perror("bench_password: getrandom");
        exit(1);
    }
}

int main(int argc, char **argv)
{
    bench_opts_t o;
    bench_parse_args(argc, argv, 100000, &o);
    const password_policy_t p = {
        .length = 32, .classes = PW_UPPER | PW_LOWER | PW_DIGIT, .exclude = NULL};
    generate_one(&p);
    random_one();

    uint64_t base = 0, subj = 0;
    if (o.only == BENCH_BOTH || o.only == BENCH_BASELINE) {
        uint64_t t0 = bench_now_ns();
        for (long i = 0; i < o.iterations; i++)
            random_one();
        base = bench_now_ns() - t0;
    }
    if (o.only == BENCH_BOTH || o.only == BENCH_SUBJECT) {
        uint64_t t0 = bench_now_ns();
        for (long i = 0; i < o.iterations; i++)
            generate_one(&p);
        subj = bench_now_ns() - t0;
    }
    if (o.only == BENCH_BOTH)
        bench_report("password", "password_generate(32, 3 classes)", "getrandom(32 bytes)",
                     o.iterations, subj, base);
    return 0;
}
