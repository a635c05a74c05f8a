/* deploy.c: opens the deploy driver a secret's configuration names. */
#include "deploy.h"

#include <stdio.h>

#include "rotor.h"

int deploy_open(uv_loop_t *loop, const cfg_secret_t *sec, http_t *http, deploy_t **out, char *err,
                size_t errlen)
{
    *out = NULL;
    switch (sec->deploy.kind_id) {
    case DEPLOY_NONE:
    case DEPLOY_EXTERNAL:
        /* none needs no effect; external is the engine's own (stage.requested/completed). */
        return 0;
    case DEPLOY_EXEC:
        return deploy_exec_open(loop, sec, http, out, err, errlen);
    case DEPLOY_KUBERNETES:
        return deploy_kubernetes_open(loop, sec, http, out, err, errlen);
    }
    snprintf(err, errlen, "secret %s: deploy kind %d is not supported", sec->name,
             (int)sec->deploy.kind_id);
    return ROTOR_ECONFIG;
}
