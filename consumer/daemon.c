/* daemon.c: `rotor run`: start-up and shutdown order, signals, and the path of one input
 * message (parse, engine or dead-letter, journal, then the offset). */
#include "daemon.h"

#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "broker.h"
#include "event.h"
#include "health.h"
#include "journal.h"
#include "kv_event.h"
#include "kafka.h"
#include "log.h"
#include "metrics.h"
#include "observe.h"
#include "owner.h"
#include "relay.h"
#include "rotation.h"
#include "schedule.h"
#include "secret.h"
#include "util.h"

#define KV_MAX_EVENTS 16 /* Event Grid delivers at most this many events in one message */

typedef struct {
    uv_loop_t loop;
    const rotor_config_t *cfg;
    broker_t *broker;
    char *brokers;
    char instance[128];
    char source[160];
    journal_t *journal;
    engine_t *engine;
    kafka_t *kafka;
    kafka_callbacks_t kafka_cbs; /* borrowed by kafka for its whole life */
    relay_t *relay;
    schedule_t *schedule;
    health_t *health;
    uv_signal_t sigint, sigterm;
    uv_timer_t retry_timer; /* re-handles a message when the journal was unavailable */
    uv_timer_t force_timer; /* bounds shutdown */
    owner_t *owner;         /* claims of the assigned partitions (fencing epochs) */
    bool rebalanced;        /* the consumer has been assigned at least once */
    bool stopping;
    int exit_code;
    /* the message being handled (one at a time) */
    kafka_msg_t *msg;
    event_t ev;
    kv_event_t kv[KV_MAX_EVENTS]; /* a Key Vault message's events, handled in order */
    int nkv, kv_next;
} daemon_t;

/* ---- ownership and readiness ----------------------------------------------------------------- */

/* The secret's commands partition is assigned here and claimed in the journal. */
static bool fence(void *arg, const char *secret, journal_fence_t *out)
{
    daemon_t *d = arg;
    if (!d->kafka)
        return false;
    return owner_fence(d->owner, kafka_partition_of(d->kafka, secret), out);
}

static bool owns(void *arg, const char *secret)
{
    journal_fence_t f;
    return fence(arg, secret, &f);
}

static void on_fenced(void *arg, const journal_fence_t *f)
{
    daemon_t *d = arg;
    owner_lost(d->owner, f);
}

static void on_ownership_changed(void *arg)
{
    daemon_t *d = arg;
    if (d->engine && !d->stopping)
        engine_rebalanced(d->engine);
}

static void on_partition_count(kafka_t *k, int32_t count, void *arg)
{
    (void)k;
    daemon_t *d = arg;
    owner_set_count(d->owner, count);
}

static int ready(void *arg, const char **reason)
{
    daemon_t *d = arg;
    if (d->stopping)
        return *reason = "shutting down", 0;
    if (!journal_ok(d->journal))
        return *reason = "journal not connected", 0;
    if (!d->rebalanced)
        return *reason = "waiting for a partition assignment", 0;
    return 1;
}

/* ---- one input message ------------------------------------------------------------------------
 */

static void handle_message(daemon_t *d);

static void message_done(daemon_t *d, const char *outcome)
{
    char labels[64];
    snprintf(labels, sizeof labels, "outcome=\"%s\"", outcome);
    metrics_count("rotor_input_messages_total", "Input messages handled, by outcome", labels, 1);
    if (d->engine)
        metrics_gauge("rotor_rotations_open", "Rotations open in this process", NULL,
                      engine_open_count(d->engine));
    kafka_msg_t *m = d->msg;
    d->msg = NULL;
    event_clear(&d->ev);
    kafka_msg_done(d->kafka, m);
}

static void on_retry_timer(uv_timer_t *t)
{
    daemon_t *d = t->data;
    if (d->msg && !d->stopping)
        handle_message(d);
}

/* The journal could not take the message's effect: keep the offset, try again shortly. */
static void retry_later(daemon_t *d)
{
    event_clear(&d->ev);
    uv_timer_start(&d->retry_timer, on_retry_timer, 1000, 0);
}

static void on_dead_lettered(void *arg, int status)
{
    daemon_t *d = arg;
    if (status != 0) {
        retry_later(d);
        return;
    }
    message_done(d, "dead-lettered");
}

/* Original headers as a JSON object of strings (headers that are not UTF-8 are dropped: the
 * value and key bytes, which matter, travel unchanged). Returns malloc'ed text or NULL. */
