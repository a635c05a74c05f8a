/* test_config.c: rotor.yaml loading, its error messages, DSN resolution, and the doc table check.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "util.h"

#define MIN_MS(n) ((uint64_t)(n)*60000ULL)
#define DAY_MS(n) ((uint64_t)(n)*86400000ULL)

/* The smallest valid file: only the required keys. Lines are numbered for the error cases. */
#define SECRET_HEAD                                                                                \
    "secrets:\n"                                                             /* 1 */               \
    "  - name: app-db\n"                                                     /* 2 */               \
    "    database:\n"                                                        /* 3 */               \
    "      dsn_env: APP_DB_ADMIN_DSN\n"                                      /* 4 */               \
    "      roles: { blue: app_blue, green: app_green }\n"                    /* 5 */               \
    "    store:\n"                                                           /* 6 */               \
    "      names: { blue: pg-blue, green: pg-green, current: pg-current }\n" /* 7 */

static const char *source_dir(void)
{
    static char dir[1024];
    const char *env = getenv("ROTOR_SOURCE_DIR");
    if (env && *env)
        return env;
    /* Built by CMake, __FILE__ is absolute: .../tests/unit/test_config.c. */
    util_strlcpy(dir, __FILE__, sizeof dir);
    char *cut = strstr(dir, "/tests/unit/");
    if (cut)
        *cut = '\0';
    else
        util_strlcpy(dir, ".", sizeof dir);
    return dir;
}

static int parse(const char *yaml, rotor_config_t **out, char *err, size_t errlen)
{
    return config_parse(yaml, strlen(yaml), "rotor.yaml", out, err, errlen);
}

static void assert_stage_policy(const cfg_stage_policy_t *p, uint64_t timeout)
{
    assert_int_equal(p->timeout_ms, timeout);
    assert_int_equal(p->max_attempts, 5);
    assert_int_equal(p->backoff_initial_ms, 1000);
    assert_int_equal(p->backoff_max_ms, MIN_MS(5));
}

/* The defaults docs/configuration.md promises, for the keys a minimal file leaves out. */
static void assert_defaults(const rotor_config_t *c)
{
    assert_string_equal(c->kafka.brokers, "embedded");
    assert_string_equal(c->kafka.group, "rotor");
    assert_string_equal(c->kafka.topic_commands, "rotor.commands");
    assert_string_equal(c->kafka.topic_events, "rotor.events");
    assert_string_equal(c->kafka.topic_deadletter, "rotor.deadletter");
    assert_string_equal(c->kafka.bootstrap_file, "./var/rotor.bootstrap");
    assert_int_equal(c->kafka.partitions, 3);
    assert_int_equal(c->kafka.max_message_bytes, 1048576);
    assert_int_equal(c->kafka.nproperties, 0);
    assert_int_equal(c->kafka.nproperties_env, 0);
    assert_int_equal(c->kafka.nproperties_file, 0);
    assert_null(c->kafka.topic_keyvault);
    assert_null(c->azure.tenant_id);
    assert_null(c->azure.client_id);
    assert_null(c->azure.authority_host);
    assert_null(c->azure.imds_endpoint);
    assert_null(c->azure.federated_token_file);
    assert_null(c->azure.ca_file);
    assert_string_equal(c->journal.dsn_env, "ROTOR_JOURNAL_DSN");
    assert_null(c->journal.dsn_file);
    assert_string_equal(c->http.listen, "127.0.0.1:9464");
    assert_string_equal(c->log.level, "info");
    assert_int_equal(c->daemon.shutdown_timeout_ms, 30000);
    assert_int_equal(c->daemon.schedule_interval_ms, 30000);
    assert_int_equal(c->nsecrets, 1);
    const cfg_secret_t *s = &c->secrets[0];
    assert_string_equal(s->name, "app-db");
    assert_int_equal(s->active, SLOT_BLUE);
    assert_string_equal(s->database.dsn_env, "APP_DB_ADMIN_DSN");
    assert_null(s->database.dsn_file);
    assert_string_equal(s->database.roles[SLOT_BLUE], "app_blue");
    assert_string_equal(s->database.roles[SLOT_GREEN], "app_green");
    assert_string_equal(s->database.probe, "select 1");
    assert_int_equal(s->database.drain_ms, 30000);
    assert_false(s->database.entra_token);
    assert_string_equal(s->store.kind, "file");
    assert_int_equal(s->store.kind_id, STORE_FILE);
    assert_null(s->store.vault_url);
    assert_null(s->store.resolve);
    assert_string_equal(s->store.dir, "./var/secrets");
    assert_string_equal(s->store.names[SLOT_BLUE], "pg-blue");
    assert_string_equal(s->store.names[SLOT_GREEN], "pg-green");
    assert_string_equal(s->store.current, "pg-current");
    assert_int_equal(s->password.length, 32);
    assert_int_equal(s->password.classes, PW_UPPER | PW_LOWER | PW_DIGIT);
    assert_string_equal(s->password.exclude, "");
    assert_int_equal(s->validity_ms, DAY_MS(90));
    assert_string_equal(s->deploy.kind, "none");
    assert_int_equal(s->deploy.kind_id, DEPLOY_NONE);
    assert_null(s->deploy.exec.deploy);
    assert_null(s->deploy.kubernetes.deployments[SLOT_BLUE]);
    assert_int_equal(s->probes.nverify, 0);
    assert_null(s->probes.verify);
    assert_int_equal(s->probes.nproduction, 0);
    assert_int_equal(s->approval.mode, APPROVAL_AUTO);
    assert_int_equal(s->approval.soak_ms, 0);
    assert_int_equal(s->approval.gate, GATE_RETIRE);
    assert_int_equal(s->schedule.every_ms, 0);
    assert_null(s->schedule.cron);
    assert_int_equal(s->schedule.window_start, -1);
    for (int i = 0; i < STAGE__COUNT; i++)
        assert_stage_policy(&s->stages[i], i == STAGE_APPROVE ? DAY_MS(7) : MIN_MS(5));
}

static void test_minimal_file_gets_defaults(void **state)
{
    (void)state;
    rotor_config_t *c = NULL;
    char err[512];
    assert_int_equal(parse(SECRET_HEAD, &c, err, sizeof err), 0);
    assert_defaults(c);
    assert_string_equal(c->path, "rotor.yaml");
    config_free(c);
}

static void test_example_loads_with_documented_defaults(void **state)
{
    (void)state;
    char path[1200], err[512];
    snprintf(path, sizeof path, "%s/examples/rotor.yaml", source_dir());
    rotor_config_t *c = NULL;
    int rc = config_load(path, &c, err, sizeof err);
    if (rc)
        print_error("%s\n", err);
    assert_int_equal(rc, 0);
    assert_defaults(c);
    assert_string_equal(c->path, path);
    config_free(c);
}

