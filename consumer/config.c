/* config.c: rotor.yaml into an immutable rotor_config_t, driven by the config_keys table. */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <libpq-fe.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#include "secret.h"
#include "util.h"

/* Defaults are written as YAML text and parsed by the same loader as the file, so a default can
 * never be something the file itself could not say. Two defaults are not values: "(unset)" marks
 * an optional key with no value, and "(stages.x)" a key that inherits stages.x. */
#define UNSET "(unset)"

const config_key_t config_keys[] = {
    {"kafka.brokers", "string", "embedded", false,
     "`embedded` (the built-in mock broker) or a bootstrap list host:port,..."},
    {"kafka.group", "string", "rotor", false, "consumer group shared by all rotor processes"},
    {"kafka.topics.commands", "string", "rotor.commands", false,
     "input topic: requests, approvals, retries, aborts, stage completions"},
    {"kafka.topics.events", "string", "rotor.events", false,
     "output topic: every stage's started/completed/failed"},
    {"kafka.topics.deadletter", "string", "rotor.deadletter", false,
     "input that cannot be used goes here, with the reason"},
    {"kafka.topics.keyvault", "string", UNSET, false,
     "optional input topic: Key Vault events (Event Grid through Event Hubs)"},
    {"kafka.bootstrap_file", "string", "./var/rotor.bootstrap", false,
     "embedded broker: where `rotor run` writes its address for the CLI"},
    {"kafka.partitions", "integer(1..64)", "3", false,
     "embedded broker: partitions per topic it creates"},
    {"kafka.max_message_bytes", "integer(1000..1000000000)", "1048576", false,
     "largest Kafka message: input larger is dead-lettered; the producer's message.max.bytes "
     "(unless kafka.properties sets it), to which dead letters are cut"},
    {"kafka.properties", "map", "{}", false,
     "extra librdkafka properties (string, number or bool values, passed as strings)"},
    {"kafka.properties_env", "map(env-name)", "{}", false,
     "librdkafka properties whose value is read from an environment variable: property: VARIABLE"},
    {"kafka.properties_file", "map(path)", "{}", false,
     "librdkafka properties whose value is the first line of a file: property: path"},
    {"journal.dsn_env", "env-name", "ROTOR_JOURNAL_DSN", false,
     "environment variable holding the journal DSN (used when dsn_file is not set)"},
    {"journal.dsn_file", "path", UNSET, false,
     "file whose first line is the journal DSN (instead of dsn_env)"},
    {"azure.tenant_id", "string", UNSET, false, "Entra tenant (else AZURE_TENANT_ID)"},
    {"azure.client_id", "string", UNSET, false,
     "app registration or user-assigned managed identity (else AZURE_CLIENT_ID)"},
    {"azure.authority_host", "url", UNSET, false,
     "Entra authority (else AZURE_AUTHORITY_HOST, else https://login.microsoftonline.com)"},
    {"azure.imds_endpoint", "url", UNSET, false,
     "managed identity endpoint (default http://169.254.169.254, IMDS)"},
    {"azure.federated_token_file", "path", UNSET, false,
     "workload identity token file (else AZURE_FEDERATED_TOKEN_FILE)"},
    {"azure.ca_file", "path", UNSET, false,
     "CA bundle for the token endpoints (default: the system's)"},
    {"http.listen", "string", "127.0.0.1:9464", false,
     "host:port of /healthz, /readyz and /metrics; \"\" disables"},
    {"log.level", "enum(debug|info|warn|error)", "info", false, "minimum level of log lines"},
    {"daemon.shutdown_timeout", "duration", "30s", false, "bound on a graceful shutdown"},
    {"daemon.schedule_interval", "duration", "30s", false, "how often schedules are checked"},
    {"stages.timeout", "duration", "5m", false, "every stage: time allowed for one attempt"},
    {"stages.max_attempts", "integer(1..100)", "5", false,
     "every stage: attempts before the rotation fails"},
    {"stages.backoff.initial", "duration", "1s", false,
     "every stage: first wait between attempts (doubles, with jitter)"},
    {"stages.backoff.max", "duration", "5m", false, "every stage: longest wait between attempts"},
    {"stages.<stage>.timeout", "duration", "(stages.timeout)", false,
     "one stage (prepare, generate, set-db, deploy, verify, swap, approve, retire, rollback)"},
    {"stages.<stage>.max_attempts", "integer(1..100)", "(stages.max_attempts)", false,
     "one stage: attempts"},
    {"stages.<stage>.backoff.initial", "duration", "(stages.backoff.initial)", false,
     "one stage: first wait between attempts"},
    {"stages.<stage>.backoff.max", "duration", "(stages.backoff.max)", false,
     "one stage: longest wait between attempts"},
    {"stages.approve.timeout", "duration", "7d", false,
     "approve waits for a human, so it has its own default"},
    {"secrets", "list", NULL, false, "the managed secrets (a non-empty list)"},
    {"secrets[].name", "name", NULL, false,
     "unique name: Kafka key and journal key; [A-Za-z0-9][A-Za-z0-9._-]{0,126}"},
    {"secrets[].active", "enum(blue|green)", "blue", false,
     "slot production uses when rotor first meets this secret"},
    {"secrets[].database.dsn_env", "env-name", UNSET, false,
     "environment variable holding the admin DSN (exactly one of dsn_env, dsn_file)"},
    {"secrets[].database.dsn_file", "path", UNSET, false, "file whose first line is the admin DSN"},
    {"secrets[].database.roles.blue", "string", NULL, false, "role the blue slot logs in with"},
    {"secrets[].database.roles.green", "string", NULL, false,
     "role the green slot logs in with (not the blue one)"},
    {"secrets[].database.probe", "string", "select 1", false,
     "query verify runs as the standby role"},
    {"secrets[].database.drain", "duration", "30s", false,
     "retire waits this long before ending the old role's sessions"},
    {"secrets[].database.entra_token", "bool", "false", false,
     "the admin DSN has no password: rotor logs in with an Entra access token"},
    {"secrets[].store.kind", "enum(file|azure-keyvault)", "file", false, "secret store driver"},
    {"secrets[].store.dir", "string", "./var/secrets", false,
     "file store: directory laid out like a Key Vault CSI mount"},
    {"secrets[].store.vault_url", "url", NULL, false,
     "azure-keyvault: the vault, https://NAME.vault.azure.net (any https URL)"},
    {"secrets[].store.ca_file", "path", UNSET, false,
     "azure-keyvault: CA bundle (default: the system's); TLS is always verified"},
    {"secrets[].store.timeout", "duration", "30s", false, "azure-keyvault: one request, in total"},
    {"secrets[].store.connect_timeout", "duration", "10s", false,
     "azure-keyvault: connecting to the vault"},
    {"secrets[].store.writes_per_10s", "integer(1..300)", "300", false,
     "azure-keyvault: rotor's own limit of secret writes per vault per 10 seconds"},
    {"secrets[].store.content_type", "string", "text/plain", false,
     "azure-keyvault: contentType of the versions rotor writes"},
    {"secrets[].store.resolve", "resolve", UNSET, false,
     "azure-keyvault: HOST:PORT:ADDRESS pins the vault host to an address (tests, private "
     "endpoints)"},
    {"secrets[].store.names.blue", "store-name", NULL, false, "store secret read by the blue slot"},
    {"secrets[].store.names.green", "store-name", NULL, false,
     "store secret read by the green slot"},
    {"secrets[].store.names.current", "store-name", UNSET, false,
     "optional store secret holding the active role and password"},
    {"secrets[].password.length", "integer(8..1024)", "32", false, "password length"},
    {"secrets[].password.classes", "list(upper|lower|digit|symbol)", "[upper, lower, digit]", false,
     "character classes, each used at least once"},
    {"secrets[].password.exclude", "string", "\"\"", false, "characters never used"},
    {"secrets[].validity", "duration", "90d", false,
     "password lifetime: VALID UNTIL and the store's exp are now + validity"},
    {"secrets[].deploy.kind", "enum(none|exec|kubernetes|external)", "none", false,
     "deploy driver; only its own section below may be set"},
    {"secrets[].deploy.exec.deploy", "string", NULL, false,
     "exec: command (sh -c) that brings the standby slot up with the new version"},
    {"secrets[].deploy.exec.swap", "string", NULL, false,
     "exec: command that points production at the standby slot"},
    {"secrets[].deploy.exec.retire", "string", UNSET, false,
     "exec: command that takes the old slot down (none: nothing to do)"},
    {"secrets[].deploy.exec.rollback", "string", UNSET, false,
     "exec: command that points production back at the old slot"},
    {"secrets[].deploy.exec.workdir", "path", UNSET, false,
     "exec: working directory of the commands (default: rotor's)"},
    {"secrets[].deploy.exec.timeout", "duration", "5m", false,
     "exec: one command; then its process group is killed"},
    {"secrets[].deploy.kubernetes.api_url", "url", UNSET, false,
     "kubernetes: API server (default: in-cluster, KUBERNETES_SERVICE_HOST/PORT)"},
    {"secrets[].deploy.kubernetes.token_file", "path",
     "/var/run/secrets/kubernetes.io/serviceaccount/token", false,
     "kubernetes: bearer token, re-read as it rotates"},
    {"secrets[].deploy.kubernetes.ca_file", "path",
     "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt", false,
     "kubernetes: CA bundle of the API server"},
    {"secrets[].deploy.kubernetes.namespace", "string", UNSET, false,
     "kubernetes: namespace (default: the service account's, else default)"},
    {"secrets[].deploy.kubernetes.deployments.blue", "k8s-name", NULL, false,
     "kubernetes: Deployment of the blue slot"},
    {"secrets[].deploy.kubernetes.deployments.green", "k8s-name", NULL, false,
     "kubernetes: Deployment of the green slot"},
    {"secrets[].deploy.kubernetes.services.production", "k8s-name", NULL, false,
     "kubernetes: Service production traffic goes through"},
    {"secrets[].deploy.kubernetes.services.stage", "k8s-name", UNSET, false,
     "kubernetes: Service that selects the standby slot"},
    {"secrets[].deploy.kubernetes.slot_label", "string", "slot", false,
     "kubernetes: pod label whose value (blue, green) the Services select on"},
    {"secrets[].deploy.kubernetes.replicas", "integer(1..100)", "2", false,
     "kubernetes: replicas of a running slot"},
    {"secrets[].deploy.kubernetes.annotation", "string", "rotor.io/secret-version", false,
     "kubernetes: pod template annotation that carries the secret version"},
    {"secrets[].deploy.kubernetes.poll", "duration", "1s", false,
     "kubernetes: how often rollouts and endpoints are read"},
    {"secrets[].deploy.external.timeout", "duration", "30m", false,
     "external: how long to wait for the pipeline's stage.completed or stage.failed"},
    {"secrets[].probes.verify", "list", "[]", false,
     "probes of the standby slot, after deploy (verify also logs in as the standby role)"},
    {"secrets[].probes.production", "list", "[]", false,
     "probes of production, after swap and through the approval's soak"},
    {"secrets[].probes.<list>[].kind", "enum(sql|http)", "http", false,
     "sql: the database probe as the slot's role; http: a request to url"},
    {"secrets[].probes.<list>[].url", "url", NULL, false, "http: http:// or https:// endpoint"},
    {"secrets[].probes.<list>[].method", "string", "GET", false, "http: request method"},
    {"secrets[].probes.<list>[].expect", "list(integer(100..599))", "[200]", false,
     "http: statuses that count as success"},
    {"secrets[].probes.<list>[].body_contains", "string", UNSET, false,
     "http: text the body must contain"},
    {"secrets[].probes.<list>[].ca_file", "path", UNSET, false,
     "http: CA bundle for https (default: the system's)"},
    {"secrets[].probes.<list>[].successes", "integer(1..100)", "1", false,
     "consecutive successes needed"},
    {"secrets[].probes.<list>[].timeout", "duration", "5s", false, "one try"},
    {"secrets[].probes.<list>[].interval", "duration", "1s", false, "wait between tries"},
    {"secrets[].approval.mode", "enum(auto|manual)", "auto", false,
     "auto approves after the soak time; manual waits for `rotor approve`"},
    {"secrets[].approval.soak", "duration", "0s", false,
     "auto: production probes must pass this long before approval"},
    {"secrets[].approval.gate", "enum(retire|swap|both)", "retire", false,
     "the step the approval gates"},
    {"secrets[].schedule.every", "duration", UNSET, false, "rotate this often (not with cron)"},
    {"secrets[].schedule.cron", "cron", UNSET, false,
     "rotate on this 5-field cron expression, UTC (not with every)"},
    {"secrets[].schedule.window", "window", UNSET, false,
     "scheduled rotations start only within HH:MM-HH:MM UTC"},
};
const size_t config_nkeys = sizeof config_keys / sizeof config_keys[0];