static char *headers_json(const kafka_msg_t *m)
{
    if (m->nheaders == 0)
        return NULL;
    json_t *o = json_object();
    for (size_t i = 0; i < m->nheaders; i++) {
        json_t *v = m->headers[i].value ? json_stringn(m->headers[i].value, m->headers[i].len)
                                        : json_string("");
        if (v)
            json_object_set_new(o, m->headers[i].name, v);
    }
    char *text = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    return text;
}

static void dead_letter(daemon_t *d, const char *why)
{
    kafka_msg_t *m = d->msg;
    /* A reason quoting the input may end in half a character: the journal would refuse it. */
    char reason[1024];
    util_strlcpy(reason, why ? why : "unusable input", sizeof reason);
    util_utf8_trim(reason);
    char part[16], off[24];
    snprintf(part, sizeof part, "%" PRId32, m->partition);
    snprintf(off, sizeof off, "%" PRId64, m->offset);
    log_warn("input.dead_lettered", "topic", m->topic, "partition", part, "offset", off, "reason",
             reason);
    char *hdrs = headers_json(m);
    int rc = journal_dead_letter(d->journal, d->cfg->kafka.topic_deadletter, m->topic, m->partition,
                                 m->offset, m->key, m->key_len, m->value, m->len, hdrs, reason,
                                 on_dead_lettered, d);
    free(hdrs);
    if (rc < 0)
        retry_later(d);
}

static void on_command_done(void *arg, int status, const char *reason)
{
    daemon_t *d = arg;
    if (status == 0)
        message_done(d, "applied");
    else if (status == ROTOR_EINVALID)
        dead_letter(d, reason);
    else
        retry_later(d);
}

/* Key Vault's events (Event Grid through Event Hubs): one message may hold several. */
static void next_kv_event(daemon_t *d);

static void on_kv_event_done(void *arg, int status, const char *reason)
{
    (void)reason;
    daemon_t *d = arg;
    if (status != 0) {
        retry_later(d); /* the whole message again: what was done is absorbed or ignored */
        return;
    }
    d->kv_next++;
    next_kv_event(d);
}

static void next_kv_event(daemon_t *d)
{
    if (d->kv_next >= d->nkv) {
        message_done(d, "applied");
        return;
    }
    engine_keyvault_event(d->engine, &d->kv[d->kv_next], on_kv_event_done, d);
}

static void handle_keyvault_message(daemon_t *d)
{
    kafka_msg_t *m = d->msg;
    char reason[512];
    int n =
        kv_event_parse(m->value, m->len, m->headers, m->nheaders, d->cfg->kafka.max_message_bytes,
                       d->kv, KV_MAX_EVENTS, reason, sizeof reason);
    if (n < 0) {
        dead_letter(d, reason);
        return;
    }
    d->nkv = n;
    d->kv_next = 0;
    next_kv_event(d);
}

static void handle_message(daemon_t *d)
{
    kafka_msg_t *m = d->msg;
    char reason[512];
    if (d->cfg->kafka.topic_keyvault && strcmp(m->topic, d->cfg->kafka.topic_keyvault) == 0) {
        handle_keyvault_message(d);
        return;
    }
    if (event_parse(m->value, m->len, m->headers, m->nheaders, d->cfg->kafka.max_message_bytes,
                    &d->ev, reason, sizeof reason) < 0) {
        dead_letter(d, reason);
        return;
    }
    /* The Kafka key must be the managed secret: it is what keeps a secret's events in order. */
    if (d->ev.subject &&
        (m->key_len != strlen(d->ev.subject) || memcmp(m->key, d->ev.subject, m->key_len) != 0)) {
        snprintf(reason, sizeof reason, "Kafka key does not match the event subject \"%.128s\"",
                 d->ev.subject);
        event_clear(&d->ev);
        dead_letter(d, reason);
        return;
    }
    engine_command(d->engine, &d->ev, on_command_done, d);
}

static void on_message(kafka_t *k, kafka_msg_t *msg, void *arg)
{
    (void)k;
    daemon_t *d = arg;
    d->msg = msg;
    if (d->stopping)
        return; /* not committed: handled again after the restart */
    handle_message(d);
}

/* ---- Kafka callbacks ------------------------------------------------------------------------- */

static void on_delivery(kafka_t *k, void *opaque, int err, const char *reason, void *arg)
{
    (void)k;
    daemon_t *d = arg;
    if (d->relay)
        relay_delivered(d->relay, opaque, err, reason);
}