static void test_issue_flow_style_loads(void **state)
{
    (void)state;
    static const char yaml[] =
        "kafka: { brokers: embedded, group: rotor,\n"
        "         topics: { commands: rotor.commands, events: rotor.events, deadletter: "
        "rotor.deadletter },\n"
        "         properties: {} }\n"
        "journal: { dsn_env: ROTOR_JOURNAL_DSN }\n"
        "secrets:\n"
        "  - name: app-db\n"
        "    active: blue\n"
        "    database: { dsn_env: APP_DB_ADMIN_DSN, roles: { blue: app_blue, green: app_green },\n"
        "                probe: \"select 1\", drain: 30s }\n"
        "    store: { kind: file, dir: ./var/secrets,\n"
        "             names: { blue: pg-blue, green: pg-green, current: pg-current } }\n"
        "    password: { length: 32, classes: [upper, lower, digit], exclude: \"\\\"'\\\\@:/ \" }\n"
        "    validity: 90d\n"
        "    deploy: { kind: none }\n"
        "    approval: { mode: auto, soak: 0s }\n";
    rotor_config_t *c = NULL;
    char err[512];
    int rc = parse(yaml, &c, err, sizeof err);
    if (rc)
        print_error("%s\n", err);
    assert_int_equal(rc, 0);
    assert_string_equal(c->secrets[0].password.exclude, "\"'\\@:/ ");
    c->secrets[0].password.exclude[0] = '\0'; /* the only value that differs from the defaults */
    assert_defaults(c);
    config_free(c);
}

static void test_overrides_and_lookups(void **state)
{
    (void)state;
    static const char yaml[] =
        "kafka: { brokers: 'k1:9092,k2:9092', partitions: 64,\n"
        "         properties: { security.protocol: SASL_SSL, linger.ms: 5, enable.idempotence: "
        "true } }\n"
        "journal: { dsn_file: /run/journal-dsn }\n"
        "http: { listen: \"\" }\n"
        "log: { level: debug }\n"
        "stages: { timeout: 2m, max_attempts: 3, verify: { timeout: 10s, backoff: { max: 1m } },\n"
        "          approve: { max_attempts: 1 } }\n" SECRET_HEAD "    active: green\n"
        "    password: { length: 8, classes: [symbol, digit], exclude: \"0\" }\n"
        "    approval: { mode: manual, gate: both }\n"
        "    schedule: { cron: '0 3 * * 1', window: '22:30-04:00' }\n"
        "  - name: other.db_2\n"
        "    database: { dsn_file: /run/other, roles: { blue: b, green: g } }\n"
        "    store: { names: { blue: o-blue, green: o-green } }\n"
        "    schedule: { every: 30d }\n";
    rotor_config_t *c = NULL;
    char err[512];
    int rc = parse(yaml, &c, err, sizeof err);
    if (rc)
        print_error("%s\n", err);
    assert_int_equal(rc, 0);
    assert_string_equal(c->kafka.brokers, "k1:9092,k2:9092");
    assert_int_equal(c->kafka.partitions, 64);
    assert_int_equal(c->kafka.nproperties, 3);
    assert_string_equal(c->kafka.properties[1].key, "linger.ms");
    assert_string_equal(c->kafka.properties[1].value, "5");
    assert_string_equal(c->kafka.properties[2].value, "true");
    assert_null(c->journal.dsn_env);
    assert_string_equal(c->journal.dsn_file, "/run/journal-dsn");
    assert_string_equal(c->http.listen, "");
    assert_string_equal(c->log.level, "debug");
    const cfg_secret_t *s = config_secret(c, "app-db");
    assert_ptr_equal(s, &c->secrets[0]);
    assert_int_equal(s->active, SLOT_GREEN);
    assert_int_equal(s->password.classes, PW_SYMBOL | PW_DIGIT);
    assert_int_equal(s->approval.mode, APPROVAL_MANUAL);
    assert_int_equal(s->approval.gate, GATE_BOTH);
    assert_string_equal(s->schedule.cron, "0 3 * * 1");
    assert_int_equal(s->schedule.window_start, 22 * 60 + 30);
    assert_int_equal(s->schedule.window_end, 4 * 60);
    /* stages.verify overrides two keys and inherits the rest from the top level. */
    assert_int_equal(s->stages[STAGE_VERIFY].timeout_ms, 10000);
    assert_int_equal(s->stages[STAGE_VERIFY].max_attempts, 3);
    assert_int_equal(s->stages[STAGE_VERIFY].backoff_max_ms, MIN_MS(1));
    assert_int_equal(s->stages[STAGE_DEPLOY].timeout_ms, MIN_MS(2));
    assert_int_equal(s->stages[STAGE_APPROVE].timeout_ms, DAY_MS(7));
    assert_int_equal(s->stages[STAGE_APPROVE].max_attempts, 1);
    const cfg_secret_t *o = config_secret(c, "other.db_2");
    assert_non_null(o);
    assert_string_equal(o->database.dsn_file, "/run/other");
    assert_null(o->database.dsn_env);
    assert_null(o->store.current);
    assert_int_equal(o->schedule.every_ms, DAY_MS(30));
    assert_int_equal(o->stages[STAGE_VERIFY].timeout_ms, 10000);
    assert_null(config_secret(c, "nope"));
    config_free(c);
}

static rotor_config_t *load_example(const char *name)
{
    char path[1200], err[512];
    snprintf(path, sizeof path, "%s/examples/%s", source_dir(), name);
    rotor_config_t *c = NULL;
    int rc = config_load(path, &c, err, sizeof err);
    if (rc)
        print_error("%s\n", err);
    assert_int_equal(rc, 0);
    return c;
}

static const cfg_kv_t *kv_find(const cfg_kv_t *kv, size_t n, const char *key)
{
    for (size_t i = 0; i < n; i++) {
        if (strcmp(kv[i].key, key) == 0)
            return &kv[i];
    }
    return NULL;
}

static void test_example_keyvault(void **state)
{
    (void)state;
    rotor_config_t *c = load_example("keyvault.yaml");
    assert_string_equal(c->kafka.topic_keyvault, "keyvault.events");
    const cfg_kv_t *user = kv_find(c->kafka.properties, c->kafka.nproperties, "sasl.username");
    assert_non_null(user);
    assert_string_equal(user->value, "$ConnectionString");
    assert_string_equal(
        kv_find(c->kafka.properties, c->kafka.nproperties, "request.timeout.ms")->value, "60000");
    assert_string_equal(
        kv_find(c->kafka.properties, c->kafka.nproperties, "session.timeout.ms")->value, "30000");
    assert_string_equal(
        kv_find(c->kafka.properties, c->kafka.nproperties, "metadata.max.age.ms")->value, "180000");
    assert_string_equal(
        kv_find(c->kafka.properties, c->kafka.nproperties, "socket.keepalive.enable")->value,
        "true");
    assert_null(kv_find(c->kafka.properties, c->kafka.nproperties, "sasl.password"));
    assert_int_equal(c->kafka.nproperties_env, 1);
    assert_string_equal(c->kafka.properties_env[0].key, "sasl.password");
    assert_string_equal(c->kafka.properties_env[0].value, "EVENTHUBS_CONNECTION_STRING");
    assert_string_equal(c->azure.authority_host, "https://login.microsoftonline.com");
    const cfg_secret_t *s = &c->secrets[0];
    assert_true(s->database.entra_token);
    assert_int_equal(s->store.kind_id, STORE_KEYVAULT);
    assert_string_equal(s->store.kind, "azure-keyvault");
    assert_string_equal(s->store.vault_url, "https://rotor-kv.vault.azure.net");
    assert_null(s->store.dir);
    assert_int_equal(s->store.timeout_ms, 30000);
    assert_int_equal(s->store.connect_timeout_ms, 10000);
    assert_int_equal(s->store.writes_per_10s, 300);
    assert_string_equal(s->store.content_type, "text/plain");
    assert_int_equal(s->deploy.kind_id, DEPLOY_EXTERNAL);
    assert_int_equal(s->deploy.external.timeout_ms, MIN_MS(30));
    config_free(c);
}