/* ---- a small YAML node tree with line numbers ---- */

typedef enum { CN_SCALAR, CN_MAP, CN_SEQ } cn_kind_t;

typedef struct cn cn_t;
struct cn {
    cn_kind_t kind;
    int line;
    bool plain; /* unquoted scalar: only then do null and ~ mean "no value" */
    char *text; /* scalar */
    size_t n;   /* map pairs or list items */
    char **keys;
    int *key_lines;
    cn_t **kids;
};

enum { CN_MAX_DEPTH = 32, CN_MAX_NODES = 100000, PATH_LEN = 256 };

typedef struct {
    const char *file;
    char *err;
    size_t errlen;
    size_t nodes; /* aliases can multiply nodes: bound the copy */
} ctx_t;

static int fail(ctx_t *c, int line, const char *path, const char *fmt, ...)
{
    if (!c->err || !c->errlen)
        return ROTOR_ECONFIG;
    int n = path ? snprintf(c->err, c->errlen, "%s:%d: %s: ", c->file, line, path)
                 : snprintf(c->err, c->errlen, "%s:%d: ", c->file, line);
    if (n >= 0 && (size_t)n < c->errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(c->err + n, c->errlen - (size_t)n, fmt, ap);
        va_end(ap);
    }
    return ROTOR_ECONFIG;
}

static void cn_free(cn_t *n)
{
    if (!n)
        return;
    for (size_t i = 0; i < n->n; i++) {
        if (n->keys)
            free(n->keys[i]);
        cn_free(n->kids[i]);
    }
    free(n->keys);
    free(n->key_lines);
    free(n->kids);
    free(n->text);
    free(n);
}

static int cn_build(ctx_t *c, yaml_document_t *doc, yaml_node_t *yn, int depth, cn_t **out);

static int cn_build_map(ctx_t *c, yaml_document_t *doc, yaml_node_t *yn, int depth, cn_t *n)
{
    size_t count = (size_t)(yn->data.mapping.pairs.top - yn->data.mapping.pairs.start);
    n->keys = util_calloc(count, sizeof *n->keys);
    n->key_lines = util_calloc(count, sizeof *n->key_lines);
    n->kids = util_calloc(count, sizeof *n->kids);
    for (yaml_node_pair_t *p = yn->data.mapping.pairs.start; p < yn->data.mapping.pairs.top; p++) {
        yaml_node_t *k = yaml_document_get_node(doc, p->key);
        yaml_node_t *v = yaml_document_get_node(doc, p->value);
        if (!k || k->type != YAML_SCALAR_NODE)
            return fail(c, k ? (int)k->start_mark.line + 1 : n->line, NULL,
                        "expected a plain key, got a mapping or list as a key");
        n->keys[n->n] = util_strdup((const char *)k->data.scalar.value);
        n->key_lines[n->n] = (int)k->start_mark.line + 1;
        n->n++;
        int rc = cn_build(c, doc, v, depth + 1, &n->kids[n->n - 1]);
        if (rc)
            return rc;
    }
    return 0;
}

static int cn_build_seq(ctx_t *c, yaml_document_t *doc, yaml_node_t *yn, int depth, cn_t *n)
{
    size_t count = (size_t)(yn->data.sequence.items.top - yn->data.sequence.items.start);
    n->kids = util_calloc(count, sizeof *n->kids);
    for (yaml_node_item_t *i = yn->data.sequence.items.start; i < yn->data.sequence.items.top;
         i++) {
        n->n++;
        int rc = cn_build(c, doc, yaml_document_get_node(doc, *i), depth + 1, &n->kids[n->n - 1]);
        if (rc)
            return rc;
    }
    return 0;
}

/* *out is set (and owned by the caller) even on failure, so one cn_free cleans up. */
static int cn_build(ctx_t *c, yaml_document_t *doc, yaml_node_t *yn, int depth, cn_t **out)
{
    cn_t *n = util_calloc(1, sizeof *n);
    *out = n;
    n->line = yn ? (int)yn->start_mark.line + 1 : 1;
    if (!yn)
        return fail(c, 1, NULL, "YAML document refers to a missing node");
    if (depth > CN_MAX_DEPTH || ++c->nodes > CN_MAX_NODES)
        return fail(c, n->line, NULL, "expected at most %d levels and %d nodes (alias loop?)",
                    CN_MAX_DEPTH, CN_MAX_NODES);
    switch (yn->type) {
    case YAML_MAPPING_NODE:
        n->kind = CN_MAP;
        return cn_build_map(c, doc, yn, depth, n);
    case YAML_SEQUENCE_NODE:
        n->kind = CN_SEQ;
        return cn_build_seq(c, doc, yn, depth, n);
    default:
        n->kind = CN_SCALAR;
        n->plain = yn->data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
        n->text = util_strdup((const char *)yn->data.scalar.value);
        return 0;
    }
}

/* Parses one YAML document. *root is NULL for an empty document; the caller frees it. */
static int cn_parse(ctx_t *c, const char *text, size_t len, cn_t **root)
{
    yaml_parser_t p;
    yaml_document_t doc;
    *root = NULL;
    if (!yaml_parser_initialize(&p))
        abort();
    yaml_parser_set_input_string(&p, (const unsigned char *)text, len);
    if (!yaml_parser_load(&p, &doc)) {
        int rc =
            fail(c, (int)p.problem_mark.line + 1, NULL, "YAML syntax error: %s%s%s",
                 p.problem ? p.problem : "?", p.context ? " " : "", p.context ? p.context : "");
        yaml_parser_delete(&p);
        return rc;
    }
    int rc = 0;
    yaml_node_t *r = yaml_document_get_root_node(&doc);
    if (r)
        rc = cn_build(c, &doc, r, 0, root);
    yaml_document_delete(&doc);
    yaml_parser_delete(&p);
    return rc;
}

static bool cn_is_null(const cn_t *n)
{
    if (!n || n->kind != CN_SCALAR || !n->plain)
        return !n;
    return !*n->text || strcmp(n->text, "~") == 0 || strcmp(n->text, "null") == 0 ||
           strcmp(n->text, "Null") == 0 || strcmp(n->text, "NULL") == 0;
}

/* The value of key in map, or NULL when map is NULL, the key is absent or its value is null. */
static const cn_t *cn_get(const cn_t *map, const char *key)
{
    if (!map || map->kind != CN_MAP)
        return NULL;
    for (size_t i = 0; i < map->n; i++) {
        if (strcmp(map->keys[i], key) == 0)
            return cn_is_null(map->kids[i]) ? NULL : map->kids[i];
    }
    return NULL;
}

/* Describes a value for "got ...": scalars quoted and escaped, and cut short. */
static const char *got(const cn_t *v, char *buf, size_t len)
{
    if (!v)
        return "nothing";
    if (v->kind == CN_MAP)
        return "a mapping";
    if (v->kind == CN_SEQ)
        return v->n ? "a list" : "[]";
    if (cn_is_null(v))
        return "null";
    size_t o = 0;
    buf[o++] = '"';
    for (const unsigned char *s = (const unsigned char *)v->text; *s && o + 8 < len; s++) {
        if (s - (const unsigned char *)v->text >= 60) {
            o += (size_t)snprintf(buf + o, len - o, "...");
            break;
        }
        if (*s == '"' || *s == '\\')
            buf[o++] = '\\';
        if (*s < 0x20)
            o += (size_t)snprintf(buf + o, len - o, "\\x%02x", *s);
        else
            buf[o++] = (char)*s;
    }
    buf[o++] = '"';
    buf[o] = '\0';
    return buf;
}

/* ---- paths and the key table ---- */

static void path_join(char *out, const char *parent, const char *key)
{
    if (parent && *parent)
        snprintf(out, PATH_LEN, "%.120s.%.120s", parent, key);
    else
        snprintf(out, PATH_LEN, "%.200s", key);
}

/* "secrets[3].store" -> "secrets[].store": the form the table uses. */
static void path_generic(const char *concrete, char *out)
{
    size_t o = 0;
    bool in_index = false;
    for (const char *p = concrete; *p && o + 1 < PATH_LEN; p++) {
        if (*p == '[')
            in_index = true;
        else if (*p == ']')
            in_index = false;
        else if (in_index)
            continue;
        out[o++] = *p;
    }
    out[o] = '\0';
}

static bool is_stage_name(const char *s, size_t len)
{
    for (int i = 0; i < STAGE__COUNT; i++) {
        const char *name = rotor_stage_name((rotor_stage_t)i);
        if (strlen(name) == len && strncmp(name, s, len) == 0)
            return true;
    }
    return false;
}

/* "stages.verify.timeout" -> "stages.<stage>.timeout"; false when gen is no stage override. */
static bool path_stage_generic(const char *gen, char *out)
{
    if (strncmp(gen, "stages.", 7) != 0)
        return false;
    const char *name = gen + 7;
    size_t len = strcspn(name, ".");
    if (!is_stage_name(name, len))
        return false;
    snprintf(out, PATH_LEN, "stages.<stage>%s", name + len);
    return true;
}

/* "secrets[].probes.verify[].url" -> "secrets[].probes.<list>[].url": both lists hold the same
 * probe, so the table says it once. */
static bool path_probe_generic(const char *gen, char *out)
{
    static const char base[] = "secrets[].probes.";
    if (strncmp(gen, base, sizeof base - 1) != 0)
        return false;
    const char *name = gen + sizeof base - 1;
    size_t len = strcspn(name, ".[");
    bool known = (len == 6 && strncmp(name, "verify", 6) == 0) ||
                 (len == 10 && strncmp(name, "production", 10) == 0);
    if (!known || name[len] != '[')
        return false; /* the list itself is a key of its own */
    snprintf(out, PATH_LEN, "secrets[].probes.<list>%s", name + len);
    return true;
}

/* The table's generic form of a key written with a placeholder, if gen has one. */
static bool path_alias(const char *gen, char *out)
{
    return path_stage_generic(gen, out) || path_probe_generic(gen, out);
}

static const config_key_t *key_find_exact(const char *gen)
{
    for (size_t i = 0; i < config_nkeys; i++) {
        if (strcmp(config_keys[i].key, gen) == 0)
            return &config_keys[i];
    }
    return NULL;
}

static const config_key_t *key_find(const char *gen)
{
    if (strchr(gen, '<'))
        return NULL; /* "<stage>" is the table's placeholder, not a key anyone may write */
    const config_key_t *k = key_find_exact(gen);
    char alt[PATH_LEN];
    if (!k && path_alias(gen, alt))
        k = key_find_exact(alt);
    return k;
}

static bool key_is_prefix_exact(const char *gen)
{
    size_t len = strlen(gen);
    for (size_t i = 0; i < config_nkeys; i++) {
        const char *k = config_keys[i].key;
        if (strncmp(k, gen, len) == 0 && (k[len] == '.' || k[len] == '['))
            return true;
    }
    return false;
}

