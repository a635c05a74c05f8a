/* cli_common.c: what the CLI subcommands share: config, Kafka publishing, journal reads, following
 * a rotation until it ends. */
#include <errno.h>
#include <inttypes.h>
#include <librdkafka/rdkafka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "event.h"
#include "pg.h"
#include "secret.h"
#include "util.h"

#define CLI_DELIVERY_MS 10000 /* bound on one command's delivery */
#define CLI_POLL_MS 200       /* journal polling interval while following */

/* Columns of a rotation row, in the order cli_rot_fill reads them. */
#define CLI_ROT_COLUMNS                                                                            \
    "SELECT id, secret, stage, status, seq, attempt, from_slot, to_slot, swapped, trigger,"        \
    " coalesce(request_id, ''), coalesce(reason, ''), coalesce(error, ''),"                        \
    " coalesce(traceparent, ''), coalesce(version, ''), coalesce(old_version, ''),"                \
    " coalesce(actor, ''), (extract(epoch FROM next_at) * 1000)::bigint,"                          \
    " coalesce((extract(epoch FROM expires_at) * 1000)::bigint, 0),"                               \
    " (extract(epoch FROM created_at) * 1000)::bigint,"                                            \
    " (extract(epoch FROM updated_at) * 1000)::bigint,"                                            \
    " coalesce((extract(epoch FROM finished_at) * 1000)::bigint, 0)"                               \
    " FROM rotor.rotations "

const rotor_config_t *cli_config(cli_ctx_t *ctx)
{
    if (ctx->cfg)
        return ctx->cfg;
    char err[1024] = "";
    if (config_load(ctx->config_path, &ctx->cfg, err, sizeof err) != 0) {
        fprintf(stderr, "rotor: %s\n", err[0] ? err : "cannot load the configuration");
        ctx->cfg = NULL;
        return NULL;
    }
    return ctx->cfg;
}

void cli_whoami(char *buf, size_t len)
{
    const char *user = getenv("USER");
    char host[256];
    if (!user || !*user || gethostname(host, sizeof host) != 0) {
        util_strlcpy(buf, "cli", len);
        return;
    }
    host[sizeof host - 1] = '\0';
    snprintf(buf, len, "%s@%s", user, host);
}

int cli_parse_timeout(const char *prog, const char *text, uint64_t *ms)
{
    if (util_parse_duration(text, ms) != 0) {
        fprintf(stderr, "%s: --timeout: expected a duration such as 30s or 5m, got \"%s\"\n", prog,
                text);
        return CLI_USAGE;
    }
    return 0;
}

int cli_wait_option(int ch, const char *prog, const char *arg, bool *wait, uint64_t *timeout_ms)
{
    switch (ch) {
    case 'w':
        *wait = true;
        return 1;
    case 't':
        return cli_parse_timeout(prog, arg, timeout_ms) == 0 ? 1 : CLI_USAGE;
    case 'u':
        *wait = true;
        return cli_set_until(prog, arg) == 0 ? 1 : CLI_USAGE;
    default:
        return 0;
    }
}

int64_t cli_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- Kafka ---- */

/* First line of path, trimmed. Returns a malloc'ed string or NULL (errno set). */
static char *cli_read_line(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return NULL;
    char line[1024];
    char *got = fgets(line, sizeof line, f);
    fclose(f);
    if (!got) {
        errno = ENODATA;
        return NULL;
    }
    line[strcspn(line, "\r\n \t")] = '\0';
    if (!line[0]) {
        errno = ENODATA;
        return NULL;
    }
    return util_strdup(line);
}

int cli_brokers(const rotor_config_t *cfg, char **out, char *err, size_t errlen)
{
    if (strcmp(cfg->kafka.brokers, "embedded") != 0) {
        *out = util_strdup(cfg->kafka.brokers);
        return 0;
    }
    const char *file = cfg->kafka.bootstrap_file ? cfg->kafka.bootstrap_file : "";
    *out = cli_read_line(file);
    if (!*out) {
        snprintf(err, errlen, "the embedded broker is not running (no %s); start `rotor run` first",
                 file);
        return ROTOR_EKAFKA;
    }
    return 0;
}

