/* secret.c: wiped buffers for passwords. Core dumps are disabled for the whole process at start-up
 * (main.c), which covers these buffers too. */
#include "secret.h"

#include <jansson.h>
#include <malloc.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

void secret_wipe(void *p, size_t n)
{
    if (p)
        explicit_bzero(p, n);
}

rotor_secret_t *secret_new(size_t len)
{
    if (len > SECRET_MAX_LEN)
        return NULL;
    rotor_secret_t *s = util_calloc(1, sizeof *s);
    s->buf = util_calloc(1, len + 1);
    s->len = len;
    return s;
}

rotor_secret_t *secret_from(const char *src, size_t len)
{
    rotor_secret_t *s = secret_new(len);
    if (s)
        memcpy(s->buf, src, len);
    return s;
}

void secret_free(rotor_secret_t *s)
{
    if (!s)
        return;
    secret_wipe(s->buf, s->len + 1);
    free(s->buf);
    free(s);
}

static void wiping_free(void *p)
{
    if (p)
        explicit_bzero(p, malloc_usable_size(p));
    free(p);
}

void secret_wipe_json_frees(void)
{
    json_set_alloc_funcs(malloc, wiping_free);
}