/* True when gen is a section above some key ("kafka.topics", "stages.verify"). */
static bool key_is_section(const char *gen)
{
    if (strchr(gen, '<'))
        return false;
    char alt[PATH_LEN];
    return key_is_prefix_exact(gen) || (path_alias(gen, alt) && key_is_prefix_exact(alt));
}

static size_t edit_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la > 63 || lb > 63)
        return 64;
    size_t row[64];
    for (size_t j = 0; j <= lb; j++)
        row[j] = j;
    for (size_t i = 1; i <= la; i++) {
        size_t diag = row[0];
        row[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t up = row[j];
            size_t best = diag + (a[i - 1] != b[j - 1]);
            if (up + 1 < best)
                best = up + 1;
            if (row[j - 1] + 1 < best)
                best = row[j - 1] + 1;
            row[j] = best;
            diag = up;
        }
    }
    return row[lb];
}

/* Considers one known child name of the parent section as a suggestion for name. */
static void suggest_consider(const char *cand, size_t clen, const char *name, char *best,
                             size_t *best_d)
{
    char buf[64];
    if (clen >= sizeof buf)
        return;
    memcpy(buf, cand, clen);
    buf[clen] = '\0';
    size_t d = edit_distance(buf, name);
    if (d < *best_d) {
        *best_d = d;
        memcpy(best, buf, clen + 1);
    }
}

/* The known child of section parent_gen closest to name, if close enough to be a typo. */
static bool suggest(const char *parent_gen, const char *name, char *best)
{
    /* Close enough to be a typo: a third of the name plus one edit, at most three. */
    size_t best_d = strlen(name) / 3 + 2 < 4 ? strlen(name) / 3 + 2 : 4;
    size_t plen = strlen(parent_gen);
    bool at_stages = strcmp(parent_gen, "stages") == 0;
    char alt[PATH_LEN];
    const char *p = parent_gen;
    if (path_alias(parent_gen, alt))
        p = alt, plen = strlen(alt);
    for (size_t i = 0; i < config_nkeys; i++) {
        const char *k = config_keys[i].key;
        if (plen && (strncmp(k, p, plen) != 0 || k[plen] != '.'))
            continue;
        const char *c = plen ? k + plen + 1 : k;
        size_t clen = strcspn(c, ".[");
        if (at_stages && clen == 7 && strncmp(c, "<stage>", 7) == 0) {
            for (int s = 0; s < STAGE__COUNT; s++) {
                const char *sn = rotor_stage_name((rotor_stage_t)s);
                suggest_consider(sn, strlen(sn), name, best, &best_d);
            }
            continue;
        }
        if (c[0] == '<')
            continue; /* a placeholder is no key anyone may write */
        suggest_consider(c, clen, name, best, &best_d);
    }
    return best[0] != '\0';
}

/* ---- unknown and duplicate keys, before any value is read ---- */

static int check_dups(ctx_t *c, const cn_t *map, const char *path)
{
    for (size_t i = 0; i < map->n; i++) {
        for (size_t j = 0; j < i; j++) {
            if (strcmp(map->keys[i], map->keys[j]) == 0) {
                char child[PATH_LEN];
                path_join(child, path, map->keys[i]);
                return fail(c, map->key_lines[i], child, "duplicate key (first on line %d)",
                            map->key_lines[j]);
            }
        }
    }
    return 0;
}

static int check_keys(ctx_t *c, const cn_t *n, const char *path);

static int check_unknown(ctx_t *c, const cn_t *map, size_t i, const char *path, const char *child)
{
    char pgen[PATH_LEN], best[64] = "";
    path_generic(path, pgen);
    if (strcmp(map->keys[i], "dsn") == 0 &&
        (strcmp(pgen, "journal") == 0 || strcmp(pgen, "secrets[].database") == 0))
        return fail(c, map->key_lines[i], child, "DSNs are never inline: use dsn_env or dsn_file");
    if (strcmp(map->keys[i], "client_secret") == 0 && strcmp(pgen, "azure") == 0)
        return fail(c, map->key_lines[i], child,
                    "client secrets are never in the file: set AZURE_CLIENT_SECRET");
    if (suggest(pgen, map->keys[i], best)) {
        char sug[PATH_LEN];
        path_join(sug, path, best);
        return fail(c, map->key_lines[i], NULL, "unknown key %s (did you mean %s?)", child, sug);
    }
    return fail(c, map->key_lines[i], NULL, "unknown key %s", child);
}

static int check_map(ctx_t *c, const cn_t *map, const char *path)
{
    int rc = check_dups(c, map, path);
    for (size_t i = 0; !rc && i < map->n; i++) {
        char child[PATH_LEN], gen[PATH_LEN];
        path_join(child, path, map->keys[i]);
        path_generic(child, gen);
        const config_key_t *k = key_find(gen);
        const cn_t *v = map->kids[i];
        if (k && strcmp(k->type, "list") == 0 && v->kind == CN_SEQ) {
            for (size_t j = 0; !rc && j < v->n; j++) {
                char item[PATH_LEN];
                snprintf(item, sizeof item, "%.200s[%zu]", child, j);
                rc = check_keys(c, v->kids[j], item);
            }
        } else if (k && strncmp(k->type, "map", 3) == 0 && v->kind == CN_MAP) {
            rc = check_dups(c, v, child);
        } else if (!k && key_is_section(gen)) {
            rc = check_keys(c, v, child);
        } else if (!k) {
            rc = check_unknown(c, map, i, path, child);
        }
    }
    return rc;
}

/* Walks the tree; type errors are left to the readers below, which know what they expect. */
static int check_keys(ctx_t *c, const cn_t *n, const char *path)
{
    return n && n->kind == CN_MAP ? check_map(c, n, path) : 0;
}

/* ---- typed readers: each takes the key's type and default from the table ---- */

/* A mapping in the file (map may be NULL when absent), with the line to blame when a key inside
 * it is missing: its own, or its nearest ancestor's. */
typedef struct {
    const cn_t *map;
    int line;
    char path[PATH_LEN];
} sec_t;

static int sec_root(ctx_t *c, const cn_t *root, sec_t *out)
{
    out->map = root;
    out->line = root ? root->line : 1;
    out->path[0] = '\0';
    if (root && root->kind != CN_MAP) {
        char buf[96];
        return fail(c, root->line, NULL, "expected a mapping at the top level, got %s",
                    got(root, buf, sizeof buf));
    }
    return 0;
}

static int sec_child(ctx_t *c, const sec_t *parent, const char *name, sec_t *out)
{
    const cn_t *v = cn_get(parent->map, name);
    path_join(out->path, parent->path, name);
    out->map = v;
    out->line = v ? v->line : parent->line;
    if (v && v->kind != CN_MAP) {
        char buf[96];
        return fail(c, v->line, out->path, "expected a mapping, got %s", got(v, buf, sizeof buf));
    }
    return 0;
}

/* Finds parent.name: the file's value, else the table's default parsed into *tmp (the caller
 * frees it). *v is NULL for an unset optional key or one that inherits. */
static int lookup(ctx_t *c, const sec_t *s, const char *name, const config_key_t **k,
                  const cn_t **v, cn_t **tmp, char *path)
{
    char gen[PATH_LEN];
    path_join(path, s->path, name);
    path_generic(path, gen);
    *k = key_find(gen);
    *tmp = NULL;
    if (!*k)
        abort(); /* a reader asked for a key the table lacks: a bug, not a user error */
    *v = cn_get(s->map, name);
    if (*v)
        return 0;
    if (!(*k)->dflt)
        return fail(c, s->line, path, "missing required key");
    if ((*k)->dflt[0] == '(')
        return 0;
    ctx_t dc = {.file = "(default)", .err = c->err, .errlen = c->errlen};
    cn_t *root = NULL;
    size_t len = strlen((*k)->dflt) + 4;
    char *text = util_malloc(len);
    snprintf(text, len, "v: %s", (*k)->dflt);
    if (cn_parse(&dc, text, strlen(text), &root) || !root || root->kind != CN_MAP)
        abort(); /* the table's default is not YAML: a bug */
    free(text);
    *tmp = root;
    *v = root->kids[0];
    return 0;
}

static int want_scalar(ctx_t *c, const cn_t *v, const char *path, const char *what)
{
    char buf[96];
    if (v->kind != CN_SCALAR)
        return fail(c, v->line, path, "expected %s, got %s", what, got(v, buf, sizeof buf));
    return 0;
}

/* Reads a string; *out stays NULL when the key is unset. */
static int get_str(ctx_t *c, const sec_t *s, const char *name, bool allow_empty, char **out)
{
    const config_key_t *k;
    const cn_t *v;
    cn_t *tmp;
    char path[PATH_LEN];
    int rc = lookup(c, s, name, &k, &v, &tmp, path);
    if (!rc && v) {
        rc = want_scalar(c, v, path, allow_empty ? "a string" : "a non-empty string");
        if (!rc && !allow_empty && !*v->text)
            rc = fail(c, v->line, path, "expected a non-empty string, got \"\"");
        if (!rc)
            *out = util_strdup(v->text);
    }
    cn_free(tmp);
    return rc;
}

/* Reads an integer in the range the table's type gives; *out is untouched when it inherits. */
static int get_int(ctx_t *c, const sec_t *s, const char *name, long *out)
{
    const config_key_t *k;
    const cn_t *v;
    cn_t *tmp;
    char path[PATH_LEN], buf[96];
    int rc = lookup(c, s, name, &k, &v, &tmp, path);
    long lo = 0, hi = 0;
    if (sscanf(k->type, "integer(%ld..%ld)", &lo, &hi) != 2)
        abort();
    if (!rc && v) {
        char *end = NULL;
        errno = 0;
        long n = v->kind == CN_SCALAR ? strtol(v->text, &end, 10) : 0;
        if (v->kind != CN_SCALAR || !*v->text || *end || errno || n < lo || n > hi)
            rc = fail(c, v->line, path, "expected an integer from %ld to %ld, got %s", lo, hi,
                      got(v, buf, sizeof buf));
        else
            *out = n;
    }
    cn_free(tmp);
    return rc;
}

/* Reads a duration; *out is untouched when the key is unset or inherits. */
static int get_dur(ctx_t *c, const sec_t *s, const char *name, bool positive, uint64_t *out)
{
    const config_key_t *k;
    const cn_t *v;
    cn_t *tmp;
    char path[PATH_LEN], buf[96];
    int rc = lookup(c, s, name, &k, &v, &tmp, path);
    uint64_t ms = 0;
    if (!rc && v) {
        if (v->kind != CN_SCALAR || util_parse_duration(v->text, &ms) || (positive && !ms))
            rc = fail(c, v->line, path,
                      "expected a %sduration such as 30s, 5m, 1h30m or 90d, got %s",
                      positive ? "non-zero " : "", got(v, buf, sizeof buf));
        else
            *out = ms;
    }
    cn_free(tmp);
    return rc;
}

/* Index of text among the '|'-separated options in spec ("a|b|c)"), or -1. */
static int option_index(const char *spec, const char *text)
{
    int i = 0;
    size_t len = strlen(text);
    for (const char *p = spec; *p && *p != ')'; i++) {
        size_t olen = strcspn(p, "|)");
        if (olen == len && strncmp(p, text, len) == 0)
            return i;
        p += olen;
        if (*p == '|')
            p++;
    }
    return -1;
}

/* "a|b|c)" -> "a, b, c" for messages. */
static void options_text(const char *spec, char *buf, size_t len)
{
    size_t o = 0;
    for (const char *p = spec; *p && *p != ')' && o + 3 < len; p++) {
        if (*p == '|') {
            buf[o++] = ',';
            buf[o++] = ' ';
        } else {
            buf[o++] = *p;
        }
    }
    buf[o] = '\0';
}

