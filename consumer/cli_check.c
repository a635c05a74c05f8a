/* cli_check.c: `rotor check`: a preflight of everything rotor needs (config, journal, each managed
 * database and store, Kafka), one "ok" or "FAIL" line per check. */
#include <getopt.h>
#include <librdkafka/rdkafka.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "pg.h"
#include "secret.h"
#include "store.h"
#include "util.h"

#define CLI_METADATA_MS 5000

typedef struct {
    int failed;
} cli_check_t;

static void cli_report(cli_check_t *ck, bool ok, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs(ok ? "ok   " : "FAIL ", stdout);
    vprintf(fmt, ap);
    putchar('\n');
    va_end(ap);
    fflush(stdout);
    if (!ok)
        ck->failed++;
}

/* First line of libpq's message, for one-line reports. */
static int cli_msg_len(const char *msg)
{
    return (int)strcspn(msg, "\n");
}

static void cli_check_journal(cli_check_t *ck, const rotor_config_t *cfg)
{
    char err[1024];
    char *dsn = NULL;
    const char *key = cfg->journal.dsn_file ? "journal.dsn_file" : "journal.dsn_env";
    if (config_dsn(cfg->journal.dsn_env, cfg->journal.dsn_file, key, &dsn, err, sizeof err) != 0) {
        cli_report(ck, false, "journal: %s", err);
        return;
    }
    secret_wipe(dsn, strlen(dsn));
    free(dsn);
    PGconn *c = NULL;
    int version = 0;
    /* cli_journal_open explains a failure on stderr; the report line stays short. */
    if (cli_journal_open(cfg, true, &c, &version) != 0) {
        cli_report(ck, false, "journal: cannot connect (see above)");
        return;
    }
    if (version)
        cli_report(ck, true, "journal: connected, schema version %d", version);
    else
        cli_report(ck, true, "journal: connected, no rotor schema yet (`rotor run` creates it)");
    PQfinish(c);
}

static void cli_check_roles(cli_check_t *ck, PGconn *c, const cfg_secret_t *s)
{
    for (int slot = SLOT_BLUE; slot <= SLOT_GREEN; slot++) {
        const char *params[] = {s->database.roles[slot]};
        PGresult *res = PQexecParams(c, "SELECT 1 FROM pg_roles WHERE rolname = $1", 1, NULL,
                                     params, NULL, NULL, 0);
        if (PQresultStatus(res) != PGRES_TUPLES_OK) {
            const char *m = PQresultErrorMessage(res);
            cli_report(ck, false, "secret %s: role %s: %.*s", s->name, params[0], cli_msg_len(m),
                       m);
        } else {
            cli_report(ck, PQntuples(res) == 1, "secret %s: %s role %s %s", s->name,
                       rotor_slot_name((rotor_slot_t)slot), params[0],
                       PQntuples(res) == 1 ? "exists" : "does not exist");
        }
        PQclear(res);
    }
}

static void cli_check_database(cli_check_t *ck, const cfg_secret_t *s, size_t index)
{
    char err[1024];
    char *dsn = NULL;
    char key[200];
    snprintf(key, sizeof key, "secrets[%zu].database.%s", index,
             s->database.dsn_file ? "dsn_file" : "dsn_env");
    if (config_dsn(s->database.dsn_env, s->database.dsn_file, key, &dsn, err, sizeof err) != 0) {
        cli_report(ck, false, "secret %s: database: %s", s->name, err);
        return;
    }
    const char *keys[] = {"application_name", "connect_timeout", "dbname", NULL};
    const char *vals[] = {"rotor-cli", "10", dsn, NULL};
    PGconn *c = PQconnectdbParams(keys, vals, 1);
    if (PQstatus(c) != CONNECTION_OK) {
        /* As the daemon words it: nothing of the DSN that may be a password. */
        char *m = pgc_redact_error(PQerrorMessage(c), keys, vals);
        cli_report(ck, false, "secret %s: database: cannot connect: %.*s", s->name, cli_msg_len(m),
                   m);
        secret_wipe(m, strlen(m));
        free(m);
    } else {
        cli_report(ck, true, "secret %s: database: connected as %s", s->name, PQuser(c));
        cli_check_roles(ck, c, s);
    }
    secret_wipe(dsn, strlen(dsn));
    free(dsn);
    PQfinish(c);
}

