/* daemon.c: `rotor run`: start-up and shutdown order, signals, and the path of each input
 * message (parse, engine or dead-letter, journal, then the offset). Messages are handled
 * concurrently, each with its own state (inflight_t); kafka.c keeps one key's messages in order. */
#include "daemon.h"

#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "backoff.h"
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
#define RETRY_MS 1000    /* a command whose effect the journal could not take is tried again */
/* A Key Vault event whose vault does not answer is tried this many times, with a
 * backoff from KV_BACKOFF_MS, then dead-lettered with the reason and skipped: it is a trigger
 * that Key Vault repeats (near-expiry daily) and rotor's own schedule covers, while the offsets
 * behind it must move on. */
#define KV_MAX_ATTEMPTS 3
#define KV_BACKOFF_MS 1000
#define KV_BACKOFF_MAX_MS 8000
/* Added to a forwarded command: the partition it came from (see forward_to_owner). */
#define FORWARDED_HEADER "rotor-forwarded-from"

typedef struct daemon_s daemon_t;

/* One input message being handled: its parse results and retry state. Lives until the message is
 * done; a callback the engine or the journal still owes keeps it alive after Kafka closed. */
typedef struct inflight_s {
    daemon_t *d;
    struct inflight_s *prev, *next;
    kafka_msg_t *msg; /* NULL once Kafka has closed and freed it */
    event_t ev;
    kv_event_t *kv; /* a Key Vault message's events (malloc'ed), handled in order */
    int nkv, kv_next;
    int attempts;      /* failed attempts of a Key Vault message */
    char *skip_reason; /* set once a Key Vault message is to be dead-lettered and skipped */
    uv_timer_t retry;
    bool timer_inited;
    bool retry_logged; /* a retry is logged once per message, with its first reason */
} inflight_t;

struct daemon_s {
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
    uv_timer_t force_timer; /* bounds shutdown */
    owner_t *owner;         /* claims of the assigned partitions (fencing epochs) */
    bool rebalanced;        /* the consumer has been assigned at least once */
    bool stopping;
    int exit_code;
    inflight_t *inflight;         /* every message being handled */
    kv_event_t kv[KV_MAX_EVENTS]; /* parse scratch: a message keeps only the events it holds */
};

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