static int get_enum(ctx_t *c, const sec_t *s, const char *name, int *out)
{
    const config_key_t *k;
    const cn_t *v;
    cn_t *tmp;
    char path[PATH_LEN], buf[96], opts[128];
    int rc = lookup(c, s, name, &k, &v, &tmp, path);
    if (strncmp(k->type, "enum(", 5) != 0)
        abort();
    const char *spec = k->type + 5;
    if (!rc && v) {
        int i = v->kind == CN_SCALAR ? option_index(spec, v->text) : -1;
        options_text(spec, opts, sizeof opts);
        if (i < 0)
            rc =
                fail(c, v->line, path, "expected one of %s, got %s", opts, got(v, buf, sizeof buf));
        else
            *out = i;
    }
    cn_free(tmp);
    return rc;
}

/* A non-empty list of distinct options from a "list(a|b)" type, as a bit set (option i = bit i). */
static int get_flags(ctx_t *c, const sec_t *s, const char *name, unsigned *out)
{
    const config_key_t *k;
    const cn_t *v;
    cn_t *tmp;
    char path[PATH_LEN], buf[96], opts[128];
    int rc = lookup(c, s, name, &k, &v, &tmp, path);
    if (strncmp(k->type, "list(", 5) != 0)
        abort();
    const char *spec = k->type + 5;
    options_text(spec, opts, sizeof opts);
    unsigned bits = 0;
    if (!rc && v && (v->kind != CN_SEQ || v->n == 0))
        rc = fail(c, v->line, path, "expected a non-empty list of %s, got %s", opts,
                  got(v, buf, sizeof buf));
    for (size_t i = 0; !rc && v && i < v->n; i++) {
        const cn_t *item = v->kids[i];
        int idx = item->kind == CN_SCALAR ? option_index(spec, item->text) : -1;
        char ipath[PATH_LEN];
        snprintf(ipath, sizeof ipath, "%.200s[%zu]", path, i);
        if (idx < 0)
            rc = fail(c, item->line, ipath, "expected one of %s, got %s", opts,
                      got(item, buf, sizeof buf));
        else if (bits & (1u << idx))
            rc = fail(c, item->line, ipath, "expected each class once, got %s twice",
                      got(item, buf, sizeof buf));
        bits |= 1u << (idx < 0 ? 0 : idx);
    }
    if (!rc && v)
        *out = bits;
    cn_free(tmp);
    return rc;
}

/* A plain true or false; *out is untouched when the key is unset. */
static int get_bool(ctx_t *c, const sec_t *s, const char *name, bool *out)
{
    const config_key_t *k;
    const cn_t *v;
    cn_t *tmp;
    char path[PATH_LEN], buf[96];
    int rc = lookup(c, s, name, &k, &v, &tmp, path);
    if (strcmp(k->type, "bool") != 0)
        abort();
    if (!rc && v) {
        bool t = v->kind == CN_SCALAR && strcmp(v->text, "true") == 0;
        if (!t && !(v->kind == CN_SCALAR && strcmp(v->text, "false") == 0))
            rc = fail(c, v->line, path, "expected true or false, got %s", got(v, buf, sizeof buf));
        else
            *out = t;
    }
    cn_free(tmp);
    return rc;
}

/* A non-empty list of integers in the range of a "list(integer(lo..hi))" type; *out is owned by
 * the caller. */
static int get_int_list(ctx_t *c, const sec_t *s, const char *name, int **out, size_t *n)
{
    const config_key_t *k;
    const cn_t *v;
    cn_t *tmp;
    char path[PATH_LEN], buf[96];
    int rc = lookup(c, s, name, &k, &v, &tmp, path);
    long lo = 0, hi = 0;
    if (sscanf(k->type, "list(integer(%ld..%ld))", &lo, &hi) != 2)
        abort();
    if (!rc && v && (v->kind != CN_SEQ || v->n == 0))
        rc = fail(c, v->line, path, "expected a non-empty list of integers from %ld to %ld, got %s",
                  lo, hi, got(v, buf, sizeof buf));
    if (!rc && v)
        *out = util_calloc(v->n, sizeof **out);
    for (size_t i = 0; !rc && v && i < v->n; i++) {
        const cn_t *item = v->kids[i];
        char *end = NULL, ipath[PATH_LEN];
        errno = 0;
        long x = item->kind == CN_SCALAR ? strtol(item->text, &end, 10) : 0;
        snprintf(ipath, sizeof ipath, "%.200s[%zu]", path, i);
        if (item->kind != CN_SCALAR || !*item->text || *end || errno || x < lo || x > hi)
            rc = fail(c, item->line, ipath, "expected an integer from %ld to %ld, got %s", lo, hi,
                      got(item, buf, sizeof buf));
        else
            (*out)[(*n)++] = (int)x;
    }
    cn_free(tmp);
    return rc;
}

/* The node of an optional key if present, for checks across keys (exactly one of...). */
static const cn_t *peek(const sec_t *s, const char *name)
{
    return cn_get(s->map, name);
}

/* ---- value rules beyond the type ---- */

static bool is_env_name(const char *s)
{
    if (!s || !(isalpha((unsigned char)*s) || *s == '_'))
        return false;
    for (; *s; s++) {
        if (!isalnum((unsigned char)*s) && *s != '_')
            return false;
    }
    return true;
}

static bool chars_in(const char *s, const char *extra, size_t min, size_t max)
{
    size_t len = strlen(s);
    if (len < min || len > max)
        return false;
    for (; *s; s++) {
        if (!isalnum((unsigned char)*s) && !strchr(extra, *s))
            return false;
    }
    return true;
}

/* Kafka's own rule for topic names. */
static bool is_topic_name(const char *s)
{
    return chars_in(s, "._-", 1, 249) && strcmp(s, ".") != 0 && strcmp(s, "..") != 0;
}

static bool is_secret_name(const char *s)
{
    return isalnum((unsigned char)s[0]) && chars_in(s, "._-", 1, 127);
}

/* Key Vault's rule for secret names. */
static bool is_store_name(const char *s)
{
    return chars_in(s, "-", 1, 127);
}

/* scheme://host...: the host is all that is checked here; the drivers check the rest. */
static bool is_url(const char *s, bool http_too)
{
    const char *rest = strncmp(s, "https://", 8) == 0              ? s + 8
                       : http_too && strncmp(s, "http://", 7) == 0 ? s + 7
                                                                   : NULL;
    return rest && *rest && *rest != '/' && *rest != ':' && !strpbrk(s, " \t\r\n");
}

/* curl's --resolve form, HOST:PORT:ADDRESS; an IPv6 address may be bracketed. */
static bool is_resolve(const char *s)
{
    const char *c1 = strchr(s, ':');
    if (!c1 || c1 == s)
        return false;
    char *end;
    long port = strtol(c1 + 1, &end, 10);
    return isdigit((unsigned char)c1[1]) && *end == ':' && port > 0 && port < 65536 && end[1];
}

/* Kubernetes' rule for object names (DNS-1123 subdomain). */
static bool is_k8s_name(const char *s)
{
    size_t len = strlen(s);
    if (len == 0 || len > 253 || !isalnum((unsigned char)s[0]) ||
        !isalnum((unsigned char)s[len - 1]))
        return false;
    for (; *s; s++) {
        if (!(islower((unsigned char)*s) || isdigit((unsigned char)*s) || *s == '-' || *s == '.'))
            return false;
    }
    return true;
}

static bool is_method(const char *s)
{
    if (!*s || strlen(s) > 16)
        return false;
    for (; *s; s++) {
        if (!isupper((unsigned char)*s))
            return false;
    }
    return true;
}

/* Fails when value breaks rule: "what" says what was expected. */
static int check_value(ctx_t *c, const sec_t *s, const char *name, const char *value,
                       bool (*rule)(const char *), const char *what)
{
    if (!value || rule(value))
        return 0;
    char path[PATH_LEN], buf[96];
    path_join(path, s->path, name);
    const cn_t *v = peek(s, name);
    return fail(c, v ? v->line : s->line, path, "expected %s, got %s", what,
                got(v, buf, sizeof buf));
}

static bool is_https_url(const char *s)
{
    return is_url(s, false);
}

static bool is_http_url(const char *s)
{
    return is_url(s, true);
}

/* Keys that belong to another kind are an error rather than silently ignored: they show a
 * mistake in kind or in indentation. */
static int reject_keys(ctx_t *c, const sec_t *s, const char *const *keys, const char *their_kind,
                       const char *kind)
{
    for (; *keys; keys++) {
        const cn_t *v = peek(s, *keys);
        if (!v)
            continue;
        char path[PATH_LEN];
        path_join(path, s->path, *keys);
        return fail(c, v->line, path, "expected kind %s for this key, got kind %s", their_kind,
                    kind);
    }
    return 0;
}

static bool is_listen(const char *s)
{
    if (!*s)
        return true;
    /* ":9464" listens on every IPv4 address; port 0 picks a free port (tests). */
    const char *colon = strrchr(s, ':');
    if (!colon)
        return false;
    char *end;
    long port = strtol(colon + 1, &end, 10);
    return colon[1] && !*end && port >= 0 && port < 65536;
}

/* Reads a DSN pair: exactly one of dsn_env and dsn_file. The env name is never echoed: someone
 * who mistakes it for the DSN field would see their password in the message. */
static int get_dsn_pair(ctx_t *c, const sec_t *s, char **env, char **file, bool env_defaults)
{
    const cn_t *e = peek(s, "dsn_env"), *f = peek(s, "dsn_file");
    char path[PATH_LEN];
    path_join(path, s->path, "dsn_env");
    if (e && f)
        return fail(c, f->line, s->path, "expected one of dsn_env or dsn_file, got both");
    if (!e && !f && !env_defaults)
        return fail(c, s->line, path, "missing required key (or set dsn_file)");
    int rc = f ? get_str(c, s, "dsn_file", false, file) : get_str(c, s, "dsn_env", false, env);
    if (!rc && *env && !is_env_name(*env))
        rc = fail(c, e->line, path,
                  "expected an environment variable name ([A-Za-z_][A-Za-z0-9_]*), got something "
                  "else (not shown: it may be a DSN)");
    return rc;
}

/* ---- sections ---- */

/* How a property map's values are read: as they are, or as a variable name or a path. */
typedef enum { KV_VALUE, KV_ENV, KV_FILE } kv_kind_t;

static int check_kv_value(ctx_t *c, const cn_t *v, const char *child, kv_kind_t kind)
{
    /* Values are never echoed: sasl.password and friends live here, and someone may write a
     * password where a variable name was expected. */
    if (v->kind != CN_SCALAR || cn_is_null(v))
        return fail(c, v->line, child, "expected a string, number or boolean, got %s",
                    v->kind == CN_SCALAR ? "null" : "a mapping or list");
    if (kind == KV_ENV && !is_env_name(v->text))
        return fail(c, v->line, child,
                    "expected an environment variable name ([A-Za-z_][A-Za-z0-9_]*), got "
                    "something else (not shown: it may be a secret)");
    if (kind == KV_FILE && !*v->text)
        return fail(c, v->line, child, "expected a path, got \"\"");
    return 0;
}

/* A property set in two maps would leave librdkafka with whichever came last. */
static int check_kv_unique(ctx_t *c, const cn_t *v, size_t i, const char *child,
                           const rotor_config_t *cfg)
{
    const cfg_kv_t *maps[] = {cfg->kafka.properties, cfg->kafka.properties_env};
    const size_t ns[] = {cfg->kafka.nproperties, cfg->kafka.nproperties_env};
    static const char *const names[] = {"kafka.properties", "kafka.properties_env"};
    for (int m = 0; m < 2; m++) {
        for (size_t j = 0; j < ns[m]; j++) {
            if (strcmp(maps[m][j].key, v->keys[i]) == 0)
                return fail(c, v->key_lines[i], child,
                            "expected a property set in one place, got it also in %s", names[m]);
        }
    }
    return 0;
}

