/* rotor.h: the types every module shares (slots, stages, error codes). Keep it small. */
#ifndef ROTOR_H
#define ROTOR_H

#include <stddef.h>
#include <stdint.h>

#define ROTOR_VERSION "0.1.0"

/* Errors are negative ints, as in libuv. A negative errno (-ENOMEM, -ETIMEDOUT...) is also a
 * valid rotor error; rotor_strerror() describes both. */
enum {
    ROTOR_OK = 0,
    ROTOR_EFAIL = -1000, /* generic failure; the reason travels beside the code */
    ROTOR_ECONFIG,       /* bad configuration */
    ROTOR_EDB,           /* database (journal or managed database) error */
    ROTOR_ESTORE,        /* secret store error */
    ROTOR_EKAFKA,        /* Kafka client error */
    ROTOR_ECONFLICT,     /* compare-and-set lost: someone else moved the row */
    ROTOR_ENOTFOUND,     /* no such secret, rotation, version or role */
    ROTOR_EINVALID,      /* bad input event */
    ROTOR_ECANCELED,     /* request canceled because its handle closed */
    ROTOR_ETIMEOUT,      /* stage or request timed out */
    ROTOR_EPROBE,        /* a production probe failed after the swap: roll back, do not retry */
    ROTOR_EFENCED,       /* this process no longer owns the secret: its write was refused */
    ROTOR_EALREADY,      /* a command with this event id was applied before: nothing written */
};

const char *rotor_strerror(int err);

/* The two slots of a blue/green pair. */
typedef enum { SLOT_BLUE = 0, SLOT_GREEN = 1 } rotor_slot_t;

const char *rotor_slot_name(rotor_slot_t slot);
/* Returns 0 and sets *out, or ROTOR_EINVALID. */
int rotor_slot_parse(const char *name, rotor_slot_t *out);
static inline rotor_slot_t rotor_slot_other(rotor_slot_t s)
{
    return s == SLOT_BLUE ? SLOT_GREEN : SLOT_BLUE;
}

/* The stages of a rotation, in order. ROLLBACK runs only after a rejection. */
typedef enum {
    STAGE_PREPARE = 0,
    STAGE_GENERATE,
    STAGE_SET_DB,
    STAGE_DEPLOY,
    STAGE_VERIFY,
    STAGE_SWAP,
    STAGE_APPROVE,
    STAGE_RETIRE,
    STAGE_ROLLBACK,
    STAGE__COUNT
} rotor_stage_t;

const char *rotor_stage_name(rotor_stage_t stage);
/* Returns 0 and sets *out, or ROTOR_EINVALID. */
int rotor_stage_parse(const char *name, rotor_stage_t *out);

#endif