static void test_example_exec(void **state)
{
    (void)state;
    rotor_config_t *c = load_example("exec.yaml");
    const cfg_secret_t *s = &c->secrets[0];
    assert_int_equal(s->deploy.kind_id, DEPLOY_EXEC);
    assert_string_equal(s->deploy.kind, "exec");
    assert_non_null(strstr(s->deploy.exec.deploy, "$ROTOR_SLOT"));
    assert_non_null(strstr(s->deploy.exec.swap, "nginx"));
    assert_non_null(s->deploy.exec.retire);
    assert_non_null(s->deploy.exec.rollback);
    assert_string_equal(s->deploy.exec.workdir, "./var/demo");
    assert_int_equal(s->deploy.exec.timeout_ms, MIN_MS(1));
    assert_int_equal(s->probes.nverify, 1);
    assert_int_equal(s->probes.verify[0].kind, PROBE_HTTP);
    assert_string_equal(s->probes.verify[0].url, "http://127.0.0.1:8081/readyz");
    assert_int_equal(s->probes.verify[0].successes, 3);
    assert_int_equal(s->probes.verify[0].interval_ms, 500);
    assert_int_equal(s->probes.nproduction, 1);
    assert_int_equal(s->probes.production[0].timeout_ms, 2000);
    assert_int_equal(s->approval.soak_ms, 30000);
    config_free(c);
}

static void test_example_kubernetes(void **state)
{
    (void)state;
    rotor_config_t *c = load_example("kubernetes.yaml");
    const cfg_secret_t *s = &c->secrets[0];
    assert_int_equal(s->deploy.kind_id, DEPLOY_KUBERNETES);
    assert_null(s->deploy.kubernetes.api_url);
    assert_string_equal(s->deploy.kubernetes.token_file,
                        "/var/run/secrets/kubernetes.io/serviceaccount/token");
    assert_string_equal(s->deploy.kubernetes.ca_file,
                        "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt");
    assert_string_equal(s->deploy.kubernetes.namespace, "app");
    assert_string_equal(s->deploy.kubernetes.deployments[SLOT_BLUE], "app-blue");
    assert_string_equal(s->deploy.kubernetes.deployments[SLOT_GREEN], "app-green");
    assert_string_equal(s->deploy.kubernetes.service_production, "app");
    assert_string_equal(s->deploy.kubernetes.service_stage, "app-stage");
    assert_int_equal(s->probes.nproduction, 1);
    const cfg_probe_t *p = &s->probes.production[0];
    assert_int_equal(p->nexpect, 2);
    assert_int_equal(p->expect[0], 200);
    assert_int_equal(p->expect[1], 204);
    assert_string_equal(p->body_contains, "ok");
    config_free(c);
}

/* The defaults of the new sections, with only their required keys written. */
static void test_drivers_and_probes_defaults(void **state)
{
    (void)state;
    static const char yaml[] =
        "secrets:\n"
        "  - name: a\n"
        "    database: { dsn_env: A, roles: { blue: b, green: g } }\n"
        "    store: { kind: azure-keyvault, vault_url: 'https://kv.example:8443/',\n"
        "             ca_file: /ca.pem, resolve: 'kv.example:8443:127.0.0.1',\n"
        "             names: { blue: x, green: y } }\n"
        "    deploy:\n"
        "      kind: kubernetes\n"
        "      kubernetes: { deployments: { blue: a-blue, green: a-green },\n"
        "                    services: { production: a } }\n"
        "    probes:\n"
        "      verify: [ { url: 'https://a/' }, { kind: sql } ]\n"
        "  - name: b\n"
        "    database: { dsn_env: A, roles: { blue: b, green: g } }\n"
        "    store: { names: { blue: x, green: y } }\n"
        "    deploy: { kind: exec, exec: { deploy: up, swap: 'point \"$ROTOR_SLOT\"' } }\n";
    rotor_config_t *c = NULL;
    char err[512];
    int rc = parse(yaml, &c, err, sizeof err);
    if (rc)
        print_error("%s\n", err);
    assert_int_equal(rc, 0);
    const cfg_secret_t *s = &c->secrets[0];
    assert_string_equal(s->store.ca_file, "/ca.pem");
    assert_string_equal(s->store.resolve, "kv.example:8443:127.0.0.1");
    assert_null(s->store.dir);
    assert_null(s->deploy.kubernetes.namespace);
    assert_null(s->deploy.kubernetes.service_stage);
    assert_string_equal(s->deploy.kubernetes.slot_label, "slot");
    assert_int_equal(s->deploy.kubernetes.replicas, 2);
    assert_string_equal(s->deploy.kubernetes.annotation, "rotor.io/secret-version");
    assert_int_equal(s->deploy.kubernetes.poll_ms, 1000);
    assert_int_equal(s->probes.nverify, 2);
    const cfg_probe_t *h = &s->probes.verify[0], *q = &s->probes.verify[1];
    assert_int_equal(h->kind, PROBE_HTTP);
    assert_string_equal(h->method, "GET");
    assert_int_equal(h->nexpect, 1);
    assert_int_equal(h->expect[0], 200);
    assert_null(h->body_contains);
    assert_null(h->ca_file);
    assert_int_equal(h->successes, 1);
    assert_int_equal(h->timeout_ms, 5000);
    assert_int_equal(h->interval_ms, 1000);
    assert_int_equal(q->kind, PROBE_SQL);
    assert_null(q->url);
    assert_int_equal(q->nexpect, 0);
    assert_int_equal(q->successes, 1);
    const cfg_secret_t *e = &c->secrets[1];
    assert_int_equal(e->deploy.kind_id, DEPLOY_EXEC);
    assert_string_equal(e->deploy.exec.swap, "point \"$ROTOR_SLOT\"");
    assert_null(e->deploy.exec.retire);
    assert_null(e->deploy.exec.rollback);
    assert_null(e->deploy.exec.workdir);
    assert_int_equal(e->deploy.exec.timeout_ms, MIN_MS(5));
    assert_null(e->deploy.kubernetes.slot_label); /* only the chosen kind's keys are read */
    config_free(c);
}

/* ---- errors: each names file, line, key and what was expected ---- */

typedef struct {
    const char *yaml;
    const char *want; /* the whole message */
} err_case_t;

static void run_err_case(void **state)
{
    const err_case_t *t = *state;
    rotor_config_t *c = (rotor_config_t *)1;
    char err[512] = "";
    assert_int_equal(parse(t->yaml, &c, err, sizeof err), ROTOR_ECONFIG);
    assert_null(c);
    assert_string_equal(err, t->want);
}

#define ERR_CASE(name, yaml, want)                                                                 \
    static const err_case_t name##_case = {yaml, want};                                            \
    static int name##_setup(void **state)                                                          \
    {                                                                                              \
        *state = (void *)&name##_case;                                                             \
        return 0;                                                                                  \
    }

ERR_CASE(unknown_key_suggests, "kafka:\n  topcs: { events: x }\n" SECRET_HEAD,
         "rotor.yaml:2: unknown key kafka.topcs (did you mean kafka.topics?)")
ERR_CASE(unknown_key_in_list_item, SECRET_HEAD "    pasword: { length: 12 }\n",
         "rotor.yaml:8: unknown key secrets[0].pasword (did you mean secrets[0].password?)")
ERR_CASE(unknown_key_no_suggestion, SECRET_HEAD "colour: blue\n",
         "rotor.yaml:8: unknown key colour")