static int load_properties(ctx_t *c, const sec_t *kafka, const char *name, kv_kind_t kind,
                           rotor_config_t *cfg, cfg_kv_t **out, size_t *n)
{
    const config_key_t *k;
    const cn_t *v;
    cn_t *tmp;
    char path[PATH_LEN];
    int rc = lookup(c, kafka, name, &k, &v, &tmp, path);
    char buf[96];
    if (!rc && v->kind != CN_MAP)
        rc = fail(c, v->line, path, "expected a mapping of librdkafka properties, got %s",
                  got(v, buf, sizeof buf));
    if (!rc && v->kind == CN_MAP) {
        *out = util_calloc(v->n, sizeof **out);
        for (size_t i = 0; !rc && i < v->n; i++) {
            char child[PATH_LEN];
            path_join(child, path, v->keys[i]);
            rc = check_kv_value(c, v->kids[i], child, kind);
            if (!rc && kind != KV_VALUE)
                rc = check_kv_unique(c, v, i, child, cfg);
            if (rc)
                break;
            (*out)[i].key = util_strdup(v->keys[i]);
            (*out)[i].value = util_strdup(v->kids[i]->text);
            (*n)++;
        }
    }
    cn_free(tmp);
    return rc;
}

static int check_topic(ctx_t *c, const sec_t *topics, const char *name, const char *value)
{
    const cn_t *v = peek(topics, name);
    char path[PATH_LEN];
    path_join(path, topics->path, name);
    if (is_topic_name(value))
        return 0;
    char buf[96];
    return fail(c, v ? v->line : topics->line, path,
                "expected a Kafka topic name (1-249 of [A-Za-z0-9._-]), got %s",
                got(v, buf, sizeof buf));
}

static int load_kafka(ctx_t *c, const sec_t *root, rotor_config_t *cfg)
{
    sec_t kafka, topics;
    long partitions = 0, max_bytes = 0;
    int rc = sec_child(c, root, "kafka", &kafka);
    if (!rc)
        rc = get_str(c, &kafka, "brokers", false, &cfg->kafka.brokers);
    if (!rc)
        rc = get_str(c, &kafka, "group", false, &cfg->kafka.group);
    if (!rc)
        rc = sec_child(c, &kafka, "topics", &topics);
    if (!rc)
        rc = get_str(c, &topics, "commands", false, &cfg->kafka.topic_commands);
    if (!rc)
        rc = check_topic(c, &topics, "commands", cfg->kafka.topic_commands);
    if (!rc)
        rc = get_str(c, &topics, "events", false, &cfg->kafka.topic_events);
    if (!rc)
        rc = check_topic(c, &topics, "events", cfg->kafka.topic_events);
    if (!rc)
        rc = get_str(c, &topics, "deadletter", false, &cfg->kafka.topic_deadletter);
    if (!rc)
        rc = check_topic(c, &topics, "deadletter", cfg->kafka.topic_deadletter);
    if (!rc)
        rc = get_str(c, &topics, "keyvault", false, &cfg->kafka.topic_keyvault);
    if (!rc && cfg->kafka.topic_keyvault)
        rc = check_topic(c, &topics, "keyvault", cfg->kafka.topic_keyvault);
    if (!rc)
        rc = get_str(c, &kafka, "bootstrap_file", false, &cfg->kafka.bootstrap_file);
    if (!rc)
        rc = get_int(c, &kafka, "partitions", &partitions);
    if (!rc)
        rc = get_int(c, &kafka, "max_message_bytes", &max_bytes);
    if (!rc)
        rc = load_properties(c, &kafka, "properties", KV_VALUE, cfg, &cfg->kafka.properties,
                             &cfg->kafka.nproperties);
    if (!rc)
        rc = load_properties(c, &kafka, "properties_env", KV_ENV, cfg, &cfg->kafka.properties_env,
                             &cfg->kafka.nproperties_env);
    if (!rc)
        rc = load_properties(c, &kafka, "properties_file", KV_FILE, cfg,
                             &cfg->kafka.properties_file, &cfg->kafka.nproperties_file);
    cfg->kafka.partitions = (int)partitions;
    cfg->kafka.max_message_bytes = (size_t)max_bytes;
    return rc;
}

static int load_azure(ctx_t *c, const sec_t *root, rotor_config_t *cfg)
{
    sec_t az;
    int rc = sec_child(c, root, "azure", &az);
    if (!rc)
        rc = get_str(c, &az, "tenant_id", false, &cfg->azure.tenant_id);
    if (!rc)
        rc = get_str(c, &az, "client_id", false, &cfg->azure.client_id);
    if (!rc)
        rc = get_str(c, &az, "authority_host", false, &cfg->azure.authority_host);
    if (!rc)
        rc = check_value(c, &az, "authority_host", cfg->azure.authority_host, is_https_url,
                         "an https:// URL such as https://login.microsoftonline.com");
    if (!rc)
        rc = get_str(c, &az, "imds_endpoint", false, &cfg->azure.imds_endpoint);
    if (!rc)
        rc = check_value(c, &az, "imds_endpoint", cfg->azure.imds_endpoint, is_http_url,
                         "an http:// or https:// URL such as http://169.254.169.254");
    if (!rc)
        rc = get_str(c, &az, "federated_token_file", false, &cfg->azure.federated_token_file);
    if (!rc)
        rc = get_str(c, &az, "ca_file", false, &cfg->azure.ca_file);
    return rc;
}

static int load_misc(ctx_t *c, const sec_t *root, rotor_config_t *cfg)
{
    sec_t journal, http, log, daemon;
    int level = 0;
    int rc = sec_child(c, root, "journal", &journal);
    if (!rc)
        rc = get_dsn_pair(c, &journal, &cfg->journal.dsn_env, &cfg->journal.dsn_file, true);
    if (!rc)
        rc = load_azure(c, root, cfg);
    if (!rc)
        rc = sec_child(c, root, "http", &http);
    if (!rc)
        rc = get_str(c, &http, "listen", true, &cfg->http.listen);
    if (!rc && !is_listen(cfg->http.listen)) {
        const cn_t *v = peek(&http, "listen");
        char buf[96];
        rc = fail(c, v->line, "http.listen", "expected host:port or \"\" (disabled), got %s",
                  got(v, buf, sizeof buf));
    }
    if (!rc)
        rc = sec_child(c, root, "log", &log);
    if (!rc)
        rc = get_enum(c, &log, "level", &level);
    if (!rc) {
        static const char *const levels[] = {"debug", "info", "warn", "error"};
        cfg->log.level = util_strdup(levels[level]);
    }
    if (!rc)
        rc = sec_child(c, root, "daemon", &daemon);
    if (!rc)
        rc = get_dur(c, &daemon, "shutdown_timeout", true, &cfg->daemon.shutdown_timeout_ms);
    if (!rc)
        rc = get_dur(c, &daemon, "schedule_interval", true, &cfg->daemon.schedule_interval_ms);
    return rc;
}

static int load_policy(ctx_t *c, const sec_t *s, cfg_stage_policy_t *p)
{
    sec_t backoff;
    long attempts = p->max_attempts;
    int rc = get_dur(c, s, "timeout", true, &p->timeout_ms);
    if (!rc)
        rc = get_int(c, s, "max_attempts", &attempts);
    if (!rc)
        rc = sec_child(c, s, "backoff", &backoff);
    if (!rc)
        rc = get_dur(c, &backoff, "initial", false, &p->backoff_initial_ms);
    if (!rc)
        rc = get_dur(c, &backoff, "max", false, &p->backoff_max_ms);
    p->max_attempts = (int)attempts;
    if (!rc && p->backoff_max_ms < p->backoff_initial_ms)
        rc = fail(c, backoff.line, backoff.path,
                  "expected max to be at least initial, got max shorter than initial");
    return rc;
}

/* Top-level `stages`: defaults for every stage, then per-stage overrides that inherit them. */
static int load_stages(ctx_t *c, const sec_t *root, cfg_stage_policy_t out[STAGE__COUNT])
{
    sec_t stages;
    cfg_stage_policy_t all = {0};
    int rc = sec_child(c, root, "stages", &stages);
    if (!rc)
        rc = load_policy(c, &stages, &all);
    for (int i = 0; !rc && i < STAGE__COUNT; i++) {
        sec_t one;
        out[i] = all;
        rc = sec_child(c, &stages, rotor_stage_name((rotor_stage_t)i), &one);
        if (!rc)
            rc = load_policy(c, &one, &out[i]);
    }
    return rc;
}

static int load_roles(ctx_t *c, const sec_t *db, cfg_secret_t *s)
{
    sec_t roles;
    int rc = sec_child(c, db, "roles", &roles);
    if (!rc)
        rc = get_str(c, &roles, "blue", false, &s->database.roles[SLOT_BLUE]);
    if (!rc)
        rc = get_str(c, &roles, "green", false, &s->database.roles[SLOT_GREEN]);
    for (int i = 0; !rc && i < 2; i++) {
        const char *slot = rotor_slot_name((rotor_slot_t)i);
        if (strlen(s->database.roles[i]) > 63) {
            char path[PATH_LEN];
            path_join(path, roles.path, slot);
            rc = fail(c, peek(&roles, slot)->line, path,
                      "expected a PostgreSQL role name of at most 63 bytes, got %zu bytes",
                      strlen(s->database.roles[i]));
        }
    }
    if (!rc && strcmp(s->database.roles[0], s->database.roles[1]) == 0) {
        char path[PATH_LEN];
        path_join(path, roles.path, "green");
        rc = fail(c, peek(&roles, "green")->line, path,
                  "expected a role other than blue's, got the same role \"%s\"",
                  s->database.roles[1]);
    }
    return rc;
}

static int load_database(ctx_t *c, const sec_t *item, cfg_secret_t *s)
{
    sec_t db;
    int rc = sec_child(c, item, "database", &db);
    if (!rc)
        rc = get_dsn_pair(c, &db, &s->database.dsn_env, &s->database.dsn_file, false);
    if (!rc)
        rc = load_roles(c, &db, s);
    if (!rc)
        rc = get_str(c, &db, "probe", false, &s->database.probe);
    if (!rc)
        rc = get_dur(c, &db, "drain", false, &s->database.drain_ms);
    if (!rc)
        rc = get_bool(c, &db, "entra_token", &s->database.entra_token);
    return rc;
}

static int check_store_name(ctx_t *c, const sec_t *names, const char *key, const char *value)
{
    char path[PATH_LEN], buf[96];
    path_join(path, names->path, key);
    if (!value || is_store_name(value))
        return 0;
    return fail(c, peek(names, key)->line, path,
                "expected 1-127 characters of [0-9A-Za-z-] (Key Vault's rule), got %s",
                got(peek(names, key), buf, sizeof buf));
}

static int check_store_names_distinct(ctx_t *c, const sec_t *names, const cfg_secret_t *s)
{
    static const char *const keys[] = {"blue", "green", "current"};
    const char *vals[] = {s->store.names[0], s->store.names[1], s->store.current};
    for (int i = 1; i < 3; i++) {
        for (int j = 0; j < i; j++) {
            if (vals[i] && vals[j] && strcmp(vals[i], vals[j]) == 0) {
                char path[PATH_LEN];
                path_join(path, names->path, keys[i]);
                return fail(c, peek(names, keys[i])->line, path,
                            "expected a name distinct from %s's, got the same \"%s\"", keys[j],
                            vals[i]);
            }
        }
    }
    return 0;
}

