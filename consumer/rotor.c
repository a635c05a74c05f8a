/* rotor.c: names of the shared enums and error strings. */
#include "rotor.h"

#include <string.h>

static const char *const slot_names[] = {"blue", "green"};

static const char *const stage_names[STAGE__COUNT] = {
    "prepare", "generate", "set-db", "deploy", "verify", "swap", "approve", "retire", "rollback",
};

const char *rotor_slot_name(rotor_slot_t slot)
{
    return slot_names[slot];
}

int rotor_slot_parse(const char *name, rotor_slot_t *out)
{
    for (int i = 0; i < 2; i++) {
        if (name && strcmp(name, slot_names[i]) == 0) {
            *out = (rotor_slot_t)i;
            return 0;
        }
    }
    return ROTOR_EINVALID;
}

const char *rotor_stage_name(rotor_stage_t stage)
{
    return stage < STAGE__COUNT ? stage_names[stage] : "?";
}

int rotor_stage_parse(const char *name, rotor_stage_t *out)
{
    for (int i = 0; i < STAGE__COUNT; i++) {
        if (name && strcmp(name, stage_names[i]) == 0) {
            *out = (rotor_stage_t)i;
            return 0;
        }
    }
    return ROTOR_EINVALID;
}

const char *rotor_strerror(int err)
{
    switch (err) {
    case ROTOR_OK:
        return "ok";
    case ROTOR_EFAIL:
        return "failed";
    case ROTOR_ECONFIG:
        return "configuration error";
    case ROTOR_EDB:
        return "database error";
    case ROTOR_ESTORE:
        return "secret store error";
    case ROTOR_EKAFKA:
        return "kafka error";
    case ROTOR_ECONFLICT:
        return "conflict: state moved on";
    case ROTOR_ENOTFOUND:
        return "not found";
    case ROTOR_EINVALID:
        return "invalid";
    case ROTOR_ECANCELED:
        return "canceled";
    case ROTOR_ETIMEOUT:
        return "timed out";
    case ROTOR_EPROBE:
        return "production probe failed";
    case ROTOR_EFENCED:
        return "fenced: another process owns the secret now";
    case ROTOR_EALREADY:
        return "already applied";
    default:
        return err < 0 && err > -4096 ? strerror(-err) : "unknown error";
    }
}