static bool claim_pending(void *arg, const char *secret, int32_t *part)
{
    daemon_t *d = arg;
    if (!d->kafka)
        return false;
    *part = kafka_partition_of(d->kafka, secret);
    return *part < 0 || owner_claim_pending(d->owner, *part);
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

static void handle_message(inflight_t *f);

static void inflight_on_closed(uv_handle_t *h)
{
    free(h->data);
}

static void inflight_free(inflight_t *f)
{
    daemon_t *d = f->d;
    if (f->prev)
        f->prev->next = f->next;
    else
        d->inflight = f->next;
    if (f->next)
        f->next->prev = f->prev;
    event_clear(&f->ev);
    free(f->kv);
    free(f->skip_reason);
    if (f->timer_inited)
        uv_close((uv_handle_t *)&f->retry, inflight_on_closed); /* frees f */
    else
        free(f);
}

static void message_done(inflight_t *f, const char *outcome)
{
    daemon_t *d = f->d;
    char labels[64];
    snprintf(labels, sizeof labels, "outcome=\"%s\"", outcome);
    metrics_count("rotor_input_messages_total", "Input messages handled, by outcome", labels, 1);
    if (d->engine)
        metrics_gauge("rotor_rotations_open", "Rotations open in this process", NULL,
                      engine_open_count(d->engine));
    if (f->msg)
        kafka_msg_done(d->kafka, f->msg);
    inflight_free(f);
}

static void on_retry_timer(uv_timer_t *t)
{
    inflight_t *f = t->data;
    if (f->msg && !f->d->stopping)
        handle_message(f);
}

/* The journal (or the vault) could not take the message's effect: keep the offset, try again.
 * Only this message's lane waits; other keys and partitions go on. A message may wait here for
 * long (an owner that never comes): its first retry is logged with the reason, and the age of a
 * partition's oldest undone message is a gauge (rotor_consumer_oldest_undone_seconds). */
static void retry_later(inflight_t *f, uint64_t delay_ms, int status, const char *reason)
{
    if (f->msg && !f->retry_logged) {
        char part[16], off[24];
        snprintf(part, sizeof part, "%" PRId32, f->msg->partition);
        snprintf(off, sizeof off, "%" PRId64, f->msg->offset);
        log_warn("input.retrying", "topic", f->msg->topic, "partition", part, "offset", off,
                 "secret", f->ev.subject, "error", rotor_strerror(status), "reason", reason);
        f->retry_logged = true;
    }
    event_clear(&f->ev);
    if (!f->msg || f->d->stopping) {
        if (!f->msg)
            inflight_free(f); /* Kafka is gone: nothing to retry for */
        return;               /* stopping: not committed, handled again after the restart */
    }
    if (!f->timer_inited) {
        uv_timer_init(&f->d->loop, &f->retry);
        f->retry.data = f;
        f->timer_inited = true;
    }
    uv_timer_start(&f->retry, on_retry_timer, delay_ms, 0);
}

static void on_dead_lettered(void *arg, int status)
{
    inflight_t *f = arg;
    if (status != 0) {
        retry_later(f, RETRY_MS, status, "the dead letter could not be queued");
        return;
    }
    message_done(f, f->skip_reason ? "skipped" : "dead-lettered");
}

/* Original headers as a JSON object of strings (headers that are not UTF-8 are dropped: the
 * value and key bytes, which matter, travel unchanged). Returns malloc'ed text or NULL. */
static json_t *headers_object(const kafka_msg_t *m)
{
    json_t *o = json_object();
    for (size_t i = 0; i < m->nheaders; i++) {
        json_t *v = m->headers[i].value ? json_stringn(m->headers[i].value, m->headers[i].len)
                                        : json_string("");
        if (v)
            json_object_set_new(o, m->headers[i].name, v);
    }
    return o;
}

static char *headers_json(const kafka_msg_t *m)
{
    if (m->nheaders == 0)
        return NULL;
    json_t *o = headers_object(m);
    char *text = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    return text;
}

static void dead_letter(inflight_t *f, const char *why)
{
    daemon_t *d = f->d;
    kafka_msg_t *m = f->msg;
    if (!m) {
        inflight_free(f);
        return;
    }
    /* A reason quoting the input may hold any bytes, or end in half a character: the journal
     * would refuse it. */
    char reason[1024];
    util_utf8_sanitize(reason, sizeof reason, why ? why : "unusable input");
    char part[16], off[24];
    snprintf(part, sizeof part, "%" PRId32, m->partition);
    snprintf(off, sizeof off, "%" PRId64, m->offset);
    log_warn("input.dead_lettered", "topic", m->topic, "partition", part, "offset", off, "reason",
             reason);
    char *hdrs = headers_json(m);
    int rc = journal_dead_letter(d->journal, d->cfg->kafka.topic_deadletter, m->topic, m->partition,
                                 m->offset, m->key, m->key_len, m->value, m->len, hdrs, reason,
                                 on_dead_lettered, f);
    free(hdrs);
    if (rc < 0)
        retry_later(f, RETRY_MS, rc, "the dead letter could not be queued");
}

static void on_command_done(void *arg, int status, const char *reason)
{
    inflight_t *f = arg;
    if (!f->msg)
        inflight_free(f);
    else if (status == 0)
        message_done(f, "applied");
    else if (status == ROTOR_EINVALID)
        dead_letter(f, reason);
    else
        retry_later(f, RETRY_MS, status, reason);
}

/* Key Vault's events (Event Grid through Event Hubs): one message may hold several. */
static void next_kv_event(inflight_t *f);

/* Gives up on a Key Vault message after KV_MAX_ATTEMPTS: dead-lettered with the reason (where an
 * operator looks for input rotor did not use), counted, and its offset goes on. */
static void skip_kv_message(inflight_t *f, const char *reason)
{
    char why[512];
    snprintf(why, sizeof why, "%s after %d attempts", reason ? reason : "vault unreachable",
             f->attempts);
    f->skip_reason = util_strdup(why);
    metrics_count("rotor_keyvault_events_skipped_total",
                  "Key Vault event messages given up on after their retries (dead-lettered)", NULL,
                  1);
    log_warn("keyvault.event.skipped", "vault", f->kv[f->kv_next].vault, "name",
             f->kv[f->kv_next].name, "type", f->kv[f->kv_next].type, "reason", why);
    dead_letter(f, f->skip_reason);
}

static void on_kv_event_done(void *arg, int status, const char *reason)
{
    inflight_t *f = arg;
    if (!f->msg) {
        inflight_free(f);
        return;
    }
    /* Events of the message already handled are not handled again: kv_next stays. A journal
     * outage is waited out as for commands; a vault that does not answer is given up on. */
    if (status == ROTOR_ESTORE) {
        if (++f->attempts >= KV_MAX_ATTEMPTS)
            skip_kv_message(f, reason);
        else
            retry_later(f, backoff_delay(f->attempts, KV_BACKOFF_MS, KV_BACKOFF_MAX_MS, 0), status,
                        reason);
        return;
    }
    if (status != 0) {
        retry_later(f, RETRY_MS, status, reason);
        return;
    }
    f->kv_next++;
    next_kv_event(f);
}

static void next_kv_event(inflight_t *f)
{
    if (f->kv_next >= f->nkv) {
        message_done(f, "applied");
        return;
    }
    engine_keyvault_event(f->d->engine, &f->kv[f->kv_next], on_kv_event_done, f);
}

static void handle_keyvault_message(inflight_t *f)
{
    daemon_t *d = f->d;
    if (f->skip_reason) {
        dead_letter(f, f->skip_reason); /* the dead letter itself failed before */
        return;
    }
    if (f->kv) {
        next_kv_event(f); /* a retry: go on from the event that failed */
        return;
    }
    kafka_msg_t *m = f->msg;
    char reason[512];
    int n =
        kv_event_parse(m->value, m->len, m->headers, m->nheaders, d->cfg->kafka.max_message_bytes,
                       d->kv, KV_MAX_EVENTS, reason, sizeof reason);
    if (n < 0) {
        dead_letter(f, reason);
        return;
    }
    /* Only the events the message holds: a message waiting in memory stays small. */
    f->kv = util_calloc(n > 0 ? (size_t)n : 1, sizeof *f->kv);
    memcpy(f->kv, d->kv, (size_t)n * sizeof *f->kv);
    f->nkv = n;
    f->kv_next = 0;
    next_kv_event(f);
}

static void on_forwarded(void *arg, int status)
{
    inflight_t *f = arg;
    if (!f->msg) {
        inflight_free(f);
        return;
    }
    if (status != 0) {
        retry_later(f, RETRY_MS, status, "the command could not be forwarded");
        return;
    }
    char from[16], to[16], off[24];
    snprintf(from, sizeof from, "%" PRId32, f->msg->partition);
    snprintf(to, sizeof to, "%" PRId32, kafka_partition_of(f->d->kafka, f->ev.subject));
    snprintf(off, sizeof off, "%" PRId64, f->msg->offset);
    log_info("input.forwarded", "secret", f->ev.subject, "from", from, "to", to, "offset", off);
    message_done(f, "forwarded");
}

/* A secret's owner is whoever holds the commands partition murmur2(secret) maps to (rotor's own
 * producer and the Java client partition so). Other producers (kcat's and librdkafka's default
 * consistent_random, Go and Python clients) may put the command elsewhere, where it would wait
 * for an ownership this process never gets. Such a command goes, unchanged (value, key,
 * headers), through the outbox to the commands topic, which rotor's producer puts on the owner's
 * partition; the owner dedupes by event id as usual. Returns whether it took the message. */
static bool forward_to_owner(inflight_t *f)
{
    daemon_t *d = f->d;
    kafka_msg_t *m = f->msg;
    if (!f->ev.subject || strcmp(m->topic, d->cfg->kafka.topic_commands) != 0)
        return false;
    int32_t to = kafka_partition_of(d->kafka, f->ev.subject);
    if (to < 0 || to == m->partition)
        return false; /* the count is not known yet: handled here, retried until it is */
    /* Forwarded once only: if it still lands elsewhere (an operator's partitioner property, a
     * count not yet seen by the producer), it waits here, logged as a retry, rather than going
     * round the topic. */
    for (size_t i = 0; i < m->nheaders; i++) {
        if (strcmp(m->headers[i].name, FORWARDED_HEADER) == 0)
            return false;
    }
    json_t *value = json_stringn(m->value, m->len);
    if (!value) {
        dead_letter(f, "cannot be forwarded to the secret's partition: the value is not UTF-8");
        return true;
    }
    char from[16];
    snprintf(from, sizeof from, "%" PRId32, m->partition);
    json_t *hdrs = headers_object(m);
    json_object_set_new(hdrs, FORWARDED_HEADER, json_string(from));
    json_t *out = json_pack("[{s:s, s:s, s:o, s:o}]", "topic", d->cfg->kafka.topic_commands, "key",
                            f->ev.subject, "value", value, "headers", hdrs);
    char *text = json_dumps(out, JSON_COMPACT);
    json_decref(out);
    int rc = journal_outbox_add(d->journal, text, on_forwarded, f);
    free(text);
    if (rc < 0)
        retry_later(f, RETRY_MS, rc, "the command could not be forwarded");
    return true;
}

static void handle_message(inflight_t *f)
{
    daemon_t *d = f->d;
    kafka_msg_t *m = f->msg;
    char reason[512];
    if (d->cfg->kafka.topic_keyvault && strcmp(m->topic, d->cfg->kafka.topic_keyvault) == 0) {
        handle_keyvault_message(f);
        return;
    }
    if (event_parse(m->value, m->len, m->headers, m->nheaders, d->cfg->kafka.max_message_bytes,
                    &f->ev, reason, sizeof reason) < 0) {
        dead_letter(f, reason);
        return;
    }
    /* The Kafka key must be the managed secret: it is what keeps a secret's events in order. */
    if (f->ev.subject &&
        (m->key_len != strlen(f->ev.subject) || memcmp(m->key, f->ev.subject, m->key_len) != 0)) {
        snprintf(reason, sizeof reason, "Kafka key does not match the event subject \"%.128s\"",
                 f->ev.subject);
        event_clear(&f->ev);
        dead_letter(f, reason);
        return;
    }
    if (forward_to_owner(f))
        return;
    engine_command(d->engine, &f->ev, on_command_done, f);
}

static void on_message(kafka_t *k, kafka_msg_t *msg, void *arg)
{
    (void)k;
    daemon_t *d = arg;
    if (d->stopping)
        return; /* not done, so not committed: handled again after the restart */
    inflight_t *f = util_calloc(1, sizeof *f);
    f->d = d;
    f->msg = msg;
    f->next = d->inflight;
    if (d->inflight)
        d->inflight->prev = f;
    d->inflight = f;
    handle_message(f);
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
    /* Kafka has freed the messages still here; a callback still owed finds msg NULL. */
    for (inflight_t *f = d->inflight; f; f = f->next) {
        f->msg = NULL;
        if (f->timer_inited)
            uv_timer_stop(&f->retry);
    }
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
    for (inflight_t *f = d->inflight; f; f = f->next) {
        if (f->timer_inited)
            uv_timer_stop(&f->retry);
    }
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
    engine_opts_t opts = {&d->loop, d->cfg, d->journal, d->source,    owns,
                          d,        fence,  on_fenced,  claim_pending};
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
    char host[256];
    if (!(inst && *inst) && gethostname(host, sizeof host) == 0) {
        host[sizeof host - 1] = '\0';
        inst = host;
    }
    util_instance_name(inst && *inst ? inst : "rotor", d->instance, sizeof d->instance);
    snprintf(d->source, sizeof d->source, "/rotor/%s", d->instance);
    uv_loop_init(&d->loop);
    uv_signal_init(&d->loop, &d->sigint);
    uv_signal_init(&d->loop, &d->sigterm);
    d->sigint.data = d->sigterm.data = d;
    uv_signal_start(&d->sigint, on_signal, SIGINT);
    uv_signal_start(&d->sigterm, on_signal, SIGTERM);
    uv_timer_init(&d->loop, &d->force_timer);
    d->force_timer.data = d;

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
    /* Messages whose callback never came (the engine and journal are gone): their timers were
     * closed by the walk above, so the memory can go. */
    while (d->inflight) {
        inflight_t *f = d->inflight;
        d->inflight = f->next;
        event_clear(&f->ev);
        free(f->kv);
        free(f->skip_reason);
        free(f);
    }
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