static int load_store_names(ctx_t *c, const sec_t *store, cfg_secret_t *s)
{
    sec_t names;
    int rc = sec_child(c, store, "names", &names);
    if (!rc)
        rc = get_str(c, &names, "blue", false, &s->store.names[SLOT_BLUE]);
    if (!rc)
        rc = check_store_name(c, &names, "blue", s->store.names[SLOT_BLUE]);
    if (!rc)
        rc = get_str(c, &names, "green", false, &s->store.names[SLOT_GREEN]);
    if (!rc)
        rc = check_store_name(c, &names, "green", s->store.names[SLOT_GREEN]);
    if (!rc)
        rc = get_str(c, &names, "current", false, &s->store.current);
    if (!rc)
        rc = check_store_name(c, &names, "current", s->store.current);
    if (!rc)
        rc = check_store_names_distinct(c, &names, s);
    return rc;
}

static const char *const keyvault_keys[] = {
    "vault_url",      "ca_file",      "timeout", "connect_timeout",
    "writes_per_10s", "content_type", "resolve", NULL};

static int load_keyvault(ctx_t *c, const sec_t *store, cfg_secret_t *s)
{
    static const char *const file_keys[] = {"dir", NULL};
    long writes = 0;
    int rc = reject_keys(c, store, file_keys, "file", "azure-keyvault");
    if (!rc)
        rc = get_str(c, store, "vault_url", false, &s->store.vault_url);
    /* Only the scheme here: whether the host is a vault is Key Vault's challenge to answer. */
    if (!rc)
        rc = check_value(c, store, "vault_url", s->store.vault_url, is_https_url,
                         "an https:// URL such as https://NAME.vault.azure.net");
    if (!rc)
        rc = get_str(c, store, "ca_file", false, &s->store.ca_file);
    if (!rc)
        rc = get_dur(c, store, "timeout", true, &s->store.timeout_ms);
    if (!rc)
        rc = get_dur(c, store, "connect_timeout", true, &s->store.connect_timeout_ms);
    if (!rc)
        rc = get_int(c, store, "writes_per_10s", &writes);
    s->store.writes_per_10s = (int)writes;
    if (!rc)
        rc = get_str(c, store, "content_type", false, &s->store.content_type);
    if (!rc)
        rc = get_str(c, store, "resolve", false, &s->store.resolve);
    if (!rc)
        rc = check_value(c, store, "resolve", s->store.resolve, is_resolve,
                         "HOST:PORT:ADDRESS (curl's --resolve form)");
    return rc;
}

static int load_store(ctx_t *c, const sec_t *item, cfg_secret_t *s)
{
    static const char *const kinds[] = {"file", "azure-keyvault"};
    sec_t store;
    int kind = 0;
    int rc = sec_child(c, item, "store", &store);
    if (!rc)
        rc = get_enum(c, &store, "kind", &kind);
    if (rc)
        return rc;
    s->store.kind = util_strdup(kinds[kind]);
    s->store.kind_id = kind ? STORE_KEYVAULT : STORE_FILE;
    if (s->store.kind_id == STORE_KEYVAULT)
        rc = load_keyvault(c, &store, s);
    else
        rc = reject_keys(c, &store, keyvault_keys, "azure-keyvault", "file");
    if (!rc && s->store.kind_id == STORE_FILE)
        rc = get_str(c, &store, "dir", false, &s->store.dir);
    if (!rc)
        rc = load_store_names(c, &store, s);
    return rc;
}

/* The generator's alphabet per class (PW_* bit order). password.c must draw from the same sets. */
static const char *const pw_class_chars[] = {
    "ABCDEFGHIJKLMNOPQRSTUVWXYZ",
    "abcdefghijklmnopqrstuvwxyz",
    "0123456789",
    "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~",
};
static const char *const pw_class_names[] = {"upper", "lower", "digit", "symbol"};

/* The policy check the generator makes, here so a bad policy stops start-up, not a rotation. */
static int check_password(ctx_t *c, const sec_t *pw, const cfg_secret_t *s)
{
    char path[PATH_LEN];
    int nclasses = 0;
    for (int i = 0; i < 4; i++) {
        if (!(s->password.classes & (1u << i)))
            continue;
        nclasses++;
        const char *p = pw_class_chars[i];
        while (*p && strchr(s->password.exclude, *p))
            p++;
        if (!*p) {
            const cn_t *v = peek(pw, "exclude");
            char buf[96];
            path_join(path, pw->path, "exclude");
            return fail(c, v ? v->line : pw->line, path,
                        "expected to leave at least one %s character, got %s", pw_class_names[i],
                        got(v, buf, sizeof buf));
        }
    }
    if (s->password.length < nclasses) {
        path_join(path, pw->path, "length");
        return fail(c, pw->line, path, "expected at least %d (one per class), got %d", nclasses,
                    s->password.length);
    }
    return 0;
}

static int load_password(ctx_t *c, const sec_t *item, cfg_secret_t *s)
{
    sec_t pw;
    long length = 0;
    int rc = sec_child(c, item, "password", &pw);
    if (!rc)
        rc = get_int(c, &pw, "length", &length);
    if (!rc)
        rc = get_flags(c, &pw, "classes", &s->password.classes);
    if (!rc)
        rc = get_str(c, &pw, "exclude", true, &s->password.exclude);
    s->password.length = (int)length;
    if (!rc)
        rc = check_password(c, &pw, s);
    return rc;
}

static int load_exec(ctx_t *c, const sec_t *deploy, cfg_secret_t *s)
{
    sec_t ex;
    int rc = sec_child(c, deploy, "exec", &ex);
    if (!rc)
        rc = get_str(c, &ex, "deploy", false, &s->deploy.exec.deploy);
    if (!rc)
        rc = get_str(c, &ex, "swap", false, &s->deploy.exec.swap);
    if (!rc)
        rc = get_str(c, &ex, "retire", false, &s->deploy.exec.retire);
    if (!rc)
        rc = get_str(c, &ex, "rollback", false, &s->deploy.exec.rollback);
    if (!rc)
        rc = get_str(c, &ex, "workdir", false, &s->deploy.exec.workdir);
    if (!rc)
        rc = get_dur(c, &ex, "timeout", true, &s->deploy.exec.timeout_ms);
    return rc;
}

/* Two names from one section that must differ (a slot each, or production and stage). */
static int get_name_pair(ctx_t *c, const sec_t *sec, const char *const keys[2], char **out[2])
{
    int rc = 0;
    for (int i = 0; !rc && i < 2; i++) {
        rc = get_str(c, sec, keys[i], false, out[i]);
        if (!rc)
            rc = check_value(c, sec, keys[i], *out[i], is_k8s_name,
                             "a Kubernetes name (lower-case [a-z0-9.-], at most 253)");
    }
    if (!rc && *out[0] && *out[1] && strcmp(*out[0], *out[1]) == 0) {
        char path[PATH_LEN];
        path_join(path, sec->path, keys[1]);
        rc = fail(c, peek(sec, keys[1])->line, path,
                  "expected a name other than %s's, got the same \"%s\"", keys[0], *out[1]);
    }
    return rc;
}

static int load_kubernetes(ctx_t *c, const sec_t *deploy, cfg_secret_t *s)
{
    static const char *const slots[2] = {"blue", "green"};
    static const char *const services[2] = {"production", "stage"};
    sec_t k8s, deps, svcs;
    long replicas = 0;
    int rc = sec_child(c, deploy, "kubernetes", &k8s);
    if (!rc)
        rc = get_str(c, &k8s, "api_url", false, &s->deploy.kubernetes.api_url);
    if (!rc)
        rc = check_value(c, &k8s, "api_url", s->deploy.kubernetes.api_url, is_https_url,
                         "an https:// URL");
    if (!rc)
        rc = get_str(c, &k8s, "token_file", false, &s->deploy.kubernetes.token_file);
    if (!rc)
        rc = get_str(c, &k8s, "ca_file", false, &s->deploy.kubernetes.ca_file);
    if (!rc)
        rc = get_str(c, &k8s, "namespace", false, &s->deploy.kubernetes.namespace);
    if (!rc)
        rc = sec_child(c, &k8s, "deployments", &deps);
    if (!rc)
        rc = get_name_pair(c, &deps, slots,
                           (char **[2]){&s->deploy.kubernetes.deployments[SLOT_BLUE],
                                        &s->deploy.kubernetes.deployments[SLOT_GREEN]});
    if (!rc)
        rc = sec_child(c, &k8s, "services", &svcs);
    if (!rc)
        rc = get_name_pair(c, &svcs, services,
                           (char **[2]){&s->deploy.kubernetes.service_production,
                                        &s->deploy.kubernetes.service_stage});
    if (!rc)
        rc = get_str(c, &k8s, "slot_label", false, &s->deploy.kubernetes.slot_label);
    if (!rc)
        rc = get_int(c, &k8s, "replicas", &replicas);
    s->deploy.kubernetes.replicas = (int)replicas;
    if (!rc)
        rc = get_str(c, &k8s, "annotation", false, &s->deploy.kubernetes.annotation);
    if (!rc)
        rc = get_dur(c, &k8s, "poll", true, &s->deploy.kubernetes.poll_ms);
    return rc;
}

static int load_deploy(ctx_t *c, const sec_t *item, cfg_secret_t *s)
{
    static const char *const kinds[] = {"none", "exec", "kubernetes", "external"};
    static const cfg_deploy_kind_t ids[] = {DEPLOY_NONE, DEPLOY_EXEC, DEPLOY_KUBERNETES,
                                            DEPLOY_EXTERNAL};
    sec_t deploy, ext;
    int kind = 0;
    int rc = sec_child(c, item, "deploy", &deploy);
    if (!rc)
        rc = get_enum(c, &deploy, "kind", &kind);
    if (rc)
        return rc;
    s->deploy.kind = util_strdup(kinds[kind]);
    s->deploy.kind_id = ids[kind];
    /* Each driver's section is named after its kind, and only that one may be present. */
    for (int i = 1; !rc && i < 4; i++) {
        const char *const one[] = {kinds[i], NULL};
        if (i != kind)
            rc = reject_keys(c, &deploy, one, kinds[i], kinds[kind]);
    }
    if (!rc && ids[kind] == DEPLOY_EXEC)
        rc = load_exec(c, &deploy, s);
    if (!rc && ids[kind] == DEPLOY_KUBERNETES)
        rc = load_kubernetes(c, &deploy, s);
    if (!rc && ids[kind] == DEPLOY_EXTERNAL)
        rc = sec_child(c, &deploy, "external", &ext);
    if (!rc && ids[kind] == DEPLOY_EXTERNAL)
        rc = get_dur(c, &ext, "timeout", true, &s->deploy.external.timeout_ms);
    return rc;
}

static int load_probe_http(ctx_t *c, const sec_t *ps, cfg_probe_t *p)
{
    int rc = get_str(c, ps, "url", false, &p->url);
    if (!rc)
        rc = check_value(c, ps, "url", p->url, is_http_url, "an http:// or https:// URL");
    if (!rc)
        rc = get_str(c, ps, "method", false, &p->method);
    if (!rc)
        rc = check_value(c, ps, "method", p->method, is_method,
                         "an upper-case HTTP method such as GET");
    if (!rc)
        rc = get_int_list(c, ps, "expect", &p->expect, &p->nexpect);
    if (!rc)
        rc = get_str(c, ps, "body_contains", false, &p->body_contains);
    if (!rc)
        rc = get_str(c, ps, "ca_file", false, &p->ca_file);
    return rc;
}

static int load_probe(ctx_t *c, const sec_t *ps, cfg_probe_t *p)
{
    static const char *const http_keys[] = {"url",           "method",  "expect",
                                            "body_contains", "ca_file", NULL};
    int kind = 0;
    long successes = 0;
    int rc = get_enum(c, ps, "kind", &kind);
    p->kind = kind ? PROBE_HTTP : PROBE_SQL;
    if (!rc)
        rc = p->kind == PROBE_HTTP ? load_probe_http(c, ps, p)
                                   : reject_keys(c, ps, http_keys, "http", "sql");
    if (!rc)
        rc = get_int(c, ps, "successes", &successes);
    p->successes = (int)successes;
    if (!rc)
        rc = get_dur(c, ps, "timeout", true, &p->timeout_ms);
    if (!rc)
        rc = get_dur(c, ps, "interval", true, &p->interval_ms);
    return rc;
}