ERR_CASE(unknown_stage, "stages: { verfy: { timeout: 1m } }\n" SECRET_HEAD,
         "rotor.yaml:1: unknown key stages.verfy (did you mean stages.verify?)")
ERR_CASE(duplicate_key, "log: { level: info }\nlog: { level: debug }\n" SECRET_HEAD,
         "rotor.yaml:2: log: duplicate key (first on line 1)")
ERR_CASE(wrong_type, "kafka: { group: [a, b] }\n" SECRET_HEAD,
         "rotor.yaml:1: kafka.group: expected a non-empty string, got a list")
ERR_CASE(section_not_mapping, "kafka: embedded\n" SECRET_HEAD,
         "rotor.yaml:1: kafka: expected a mapping, got \"embedded\"")
ERR_CASE(integer_not_a_number, SECRET_HEAD "    password: { length: x }\n",
         "rotor.yaml:8: secrets[0].password.length: expected an integer from 8 to 1024, got \"x\"")
ERR_CASE(integer_out_of_range, "kafka: { partitions: 65 }\n" SECRET_HEAD,
         "rotor.yaml:1: kafka.partitions: expected an integer from 1 to 64, got \"65\"")
ERR_CASE(
    bad_duration, SECRET_HEAD "    validity: 90 days\n",
    "rotor.yaml:8: secrets[0].validity: expected a non-zero duration such as 30s, 5m, 1h30m or "
    "90d, got \"90 days\"")
ERR_CASE(
    zero_validity, SECRET_HEAD "    validity: 0\n",
    "rotor.yaml:8: secrets[0].validity: expected a non-zero duration such as 30s, 5m, 1h30m or "
    "90d, got \"0\"")
ERR_CASE(bad_enum, "log:\n  level: verbose\n" SECRET_HEAD,
         "rotor.yaml:2: log.level: expected one of debug, info, warn, error, got \"verbose\"")
ERR_CASE(missing_required_key,
         "secrets:\n  - name: app-db\n    database:\n      dsn_env: X\n      roles:\n"
         "        green: app_green\n",
         "rotor.yaml:6: secrets[0].database.roles.blue: missing required key")
ERR_CASE(missing_secrets, "log: { level: info }\n", "rotor.yaml:1: secrets: missing required key")
ERR_CASE(empty_secrets, "secrets: []\n",
         "rotor.yaml:1: secrets: expected a non-empty list of secrets, got []")
ERR_CASE(missing_database_dsn,
         "secrets:\n  - name: a\n    database: { roles: { blue: b, green: g } }\n",
         "rotor.yaml:3: secrets[0].database.dsn_env: missing required key (or set dsn_file)")
ERR_CASE(inline_dsn, "secrets:\n  - name: a\n    database:\n      dsn: postgres://u:pw@h/db\n",
         "rotor.yaml:4: secrets[0].database.dsn: DSNs are never inline: use dsn_env or dsn_file")
ERR_CASE(inline_journal_dsn, "journal: { dsn: 'host=h password=pw' }\n" SECRET_HEAD,
         "rotor.yaml:1: journal.dsn: DSNs are never inline: use dsn_env or dsn_file")
ERR_CASE(dsn_env_and_file, "journal: { dsn_env: A, dsn_file: /x }\n" SECRET_HEAD,
         "rotor.yaml:1: journal: expected one of dsn_env or dsn_file, got both")
ERR_CASE(dsn_in_env_field, "journal: { dsn_env: 'postgres://u:hunter2@h/db' }\n" SECRET_HEAD,
         "rotor.yaml:1: journal.dsn_env: expected an environment variable name "
         "([A-Za-z_][A-Za-z0-9_]*), got something else (not shown: it may be a DSN)")
ERR_CASE(
    duplicate_secret_name,
    SECRET_HEAD "  - name: app-db\n"
                "    database: { dsn_env: B, roles: { blue: b, green: g } }\n"
                "    store: { names: { blue: x-blue, green: x-green } }\n",
    "rotor.yaml:8: secrets[1].name: expected a name unique across secrets, got \"app-db\" again "
    "(first in secrets[0])")
ERR_CASE(bad_secret_name, "secrets:\n  - name: -leading-dash\n",
         "rotor.yaml:2: secrets[0].name: expected a name matching "
         "^[A-Za-z0-9][A-Za-z0-9._-]{0,126}$, got \"-leading-dash\"")
ERR_CASE(
    equal_roles,
    "secrets:\n  - name: a\n    database:\n      dsn_env: A\n      roles:\n"
    "        blue: app\n        green: app\n",
    "rotor.yaml:7: secrets[0].database.roles.green: expected a role other than blue's, got the "
    "same role \"app\"")
ERR_CASE(
    bad_store_name,
    "secrets:\n  - name: a\n    database: { dsn_env: A, roles: { blue: b, green: g } }\n"
    "    store:\n      names:\n        blue: pg_blue\n",
    "rotor.yaml:6: secrets[0].store.names.blue: expected 1-127 characters of [0-9A-Za-z-] (Key "
    "Vault's rule), got \"pg_blue\"")
ERR_CASE(store_names_not_distinct,
         "secrets:\n  - name: a\n    database: { dsn_env: A, roles: { blue: b, green: g } }\n"
         "    store:\n      names: { blue: one, green: two,\n               current: one }\n",
         "rotor.yaml:6: secrets[0].store.names.current: expected a name distinct from blue's, got "
         "the same \"one\"")
ERR_CASE(class_emptied_by_exclude,
         SECRET_HEAD
         "    password:\n      classes: [upper, digit]\n      exclude: \"0123456789\"\n",
         "rotor.yaml:10: secrets[0].password.exclude: expected to leave at least one digit "
         "character, got \"0123456789\"")
ERR_CASE(bad_class, SECRET_HEAD "    password: { classes: [upper, emoji] }\n",
         "rotor.yaml:8: secrets[0].password.classes[1]: expected one of upper, lower, digit, "
         "symbol, got \"emoji\"")
ERR_CASE(every_and_cron, SECRET_HEAD "    schedule:\n      every: 30d\n      cron: '0 3 * * *'\n",
         "rotor.yaml:10: secrets[0].schedule: expected either every or cron, got both")
ERR_CASE(cron_fields, SECRET_HEAD "    schedule: { cron: '0 3 * *' }\n",
         "rotor.yaml:8: secrets[0].schedule.cron: expected 5 fields (minute hour day month "
         "weekday), got \"0 3 * *\"")
ERR_CASE(
    bad_window, SECRET_HEAD "    schedule: { every: 1d, window: '25:00-03:00' }\n",
    "rotor.yaml:8: secrets[0].schedule.window: expected a UTC window HH:MM-HH:MM with start != "
    "end, got \"25:00-03:00\"")
ERR_CASE(yaml_syntax, "kafka: { brokers: embedded\nlog: x\n",
         "rotor.yaml:2: YAML syntax error: did not find expected ',' or '}' while parsing a flow "
         "mapping")
ERR_CASE(property_not_scalar, "kafka: { properties: { sasl: { password: x } } }\n" SECRET_HEAD,
         "rotor.yaml:1: kafka.properties.sasl: expected a string, number or boolean, got a mapping "
         "or list")

/* A secret without a store section (3 lines), for the store's own cases. */
#define HEAD_NO_STORE                                                                              \
    "secrets:\n  - name: a\n    database: { dsn_env: A, roles: { blue: b, green: g } }\n"

