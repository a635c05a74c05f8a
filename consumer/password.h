/* password.h: passwords from a policy, with a CSPRNG (getrandom) and no modulo bias. */
#ifndef ROTOR_PASSWORD_H
#define ROTOR_PASSWORD_H

#include <stddef.h>
#include <stdint.h>

#include "secret.h"

typedef struct {
    int length;          /* total length, >= number of classes */
    unsigned classes;    /* PW_* bits from config.h; each appears at least once */
    const char *exclude; /* characters never used; NULL or "" for none */
} password_policy_t;

/* Checks a policy: a class left empty by `exclude`, or a length shorter than the number of
 * classes, is ROTOR_EINVALID with a reason. */
int password_policy_check(const password_policy_t *p, char *reason, size_t reasonlen);

/* Generates a password. Returns 0 and *out (caller owns; secret_free), or a negative error. */
int password_generate(const password_policy_t *p, rotor_secret_t **out);

/* Uniform random integer in [0, bound) from getrandom, by rejection sampling. bound > 0.
 * Returns 0 or a negative errno. */
int password_random_below(uint32_t bound, uint32_t *out);

#endif