static int load_probe_list(ctx_t *c, const sec_t *probes, const char *name, cfg_probe_t **out,
                           size_t *n)
{
    const config_key_t *k;
    const cn_t *v;
    cn_t *tmp;
    char path[PATH_LEN], buf[96];
    int rc = lookup(c, probes, name, &k, &v, &tmp, path);
    if (!rc && v->kind != CN_SEQ)
        rc = fail(c, v->line, path, "expected a list of probes, got %s", got(v, buf, sizeof buf));
    if (!rc && v->n)
        *out = util_calloc(v->n, sizeof **out);
    for (size_t i = 0; !rc && i < v->n; i++) {
        sec_t ps = {.map = v->kids[i], .line = v->kids[i]->line};
        snprintf(ps.path, sizeof ps.path, "%.200s[%zu]", path, i);
        if (v->kids[i]->kind != CN_MAP) {
            rc = fail(c, v->kids[i]->line, ps.path, "expected a mapping, got %s",
                      got(v->kids[i], buf, sizeof buf));
            break;
        }
        (*n)++;
        rc = load_probe(c, &ps, &(*out)[i]);
    }
    cn_free(tmp);
    return rc;
}

static int load_probes(ctx_t *c, const sec_t *item, cfg_secret_t *s)
{
    sec_t probes;
    int rc = sec_child(c, item, "probes", &probes);
    if (!rc)
        rc = load_probe_list(c, &probes, "verify", &s->probes.verify, &s->probes.nverify);
    if (!rc)
        rc = load_probe_list(c, &probes, "production", &s->probes.production,
                             &s->probes.nproduction);
    return rc;
}

static int load_approval(ctx_t *c, const sec_t *item, cfg_secret_t *s)
{
    sec_t ap;
    int mode = 0, gate = 0;
    int rc = sec_child(c, item, "approval", &ap);
    if (!rc)
        rc = get_enum(c, &ap, "mode", &mode);
    if (!rc)
        rc = get_dur(c, &ap, "soak", false, &s->approval.soak_ms);
    if (!rc)
        rc = get_enum(c, &ap, "gate", &gate);
    static const cfg_gate_t gates[] = {GATE_RETIRE, GATE_SWAP, GATE_BOTH};
    s->approval.mode = mode ? APPROVAL_MANUAL : APPROVAL_AUTO;
    s->approval.gate = gates[gate];
    return rc;
}

/* "HH:MM" -> minutes after midnight, or -1. */
static int parse_hhmm(const char *p, size_t len)
{
    if (len != 5 || !isdigit((unsigned char)p[0]) || !isdigit((unsigned char)p[1]) || p[2] != ':' ||
        !isdigit((unsigned char)p[3]) || !isdigit((unsigned char)p[4]))
        return -1;
    int h = (p[0] - '0') * 10 + (p[1] - '0'), m = (p[3] - '0') * 10 + (p[4] - '0');
    return h < 24 && m < 60 ? h * 60 + m : -1;
}

static int load_window(ctx_t *c, const sec_t *sched, cfg_secret_t *s)
{
    char *w = NULL;
    int rc = get_str(c, sched, "window", false, &w);
    if (rc || !w)
        return rc;
    const char *dash = strchr(w, '-');
    int start = dash ? parse_hhmm(w, (size_t)(dash - w)) : -1;
    int end = dash ? parse_hhmm(dash + 1, strlen(dash + 1)) : -1;
    if (start < 0 || end < 0 || start == end) {
        char path[PATH_LEN], buf[96];
        path_join(path, sched->path, "window");
        rc = fail(c, peek(sched, "window")->line, path,
                  "expected a UTC window HH:MM-HH:MM with start != end, got %s",
                  got(peek(sched, "window"), buf, sizeof buf));
    }
    s->schedule.window_start = start;
    s->schedule.window_end = end;
    free(w);
    return rc;
}

static int count_fields(const char *s)
{
    int n = 0;
    for (; *s; s++) {
        if (!isspace((unsigned char)*s) && (s[1] == '\0' || isspace((unsigned char)s[1])))
            n++;
    }
    return n;
}

static int load_schedule(ctx_t *c, const sec_t *item, cfg_secret_t *s)
{
    sec_t sched;
    char path[PATH_LEN], buf[96];
    s->schedule.window_start = s->schedule.window_end = -1;
    int rc = sec_child(c, item, "schedule", &sched);
    if (!rc && peek(&sched, "every") && peek(&sched, "cron"))
        return fail(c, peek(&sched, "cron")->line, sched.path,
                    "expected either every or cron, got both");
    if (!rc)
        rc = get_dur(c, &sched, "every", true, &s->schedule.every_ms);
    if (!rc)
        rc = get_str(c, &sched, "cron", false, &s->schedule.cron);
    if (!rc && s->schedule.cron && count_fields(s->schedule.cron) != 5) {
        path_join(path, sched.path, "cron");
        rc = fail(c, peek(&sched, "cron")->line, path,
                  "expected 5 fields (minute hour day month weekday), got %s",
                  got(peek(&sched, "cron"), buf, sizeof buf));
    }
    if (!rc)
        rc = load_window(c, &sched, s);
    return rc;
}

static int load_secret(ctx_t *c, const sec_t *item, const cfg_stage_policy_t *stages,
                       cfg_secret_t *s)
{
    int active = 0;
    char path[PATH_LEN], buf[96];
    int rc = get_str(c, item, "name", false, &s->name);
    if (!rc && !is_secret_name(s->name)) {
        path_join(path, item->path, "name");
        rc = fail(c, peek(item, "name")->line, path,
                  "expected a name matching ^[A-Za-z0-9][A-Za-z0-9._-]{0,126}$, got %s",
                  got(peek(item, "name"), buf, sizeof buf));
    }
    if (!rc)
        rc = get_enum(c, item, "active", &active);
    s->active = active ? SLOT_GREEN : SLOT_BLUE;
    if (!rc)
        rc = load_database(c, item, s);
    if (!rc)
        rc = load_store(c, item, s);
    if (!rc)
        rc = load_password(c, item, s);
    if (!rc)
        rc = get_dur(c, item, "validity", true, &s->validity_ms);
    if (!rc)
        rc = load_deploy(c, item, s);
    if (!rc)
        rc = load_probes(c, item, s);
    if (!rc)
        rc = load_approval(c, item, s);
    if (!rc)
        rc = load_schedule(c, item, s);
    memcpy(s->stages, stages, sizeof s->stages);
    return rc;
}

static int load_secrets(ctx_t *c, const sec_t *root, const cfg_stage_policy_t *stages,
                        rotor_config_t *cfg)
{
    const config_key_t *k;
    const cn_t *v;
    cn_t *tmp;
    char path[PATH_LEN], buf[96];
    int rc = lookup(c, root, "secrets", &k, &v, &tmp, path);
    if (!rc && (v->kind != CN_SEQ || v->n == 0))
        rc = fail(c, v->line, path, "expected a non-empty list of secrets, got %s",
                  got(v, buf, sizeof buf));
    if (!rc)
        cfg->secrets = util_calloc(v->n, sizeof *cfg->secrets);
    for (size_t i = 0; !rc && i < v->n; i++) {
        sec_t item = {.map = v->kids[i], .line = v->kids[i]->line};
        snprintf(item.path, sizeof item.path, "secrets[%zu]", i);
        if (v->kids[i]->kind != CN_MAP) {
            rc = fail(c, v->kids[i]->line, item.path, "expected a mapping, got %s",
                      got(v->kids[i], buf, sizeof buf));
            break;
        }
        cfg->nsecrets++;
        rc = load_secret(c, &item, stages, &cfg->secrets[i]);
        for (size_t j = 0; !rc && j < i; j++) {
            if (strcmp(cfg->secrets[i].name, cfg->secrets[j].name) == 0) {
                path_join(path, item.path, "name");
                rc = fail(c, peek(&item, "name")->line, path,
                          "expected a name unique across secrets, got \"%s\" again (first in "
                          "secrets[%zu])",
                          cfg->secrets[i].name, j);
            }
        }
    }
    cn_free(tmp);
    return rc;
}

/* ---- public ---- */

int config_parse(const char *text, size_t len, const char *name, rotor_config_t **out, char *err,
                 size_t errlen)
{
    ctx_t c = {.file = name ? name : "(config)", .err = err, .errlen = errlen};
    cn_t *root = NULL;
    sec_t rs;
    cfg_stage_policy_t stages[STAGE__COUNT];
    *out = NULL;
    if (err && errlen)
        err[0] = '\0';
    rotor_config_t *cfg = util_calloc(1, sizeof *cfg);
    cfg->path = util_strdup(c.file);
    int rc = cn_parse(&c, text, len, &root);
    if (!rc)
        rc = sec_root(&c, root, &rs);
    if (!rc)
        rc = check_keys(&c, root, "");
    if (!rc)
        rc = load_kafka(&c, &rs, cfg);
    if (!rc)
        rc = load_misc(&c, &rs, cfg);
    if (!rc)
        rc = load_stages(&c, &rs, stages);
    if (!rc)
        rc = load_secrets(&c, &rs, stages, cfg);
    cn_free(root);
    if (rc) {
        config_free(cfg);
        return ROTOR_ECONFIG;
    }
    *out = cfg;
    return 0;
}

/* Reads a whole small file; config files are read once at start-up, before the loop runs. */
static int read_file(const char *path, char **text, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return -errno;
    size_t cap = 4096, n = 0;
    char *buf = util_malloc(cap);
    for (;;) {
        n += fread(buf + n, 1, cap - n, f);
        if (n < cap || cap >= 16 * 1024 * 1024)
            break;
        cap *= 2;
        char *grown = realloc(buf, cap);
        if (!grown)
            abort();
        buf = grown;
    }
    int rc = ferror(f) ? -EIO : n == cap ? -EFBIG : 0;
    fclose(f);
    if (rc) {
        free(buf);
        return rc;
    }
    *text = buf;
    *len = n;
    return 0;
}

int config_load(const char *path, rotor_config_t **out, char *err, size_t errlen)
{
    char *text = NULL;
    size_t len = 0;
    *out = NULL;
    int rc = read_file(path, &text, &len);
    if (rc) {
        if (err && errlen)
            snprintf(err, errlen, "%s: cannot read: %s", path, strerror(-rc));
        return ROTOR_ECONFIG;
    }
    rc = config_parse(text, len, path, out, err, errlen);
    free(text);
    return rc;
}

static void deploy_fields_free(cfg_secret_t *s)
{
    free(s->deploy.exec.deploy);
    free(s->deploy.exec.swap);
    free(s->deploy.exec.retire);
    free(s->deploy.exec.rollback);
    free(s->deploy.exec.workdir);
    free(s->deploy.kubernetes.api_url);
    free(s->deploy.kubernetes.token_file);
    free(s->deploy.kubernetes.ca_file);
    free(s->deploy.kubernetes.namespace);
    free(s->deploy.kubernetes.deployments[0]);
    free(s->deploy.kubernetes.deployments[1]);
    free(s->deploy.kubernetes.service_production);
    free(s->deploy.kubernetes.service_stage);
    free(s->deploy.kubernetes.slot_label);
    free(s->deploy.kubernetes.annotation);
}

static void probes_free(cfg_probe_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(p[i].url);
        free(p[i].method);
        free(p[i].expect);
        free(p[i].body_contains);
        free(p[i].ca_file);
    }
    free(p);
}

