/* store.c: opens the secret store driver a secret's configuration names. */
#include "store.h"

#include <stdio.h>
#include <string.h>

#include "rotor.h"

static const struct {
    const char *kind;
    int (*open)(uv_loop_t *loop, const cfg_secret_t *sec, const store_deps_t *deps, store_t **out,
                char *err, size_t errlen);
} store_drivers[] = {
    {"file", store_file_open},
    {"azure-keyvault", store_keyvault_open},
};

int store_open(uv_loop_t *loop, const cfg_secret_t *sec, const store_deps_t *deps, store_t **out,
               char *err, size_t errlen)
{
    const char *kind = sec->store.kind ? sec->store.kind : "";
    for (size_t i = 0; i < sizeof store_drivers / sizeof store_drivers[0]; i++) {
        if (strcmp(kind, store_drivers[i].kind) == 0)
            return store_drivers[i].open(loop, sec, deps, out, err, errlen);
    }
    snprintf(err, errlen, "store kind %s is not supported", kind);
    return ROTOR_ECONFIG;
}