/* librdkafka's own log lines would repeat, in its words, what the CLI reports in one line. */
static void cli_kafka_quiet(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
    (void)rk, (void)level, (void)fac, (void)buf;
}

typedef struct {
    int done;
    rd_kafka_resp_err_t err;
} cli_delivery_t;

static void cli_on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    (void)rk, (void)opaque;
    cli_delivery_t *d = m->_private;
    if (d) {
        d->done = 1;
        d->err = m->err;
    }
}

static int cli_conf_set(rd_kafka_conf_t *conf, const char *k, const char *v, char *err,
                        size_t errlen)
{
    char errstr[512];
    if (rd_kafka_conf_set(conf, k, v, errstr, sizeof errstr) != RD_KAFKA_CONF_OK) {
        snprintf(err, errlen, "kafka.properties: %s", errstr);
        return ROTOR_ECONFIG;
    }
    return 0;
}

struct rd_kafka_s *cli_kafka_new(const rotor_config_t *cfg, const char *brokers, char *err,
                                 size_t errlen)
{
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    char timeout[32];
    snprintf(timeout, sizeof timeout, "%d", CLI_DELIVERY_MS);
    rd_kafka_conf_set_log_cb(conf, cli_kafka_quiet);
    rd_kafka_conf_set_dr_msg_cb(conf, cli_on_delivery);
    int rc = cli_conf_set(conf, "bootstrap.servers", brokers, err, errlen);
    if (!rc)
        rc = cli_conf_set(conf, "enable.idempotence", "true", err, errlen);
    if (!rc)
        rc = cli_conf_set(conf, "message.timeout.ms", timeout, err, errlen);
    if (!rc)
        rc = cli_conf_set(conf, "client.id", "rotor-cli", err, errlen);
    /* The operator's properties (TLS, SASL for Event Hubs...) come last and win. */
    cfg_kv_t *props = NULL;
    size_t nprops = 0;
    if (!rc)
        rc = config_kafka_properties(cfg, &props, &nprops, err, errlen);
    for (size_t i = 0; !rc && i < nprops; i++)
        rc = cli_conf_set(conf, props[i].key, props[i].value, err, errlen);
    config_kv_free(props, nprops);
    if (rc) {
        rd_kafka_conf_destroy(conf);
        return NULL;
    }
    char errstr[512];
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr);
    if (!rk) {
        snprintf(err, errlen, "kafka: %s", errstr);
        rd_kafka_conf_destroy(conf);
    }
    return rk;
}

/* Sends value to the commands topic and waits for the delivery report. */
static int cli_send(const rotor_config_t *cfg, const char *key, const char *value)
{
    char err[1024];
    char *brokers = NULL;
    if (cli_brokers(cfg, &brokers, err, sizeof err) != 0) {
        fprintf(stderr, "rotor: %s\n", err);
        return ROTOR_EKAFKA;
    }
    rd_kafka_t *rk = cli_kafka_new(cfg, brokers, err, sizeof err);
    if (!rk) {
        fprintf(stderr, "rotor: %s\n", err);
        free(brokers);
        return ROTOR_EKAFKA;
    }
    cli_delivery_t d = {0, RD_KAFKA_RESP_ERR_NO_ERROR};
    const char *topic = cfg->kafka.topic_commands;
    rd_kafka_resp_err_t e = rd_kafka_producev(
        rk, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_KEY(key, strlen(key)),
        RD_KAFKA_V_VALUE((void *)value, strlen(value)), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
        RD_KAFKA_V_HEADER("content-type", "application/cloudevents+json", -1),
        RD_KAFKA_V_OPAQUE(&d), RD_KAFKA_V_END);
    if (!e) {
        rd_kafka_flush(rk, CLI_DELIVERY_MS + 2000);
        e = d.done ? d.err : RD_KAFKA_RESP_ERR__TIMED_OUT;
    }
    int rc = 0;
    if (e) {
        fprintf(stderr, "rotor: cannot publish to %s at %s: %s\n", topic, brokers,
                rd_kafka_err2str(e));
        rc = ROTOR_EKAFKA;
    }
    /* Nothing is left in flight after a flush that reported, so destroy does not block long. */
    rd_kafka_destroy(rk);
    free(brokers);
    return rc;
}

