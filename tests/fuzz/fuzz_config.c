/* fuzz_config.c: config_parse on arbitrary YAML, checking that every outcome keeps the contract
 * (a configuration, or ROTOR_ECONFIG and a message) and that a parsed configuration is usable. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "rotor.h"

/* Every secret of a parsed configuration must be found by its name, and its policy must satisfy
 * the bounds config.h documents: the daemon relies on them without checking again. */
static void check_config(const rotor_config_t *cfg)
{
    if (!cfg->kafka.brokers || !cfg->kafka.topic_commands || !cfg->kafka.topic_events)
        abort();
    for (size_t i = 0; i < cfg->nsecrets; i++) {
        const cfg_secret_t *s = &cfg->secrets[i];
        if (!s->name || config_secret(cfg, s->name) == NULL)
            abort();
        if (s->password.length < 8 || s->password.length > 1024 || s->password.classes == 0)
            abort();
        if (s->active != SLOT_BLUE && s->active != SLOT_GREEN)
            abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* config_parse takes a length, so the text is passed without a terminator: reading past it
     * is a bug ASan reports. */
    rotor_config_t *cfg = NULL;
    char err[512] = "";
    int rc = config_parse((const char *)data, size, "fuzz.yaml", &cfg, err, sizeof err);
    if (rc == 0) {
        if (!cfg)
            abort();
        check_config(cfg);
        config_free(cfg);
    } else if (rc != ROTOR_ECONFIG || err[0] == '\0' || strlen(err) >= sizeof err) {
        abort();
    }
    return 0;
}