static void on_rebalance(kafka_t *k, const int32_t *partitions, int n, int assigned, void *arg)
{
    daemon_t *d = arg;
    d->rebalanced = true;
    char count[16];
    snprintf(count, sizeof count, "%d", n);
    log_info(assigned ? "kafka.assigned" : "kafka.revoked", "partitions", count);
    /* Ownership follows the claims (owner.c): a revoke lets go at once, an assignment once its
     * claim is in the journal; both end in engine_rebalanced. The count may have changed too. */
    owner_assign(d->owner, partitions, n, assigned != 0);
    kafka_meta_refresh(k);
}

static void close_rest(daemon_t *d);

static void on_kafka_closed(kafka_t *k, void *arg)
{
    (void)k;
    daemon_t *d = arg;
    close_rest(d);
}

/* ---- shutdown ------------------------------------------------------------------------------ */

static void on_walk_close(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

static void close_rest(daemon_t *d)
{
    owner_stop(d->owner);
    relay_stop(d->relay);
    d->relay = NULL;
    schedule_stop(d->schedule);
    d->schedule = NULL;
    health_stop(d->health);
    d->health = NULL;
    if (d->engine) {
        engine_free(d->engine);
        d->engine = NULL;
    }
    journal_close(d->journal);
    d->journal = NULL;
    uv_close((uv_handle_t *)&d->sigint, NULL);
    uv_close((uv_handle_t *)&d->sigterm, NULL);
    uv_close((uv_handle_t *)&d->retry_timer, NULL);
    uv_close((uv_handle_t *)&d->force_timer, NULL);
    log_info("rotor.stopped");
}

static void on_engine_stopped(void *arg)
{
    daemon_t *d = arg;
    if (d->kafka) {
        relay_kick(d->relay); /* publish what the last writes queued */
        kafka_stop(d->kafka, d->cfg->daemon.shutdown_timeout_ms / 2);
    } else {
        close_rest(d);
    }
}

static void on_force(uv_timer_t *t)
{
    (void)t;
    log_error("rotor.shutdown_timeout", "note", "graceful shutdown took too long; exiting");
    _exit(1);
}

static void shutdown_begin(daemon_t *d, const char *why)
{
    if (d->stopping)
        return;
    d->stopping = true;
    log_info("rotor.stopping", "reason", why);
    uv_timer_stop(&d->retry_timer);
    /* The hard bound: whatever happens below, the process is gone by then. */
    uv_timer_start(&d->force_timer, on_force, d->cfg->daemon.shutdown_timeout_ms + 2000, 0);
    uv_unref((uv_handle_t *)&d->force_timer);
    if (d->engine)
        engine_stop(d->engine, d->cfg->daemon.shutdown_timeout_ms / 2, on_engine_stopped, d);
    else
        on_engine_stopped(d);
}

static void on_signal(uv_signal_t *s, int signum)
{
    daemon_t *d = s->data;
    shutdown_begin(d, signum == SIGINT ? "SIGINT" : "SIGTERM");
}

/* ---- start-up ------------------------------------------------------------------------------ */

static void fail(daemon_t *d, const char *what, const char *reason)
{
    log_error("rotor.start_failed", "step", what, "error", reason);
    d->exit_code = 1;
    shutdown_begin(d, "start-up failed");
}

static void on_engine_ready(engine_t *e, int status, const char *reason, void *arg)
{
    (void)e;
    daemon_t *d = arg;
    if (status != 0) {
        fail(d, "engine", reason);
        return;
    }
    d->kafka_cbs = (kafka_callbacks_t){on_message, on_delivery, on_rebalance, on_kafka_closed, d};
    char err[512];
    if (kafka_start(&d->loop, d->cfg, d->brokers, &d->kafka_cbs, &d->kafka, err, sizeof err) < 0) {
        fail(d, "kafka", err);
        return;
    }
    observe_load_secrets(d->journal, d->cfg); /* the expiry gauges are right after a restart */
    kafka_meta_on_count(d->kafka, on_partition_count, d);
    relay_start(&d->loop, d->journal, d->kafka, &d->relay);
    journal_on_outbox(d->journal, relay_kick, d->relay);
    schedule_start(&d->loop, d->cfg, d->journal, d->engine, d->source, owns, d, &d->schedule);
    if (d->cfg->http.listen && d->cfg->http.listen[0]) {
        int rc = health_start(&d->loop, d->cfg->http.listen, ready, d, &d->health);
        if (rc < 0) {
            fail(d, "http", rotor_strerror(rc));
            return;
        }
        char port[16];
        snprintf(port, sizeof port, "%d", health_port(d->health));
        log_info("http.listening", "listen", d->cfg->http.listen, "port", port);
    }
    log_info("rotor.started", "instance", d->instance, "brokers", d->brokers);
}

static void on_journal_open(journal_t *j, int status, const char *reason, void *arg)
{
    (void)j;
    daemon_t *d = arg;
    if (status != 0) {
        fail(d, "journal", reason);
        return;
    }
    d->owner = owner_new(&d->loop, d->journal, on_ownership_changed, d);
    engine_opts_t opts = {&d->loop, d->cfg, d->journal, d->source, owns, d, fence, on_fenced};
    char err[512];
    if (engine_start(&opts, on_engine_ready, d, &d->engine, err, sizeof err) < 0) {
        d->engine = NULL;
        fail(d, "engine", err);
    }
}

static int start_broker(daemon_t *d)
{
    if (strcmp(d->cfg->kafka.brokers, "embedded") != 0) {
        d->brokers = util_strdup(d->cfg->kafka.brokers);
        return 0;
    }
    char err[512];
    if (broker_start(d->cfg, &d->broker, err, sizeof err) < 0) {
        log_error("rotor.start_failed", "step", "embedded broker", "error", err);
        return ROTOR_EKAFKA;
    }
    d->brokers = util_strdup(broker_bootstrap(d->broker));
    log_info("kafka.embedded_broker", "bootstrap", d->brokers, "bootstrap_file",
             d->cfg->kafka.bootstrap_file ? d->cfg->kafka.bootstrap_file : "", "note",
             "in-memory broker for local runs; production uses a Kafka cluster or "
             "Azure Event Hubs");
    return 0;
}

int daemon_run(const rotor_config_t *cfg)
{
    log_level_t level = LOG_INFO;
    if (cfg->log.level)
        log_level_parse(cfg->log.level, &level);
    log_init(level, NULL);
    signal(SIGPIPE, SIG_IGN);

    daemon_t *d = util_calloc(1, sizeof *d);
    d->cfg = cfg;
    const char *inst = getenv("ROTOR_INSTANCE");
    if (inst && *inst)
        util_strlcpy(d->instance, inst, sizeof d->instance);
    else if (gethostname(d->instance, sizeof d->instance) != 0)
        util_strlcpy(d->instance, "rotor", sizeof d->instance);
    snprintf(d->source, sizeof d->source, "/rotor/%s", d->instance);
    uv_loop_init(&d->loop);
    uv_signal_init(&d->loop, &d->sigint);
    uv_signal_init(&d->loop, &d->sigterm);
    d->sigint.data = d->sigterm.data = d;
    uv_signal_start(&d->sigint, on_signal, SIGINT);
    uv_signal_start(&d->sigterm, on_signal, SIGTERM);
    uv_timer_init(&d->loop, &d->retry_timer);
    uv_timer_init(&d->loop, &d->force_timer);
    d->retry_timer.data = d->force_timer.data = d;

    log_info("rotor.starting", "version", ROTOR_VERSION, "config", cfg->path ? cfg->path : "");
    char *dsn = NULL;
    char err[512];
    if (start_broker(d) < 0) {
        d->exit_code = 1;
        close_rest(d);
    } else if (config_dsn(cfg->journal.dsn_env, cfg->journal.dsn_file, "journal", &dsn, err,
                          sizeof err) < 0) {
        log_error("rotor.start_failed", "step", "journal", "error", err);
        d->exit_code = 1;
        close_rest(d);
    } else if (journal_open(&d->loop, dsn, d->instance, on_journal_open, d, &d->journal) < 0) {
        log_error("rotor.start_failed", "step", "journal", "error", "cannot start connecting");
        d->exit_code = 1;
        close_rest(d);
    }
    if (dsn) {
        secret_wipe(dsn, strlen(dsn));
        free(dsn);
    }

    uv_run(&d->loop, UV_RUN_DEFAULT);
    /* Anything a module forgot to close would keep the loop alive; close it rather than hang. */
    uv_walk(&d->loop, on_walk_close, NULL);
    uv_run(&d->loop, UV_RUN_DEFAULT);
    int closed = uv_loop_close(&d->loop);
    if (closed != 0)
        log_warn("rotor.loop_not_closed", "error", uv_strerror(closed));
    if (d->kafka)
        kafka_free(d->kafka);
    if (d->broker)
        broker_stop(d->broker);
    owner_free(d->owner);
    metrics_reset();
    int code = d->exit_code;
    free(d->brokers);
    free(d);
    return code;
}