int cli_publish(const rotor_config_t *cfg, const char *type, const char *subject, json_t *data,
                char *id, size_t idlen)
{
    char who[320], source[400];
    cli_whoami(who, sizeof who);
    snprintf(source, sizeof source, "/rotor/cli/%s", who);
    char *ev = event_build(type, source, subject, data, NULL);
    if (!ev) {
        fprintf(stderr, "rotor: cannot build a valid %s event (see the log line above)\n", type);
        return ROTOR_EINVALID;
    }
    /* The id is event_build's; read it back rather than assume its format. */
    json_t *root = json_loads(ev, 0, NULL);
    const char *eid = json_string_value(json_object_get(root, "id"));
    util_strlcpy(id, eid ? eid : "", idlen);
    json_decref(root);
    int rc = cli_send(cfg, subject, ev);
    free(ev);
    return rc;
}

/* ---- journal ---- */

static void cli_db_error(const char *what, PGconn *c, const PGresult *res)
{
    const char *msg = res ? PQresultErrorMessage(res) : PQerrorMessage(c);
    if (!msg || !*msg)
        msg = PQerrorMessage(c);
    int n = (int)strcspn(msg, "\n");
    fprintf(stderr, "rotor: %s: %.*s\n", what, n, msg);
}

/* Runs one statement; returns its result or NULL after printing the error. */
static PGresult *cli_query(PGconn *c, const char *what, const char *sql, int n,
                           const char *const *params)
{
    PGresult *res = PQexecParams(c, sql, n, NULL, params, NULL, NULL, 0);
    ExecStatusType st = PQresultStatus(res);
    if (st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK)
        return res;
    cli_db_error(what, c, res);
    PQclear(res);
    return NULL;
}

static int cli_schema_version(PGconn *c, int *version)
{
    PGresult *res = cli_query(c, "reading the journal",
                              "SELECT to_regclass('rotor.rotations') IS NOT NULL"
                              " AND to_regclass('rotor.schema_version') IS NOT NULL",
                              0, NULL);
    if (!res)
        return ROTOR_EDB;
    bool have = strcmp(PQgetvalue(res, 0, 0), "t") == 0;
    PQclear(res);
    *version = 0;
    if (!have)
        return 0;
    res = cli_query(c, "reading the journal",
                    "SELECT coalesce(max(version), 0) FROM rotor.schema_version", 0, NULL);
    if (!res)
        return ROTOR_EDB;
    *version = atoi(PQgetvalue(res, 0, 0));
    PQclear(res);
    return 0;
}

int cli_journal_open(const rotor_config_t *cfg, bool allow_empty, PGconn **out, int *version)
{
    char err[1024];
    char *dsn = NULL;
    const char *key = cfg->journal.dsn_file ? "journal.dsn_file" : "journal.dsn_env";
    if (config_dsn(cfg->journal.dsn_env, cfg->journal.dsn_file, key, &dsn, err, sizeof err) != 0) {
        fprintf(stderr, "rotor: %s\n", err);
        return ROTOR_ECONFIG;
    }
    /* Earlier keywords are defaults: whatever the DSN says wins (expand_dbname). */
    const char *keys[] = {"application_name", "connect_timeout", "dbname", NULL};
    const char *vals[] = {"rotor-cli", "10", dsn, NULL};
    PGconn *c = PQconnectdbParams(keys, vals, 1);
    if (PQstatus(c) != CONNECTION_OK) {
        /* libpq may quote a piece of the DSN: the daemon's redaction applies here too. */
        char *msg = pgc_redact_error(PQerrorMessage(c), keys, vals);
        fprintf(stderr, "rotor: cannot connect to the journal: %.*s\n", (int)strcspn(msg, "\n"),
                msg);
        secret_wipe(msg, strlen(msg));
        free(msg);
        secret_wipe(dsn, strlen(dsn));
        free(dsn);
        PQfinish(c);
        return ROTOR_EDB;
    }
    secret_wipe(dsn, strlen(dsn));
    free(dsn);
    int v = 0;
    if (cli_schema_version(c, &v) != 0) {
        PQfinish(c);
        return ROTOR_EDB;
    }
    if (v == 0 && !allow_empty) {
        fprintf(stderr, "rotor: the journal has no rotor schema yet: start `rotor run` once\n");
        PQfinish(c);
        return ROTOR_ENOTFOUND;
    }
    if (version)
        *version = v;
    *out = c;
    return 0;
}

