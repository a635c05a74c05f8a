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

typedef enum { DEPLOY_NONE = 0, DEPLOY_EXEC, DEPLOY_KUBERNETES, DEPLOY_EXTERNAL } cfg_deploy_kind_t;
typedef enum { STORE_FILE = 0, STORE_KEYVAULT } cfg_store_kind_t;
typedef enum { PROBE_SQL = 0, PROBE_HTTP } cfg_probe_kind_t;

/* One probe. `sql` runs the database probe query as the slot's role; `http` requests url. */
typedef struct {
    cfg_probe_kind_t kind;
    char *url;    /* http: the endpoint */
    char *method; /* http: default GET */
    int *expect;  /* http: accepted statuses (default [200]) */
    size_t nexpect;
    char *body_contains;  /* http: optional substring the body must contain */
    char *ca_file;        /* http: CA bundle for https (NULL = system) */
    int successes;        /* consecutive successes needed (default 1) */
    uint64_t timeout_ms;  /* one try (default 5s) */
    uint64_t interval_ms; /* between tries (default 1s) */
} cfg_probe_t;

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
        bool entra_token;  /* the admin connection's password is an Entra access token
                            * (Azure Database for PostgreSQL flexible server) */
    } database;

    struct {
        char *kind; /* "file" or "azure-keyvault" */
        cfg_store_kind_t kind_id;
        char *dir;       /* file: the CSI-mount-like directory */
        char *names[2];  /* secret names in the store per slot */
        char *current;   /* optional name of the "current" entry (role+password JSON), or NULL */
        char *vault_url; /* azure-keyvault: https://NAME.vault.azure.net */
        char *ca_file;   /* azure-keyvault: CA bundle (tests); NULL = system */
        uint64_t timeout_ms;         /* azure-keyvault: one request (default 30s) */
        uint64_t connect_timeout_ms; /* azure-keyvault: (default 10s) */
        int writes_per_10s;          /* azure-keyvault: rotor's own limit per vault (default 300) */
        char *content_type;          /* azure-keyvault: contentType of versions rotor writes */
        char *resolve; /* azure-keyvault: curl-style "host:port:address" pin for the vault host
                        * (tests, private endpoints), or NULL */
    } store;

    struct {
        int length;       /* 8..1024 */
        unsigned classes; /* PW_* bits, each required at least once */
        char *exclude;    /* characters never used ("" for none) */
    } password;

    uint64_t validity_ms; /* VALID UNTIL and store exp = now + validity */

    struct {
        char *kind; /* "none", "exec", "kubernetes" or "external" */
        cfg_deploy_kind_t kind_id;
        struct {
            char *deploy, *swap, *retire,
                *rollback;       /* commands (sh -c); retire/rollback optional */
            char *workdir;       /* NULL = rotor's working directory */
            uint64_t timeout_ms; /* per command (default 5m) */
        } exec;
        struct {
            char *api_url;    /* NULL = in-cluster (KUBERNETES_SERVICE_HOST/PORT) */
            char *token_file; /* default /var/run/secrets/kubernetes.io/serviceaccount/token */
            char *ca_file;    /* default .../serviceaccount/ca.crt */
            char *namespace;  /* default: the service account's namespace file, else "default" */
            char *deployments[2];     /* Deployment per slot */
            char *service_production; /* Service production traffic goes through */
            char *service_stage;      /* Service that selects the standby slot (optional) */
            char *slot_label;         /* pod label that selects a slot (default "slot") */
            int replicas;             /* replicas of an active slot (default 2) */
            char *annotation;         /* pod template annotation carrying the version */
            uint64_t poll_ms;         /* rollout/endpoints polling interval (default 1s) */
        } kubernetes;
        struct {
            uint64_t timeout_ms; /* how long to await the pipeline (default 30m) */
        } external;
    } deploy;

    struct {
        cfg_probe_t *verify; /* after deploy, against the standby slot (plus the SQL login) */
        size_t nverify;
        cfg_probe_t *production; /* after swap and through the soak */
        size_t nproduction;
    } probes;

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
        char *topic_keyvault;     /* Key Vault events (Event Grid through Event Hubs), or NULL */
        char *bootstrap_file;     /* embedded: where `rotor run` writes the address; CLI reads it */
        int partitions;           /* embedded: partitions per topic it creates */
        size_t max_message_bytes; /* input over this size is dead-lettered */
        cfg_kv_t *properties;     /* passed to librdkafka as they are */
        size_t nproperties;
        cfg_kv_t *properties_env; /* property -> environment variable NAME holding its value */
        size_t nproperties_env;
        cfg_kv_t *properties_file; /* property -> file whose first line is its value */
        size_t nproperties_file;
    } kafka;

    struct {
        char *dsn_env;
        char *dsn_file;
    } journal;

    /* Entra ID credentials (DefaultAzureCredential's order); unset fields come from the
     * environment (AZURE_TENANT_ID, AZURE_CLIENT_ID, AZURE_CLIENT_SECRET,
     * AZURE_FEDERATED_TOKEN_FILE, AZURE_AUTHORITY_HOST). Never a secret inline. */
    struct {
        char *tenant_id;
        char *client_id;
        char *authority_host;
        char *imds_endpoint;
        char *federated_token_file;
        char *ca_file;
    } azure;

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
 * The DSN must be one libpq can parse (key=value pairs or a postgresql:// URI).
 * Returns 0 and a malloc'ed string the caller frees (wiping it: it may hold a password), or
 * ROTOR_ECONFIG with a message naming what_key and the variable or file in err, never the
 * value. */
int config_dsn(const char *dsn_env, const char *dsn_file, const char *what_key, char **out,
               char *err, size_t errlen);

/* Resolves and parses every DSN of cfg (journal, each secret's admin DSN), as `rotor run` does
 * before it starts anything: 0, or ROTOR_ECONFIG with err naming the first bad key and the
 * variable or file, never the value nor libpq's words (which quote it). */
int config_check_dsns(const rotor_config_t *cfg, char *err, size_t errlen);

/* Every librdkafka property: kafka.properties as they are, then kafka.properties_env and
 * kafka.properties_file resolved now (read each time: a mounted secret may have rotated).
 * Returns 0 and *out (owned by the caller, free with config_kv_free: values may be passwords),
 * or ROTOR_ECONFIG with a message naming the key and the variable or file, never a value. */
int config_kafka_properties(const rotor_config_t *cfg, cfg_kv_t **out, size_t *n, char *err,
                            size_t errlen);

/* Wipes the values and frees n pairs and the array (takes ownership); NULL is fine. */
void config_kv_free(cfg_kv_t *kv, size_t n);

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
