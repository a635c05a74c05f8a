/* password.c: passwords from a policy, drawn uniformly from a CSPRNG over the valid passwords. */
#include "password.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>

#include "config.h"
#include "rotor.h"
#include "util.h"

/* Long enough for any policy config.c accepts (8..1024); secret_new refuses more anyway. */
#define PASSWORD_MAX_LENGTH 4096

/* Whole attempts before giving up. Rejection only loops often when a class is tiny and the
 * password short (1 digit allowed, length 4: about 1 attempt in 200 succeeds); 100000 attempts
 * make a spurious failure far less likely than a hardware fault. */
#define PASSWORD_MAX_ATTEMPTS 100000

static const struct {
    unsigned bit;
    const char *name;
    const char *chars;
} pw_classes[] = {
    {PW_UPPER, "upper", "ABCDEFGHIJKLMNOPQRSTUVWXYZ"},
    {PW_LOWER, "lower", "abcdefghijklmnopqrstuvwxyz"},
    {PW_DIGIT, "digit", "0123456789"},
    {PW_SYMBOL, "symbol", "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"},
};
#define PW_NCLASSES (sizeof pw_classes / sizeof pw_classes[0])

int password_random_below(uint32_t bound, uint32_t *out)
{
    if (bound == 0)
        return -EINVAL;
    /* Values at or above the largest multiple of bound that fits in 2^32 would make the low
     * residues more likely than the others: discard them and draw again. */
    const uint64_t span = UINT64_C(1) << 32;
    const uint64_t limit = span - span % bound;
    for (;;) {
        uint32_t x;
        ssize_t n = getrandom(&x, sizeof x, 0);
        if (n < 0 && errno == EINTR)
            continue;
        /* A short read or an errno of 0 must still be an error: returning 0 here would hand
         * back an unset *out (gcc -O3 sees that path and refuses to compile). */
        if (n != (ssize_t)sizeof x)
            return n < 0 && errno > 0 ? -errno : -EIO;
        if ((uint64_t)x < limit) {
            *out = x % bound;
            secret_wipe(&x, sizeof x); /* it determines a password character */
            return 0;
        }
    }
}

static bool char_excluded(const char *exclude, char c)
{
    return exclude && c && strchr(exclude, c) != NULL;
}

/* Writes the allowed characters of one class into buf (>= 33 bytes); returns how many. */
static size_t class_alphabet(size_t cls, const char *exclude, char *buf)
{
    size_t n = 0;
    for (const char *c = pw_classes[cls].chars; *c; c++) {
        if (!char_excluded(exclude, *c))
            buf[n++] = *c;
    }
    buf[n] = '\0';
    return n;
}

int password_policy_check(const password_policy_t *p, char *reason, size_t reasonlen)
{
    unsigned known = PW_UPPER | PW_LOWER | PW_DIGIT | PW_SYMBOL;
    if (p->classes == 0 || (p->classes & ~known)) {
        snprintf(reason, reasonlen,
                 "classes 0x%x: expected a non-empty set of upper, lower, "
                 "digit, symbol",
                 p->classes);
        return ROTOR_EINVALID;
    }
    int required = 0;
    for (size_t i = 0; i < PW_NCLASSES; i++) {
        if (!(p->classes & pw_classes[i].bit))
            continue;
        required++;
        char buf[40];
        if (class_alphabet(i, p->exclude, buf) == 0) {
            snprintf(reason, reasonlen, "class %s is empty after exclude", pw_classes[i].name);
            return ROTOR_EINVALID;
        }
    }
    if (p->length < required) {
        snprintf(reason, reasonlen, "length %d is shorter than the %d required classes", p->length,
                 required);
        return ROTOR_EINVALID;
    }
    if (p->length > PASSWORD_MAX_LENGTH) {
        snprintf(reason, reasonlen, "length %d is longer than %d", p->length, PASSWORD_MAX_LENGTH);
        return ROTOR_EINVALID;
    }
    return 0;
}

/* True when every required class occurs in pw. */
static bool has_all_classes(const rotor_secret_t *pw, unsigned classes)
{
    for (size_t i = 0; i < PW_NCLASSES; i++) {
        if ((classes & pw_classes[i].bit) && !strpbrk(pw->buf, pw_classes[i].chars))
            return false;
    }
    return true;
}

static int fill_uniform(rotor_secret_t *pw, const char *alphabet, uint32_t n)
{
    for (size_t i = 0; i < pw->len; i++) {
        uint32_t k;
        int rc = password_random_below(n, &k);
        if (rc < 0)
            return rc;
        pw->buf[i] = alphabet[k];
    }
    return 0;
}

/*
 * Every character is drawn uniformly from the union of the allowed classes, and a password that
 * lacks a required class is thrown away whole. Every valid password therefore has exactly the
 * same probability, unlike "force one character of each class into a random position", which
 * favours passwords where the small classes appear only once.
 */
int password_generate(const password_policy_t *p, rotor_secret_t **out)
{
    char reason[128];
    if (password_policy_check(p, reason, sizeof reason) < 0)
        return ROTOR_EINVALID;

    char alphabet[PW_NCLASSES * 33];
    size_t n = 0;
    for (size_t i = 0; i < PW_NCLASSES; i++) {
        if (p->classes & pw_classes[i].bit)
            n += class_alphabet(i, p->exclude, alphabet + n);
    }

    rotor_secret_t *pw = secret_new((size_t)p->length);
    if (!pw)
        return ROTOR_EINVALID;
    for (int attempt = 0; attempt < PASSWORD_MAX_ATTEMPTS; attempt++) {
        int rc = fill_uniform(pw, alphabet, (uint32_t)n);
        if (rc < 0) {
            secret_free(pw);
            return rc;
        }
        if (has_all_classes(pw, p->classes)) {
            *out = pw;
            return 0;
        }
    }
    secret_free(pw);
    return ROTOR_EFAIL;
}