static int64_t cli_i64(const PGresult *res, int row, int col)
{
    return PQgetisnull(res, row, col) ? 0 : strtoll(PQgetvalue(res, row, col), NULL, 10);
}

static void cli_rot_fill(const PGresult *res, cli_rot_t *o)
{
    memset(o, 0, sizeof *o);
    journal_rot_t *r = &o->r;
    util_strlcpy(r->id, PQgetvalue(res, 0, 0), sizeof r->id);
    util_strlcpy(r->secret, PQgetvalue(res, 0, 1), sizeof r->secret);
    rotor_stage_parse(PQgetvalue(res, 0, 2), &r->stage);
    journal_status_parse(PQgetvalue(res, 0, 3), &r->status);
    r->seq = atoi(PQgetvalue(res, 0, 4));
    r->attempt = atoi(PQgetvalue(res, 0, 5));
    rotor_slot_parse(PQgetvalue(res, 0, 6), &r->from_slot);
    rotor_slot_parse(PQgetvalue(res, 0, 7), &r->to_slot);
    r->swapped = strcmp(PQgetvalue(res, 0, 8), "t") == 0;
    util_strlcpy(r->trigger, PQgetvalue(res, 0, 9), sizeof r->trigger);
    util_strlcpy(r->request_id, PQgetvalue(res, 0, 10), sizeof r->request_id);
    util_strlcpy(r->reason, PQgetvalue(res, 0, 11), sizeof r->reason);
    util_strlcpy(r->error, PQgetvalue(res, 0, 12), sizeof r->error);
    util_strlcpy(r->traceparent, PQgetvalue(res, 0, 13), sizeof r->traceparent);
    util_strlcpy(r->version, PQgetvalue(res, 0, 14), sizeof r->version);
    util_strlcpy(r->old_version, PQgetvalue(res, 0, 15), sizeof r->old_version);
    util_strlcpy(r->actor, PQgetvalue(res, 0, 16), sizeof r->actor);
    r->next_at_ms = cli_i64(res, 0, 17);
    r->expires_at_ms = cli_i64(res, 0, 18);
    r->created_at_ms = cli_i64(res, 0, 19);
    o->updated_at_ms = cli_i64(res, 0, 20);
    o->finished_at_ms = cli_i64(res, 0, 21);
}

static int cli_rot_query(PGconn *c, const char *sql, const char *param, cli_rot_t *out)
{
    const char *params[] = {param};
    PGresult *res = cli_query(c, "reading the journal", sql, 1, params);
    if (!res)
        return ROTOR_EDB;
    int found = PQntuples(res) > 0;
    if (found)
        cli_rot_fill(res, out);
    PQclear(res);
    return found;
}

int cli_rot_get(PGconn *c, const char *id, cli_rot_t *out)
{
    return cli_rot_query(c, CLI_ROT_COLUMNS "WHERE id = $1::uuid", id, out);
}

int cli_rot_latest(PGconn *c, const char *secret, cli_rot_t *out)
{
    return cli_rot_query(c,
                         CLI_ROT_COLUMNS
                         "WHERE secret = $1 ORDER BY status IN ('pending', 'running', 'waiting',"
                         " 'failed') DESC, created_at DESC LIMIT 1",
                         secret, out);
}

int cli_rot_by_request(PGconn *c, const char *request_id, char *id, size_t idlen)
{
    const char *params[] = {request_id};
    PGresult *res = cli_query(c, "reading the journal",
                              "SELECT id FROM rotor.rotations WHERE request_id = $1 UNION"
                              " SELECT rotation_id FROM rotor.history WHERE request_id = $1",
                              1, params);
    if (!res)
        return ROTOR_EDB;
    int found = PQntuples(res) > 0;
    if (found)
        util_strlcpy(id, PQgetvalue(res, 0, 0), idlen);
    PQclear(res);
    return found;
}