ERR_CASE(keyvault_url_not_https,
         HEAD_NO_STORE "    store:\n      kind: azure-keyvault\n"
                       "      vault_url: http://kv.vault.azure.net\n"
                       "      names: { blue: x-blue, green: x-green }\n",
         "rotor.yaml:6: secrets[0].store.vault_url: expected an https:// URL such as "
         "https://NAME.vault.azure.net, got \"http://kv.vault.azure.net\"")
ERR_CASE(keyvault_url_missing,
         HEAD_NO_STORE "    store: { kind: azure-keyvault, names: { blue: x, green: y } }\n",
         "rotor.yaml:4: secrets[0].store.vault_url: missing required key")
ERR_CASE(keyvault_with_dir,
         HEAD_NO_STORE "    store:\n      kind: azure-keyvault\n      dir: ./var/secrets\n",
         "rotor.yaml:6: secrets[0].store.dir: expected kind file for this key, got kind "
         "azure-keyvault")
ERR_CASE(keyvault_key_with_file_store,
         HEAD_NO_STORE "    store:\n      vault_url: https://kv.vault.azure.net\n",
         "rotor.yaml:5: secrets[0].store.vault_url: expected kind azure-keyvault for this key, got "
         "kind file")
ERR_CASE(keyvault_bad_resolve,
         HEAD_NO_STORE "    store:\n      kind: azure-keyvault\n"
                       "      vault_url: https://kv.vault.azure.net\n"
                       "      resolve: kv.vault.azure.net:443\n",
         "rotor.yaml:7: secrets[0].store.resolve: expected HOST:PORT:ADDRESS (curl's --resolve "
         "form), got \"kv.vault.azure.net:443\"")
ERR_CASE(keyvault_writes_over_limit,
         HEAD_NO_STORE "    store:\n      kind: azure-keyvault\n"
                       "      vault_url: https://kv.vault.azure.net\n      writes_per_10s: 301\n",
         "rotor.yaml:7: secrets[0].store.writes_per_10s: expected an integer from 1 to 300, got "
         "\"301\"")
ERR_CASE(entra_token_not_bool,
         "secrets:\n  - name: a\n    database:\n      dsn_env: A\n"
         "      roles: { blue: b, green: g }\n      entra_token: yes\n",
         "rotor.yaml:6: secrets[0].database.entra_token: expected true or false, got \"yes\"")
ERR_CASE(exec_without_swap,
         SECRET_HEAD "    deploy:\n      kind: exec\n      exec:\n        deploy: ./up\n",
         "rotor.yaml:11: secrets[0].deploy.exec.swap: missing required key")
ERR_CASE(exec_keys_under_kubernetes,
         SECRET_HEAD "    deploy:\n      kind: kubernetes\n      exec: { deploy: a, swap: b }\n",
         "rotor.yaml:10: secrets[0].deploy.exec: expected kind exec for this key, got kind "
         "kubernetes")
ERR_CASE(kubernetes_without_deployments,
         SECRET_HEAD "    deploy:\n      kind: kubernetes\n"
                     "      kubernetes: { services: { production: app } }\n",
         "rotor.yaml:10: secrets[0].deploy.kubernetes.deployments.blue: missing required key")
ERR_CASE(kubernetes_same_deployment,
         SECRET_HEAD "    deploy:\n      kind: kubernetes\n      kubernetes:\n"
                     "        deployments: { blue: app,\n                       green: app }\n",
         "rotor.yaml:12: secrets[0].deploy.kubernetes.deployments.green: expected a name other "
         "than blue's, got the same \"app\"")
ERR_CASE(kubernetes_bad_name,
         SECRET_HEAD "    deploy:\n      kind: kubernetes\n      kubernetes:\n"
                     "        deployments: { blue: App_Blue, green: app-green }\n",
         "rotor.yaml:11: secrets[0].deploy.kubernetes.deployments.blue: expected a Kubernetes name "
         "(lower-case [a-z0-9.-], at most 253), got \"App_Blue\"")
ERR_CASE(external_keys_under_none, SECRET_HEAD "    deploy: { external: { timeout: 1h } }\n",
         "rotor.yaml:8: secrets[0].deploy.external: expected kind external for this key, got kind "
         "none")
ERR_CASE(probe_without_url, SECRET_HEAD "    probes:\n      verify:\n        - successes: 2\n",
         "rotor.yaml:10: secrets[0].probes.verify[0].url: missing required key")
ERR_CASE(probe_expect_out_of_range,
         SECRET_HEAD "    probes:\n      production:\n        - url: http://app/\n"
                     "          expect: [200,\n                   600]\n",
         "rotor.yaml:12: secrets[0].probes.production[0].expect[1]: expected an integer from 100 "
         "to 599, got \"600\"")
ERR_CASE(probe_expect_empty,
         SECRET_HEAD "    probes: { production: [ { url: 'http://app/', expect: [] } ] }\n",
         "rotor.yaml:8: secrets[0].probes.production[0].expect: expected a non-empty list of "
         "integers from 100 to 599, got []")
ERR_CASE(probe_bad_url, SECRET_HEAD "    probes: { verify: [ { url: 'ftp://app/' } ] }\n",
         "rotor.yaml:8: secrets[0].probes.verify[0].url: expected an http:// or https:// URL, got "
         "\"ftp://app/\"")
ERR_CASE(probe_http_key_on_sql,
         SECRET_HEAD "    probes: { verify: [ { kind: sql, url: 'http://app/' } ] }\n",
         "rotor.yaml:8: secrets[0].probes.verify[0].url: expected kind http for this key, got kind "
         "sql")
ERR_CASE(probe_typo_suggests, SECRET_HEAD "    probes: { verify: [ { ur: 'http://app/' } ] }\n",
         "rotor.yaml:8: unknown key secrets[0].probes.verify[0].ur (did you mean "
         "secrets[0].probes.verify[0].url?)")
ERR_CASE(probe_not_a_mapping, SECRET_HEAD "    probes: { production: [ 'http://app/' ] }\n",
         "rotor.yaml:8: secrets[0].probes.production[0]: expected a mapping, got \"http://app/\"")
ERR_CASE(client_secret_refused, "azure:\n  client_id: x\n  client_secret: s3cret\n" SECRET_HEAD,
         "rotor.yaml:3: azure.client_secret: client secrets are never in the file: set "
         "AZURE_CLIENT_SECRET")
ERR_CASE(authority_not_https, "azure: { authority_host: 'http://login.example' }\n" SECRET_HEAD,
         "rotor.yaml:1: azure.authority_host: expected an https:// URL such as "
         "https://login.microsoftonline.com, got \"http://login.example\"")
ERR_CASE(properties_env_not_a_name,
         "kafka:\n  properties_env:\n    sasl.password: "
         "'Endpoint=sb://ns/;SharedAccessKey=k3y'\n" SECRET_HEAD,
         "rotor.yaml:3: kafka.properties_env.sasl.password: expected an environment variable name "
         "([A-Za-z_][A-Za-z0-9_]*), got something else (not shown: it may be a secret)")
ERR_CASE(property_in_two_maps,
         "kafka:\n  properties: { sasl.password: x }\n"
         "  properties_file: { sasl.password: /run/pw }\n" SECRET_HEAD,
         "rotor.yaml:3: kafka.properties_file.sasl.password: expected a property set in one place, "
         "got it also in kafka.properties")
ERR_CASE(keyvault_topic_bad, "kafka: { topics: { keyvault: 'key vault' } }\n" SECRET_HEAD,
         "rotor.yaml:1: kafka.topics.keyvault: expected a Kafka topic name (1-249 of "
         "[A-Za-z0-9._-]), got \"key vault\"")