static void cli_check_store(cli_check_t *ck, const cfg_secret_t *s)
{
    if (strcmp(s->store.kind, "file") != 0) {
        cli_report(ck, true, "secret %s: store kind %s: not checked", s->name, s->store.kind);
        return;
    }
    /* The daemon's own rules, the very check `rotor run` refuses to start on: it exists, is a
     * directory rotor owns and can write in, writable by no one else, not a link. */
    char err[600];
    if (store_file_check(s->store.dir, err, sizeof err) != 0)
        cli_report(ck, false, "secret %s: %s", s->name, err);
    else
        cli_report(ck, true, "secret %s: store dir %s is writable", s->name, s->store.dir);
}

static bool cli_topic_exists(const rd_kafka_metadata_t *md, const char *topic)
{
    for (int i = 0; i < md->topic_cnt; i++)
        if (strcmp(md->topics[i].topic, topic) == 0 && !md->topics[i].err)
            return true;
    return false;
}

static void cli_check_kafka(cli_check_t *ck, const rotor_config_t *cfg)
{
    char err[1024];
    char *brokers = NULL;
    if (cli_brokers(cfg, &brokers, err, sizeof err) != 0) {
        cli_report(ck, false, "kafka: %s", err);
        return;
    }
    rd_kafka_t *rk = cli_kafka_new(cfg, brokers, err, sizeof err);
    const rd_kafka_metadata_t *md = NULL;
    rd_kafka_resp_err_t e = RD_KAFKA_RESP_ERR__FAIL;
    if (rk)
        e = rd_kafka_metadata(rk, 1, NULL, &md, CLI_METADATA_MS);
    if (!rk) {
        cli_report(ck, false, "kafka: %s", err);
    } else if (e) {
        cli_report(ck, false, "kafka: no metadata from %s within 5s: %s", brokers,
                   rd_kafka_err2str(e));
    } else {
        cli_report(ck, true, "kafka: %d broker(s) at %s", md->broker_cnt, brokers);
        const char *topics[] = {cfg->kafka.topic_commands, cfg->kafka.topic_events,
                                cfg->kafka.topic_deadletter};
        for (size_t i = 0; i < sizeof topics / sizeof topics[0]; i++) {
            bool ok = cli_topic_exists(md, topics[i]);
            cli_report(ck, ok, "kafka: topic %s %s", topics[i], ok ? "exists" : "does not exist");
        }
    }
    if (md)
        rd_kafka_metadata_destroy(md);
    if (rk)
        rd_kafka_destroy(rk);
    free(brokers);
}

int cli_check(cli_ctx_t *ctx, int argc, char **argv)
{
    static const struct option opts[] = {{"help", no_argument, NULL, 'h'}, {NULL, 0, NULL, 0}};
    int ch;
    optind = 0;
    while ((ch = getopt_long(argc, argv, "h", opts, NULL)) != -1)
        return ch == 'h' ? CLI_HELP : CLI_USAGE;
    if (optind != argc) {
        fprintf(stderr, "%s: takes no arguments\n", argv[0]);
        return CLI_USAGE;
    }
    cli_check_t ck = {0};
    char err[1024] = "";
    if (config_load(ctx->config_path, &ctx->cfg, err, sizeof err) != 0) {
        ctx->cfg = NULL;
        cli_report(&ck, false, "config: %s", err);
        return CLI_EXIT_ERROR;
    }
    const rotor_config_t *cfg = ctx->cfg;
    cli_report(&ck, true, "config: %s (%zu secret(s))", cfg->path, cfg->nsecrets);
    cli_check_journal(&ck, cfg);
    for (size_t i = 0; i < cfg->nsecrets; i++) {
        cli_check_database(&ck, &cfg->secrets[i], i);
        cli_check_store(&ck, &cfg->secrets[i]);
    }
    cli_check_kafka(&ck, cfg);
    return ck.failed ? CLI_EXIT_ERROR : CLI_EXIT_OK;
}