int cli_rot_lookup(PGconn *c, const char *id, cli_rot_t *out)
{
    if (!util_is_uuid(id)) {
        fprintf(stderr, "rotor: \"%s\" is not a rotation id (a UUID)\n", id);
        return CLI_EXIT_ERROR;
    }
    int rc = cli_rot_get(c, id, out);
    if (rc == 0)
        fprintf(stderr, "rotor: unknown rotation %s\n", id);
    return rc == 1 ? 0 : CLI_EXIT_ERROR;
}

int cli_hist_read(PGconn *c, const char *id, int64_t after, cli_hist_t **out)
{
    char after_s[32];
    snprintf(after_s, sizeof after_s, "%" PRId64, after);
    const char *params[] = {id, after_s};
    PGresult *res = cli_query(
        c, "reading the journal history",
        "SELECT id, (extract(epoch FROM at) * 1000)::bigint, coalesce(stage, ''), outcome,"
        " coalesce(attempt, 0), coalesce(duration_ms, -1), coalesce(error, ''),"
        " coalesce(actor, ''), coalesce(request_id, '')"
        " FROM rotor.history WHERE rotation_id = $1::uuid AND id > $2::bigint ORDER BY id",
        2, params);
    if (!res)
        return ROTOR_EDB;
    int n = PQntuples(res);
    cli_hist_t *h = util_calloc(n > 0 ? (size_t)n : 1, sizeof *h);
    for (int i = 0; i < n; i++) {
        h[i].id = cli_i64(res, i, 0);
        h[i].at_ms = cli_i64(res, i, 1);
        util_strlcpy(h[i].stage, PQgetvalue(res, i, 2), sizeof h[i].stage);
        util_strlcpy(h[i].outcome, PQgetvalue(res, i, 3), sizeof h[i].outcome);
        h[i].attempt = atoi(PQgetvalue(res, i, 4));
        h[i].duration_ms = cli_i64(res, i, 5);
        util_strlcpy(h[i].error, PQgetvalue(res, i, 6), sizeof h[i].error);
        util_strlcpy(h[i].actor, PQgetvalue(res, i, 7), sizeof h[i].actor);
        util_strlcpy(h[i].request_id, PQgetvalue(res, i, 8), sizeof h[i].request_id);
    }
    PQclear(res);
    *out = h;
    return n;
}

int cli_exit_for(journal_status_t s)
{
    switch (s) {
    case RS_COMPLETED:
        return CLI_EXIT_OK;
    case RS_FAILED:
        return CLI_EXIT_FAILED;
    case RS_ROLLED_BACK:
        return CLI_EXIT_ROLLED_BACK;
    case RS_ABORTED:
        return CLI_EXIT_ABORTED;
    default:
        return -1;
    }
}

void cli_hist_print(FILE *out, const cli_hist_t *h)
{
    char at[32], dur[32] = "-", att[16] = "-";
    util_format_time(h->at_ms, at, sizeof at);
    if (h->duration_ms >= 0)
        util_format_duration((uint64_t)h->duration_ms, dur, sizeof dur);
    if (h->attempt > 0)
        snprintf(att, sizeof att, "#%d", h->attempt);
    fprintf(out, "%s  %-9s %-12s %-4s %-8s", at, h->stage[0] ? h->stage : "-", h->outcome, att,
            dur);
    if (h->actor[0])
        fprintf(out, "  by %s", h->actor);
    if (h->error[0])
        fprintf(out, "  error: %s", h->error);
    fputc('\n', out);
}

static void cli_plain_hist(void *arg, const cli_hist_t *h)
{
    (void)arg;
    cli_hist_print(stdout, h);
    fflush(stdout);
}

const cli_follow_cb_t cli_follow_plain = {cli_plain_hist, NULL, NULL};

static void cli_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* One poll: reports new history, then the row. Returns the exit code, -1 to go on. */
/* --until: the state a pipeline step waits for, or NULL to wait for the end. */
static const char *cli_until;