#define ERR_TEST(id)                                                                               \
    {                                                                                              \
        .name = "error_" #id, .test_func = run_err_case, .setup_func = id##_setup                  \
    }

static void test_dsn_value_never_in_messages(void **state)
{
    (void)state;
    rotor_config_t *c = NULL;
    char err[512];
    assert_int_equal(parse(dsn_in_env_field_case.yaml, &c, err, sizeof err), ROTOR_ECONFIG);
    assert_null(strstr(err, "hunter2"));
    assert_int_equal(parse(inline_dsn_case.yaml, &c, err, sizeof err), ROTOR_ECONFIG);
    assert_null(strstr(err, "pw@"));
    assert_int_equal(parse(property_not_scalar_case.yaml, &c, err, sizeof err), ROTOR_ECONFIG);
    assert_null(strstr(err, "password: x"));
    assert_int_equal(parse(properties_env_not_a_name_case.yaml, &c, err, sizeof err),
                     ROTOR_ECONFIG);
    assert_null(strstr(err, "k3y"));
    assert_int_equal(parse(client_secret_refused_case.yaml, &c, err, sizeof err), ROTOR_ECONFIG);
    assert_null(strstr(err, "s3cret"));
}

static void test_load_missing_file(void **state)
{
    (void)state;
    rotor_config_t *c = NULL;
    char err[512];
    assert_int_equal(config_load("/nonexistent/rotor.yaml", &c, err, sizeof err), ROTOR_ECONFIG);
    assert_null(c);
    assert_string_equal(err, "/nonexistent/rotor.yaml: cannot read: No such file or directory");
}

/* ---- config_kafka_properties ---- */

static void test_kafka_properties_resolved(void **state)
{
    (void)state;
    char path[] = "/tmp/rotor-test-prop-XXXXXX", yaml[1024], err[256];
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, "from-file\nignored\n", 19), 19);
    close(fd);
    snprintf(yaml, sizeof yaml,
             "kafka: { properties: { security.protocol: SASL_SSL },\n"
             "         properties_env: { sasl.password: ROTOR_TEST_EH },\n"
             "         properties_file: { ssl.key.password: %s } }\n" SECRET_HEAD,
             path);
    rotor_config_t *c = NULL;
    assert_int_equal(parse(yaml, &c, err, sizeof err), 0);
    setenv("ROTOR_TEST_EH", "Endpoint=sb://ns/;SharedAccessKey=k3y", 1);
    cfg_kv_t *kv = NULL;
    size_t n = 0;
    assert_int_equal(config_kafka_properties(c, &kv, &n, err, sizeof err), 0);
    assert_int_equal(n, 3);
    assert_string_equal(kv_find(kv, n, "security.protocol")->value, "SASL_SSL");
    assert_string_equal(kv_find(kv, n, "sasl.password")->value,
                        "Endpoint=sb://ns/;SharedAccessKey=k3y");
    assert_string_equal(kv_find(kv, n, "ssl.key.password")->value, "from-file");
    /* The config itself still holds only the variable's name and the path. */
    assert_string_equal(c->kafka.properties_env[0].value, "ROTOR_TEST_EH");
    config_kv_free(kv, n);

    /* Read again each call: the variable or the mounted file may have changed. */
    setenv("ROTOR_TEST_EH", "second", 1);
    assert_int_equal(config_kafka_properties(c, &kv, &n, err, sizeof err), 0);
    assert_string_equal(kv_find(kv, n, "sasl.password")->value, "second");
    config_kv_free(kv, n);
    unsetenv("ROTOR_TEST_EH");
    unlink(path);
    config_free(c);
}

static void test_kafka_properties_errors(void **state)
{
    (void)state;
    char yaml[1024], err[256], want[512];
    snprintf(yaml, sizeof yaml,
             "kafka: { properties_env: { sasl.password: ROTOR_TEST_EH },\n"
             "         properties_file: { ssl.key.password: /nonexistent/pw } }\n" SECRET_HEAD);
    rotor_config_t *c = NULL;
    assert_int_equal(parse(yaml, &c, err, sizeof err), 0);
    cfg_kv_t *kv = (cfg_kv_t *)1;
    size_t n = 7;
    unsetenv("ROTOR_TEST_EH");
    assert_int_equal(config_kafka_properties(c, &kv, &n, err, sizeof err), ROTOR_ECONFIG);
    assert_null(kv);
    assert_int_equal(n, 0);
    assert_string_equal(
        err, "kafka.properties_env.sasl.password: environment variable ROTOR_TEST_EH is not set");
    setenv("ROTOR_TEST_EH", "", 1);
    assert_int_equal(config_kafka_properties(c, &kv, &n, err, sizeof err), ROTOR_ECONFIG);
    assert_string_equal(
        err, "kafka.properties_env.sasl.password: environment variable ROTOR_TEST_EH is empty");
    setenv("ROTOR_TEST_EH", "Endpoint=sb://ns/;SharedAccessKey=k3y", 1);
    assert_int_equal(config_kafka_properties(c, &kv, &n, err, sizeof err), ROTOR_ECONFIG);
    snprintf(want, sizeof want,
             "kafka.properties_file.ssl.key.password: cannot read /nonexistent/pw: No such file "
             "or directory");
    assert_string_equal(err, want);
    assert_null(strstr(err, "k3y"));
    unsetenv("ROTOR_TEST_EH");
    config_free(c);

    /* A configuration without properties yields none, and no error. */
    assert_int_equal(parse(SECRET_HEAD, &c, err, sizeof err), 0);
    assert_int_equal(config_kafka_properties(c, &kv, &n, err, sizeof err), 0);
    assert_int_equal(n, 0);
    config_kv_free(kv, n);
    config_free(c);
}

/* ---- config_dsn ---- */

static void test_dsn_from_env(void **state)
{
    (void)state;
    char *dsn = NULL, err[256];
    setenv("ROTOR_TEST_DSN", "host=db password=s3cret", 1);
    assert_int_equal(config_dsn("ROTOR_TEST_DSN", NULL, "journal.dsn_env", &dsn, err, sizeof err),
                     0);
    assert_string_equal(dsn, "host=db password=s3cret");
    free(dsn);

    unsetenv("ROTOR_TEST_DSN");
    assert_int_equal(config_dsn("ROTOR_TEST_DSN", NULL, "journal.dsn_env", &dsn, err, sizeof err),
                     ROTOR_ECONFIG);
    assert_null(dsn);
    assert_string_equal(err, "journal.dsn_env: environment variable ROTOR_TEST_DSN is not set");

    setenv("ROTOR_TEST_DSN", "", 1);
    assert_int_equal(
        config_dsn("ROTOR_TEST_DSN", NULL, "secrets[0].database.dsn_env", &dsn, err, sizeof err),
        ROTOR_ECONFIG);
    assert_string_equal(
        err, "secrets[0].database.dsn_env: environment variable ROTOR_TEST_DSN is empty");
    unsetenv("ROTOR_TEST_DSN");
}