static void secret_fields_free(cfg_secret_t *s)
{
    free(s->name);
    free(s->database.dsn_env);
    free(s->database.dsn_file);
    free(s->database.roles[0]);
    free(s->database.roles[1]);
    free(s->database.probe);
    free(s->store.kind);
    free(s->store.dir);
    free(s->store.names[0]);
    free(s->store.names[1]);
    free(s->store.current);
    free(s->store.vault_url);
    free(s->store.ca_file);
    free(s->store.content_type);
    free(s->store.resolve);
    free(s->password.exclude);
    free(s->deploy.kind);
    deploy_fields_free(s);
    probes_free(s->probes.verify, s->probes.nverify);
    probes_free(s->probes.production, s->probes.nproduction);
    free(s->schedule.cron);
}

void config_free(rotor_config_t *cfg)
{
    if (!cfg)
        return;
    free(cfg->path);
    free(cfg->kafka.brokers);
    free(cfg->kafka.group);
    free(cfg->kafka.topic_commands);
    free(cfg->kafka.topic_events);
    free(cfg->kafka.topic_deadletter);
    free(cfg->kafka.topic_keyvault);
    free(cfg->kafka.bootstrap_file);
    /* A property value may be a password (sasl.password). */
    config_kv_free(cfg->kafka.properties, cfg->kafka.nproperties);
    config_kv_free(cfg->kafka.properties_env, cfg->kafka.nproperties_env);
    config_kv_free(cfg->kafka.properties_file, cfg->kafka.nproperties_file);
    free(cfg->journal.dsn_env);
    free(cfg->journal.dsn_file);
    free(cfg->azure.tenant_id);
    free(cfg->azure.client_id);
    free(cfg->azure.authority_host);
    free(cfg->azure.imds_endpoint);
    free(cfg->azure.federated_token_file);
    free(cfg->azure.ca_file);
    free(cfg->http.listen);
    free(cfg->log.level);
    for (size_t i = 0; i < cfg->nsecrets; i++)
        secret_fields_free(&cfg->secrets[i]);
    free(cfg->secrets);
    free(cfg);
}

const cfg_secret_t *config_secret(const rotor_config_t *cfg, const char *name)
{
    for (size_t i = 0; cfg && name && i < cfg->nsecrets; i++) {
        if (strcmp(cfg->secrets[i].name, name) == 0)
            return &cfg->secrets[i];
    }
    return NULL;
}

/* First line of path, unbuffered so that no stdio buffer keeps a copy of the DSN. */
static int dsn_from_file(const char *path, const char *what_key, char **out, char *err,
                         size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, errlen, "%s: cannot read %s: %s", what_key, path, strerror(errno));
        return ROTOR_ECONFIG;
    }
    setvbuf(f, NULL, _IONBF, 0);
    char *line = NULL;
    size_t cap = 0;
    ssize_t n = getline(&line, &cap, f);
    int rd_errno = errno;
    fclose(f);
    while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
        line[--n] = '\0';
    if (n <= 0) {
        if (line)
            secret_wipe(line, cap);
        free(line);
        snprintf(err, errlen, "%s: %s %s", what_key, path,
                 n < 0 && rd_errno ? strerror(rd_errno) : "has an empty first line");
        return ROTOR_ECONFIG;
    }
    *out = line;
    return 0;
}

/* libpq's parser quotes the token it stumbles on (`invalid percent-encoded token: "s3cr%ZZet"`),
 * and that token may be the password: rotor never repeats libpq's text, it names the kind of
 * mistake in its own words, found by the message's unquoted start. */
static const struct {
    const char *libpq; /* how libpq's message starts */
    const char *says;  /* what rotor says instead */
} dsn_mistakes[] = {
    {"invalid percent-encoded token", "a \"%\" in the URI is not followed by two hex digits "
                                      "(write a literal % as %25)"},
    {"forbidden value %00", "the URI holds %00"},
    {"missing \"=\" after", "a word without \"=\" (write key=value pairs separated by spaces, "
                            "and quote a value that holds spaces as '...')"},
    {"unterminated quoted string", "a quoted value is not closed"},
    {"invalid connection option", "an unknown keyword"},
    {"invalid URI query parameter", "an unknown URI query parameter"},
    {"extra key/value separator", "a URI query parameter with more than one \"=\""},
    {"missing key/value separator", "a URI query parameter without \"=\""},
    {"end of string reached when looking for matching", "an IPv6 address in the URI without \"]\""},
    {"IPv6 host address may not be empty", "an empty IPv6 address in the URI"},
    {"unexpected character", "an unexpected character after the URI's host"},
};

/* What a URI's unencoded "@" or "/" in the password leaves behind: libpq parses it, but the
 * password's tail lands in the host or the port, which its messages quote. NULL if neither. */
static const char *dsn_misplaced(const PQconninfoOption *opts)
{
    for (const PQconninfoOption *o = opts; o && o->keyword; o++) {
        if (!o->val)
            continue;
        if (strcmp(o->keyword, "port") == 0 && o->val[strspn(o->val, "0123456789,")])
            return "the port is not a number (write a \"/\" in the URI's password as %2F)";
        /* "@" first is an abstract socket; anywhere else it was meant for the user info. */
        for (const char *h = o->val; strcmp(o->keyword, "host") == 0 && *h; h++)
            if (*h == '@' && h != o->val && h[-1] != ',')
                return "the host holds an \"@\" (write an \"@\" in the URI's password as %40)";
    }
    return NULL;
}

/* A DSN libpq cannot parse fails here, at start-up, rather than in a connection whose error
 * would quote it into the journal, the events and the logs. Also refused: a string that is
 * neither key=value pairs nor a URI, which libpq would take as a database name, and the two
 * misreadings of dsn_misplaced. */
static int dsn_check(const char *dsn, const char *what_key, const char *source, char *err,
                     size_t errlen)
{
    const char *says = NULL;
    bool uri = strncmp(dsn, "postgresql://", 13) == 0 || strncmp(dsn, "postgres://", 11) == 0;
    char *msg = NULL;
    PQconninfoOption *opts = NULL;
    if (!uri && !strchr(dsn, '='))
        says = "it is neither key=value pairs nor a postgresql:// URI";
    else if (!(opts = PQconninfoParse(dsn, &msg))) {
        says = msg ? "libpq cannot parse it" : "out of memory parsing it";
        for (size_t i = 0; msg && i < sizeof dsn_mistakes / sizeof dsn_mistakes[0]; i++)
            if (strncmp(msg, dsn_mistakes[i].libpq, strlen(dsn_mistakes[i].libpq)) == 0)
                says = dsn_mistakes[i].says;
    } else {
        says = dsn_misplaced(opts);
    }
    if (msg) {
        secret_wipe(msg, strlen(msg));
        PQfreemem(msg);
    }
    for (PQconninfoOption *o = opts; o && o->keyword; o++)
        if (o->val)
            secret_wipe(o->val, strlen(o->val));
    PQconninfoFree(opts);
    if (!says)
        return 0;
    snprintf(err, errlen, "%s: %s is not a valid DSN: %s (the value is not shown)", what_key,
             source, says);
    return ROTOR_ECONFIG;
}

int config_dsn(const char *dsn_env, const char *dsn_file, const char *what_key, char **out,
               char *err, size_t errlen)
{
    char dummy[1];
    if (!err || !errlen)
        err = dummy, errlen = sizeof dummy;
    *out = NULL;
    what_key = what_key ? what_key : "dsn";
    if ((dsn_env && *dsn_env) == (dsn_file && *dsn_file)) {
        snprintf(err, errlen, "%s: expected exactly one of dsn_env or dsn_file", what_key);
        return ROTOR_ECONFIG;
    }
    char source[1100];
    if (dsn_file && *dsn_file) {
        int rc = dsn_from_file(dsn_file, what_key, out, err, errlen);
        if (rc != 0)
            return rc;
        snprintf(source, sizeof source, "the first line of %s", dsn_file);
    } else {
        const char *v = getenv(dsn_env);
        if (!v || !*v) {
            snprintf(err, errlen, "%s: environment variable %s is %s", what_key, dsn_env,
                     v ? "empty" : "not set");
            return ROTOR_ECONFIG;
        }
        *out = util_strdup(v);
        snprintf(source, sizeof source, "environment variable %s", dsn_env);
    }
    int rc = dsn_check(*out, what_key, source, err, errlen);
    if (rc != 0) {
        secret_wipe(*out, strlen(*out));
        free(*out);
        *out = NULL;
    }
    return rc;
}

int config_check_dsns(const rotor_config_t *cfg, char *err, size_t errlen)
{
    char key[PATH_LEN];
    char *dsn = NULL;
    bool file = cfg->journal.dsn_file && *cfg->journal.dsn_file;
    int rc = config_dsn(cfg->journal.dsn_env, cfg->journal.dsn_file,
                        file ? "journal.dsn_file" : "journal.dsn_env", &dsn, err, errlen);
    for (size_t i = 0; rc == 0 && i <= cfg->nsecrets; i++) {
        if (dsn) {
            secret_wipe(dsn, strlen(dsn));
            free(dsn);
            dsn = NULL;
        }
        if (i == cfg->nsecrets)
            break;
        const cfg_secret_t *s = &cfg->secrets[i];
        file = s->database.dsn_file && *s->database.dsn_file;
        snprintf(key, sizeof key, "secrets[%zu].database.%s (secret %s)", i,
                 file ? "dsn_file" : "dsn_env", s->name);
        rc = config_dsn(s->database.dsn_env, s->database.dsn_file, key, &dsn, err, errlen);
    }
    if (dsn) {
        secret_wipe(dsn, strlen(dsn));
        free(dsn);
    }
    return rc;
}

void config_kv_free(cfg_kv_t *kv, size_t n)
{
    for (size_t i = 0; kv && i < n; i++) {
        free(kv[i].key);
        if (kv[i].value)
            secret_wipe(kv[i].value, strlen(kv[i].value));
        free(kv[i].value);
    }
    free(kv);
}

static int property_from_env(const cfg_kv_t *p, char **value, char *err, size_t errlen)
{
    const char *v = getenv(p->value);
    if (v && *v) {
        *value = util_strdup(v);
        return 0;
    }
    snprintf(err, errlen, "kafka.properties_env.%s: environment variable %s is %s", p->key,
             p->value, v ? "empty" : "not set");
    return ROTOR_ECONFIG;
}

int config_kafka_properties(const rotor_config_t *cfg, cfg_kv_t **out, size_t *n, char *err,
                            size_t errlen)
{
    char dummy[1], what[PATH_LEN];
    if (!err || !errlen)
        err = dummy, errlen = sizeof dummy;
    const size_t total =
        cfg->kafka.nproperties + cfg->kafka.nproperties_env + cfg->kafka.nproperties_file;
    cfg_kv_t *kv = util_calloc(total ? total : 1, sizeof *kv);
    size_t k = 0;
    int rc = 0;
    *out = NULL;
    *n = 0;
    for (size_t i = 0; i < cfg->kafka.nproperties; i++, k++) {
        kv[k].key = util_strdup(cfg->kafka.properties[i].key);
        kv[k].value = util_strdup(cfg->kafka.properties[i].value);
    }
    for (size_t i = 0; !rc && i < cfg->kafka.nproperties_env; i++, k++) {
        kv[k].key = util_strdup(cfg->kafka.properties_env[i].key);
        rc = property_from_env(&cfg->kafka.properties_env[i], &kv[k].value, err, errlen);
    }
    for (size_t i = 0; !rc && i < cfg->kafka.nproperties_file; i++, k++) {
        const cfg_kv_t *p = &cfg->kafka.properties_file[i];
        kv[k].key = util_strdup(p->key);
        snprintf(what, sizeof what, "kafka.properties_file.%.200s", p->key);
        rc = dsn_from_file(p->value, what, &kv[k].value, err, errlen);
    }
    if (rc) {
        config_kv_free(kv, k);
        return ROTOR_ECONFIG;
    }
    *out = kv;
    *n = k;
    return 0;
}