int cli_set_until(const char *prog, const char *state)
{
    rotor_stage_t st;
    if (strcmp(state, "awaiting-approval") != 0 && rotor_stage_parse(state, &st) != 0) {
        fprintf(stderr,
                "%s: --until expects a stage (prepare ... retire) or awaiting-approval, "
                "got \"%s\"\n",
                prog, state);
        return CLI_USAGE;
    }
    cli_until = state;
    return 0;
}

/* Whether history line h or row r means the --until state was reached. */
static bool cli_until_hist(const cli_hist_t *h)
{
    return cli_until && strcmp(h->stage, cli_until) == 0 &&
           (strcmp(h->outcome, "completed") == 0 || strcmp(h->outcome, "approved") == 0);
}

static bool cli_until_row(const cli_rot_t *r)
{
    return cli_until && strcmp(cli_until, "awaiting-approval") == 0 && r->r.status == RS_WAITING &&
           r->r.stage == STAGE_APPROVE;
}

static int cli_follow_once(PGconn *c, const char *id, int64_t *after, int min_seq,
                           const cli_follow_cb_t *cb)
{
    bool reached = false;
    cli_hist_t *h = NULL;
    int n = cli_hist_read(c, id, *after, &h);
    if (n < 0)
        return CLI_EXIT_ERROR;
    for (int i = 0; i < n; i++) {
        if (cb->on_hist)
            cb->on_hist(cb->arg, &h[i]);
        *after = h[i].id;
        reached |= cli_until_hist(&h[i]);
    }
    free(h);
    cli_rot_t r;
    int rc = cli_rot_get(c, id, &r);
    if (rc <= 0) {
        if (rc == 0)
            fprintf(stderr, "rotor: rotation %s disappeared from the journal\n", id);
        return CLI_EXIT_ERROR;
    }
    if (cb->on_row)
        cb->on_row(cb->arg, &r);
    if (reached || cli_until_row(&r)) {
        printf("reached %s\n", cli_until);
        fflush(stdout);
        return CLI_EXIT_OK;
    }
    int code = cli_exit_for(r.r.status);
    if (r.r.status == RS_FAILED && r.r.seq <= min_seq)
        code = -1; /* still the failure the retry was sent for */
    return code;
}

int cli_follow(PGconn *c, const char *id, int64_t after, int min_seq, uint64_t timeout_ms,
               const cli_follow_cb_t *cb)
{
    int64_t deadline = timeout_ms ? cli_mono_ms() + (int64_t)timeout_ms : 0;
    for (;;) {
        int code = cli_follow_once(c, id, &after, min_seq, cb);
        if (code >= 0)
            return code;
        if (deadline && cli_mono_ms() >= deadline) {
            fprintf(stderr, "rotor: timed out waiting for rotation %s\n", id);
            return CLI_EXIT_TIMEOUT;
        }
        cli_sleep_ms(CLI_POLL_MS);
    }
}

int cli_wait_request(const rotor_config_t *cfg, const char *request_id, uint64_t timeout_ms)
{
    PGconn *c = NULL;
    if (cli_journal_open(cfg, false, &c, NULL) != 0)
        return CLI_EXIT_ERROR;
    int64_t start = cli_mono_ms();
    char id[64];
    int rc;
    /* The daemon has to consume the request first: wait for it to show up in the journal. */
    while ((rc = cli_rot_by_request(c, request_id, id, sizeof id)) == 0) {
        if (timeout_ms && cli_mono_ms() - start >= (int64_t)timeout_ms) {
            fprintf(stderr, "rotor: timed out waiting for request %s to start a rotation\n",
                    request_id);
            PQfinish(c);
            return CLI_EXIT_TIMEOUT;
        }
        cli_sleep_ms(CLI_POLL_MS);
    }
    int code = CLI_EXIT_ERROR;
    if (rc > 0) {
        printf("rotation %s\n", id);
        fflush(stdout);
        uint64_t left = 0;
        if (timeout_ms) {
            int64_t spent = cli_mono_ms() - start;
            left = spent >= (int64_t)timeout_ms ? 1 : timeout_ms - (uint64_t)spent;
        }
        code = cli_follow(c, id, 0, 0, left, &cli_follow_plain);
    }
    PQfinish(c);
    return code;
}