static void test_dsn_from_file(void **state)
{
    (void)state;
    char path[] = "/tmp/rotor-test-dsn-XXXXXX", *dsn = NULL, err[256];
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    static const char body[] = "host=db password=s3cret\r\nsecond line\n";
    assert_int_equal(write(fd, body, sizeof body - 1), (ssize_t)(sizeof body - 1));
    close(fd);
    assert_int_equal(config_dsn(NULL, path, "journal.dsn_file", &dsn, err, sizeof err), 0);
    assert_string_equal(dsn, "host=db password=s3cret");
    free(dsn);

    /* An empty first line is an error, and says so without printing anything of the file. */
    fd = open(path, O_WRONLY | O_TRUNC);
    assert_int_equal(write(fd, "\nhost=x password=y\n", 19), 19);
    close(fd);
    assert_int_equal(config_dsn(NULL, path, "journal.dsn_file", &dsn, err, sizeof err),
                     ROTOR_ECONFIG);
    assert_null(strstr(err, "password"));
    unlink(path);

    assert_int_equal(config_dsn(NULL, path, "journal.dsn_file", &dsn, err, sizeof err),
                     ROTOR_ECONFIG);
    assert_null(dsn);
    char want[300];
    snprintf(want, sizeof want, "journal.dsn_file: cannot read %s: No such file or directory",
             path);
    assert_string_equal(err, want);
}

static void test_dsn_needs_exactly_one(void **state)
{
    (void)state;
    char *dsn = NULL, err[256];
    assert_int_equal(config_dsn("A", "/x", "k", &dsn, err, sizeof err), ROTOR_ECONFIG);
    assert_string_equal(err, "k: expected exactly one of dsn_env or dsn_file");
    assert_int_equal(config_dsn(NULL, NULL, "k", &dsn, err, sizeof err), ROTOR_ECONFIG);
    assert_null(dsn);
}

/* Issue 8: a DSN libpq cannot parse is refused where it is read, naming the key and where it
 * came from; neither the value nor libpq's message (which quotes the token it stumbled on) is
 * repeated. */
static void test_dsn_malformed_refused_without_value(void **state)
{
    (void)state;
    static const struct {
        const char *dsn, *secret, *says;
    } cases[] = {
        {"postgresql://u:s3cr%ZZet@h/db", "s3cr", "not followed by two hex digits"},
        {"host=/tmp password s3cretX", "s3cretX", "a word without \"=\""},
        {"host=/tmp password=abc s3cretY", "s3cretY", "a word without \"=\""},
        {"host=/tmp password='s3cretZ", "s3cretZ", "a quoted value is not closed"},
        {"host=/tmp s3cretW=1", "s3cretW", "an unknown keyword"},
        {"postgresql://h/db?s3cretQ=1", "s3cretQ", "an unknown URI query parameter"},
        {"s3cretBare", "s3cretBare", "neither key=value pairs nor a postgresql:// URI"},
        {"postgresql://u:s3cretP/rest@h/db", "s3cretP", "the port is not a number"},
        {"postgresql://u:p@s3cretH@h/db", "s3cretH", "the host holds an \"@\""},
        {"host=h port=s3cretN", "s3cretN", "the port is not a number"},
    };
    char *dsn = NULL, err[512];
    char path[] = "/tmp/rotor-test-dsn-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        setenv("ROTOR_TEST_DSN", cases[i].dsn, 1);
        assert_int_equal(
            config_dsn("ROTOR_TEST_DSN", NULL, "journal.dsn_env", &dsn, err, sizeof err),
            ROTOR_ECONFIG);
        assert_null(dsn);
        if (strstr(err, cases[i].secret) || !strstr(err, cases[i].says) ||
            !strstr(err, "journal.dsn_env: environment variable ROTOR_TEST_DSN is not a valid "
                         "DSN: "))
            fail_msg("%s: %s", cases[i].dsn, err);

        FILE *fp = fopen(path, "w");
        fprintf(fp, "%s\n", cases[i].dsn);
        fclose(fp);
        assert_int_equal(
            config_dsn(NULL, path, "secrets[0].database.dsn_file", &dsn, err, sizeof err),
            ROTOR_ECONFIG);
        assert_null(dsn);
        char want[300];
        snprintf(want, sizeof want, "secrets[0].database.dsn_file: the first line of %s", path);
        if (strstr(err, cases[i].secret) || !strstr(err, want))
            fail_msg("%s: %s", cases[i].dsn, err);
    }
    unlink(path);
    unsetenv("ROTOR_TEST_DSN");
}

/* `rotor run` checks every DSN before it starts: the journal's, then each secret's. */
static void test_check_dsns_names_the_key(void **state)
{
    (void)state;
    rotor_config_t *c = NULL;
    char err[512];
    assert_int_equal(parse(SECRET_HEAD, &c, err, sizeof err), 0);
    setenv("ROTOR_JOURNAL_DSN", "host=/tmp dbname=rotor", 1);
    setenv("APP_DB_ADMIN_DSN", "postgresql://admin@db/app", 1);
    assert_int_equal(config_check_dsns(c, err, sizeof err), 0);

    setenv("APP_DB_ADMIN_DSN", "postgresql://admin:pa%ZZss@db/app", 1);
    assert_int_equal(config_check_dsns(c, err, sizeof err), ROTOR_ECONFIG);
    assert_null(strstr(err, "pa%ZZss"));
    assert_null(strstr(err, "ZZ"));
    assert_non_null(strstr(err, "secrets[0].database.dsn_env (secret app-db): environment "
                                "variable APP_DB_ADMIN_DSN is not a valid DSN"));

    setenv("ROTOR_JOURNAL_DSN", "host=/tmp password s3cret", 1);
    assert_int_equal(config_check_dsns(c, err, sizeof err), ROTOR_ECONFIG);
    assert_null(strstr(err, "s3cret"));
    assert_non_null(
        strstr(err, "journal.dsn_env: environment variable ROTOR_JOURNAL_DSN is not a valid DSN"));

    unsetenv("ROTOR_JOURNAL_DSN");
    assert_int_equal(config_check_dsns(c, err, sizeof err), ROTOR_ECONFIG);
    assert_string_equal(err, "journal.dsn_env: environment variable ROTOR_JOURNAL_DSN is not set");
    unsetenv("APP_DB_ADMIN_DSN");
    config_free(c);
}

/* ---- the reference in docs/ is held against config_keys[] ---- */

/* Splits one markdown table row into trimmed cells, honouring "\|" inside cells. */
static int split_row(char *line, char **cells, int max)
{
    int n = 0;
    char *p = strchr(line, '|');
    if (!p)
        return 0;
    p++;
    while (*p && n < max) {
        char *cell = p, *o = p;
        for (; *p && *p != '|'; p++) {
            if (*p == '\\' && p[1] == '|')
                p++;
            *o++ = *p;
        }
        if (!*p)
            break;
        p++;
        *o = '\0';
        while (*cell == ' ')
            cell++;
        for (char *e = cell + strlen(cell); e > cell && (e[-1] == ' ' || e[-1] == '\n');)
            *--e = '\0';
        if (cell[0] == '`' && strlen(cell) >= 2 && cell[strlen(cell) - 1] == '`') {
            cell[strlen(cell) - 1] = '\0';
            cell++;
        }
        cells[n++] = cell;
    }
    return n;
}

