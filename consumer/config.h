/* config.h: rotor.yaml, loaded once at start-up into an immutable rotor_config_t.
 *
 * Every key lives in one table in config.c (name, type, default, doc line); docs/configuration.md
 * is checked against that table by a test. A missing or wrong key is an error that names the key,
 * its line and what was expected, e.g.
 *   rotor.yaml:12: secrets[0].password.length: expected an integer from 8 to 1024, got "x"
 * DSNs are never inline: only *_env (an environment variable's name) or *_file (a path). */
#ifndef ROTOR_CONFIG_H
#define ROTOR_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "rotor.h"

/* Password character classes (a bit set). */
enum { PW_UPPER = 1, PW_LOWER = 2, PW_DIGIT = 4, PW_SYMBOL = 8 };

typedef enum { APPROVAL_AUTO = 0, APPROVAL_MANUAL } cfg_approval_mode_t;
/* Which step the approval gates: before retire (default), before swap, or both. */
typedef enum { GATE_RETIRE = 1, GATE_SWAP = 2, GATE_BOTH = 3 } cfg_gate_t;

typedef struct {
    char *key;
    char *value;
} cfg_kv_t;

/* Per-stage policy: timeout for one attempt, maximum attempts, backoff between attempts. */
typedef struct {
    uint64_t timeout_ms;
    int max_attempts;
    uint64_t backoff_initial_ms;
    uint64_t backoff_max_ms;
} cfg_stage_policy_t;

typedef struct {
    char *name;          /* managed secret name: Kafka key, journal key */
    rotor_slot_t active; /* slot production uses when rotor first meets this secret */

    struct {
        char *dsn_env;     /* admin DSN from this environment variable, or */
        char *dsn_file;    /* from this file (first line) */
        char *roles[2];    /* indexed by rotor_slot_t */
        char *probe;       /* query verify runs as the standby role; default "select 1" */
        uint64_t drain_ms; /* retire waits this long before ending old sessions */
    } database;

    struct {
        char *kind;     /* "file" (issue 2); "azure-keyvault" later */
        char *dir;      /* file: the CSI-mount-like directory */
        char *names[2]; /* secret names in the store per slot */
        char *current;  /* optional name of the "current" entry (role+password JSON), or NULL */
    } store;

    struct {
        int length;       /* 8..1024 */
        unsigned classes; /* PW_* bits, each required at least once */
        char *exclude;    /* characters never used ("" for none) */
    } password;

    uint64_t validity_ms; /* VALID UNTIL and store exp = now + validity */

    struct {
        char *kind; /* "none" (issue 2) */
    } deploy;

    struct {
        cfg_approval_mode_t mode;
        uint64_t soak_ms;
        cfg_gate_t gate;
    } approval;

    struct {
        uint64_t every_ms; /* 0 when unset */
        char *cron;        /* 5-field cron expression (UTC), or NULL */
        int window_start;  /* minutes after midnight UTC, -1 when no window */
        int window_end;    /* minutes after midnight UTC (may be < start: wraps midnight) */
    } schedule;

    cfg_stage_policy_t stages[STAGE__COUNT]; /* defaults from the top-level `stages` section */
} cfg_secret_t;

typedef struct {
    char *path; /* file it was read from */

    struct {
        char *brokers; /* "embedded" or a bootstrap list */
        char *group;
        char *topic_commands;
        char *topic_events;
        char *topic_deadletter;
        char *bootstrap_file;     /* embedded: where `rotor run` writes the address; CLI reads it */
        int partitions;           /* embedded: partitions per topic it creates */
        size_t max_message_bytes; /* input over this size is dead-lettered */
        cfg_kv_t *properties;     /* passed to librdkafka as they are */
        size_t nproperties;
    } kafka;

    struct {
        char *dsn_env;
        char *dsn_file;
    } journal;

    struct {
        char *listen; /* health/metrics address, e.g. "127.0.0.1:9464"; "" disables */
    } http;

    struct {
        char *level; /* debug, info, warn, error */
    } log;

    struct {
        uint64_t shutdown_timeout_ms;  /* bound on graceful shutdown */
        uint64_t schedule_interval_ms; /* how often schedules are checked */
    } daemon;

    cfg_secret_t *secrets;
    size_t nsecrets;
} rotor_config_t;

/* Reads and validates path. On success returns 0 and *out (owned by the caller, free with
 * config_free). On failure returns ROTOR_ECONFIG and writes one line naming file, line, key and
 * what was expected into err. */
int config_load(const char *path, rotor_config_t **out, char *err, size_t errlen);

/* As config_load, from memory; name is used in messages. */
int config_parse(const char *text, size_t len, const char *name, rotor_config_t **out, char *err,
                 size_t errlen);

void config_free(rotor_config_t *cfg);

/* Borrowed pointer into cfg, or NULL. */
const cfg_secret_t *config_secret(const rotor_config_t *cfg, const char *name);

/* Resolves a DSN from an environment variable name or a file path (exactly one is set).
 * Returns 0 and a malloc'ed string the caller frees (wiping it: it may hold a password), or
 * ROTOR_ECONFIG with a message naming what_key in err. */
int config_dsn(const char *dsn_env, const char *dsn_file, const char *what_key, char **out,
               char *err, size_t errlen);

/* The configuration reference as a table, for docs/ and its test: one entry per key. */
typedef struct {
    const char *key;  /* dotted path; "secrets[].database.roles.blue" for list items */
    const char *type; /* "string", "duration", "integer", "enum(a|b)", "list", "map", ... */
    const char *dflt; /* default, or NULL when required */
    bool reloadable;  /* false for all keys today: rotor reads the file once */
    const char *doc;  /* one line */
} config_key_t;

extern const config_key_t config_keys[];
extern const size_t config_nkeys;

#endif