static void test_doc_table_matches_config_keys(void **state)
{
    (void)state;
    char path[1200], line[1024];
    snprintf(path, sizeof path, "%s/docs/configuration.md", source_dir());
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    size_t row = 0;
    bool in_table = false, seen_table = false;
    int mismatches = 0;
    while (fgets(line, sizeof line, f)) {
        char *cells[8];
        int n = split_row(line, cells, 8);
        if (!in_table) {
            in_table = !seen_table && n == 4 && strcmp(cells[0], "key") == 0 &&
                       strcmp(cells[1], "type") == 0 && strcmp(cells[2], "default") == 0 &&
                       strcmp(cells[3], "doc") == 0;
            seen_table |= in_table;
            continue;
        }
        if (n == 0)
            break; /* the table ended */
        if (strncmp(cells[0], "---", 3) == 0)
            continue;
        assert_int_equal(n, 4);
        const char *dflt = strcmp(cells[2], "required") == 0 ? NULL : cells[2];
        if (row >= config_nkeys) {
            print_error("docs row %s: not in config_keys[]\n", cells[0]);
            mismatches++;
        } else {
            const config_key_t *k = &config_keys[row];
            if (strcmp(cells[0], k->key) || strcmp(cells[1], k->type) ||
                (dflt == NULL) != (k->dflt == NULL) || (dflt && strcmp(dflt, k->dflt))) {
                print_error("docs row %zu (%s | %s | %s) != config_keys (%s | %s | %s)\n", row,
                            cells[0], cells[1], dflt ? dflt : "required", k->key, k->type,
                            k->dflt ? k->dflt : "required");
                mismatches++;
            }
        }
        row++;
    }
    fclose(f);
    assert_true(seen_table);
    for (size_t i = row; i < config_nkeys; i++) {
        print_error("config_keys %s: missing from docs/configuration.md\n", config_keys[i].key);
        mismatches++;
    }
    assert_int_equal(mismatches, 0);
}

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    char *buf = util_calloc(1, 1 << 16);
    size_t n = fread(buf, 1, (1 << 16) - 1, f);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

/* The example in the reference is the example file, so neither can drift from the other. */
static void test_doc_example_is_the_example_file(void **state)
{
    (void)state;
    char path[1200];
    snprintf(path, sizeof path, "%s/docs/configuration.md", source_dir());
    char *doc = slurp(path);
    snprintf(path, sizeof path, "%s/examples/rotor.yaml", source_dir());
    char *example = slurp(path);
    char *block = strstr(doc, "```yaml\n");
    assert_non_null(block);
    block += strlen("```yaml\n");
    char *end = strstr(block, "```");
    assert_non_null(end);
    *end = '\0';
    assert_string_equal(block, example);
    free(doc);
    free(example);
}

/* Every key in the table parses its own default: the table cannot hold a default the loader
 * would reject, and every key is one the loader accepts. */
static void test_every_table_key_is_accepted(void **state)
{
    (void)state;
    for (size_t i = 0; i < config_nkeys; i++) {
        const config_key_t *k = &config_keys[i];
        assert_non_null(k->doc);
        assert_false(k->reloadable);
        if (!k->dflt || k->dflt[0] == '(' || strncmp(k->key, "secrets", 7) == 0)
            continue;
        /* "a.b.c" with default d -> "a: { b: { c: d } }" */
        char yaml[512] = "", key[128];
        util_strlcpy(key, k->key, sizeof key);
        int depth = 0;
        for (char *part = strtok(key, "."); part; part = strtok(NULL, "."), depth++) {
            if (strcmp(part, "<stage>") == 0)
                part = "retire";
            strcat(yaml, depth ? "{ " : "");
            strcat(yaml, part);
            strcat(yaml, ": ");
        }
        strcat(yaml, k->dflt);
        for (int d = 1; d < depth; d++)
            strcat(yaml, " }");
        strcat(yaml, "\n" SECRET_HEAD);
        rotor_config_t *c = NULL;
        char err[512];
        int rc = parse(yaml, &c, err, sizeof err);
        if (rc)
            print_error("%s: %s\n", yaml, err);
        assert_int_equal(rc, 0);
        config_free(c);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_minimal_file_gets_defaults),
        cmocka_unit_test(test_example_loads_with_documented_defaults),
        cmocka_unit_test(test_issue_flow_style_loads),
        cmocka_unit_test(test_overrides_and_lookups),
        cmocka_unit_test(test_example_keyvault),
        cmocka_unit_test(test_example_exec),
        cmocka_unit_test(test_example_kubernetes),
        cmocka_unit_test(test_drivers_and_probes_defaults),
        ERR_TEST(unknown_key_suggests),
        ERR_TEST(unknown_key_in_list_item),
        ERR_TEST(unknown_key_no_suggestion),
        ERR_TEST(unknown_stage),
        ERR_TEST(duplicate_key),
        ERR_TEST(wrong_type),
        ERR_TEST(section_not_mapping),
        ERR_TEST(integer_not_a_number),
        ERR_TEST(integer_out_of_range),
        ERR_TEST(bad_duration),
        ERR_TEST(zero_validity),
        ERR_TEST(bad_enum),
        ERR_TEST(missing_required_key),
        ERR_TEST(missing_secrets),
        ERR_TEST(empty_secrets),
        ERR_TEST(missing_database_dsn),
        ERR_TEST(inline_dsn),
        ERR_TEST(inline_journal_dsn),
        ERR_TEST(dsn_env_and_file),
        ERR_TEST(dsn_in_env_field),
        ERR_TEST(duplicate_secret_name),
        ERR_TEST(bad_secret_name),
        ERR_TEST(equal_roles),
        ERR_TEST(bad_store_name),
        ERR_TEST(store_names_not_distinct),
        ERR_TEST(keyvault_url_not_https),
        ERR_TEST(keyvault_url_missing),
        ERR_TEST(keyvault_with_dir),
        ERR_TEST(keyvault_key_with_file_store),
        ERR_TEST(keyvault_bad_resolve),
        ERR_TEST(keyvault_writes_over_limit),
        ERR_TEST(entra_token_not_bool),
        ERR_TEST(exec_without_swap),
        ERR_TEST(exec_keys_under_kubernetes),
        ERR_TEST(kubernetes_without_deployments),
        ERR_TEST(kubernetes_same_deployment),
        ERR_TEST(kubernetes_bad_name),
        ERR_TEST(external_keys_under_none),
        ERR_TEST(probe_without_url),
        ERR_TEST(probe_expect_out_of_range),
        ERR_TEST(probe_expect_empty),
        ERR_TEST(probe_bad_url),
        ERR_TEST(probe_http_key_on_sql),
        ERR_TEST(probe_typo_suggests),
        ERR_TEST(probe_not_a_mapping),
        ERR_TEST(client_secret_refused),
        ERR_TEST(authority_not_https),
        ERR_TEST(properties_env_not_a_name),
        ERR_TEST(property_in_two_maps),
        ERR_TEST(keyvault_topic_bad),
        ERR_TEST(class_emptied_by_exclude),
        ERR_TEST(bad_class),
        ERR_TEST(every_and_cron),
        ERR_TEST(cron_fields),
        ERR_TEST(bad_window),
        ERR_TEST(yaml_syntax),
        ERR_TEST(property_not_scalar),
        cmocka_unit_test(test_dsn_value_never_in_messages),
        cmocka_unit_test(test_load_missing_file),
        cmocka_unit_test(test_kafka_properties_resolved),
        cmocka_unit_test(test_kafka_properties_errors),
        cmocka_unit_test(test_dsn_from_env),
        cmocka_unit_test(test_dsn_from_file),
        cmocka_unit_test(test_dsn_needs_exactly_one),
        cmocka_unit_test(test_dsn_malformed_refused_without_value),
        cmocka_unit_test(test_check_dsns_names_the_key),
        cmocka_unit_test(test_doc_table_matches_config_keys),
        cmocka_unit_test(test_doc_example_is_the_example_file),
        cmocka_unit_test(test_every_table_key_is_accepted),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
