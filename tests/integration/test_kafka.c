/* test_kafka.c: kafka.c on a uv loop against the embedded broker (broker.c), and kcat interop. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <spawn.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>

#include "testsrv.h"
#include "broker.h"
#include "kafka.h"
#include "log.h"
#include "metrics.h"
#include "util.h"

extern char **environ;

#define N_EVENTS 20
#define N_KEYS 50
#define MAX_RECV 4096
#define MAX_HELD 1024

typedef struct {
    char key[64];
    char value[64];
    int32_t partition;
    int64_t offset;
    char idx_header[16];
    bool null_header_seen;
} recv_t;

typedef struct ctx_s {
    uv_loop_t loop;
    uv_timer_t guard; /* wakes uv_run so run_until can look at the clock */
    uv_timer_t done_later;
    kafka_callbacks_t cbs;
    kafka_t *k;
    kafka_msg_t *held[MAX_HELD]; /* handed over, not yet done */
    int outstanding;
    recv_t recv[MAX_RECV];
    int nrecv;
    int hold_at; /* stop acknowledging from this message on (0: acknowledge all) */
    int nkept;   /* messages so held */
    bool (*keep)(struct ctx_s *c, const kafka_msg_t *m); /* messages on_done_later keeps */
    int delivered[MAX_RECV];
    int ndelivered;
    int ndelivery_errors;
    int assigned;
    int nrevoked;
    bool closed;
    rd_kafka_t *member; /* another member of the group, polled by the guard timer */
} ctx_t;

typedef struct {
    rotor_config_t cfg;
    broker_t *broker;
    char dir[64];
    char bootstrap_file[128];
    cfg_kv_t props[2];
} fixture_t;

/* ---- fixture ---- */

static int setup(void **state)
{
    fixture_t *f = util_calloc(1, sizeof *f);
    snprintf(f->dir, sizeof f->dir, "/tmp/rotor-kafka-test.XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->bootstrap_file, sizeof f->bootstrap_file, "%s/run/bootstrap", f->dir);
    f->cfg.kafka.brokers = "embedded";
    f->cfg.kafka.group = "rotor-test";
    f->cfg.kafka.topic_commands = "rotor.commands";
    f->cfg.kafka.topic_events = "rotor.events";
    f->cfg.kafka.topic_deadletter = "rotor.deadletter";
    f->cfg.kafka.bootstrap_file = f->bootstrap_file;
    f->cfg.kafka.partitions = 3;
    f->cfg.kafka.max_message_bytes = 1 << 20;
    f->props[0] = (cfg_kv_t){"session.timeout.ms", "4000"};
    f->props[1] = (cfg_kv_t){"heartbeat.interval.ms", "500"};
    f->cfg.kafka.properties = f->props;
    f->cfg.kafka.nproperties = 2;
    char err[256] = "";
    int rc = broker_start(&f->cfg, &f->broker, err, sizeof err);
    if (rc)
        fail_msg("broker_start: %s", err);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture_t *f = *state;
    broker_stop(f->broker);
    /* broker_stop removes the bootstrap file; the directory it made stays for us to remove. */
    char path[160];
    snprintf(path, sizeof path, "%s/run", f->dir);
    assert_int_equal(access(f->bootstrap_file, F_OK), -1);
    assert_int_equal(rmdir(path), 0);
    assert_int_equal(rmdir(f->dir), 0);
    free(f);
    /* Every librdkafka handle, including the broker's, must be gone: nothing leaks. */
    assert_int_equal(rd_kafka_wait_destroyed(5000), 0);
    return 0;
}

/* ---- callbacks ---- */

/* Acknowledges every message handed over, except those the test keeps. */
static void on_done_later(uv_timer_t *t)
{
    ctx_t *c = t->data;
    int kept = 0;
    for (int i = 0; i < c->outstanding; i++) {
        kafka_msg_t *m = c->held[i];
        if (c->keep && c->keep(c, m)) {
            c->held[kept++] = m;
            continue;
        }
        kafka_msg_done(c->k, m);
    }
    c->outstanding = kept;
}

static void ack(ctx_t *c, kafka_msg_t *m)
{
    for (int i = 0; i < c->outstanding; i++) {
        if (c->held[i] == m) {
            c->held[i] = c->held[--c->outstanding];
            kafka_msg_done(c->k, m);
            return;
        }
    }
    fail_msg("not held");
}

static void on_message(kafka_t *k, kafka_msg_t *msg, void *arg)
{
    ctx_t *c = arg;
    (void)k;
    /* One message of a (partition, key) at a time: its lane waits for kafka_msg_done. */
    for (int i = 0; i < c->outstanding; i++) {
        assert_false(c->held[i]->partition == msg->partition &&
                     c->held[i]->key_len == msg->key_len &&
                     memcmp(c->held[i]->key, msg->key, msg->key_len) == 0 &&
                     strcmp(c->held[i]->topic, msg->topic) == 0);
    }
    assert_true(c->nrecv < MAX_RECV);
    assert_true(c->outstanding < MAX_HELD);
    recv_t *r = &c->recv[c->nrecv++];
    snprintf(r->key, sizeof r->key, "%.*s", (int)msg->key_len, (const char *)msg->key);
    snprintf(r->value, sizeof r->value, "%.*s", (int)msg->len, (const char *)msg->value);
    r->partition = msg->partition;
    for (size_t i = 0; i < msg->nheaders; i++) {
        if (strcmp(msg->headers[i].name, "idx") == 0)
            snprintf(r->idx_header, sizeof r->idx_header, "%.*s", (int)msg->headers[i].len,
                     (const char *)msg->headers[i].value);
        if (strcmp(msg->headers[i].name, "empty") == 0 && msg->headers[i].value == NULL)
            r->null_header_seen = true;
    }
    r->offset = msg->offset;
    if (c->hold_at && c->nrecv >= c->hold_at) {
        c->nkept++; /* keep it: never acknowledged (freed by kafka_stop) */
        return;
    }
    c->held[c->outstanding++] = msg;
    /* Acknowledge on a later iteration, as the journal would. */
    if (!uv_is_active((uv_handle_t *)&c->done_later))
        uv_timer_start(&c->done_later, on_done_later, 2, 0);
}

static void on_delivery(kafka_t *k, void *opaque, int err, const char *reason, void *arg)
{
    ctx_t *c = arg;
    (void)k;
    if (err) {
        c->ndelivery_errors++;
        print_message("delivery failed: %s\n", reason);
        return;
    }
    intptr_t i = (intptr_t)opaque;
    assert_true(i >= 0 && i < MAX_RECV);
    c->delivered[i]++;
    c->ndelivered++;
}

static void on_rebalance(kafka_t *k, const int32_t *parts, int n, int assigned, void *arg)
{
    ctx_t *c = arg;
    (void)k;
    for (int i = 0; i < n; i++)
        assert_true(parts[i] >= 0 && parts[i] < 3);
    c->assigned += assigned ? n : -n;
    if (!assigned)
        c->nrevoked++;
}

/* kafka has freed the messages still held (kafka.h): forget them, as daemon.c does, and cancel
 * their acknowledgement. In UV_RUN_ONCE libuv runs due timers again after the close callbacks,
 * so a pending done_later would otherwise hand freed messages to kafka_msg_done. */
static void on_closed(kafka_t *k, void *arg)
{
    ctx_t *c = arg;
    assert_ptr_equal(k, c->k);
    c->closed = true;
    c->outstanding = 0;
    uv_timer_stop(&c->done_later);
}

/* ---- loop helpers ---- */

static void on_guard(uv_timer_t *t)
{
    ctx_t *c = t->data;
    rd_kafka_message_t *m;
    while (c->member && (m = rd_kafka_consumer_poll(c->member, 0)) != NULL)
        rd_kafka_message_destroy(m);
}

static void ctx_init(ctx_t *c)
{
    memset(c, 0, sizeof *c);
    assert_int_equal(uv_loop_init(&c->loop), 0);
    uv_timer_init(&c->loop, &c->guard);
    uv_timer_init(&c->loop, &c->done_later);
    c->done_later.data = c;
    c->guard.data = c;
    uv_timer_start(&c->guard, on_guard, 10, 10);
    c->cbs = (kafka_callbacks_t){on_message, on_delivery, on_rebalance, on_closed, c};
}

static void ctx_start(ctx_t *c, fixture_t *f)
{
    char err[256] = "";
    int rc = kafka_start(&c->loop, &f->cfg, broker_bootstrap(f->broker), &c->cbs, &c->k, err,
                         sizeof err);
    if (rc)
        fail_msg("kafka_start: %s", err);
}

/* Runs the loop until cond holds or timeout_ms passes; returns cond. */
static bool run_until(ctx_t *c, bool (*cond)(ctx_t *), uint64_t timeout_ms)
{
    uint64_t end = uv_now(&c->loop) + timeout_ms;
    while (!cond(c) && uv_now(&c->loop) < end)
        uv_run(&c->loop, UV_RUN_ONCE);
    return cond(c);
}

static bool is_closed(ctx_t *c)
{
    return c->closed;
}

static void ctx_stop(ctx_t *c)
{
    kafka_stop(c->k, 10000);
    assert_true(run_until(c, is_closed, 15000));
    kafka_free(c->k);
    c->k = NULL;
    uv_close((uv_handle_t *)&c->guard, NULL);
    uv_close((uv_handle_t *)&c->done_later, NULL);
    uv_run(&c->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&c->loop), 0);
}

static int target;
static bool got_target(ctx_t *c)
{
    return c->nrecv >= target;
}
static bool delivered_target(ctx_t *c)
{
    return c->ndelivered + c->ndelivery_errors >= target;
}
static bool all_done(ctx_t *c)
{
    return got_target(c) && delivered_target(c) && c->outstanding == 0 &&
           c->nkept == (c->hold_at ? 1 : 0);
}
static bool partitions_known(ctx_t *c)
{
    return kafka_partition_of(c->k, "x") >= 0;
}

static void produce_one(ctx_t *c, const char *topic, const char *key, const char *value, int i)
{
    char idx[16];
    snprintf(idx, sizeof idx, "%d", i);
    event_header_t h[2] = {{"idx", idx, strlen(idx)}, {"empty", NULL, 0}};
    int rc = kafka_produce(c->k, topic, key, strlen(key), value, strlen(value), h, 2,
                           (void *)(intptr_t)i);
    assert_int_equal(rc, 0);
}

/* ---- tests ---- */

static void test_bootstrap_file(void **state)
{
    fixture_t *f = *state;
    FILE *fp = fopen(f->bootstrap_file, "r");
    assert_non_null(fp);
    char line[128] = "";
    assert_non_null(fgets(line, sizeof line, fp));
    fclose(fp);
    line[strcspn(line, "\n")] = '\0';
    assert_string_equal(line, broker_bootstrap(f->broker));
    assert_true(strncmp(line, "127.0.0.1:", 10) == 0);
}

/* Produce, consume one at a time with commits; a second member of the group sees only the
 * message the first one never acknowledged. */
static void test_at_least_once(void **state)
{
    fixture_t *f = *state;
    ctx_t *c = util_calloc(1, sizeof *c);
    ctx_init(c);
    ctx_start(c, f);
    for (int i = 0; i < N_EVENTS; i++) {
        char key[32], value[32];
        snprintf(key, sizeof key, "secret-%d", i % 4);
        snprintf(value, sizeof value, "v%d", i);
        produce_one(c, "rotor.commands", key, value, i);
    }
    c->hold_at = N_EVENTS;
    target = N_EVENTS;
    assert_true(run_until(c, all_done, 30000));
    assert_int_equal(c->ndelivery_errors, 0);
    for (int i = 0; i < N_EVENTS; i++)
        assert_int_equal(c->delivered[i], 1);
    assert_true(c->assigned > 0);

    /* Per key, order is production order; headers came through, the NULL one as NULL. */
    int last[4] = {-1, -1, -1, -1};
    for (int i = 0; i < c->nrecv; i++) {
        recv_t *r = &c->recv[i];
        int v = atoi(r->value + 1), key = atoi(r->key + 7);
        assert_int_equal(v % 4, key);
        assert_true(v > last[key]);
        last[key] = v;
        assert_int_equal(atoi(r->idx_header), v);
        assert_true(r->null_header_seen);
    }
    char held_value[64];
    snprintf(held_value, sizeof held_value, "%s", c->recv[N_EVENTS - 1].value);
    ctx_stop(c); /* the held message is dropped without a commit */
    assert_int_equal(c->assigned, 0);

    /* Same group again: only the unacknowledged message comes back. */
    ctx_init(c);
    ctx_start(c, f);
    target = 1;
    assert_true(run_until(c, got_target, 30000));
    assert_string_equal(c->recv[0].value, held_value);
    target = 2;
    run_until(c, got_target, 2000); /* nothing else may arrive */
    assert_int_equal(c->nrecv, 1);
    ctx_stop(c);
    free(c);
}

/* kafka_partition_of must predict the partition the producer picks. */
static void test_partition_of(void **state)
{
    fixture_t *f = *state;
    ctx_t *c = util_calloc(1, sizeof *c);
    ctx_init(c);
    ctx_start(c, f);
    assert_true(run_until(c, partitions_known, 10000));
    int seen[3] = {0};
    for (int i = 0; i < N_KEYS; i++) {
        char key[32];
        snprintf(key, sizeof key, "db-%d", i * 7919);
        produce_one(c, "rotor.commands", key, key, i);
    }
    target = N_KEYS;
    assert_true(run_until(c, all_done, 30000));
    for (int i = 0; i < c->nrecv; i++) {
        assert_int_equal(kafka_partition_of(c->k, c->recv[i].key), c->recv[i].partition);
        seen[c->recv[i].partition]++;
    }
    /* 50 keys over 3 partitions: a partitioner that ignored the key would fail the above, one
     * that always says 0 would leave partitions empty. */
    assert_true(seen[0] > 0 && seen[1] > 0 && seen[2] > 0);
    ctx_stop(c);
    free(c);
}

static bool have_kcat(void)
{
    return access("/usr/bin/kcat", X_OK) == 0 || access("/usr/local/bin/kcat", X_OK) == 0;
}

/* Runs kcat with stdin from `in` (may be NULL) and returns its exit status; its stdout goes to
 * out (up to outlen-1 bytes). */
static int run_kcat(char *const argv[], const char *in, char *out, size_t outlen)
{
    int pin[2], pout[2];
    assert_int_equal(pipe2(pin, O_CLOEXEC), 0);
    assert_int_equal(pipe2(pout, O_CLOEXEC), 0);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, pin[0], 0);
    posix_spawn_file_actions_adddup2(&fa, pout[1], 1);
    pid_t pid;
    int rc = posix_spawnp(&pid, "kcat", &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    assert_int_equal(rc, 0);
    close(pin[0]);
    close(pout[1]);
    if (in)
        assert_int_equal(write(pin[1], in, strlen(in)), (ssize_t)strlen(in));
    close(pin[1]);
    size_t used = 0;
    ssize_t n;
    while (used + 1 < outlen && (n = read(pout[0], out + used, outlen - 1 - used)) > 0)
        used += (size_t)n;
    out[used] = '\0';
    close(pout[0]);
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static bool got_kcat_message(ctx_t *c)
{
    for (int i = 0; i < c->nrecv; i++)
        if (strcmp(c->recv[i].key, "app-db") == 0)
            return true;
    return false;
}

static void test_kcat_interop(void **state)
{
    fixture_t *f = *state;
    if (!have_kcat()) {
        if (testsrv_ci())
            fail_msg("kcat not installed (scripts/setup.sh installs it): required under CI");
        print_message("kcat not installed: skipping the interop test\n");
        skip();
    }
    char bootstrap[128], out[4096];
    snprintf(bootstrap, sizeof bootstrap, "%s", broker_bootstrap(f->broker));

    /* kcat -> rotor.commands -> our consumer. */
    char *prod[] = {"kcat", "-b", bootstrap, "-P", "-t", "rotor.commands", "-k", "app-db", NULL};
    assert_int_equal(run_kcat(prod, "hello-from-kcat\n", out, sizeof out), 0);

    ctx_t *c = util_calloc(1, sizeof *c);
    ctx_init(c);
    ctx_start(c, f);
    assert_true(run_until(c, got_kcat_message, 30000));
    assert_string_equal(c->recv[c->nrecv - 1].value, "hello-from-kcat");

    /* our producer -> rotor.events -> kcat. */
    produce_one(c, "rotor.events", "app-db", "{\"type\":\"rotation.completed\"}", 0);
    target = 1;
    assert_true(run_until(c, delivered_target, 10000));
    assert_int_equal(c->ndelivery_errors, 0);
    char *cons[] = {"kcat", "-b",           bootstrap, "-C",         "-e", "-q",
                    "-t",   "rotor.events", "-f",      "%k|%s|%h\n", NULL};
    assert_int_equal(run_kcat(cons, NULL, out, sizeof out), 0);
    assert_non_null(strstr(out, "app-db|{\"type\":\"rotation.completed\"}|idx=0"));
    ctx_stop(c);
    free(c);
}

/* A full producer queue is -ENOBUFS, so the relay knows to retry later, and no report comes. */
static void test_queue_full(void **state)
{
    fixture_t *f = *state;
    cfg_kv_t props[2] = {{"queue.buffering.max.messages", "1"}, {"linger.ms", "1000"}};
    rotor_config_t cfg = f->cfg;
    cfg.kafka.properties = props;
    cfg.kafka.nproperties = 2;
    ctx_t *c = util_calloc(1, sizeof *c);
    ctx_init(c);
    char err[256] = "";
    assert_int_equal(
        kafka_start(&c->loop, &cfg, broker_bootstrap(f->broker), &c->cbs, &c->k, err, sizeof err),
        0);
    produce_one(c, "rotor.events", "k", "first", 1);
    assert_int_equal(
        kafka_produce(c->k, "rotor.events", "k", 1, "second", 6, NULL, 0, (void *)(intptr_t)2),
        -ENOBUFS);
    assert_int_equal(kafka_outq_len(c->k), 1);
    target = 1;
    assert_true(run_until(c, delivered_target, 10000));
    assert_int_equal(c->delivered[1], 1);
    assert_int_equal(c->delivered[2], 0);
    ctx_stop(c);
    free(c);
}

/* ---- lanes, offsets, flow control ---- */

static const char *kept_value;
static bool keep_value(ctx_t *c, const kafka_msg_t *m)
{
    (void)c;
    return kept_value && m->len == strlen(kept_value) && memcmp(m->value, kept_value, m->len) == 0;
}

static int find_recv(ctx_t *c, const char *value)
{
    for (int i = 0; i < c->nrecv; i++)
        if (strcmp(c->recv[i].value, value) == 0)
            return i;
    return -1;
}

static bool got_b1_c1(ctx_t *c)
{
    return find_recv(c, "b1") >= 0 && find_recv(c, "c1") >= 0 && c->outstanding == 1;
}

/* The rotor_consumer_lag gauge of one partition, or -1. */
static double lag_of(const char *topic, int32_t partition)
{
    size_t len;
    char *text = metrics_render(&len);
    char a[128], b[128];
    snprintf(a, sizeof a, "partition=\"%d\",topic=\"%s\"} ", (int)partition, topic);
    snprintf(b, sizeof b, "topic=\"%s\",partition=\"%d\"} ", topic, (int)partition);
    double v = -1;
    for (char *line = strstr(text, "rotor_consumer_lag{"); line;
         line = strstr(line + 1, "rotor_consumer_lag{")) {
        char *lbl = line + strlen("rotor_consumer_lag{");
        if (strncmp(lbl, a, strlen(a)) == 0)
            v = atof(lbl + strlen(a));
        else if (strncmp(lbl, b, strlen(b)) == 0)
            v = atof(lbl + strlen(b));
    }
    free(text);
    return v;
}

/* Two keys [partition of A] and one on another partition. */
static void pick_keys(ctx_t *c, char *a, char *b, char *cc)
{
    int32_t pa = -1;
    a[0] = b[0] = cc[0] = '\0';
    for (int i = 0; i < 1000 && !(a[0] && b[0] && cc[0]); i++) {
        char key[32];
        snprintf(key, sizeof key, "db-%d", i);
        int32_t p = kafka_partition_of(c->k, key);
        if (!a[0]) {
            strcpy(a, key);
            pa = p;
        } else if (!b[0] && p == pa) {
            strcpy(b, key);
        } else if (!cc[0] && p != pa) {
            strcpy(cc, key);
        }
    }
    assert_true(a[0] && b[0] && cc[0]);
}

/* A message that is not done holds back only its own key: a later key of the same partition and
 * another partition go on. Its partition's offset stays below it, so after a restart it and what
 * followed it on that partition come again, but nothing of the other partition. */
static void test_lanes(void **state)
{
    fixture_t *f = *state;
    ctx_t *c = util_calloc(1, sizeof *c);
    ctx_init(c);
    ctx_start(c, f);
    assert_true(run_until(c, partitions_known, 10000));
    char a[32], b[32], cc[32];
    pick_keys(c, a, b, cc);
    kept_value = "a1";
    c->keep = keep_value;
    produce_one(c, "rotor.commands", a, "a1", 0);
    produce_one(c, "rotor.commands", a, "a2", 1);
    produce_one(c, "rotor.commands", b, "b1", 2);
    produce_one(c, "rotor.commands", cc, "c1", 3);
    assert_true(run_until(c, got_b1_c1, 30000));
    /* a2 waits behind a1, however long a1 takes */
    target = 100;
    run_until(c, got_target, 1000);
    assert_int_equal(find_recv(c, "a2"), -1);
    assert_int_equal(c->nrecv, 3);
    /* a1, a2 and b1 are not committed on a's partition: its lag says 3 (refreshed each second) */
    int32_t pa = kafka_partition_of(c->k, a);
    run_until(c, got_target, 1500);
    assert_int_equal(lag_of("rotor.commands", pa), 3);
    ctx_stop(c); /* a1 never done: the offset of its partition stays at a1 */

    ctx_init(c);
    c->keep = NULL;
    ctx_start(c, f);
    target = 3;
    assert_true(run_until(c, got_target, 30000));
    run_until(c, got_target, 1500); /* c1 must not come again */
    target = 4;
    run_until(c, got_target, 1500);
    assert_int_equal(c->nrecv, 3);
    int i1 = find_recv(c, "a1"), i2 = find_recv(c, "a2");
    assert_true(i1 >= 0 && i2 > i1);
    assert_true(find_recv(c, "b1") >= 0);
    assert_int_equal(find_recv(c, "c1"), -1);
    ctx_stop(c);
    kept_value = NULL;
    free(c);
}

static double commits_total(void)
{
    size_t len;
    char *text = metrics_render(&len);
    double v = 0;
    const char *line = strstr(text, "\nrotor_offset_commits_total ");
    if (line)
        v = atof(line + strlen("\nrotor_offset_commits_total "));
    free(text);
    return v;
}

#define N_BATCH 600

/* Offsets are stored as messages are done and committed in batches, not one request each; after
 * a restart nothing comes again and nothing was lost. */
static void test_batched_commits(void **state)
{
    fixture_t *f = *state;
    metrics_reset();
    ctx_t *c = util_calloc(1, sizeof *c);
    ctx_init(c);
    ctx_start(c, f);
    for (int i = 0; i < N_BATCH; i++) {
        char key[32], value[32];
        snprintf(key, sizeof key, "secret-%d", i % 40);
        snprintf(value, sizeof value, "v%d", i);
        produce_one(c, "rotor.commands", key, value, i);
    }
    target = N_BATCH;
    assert_true(run_until(c, all_done, 30000));
    int seen[N_BATCH] = {0};
    for (int i = 0; i < c->nrecv; i++)
        seen[atoi(c->recv[i].value + 1)]++;
    for (int i = 0; i < N_BATCH; i++)
        assert_int_equal(seen[i], 1);
    ctx_stop(c); /* what was stored and not yet committed is committed at close */
    double commits = commits_total();
    print_message("%d messages, %.0f commit requests\n", N_BATCH, commits);
    assert_true(commits >= 1);
    assert_true(commits <= N_BATCH / 20);

    ctx_init(c);
    ctx_start(c, f);
    target = 1;
    run_until(c, got_target, 3000);
    assert_int_equal(c->nrecv, 0);
    ctx_stop(c);
    metrics_reset();
    free(c);
}

#define N_FLOOD 1500

static bool got_first_only(ctx_t *c)
{
    return c->nrecv >= 1;
}

/* One key's messages beyond what a partition may hold (its first message not done): the
 * partition is paused and resumed; every message arrives once, in order. */
static void test_pause_resume(void **state)
{
    fixture_t *f = *state;
    ctx_t *c = util_calloc(1, sizeof *c);
    ctx_init(c);
    ctx_start(c, f);
    kept_value = "v0";
    c->keep = keep_value;
    for (int i = 0; i < N_FLOOD; i++) {
        char value[32];
        snprintf(value, sizeof value, "v%d", i);
        produce_one(c, "rotor.commands", "one-key", value, i);
    }
    target = N_FLOOD;
    assert_true(run_until(c, delivered_target, 30000));
    assert_true(run_until(c, got_first_only, 30000));
    run_until(c, got_target, 2000); /* whatever is fetched waits in the lane, paused at a bound */
    assert_int_equal(c->nrecv, 1);
    kept_value = NULL;
    ack(c, c->held[0]);
    assert_true(run_until(c, all_done, 30000));
    assert_int_equal(c->nrecv, N_FLOOD);
    for (int i = 0; i < N_FLOOD; i++)
        assert_int_equal(atoi(c->recv[i].value + 1), i);
    ctx_stop(c);
    free(c);
}

static bool all_assigned(ctx_t *c)
{
    return c->assigned == 3;
}

/* Every value of the flood received after the kept v0 (recv[0]) and acknowledged. */
static bool flood_all_acked(ctx_t *c)
{
    static bool seen[N_FLOOD];
    int n = 0;
    if (c->outstanding)
        return false;
    memset(seen, 0, sizeof seen);
    for (int i = 1; i < c->nrecv; i++) {
        int v = atoi(c->recv[i].value + 1);
        if (v >= 0 && v < N_FLOOD && !seen[v]) {
            seen[v] = true;
            n++;
        }
    }
    return n == N_FLOOD;
}

static bool reassigned(ctx_t *c)
{
    return c->nrevoked >= 1 && c->assigned == 3;
}

/* A second member of the group, subscribed to another topic: its arrival makes the group revoke
 * every partition and assign them again (eager protocol), all of rotor.commands back to us. */
static rd_kafka_t *member_join(fixture_t *f)
{
    char errstr[256];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    assert_int_equal(rd_kafka_conf_set(conf, "bootstrap.servers", broker_bootstrap(f->broker),
                                       errstr, sizeof errstr),
                     RD_KAFKA_CONF_OK);
    assert_int_equal(rd_kafka_conf_set(conf, "group.id", f->cfg.kafka.group, errstr, sizeof errstr),
                     RD_KAFKA_CONF_OK);
    assert_int_equal(rd_kafka_conf_set(conf, "session.timeout.ms", "4000", errstr, sizeof errstr),
                     RD_KAFKA_CONF_OK);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof errstr);
    assert_non_null(rk);
    rd_kafka_poll_set_consumer(rk);
    rd_kafka_topic_partition_list_t *t = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(t, "rotor.events", RD_KAFKA_PARTITION_UA);
    assert_int_equal(rd_kafka_subscribe(rk, t), 0);
    rd_kafka_topic_partition_list_destroy(t);
    return rk;
}

static void member_leave(ctx_t *c)
{
    rd_kafka_t *rk = c->member;
    c->member = NULL;
    rd_kafka_consumer_close(rk);
    rd_kafka_destroy(rk);
}

/* A partition paused for holding too much, revoked and assigned again, is fetched again:
 * librdkafka keeps the application's pause across the rebalance, so kafka.c must resume what it
 * paused before the partition goes (else nothing more is ever fetched from it). */
static void test_pause_across_rebalance(void **state)
{
    fixture_t *f = *state;
    ctx_t *c = util_calloc(1, sizeof *c);
    ctx_init(c);
    ctx_start(c, f);
    kept_value = "v0";
    c->keep = keep_value;
    for (int i = 0; i < N_FLOOD; i++) {
        char value[32];
        snprintf(value, sizeof value, "v%d", i);
        produce_one(c, "rotor.commands", "one-key", value, i);
    }
    target = N_FLOOD;
    assert_true(run_until(c, delivered_target, 30000));
    assert_true(run_until(c, got_first_only, 30000));
    run_until(c, got_target, 2000); /* the partition is paused at its bound, v0 not done */
    assert_int_equal(c->nrecv, 1);
    c->member = member_join(f);
    assert_true(run_until(c, reassigned, 30000));
    kept_value = NULL;
    ack(c, c->held[0]); /* revoked meanwhile: not stored, so v0 comes again */
    assert_true(run_until(c, flood_all_acked, 30000));
    /* In offset order from v0, never skipping one. A second rebalance (the mock group can
     * rebalance again under load, and a commit during a rebalance is refused) may hand the
     * partition over again from its committed offset: what follows restarts at an earlier
     * value, as at-least-once allows, but never jumps ahead. */
    assert_int_equal(atoi(c->recv[1].value + 1), 0);
    for (int i = 2; i < c->nrecv; i++)
        assert_true(atoi(c->recv[i].value + 1) <= atoi(c->recv[i - 1].value + 1) + 1);
    member_leave(c);
    ctx_stop(c);
    free(c);
}

#define N_KEYLESS 60

/* Keyless messages of a partition are handed over one at a time (on_message asserts it): the
 * one lane they share keeps a redelivered copy from running beside the first. */
static void test_keyless_lane(void **state)
{
    fixture_t *f = *state;
    ctx_t *c = util_calloc(1, sizeof *c);
    ctx_init(c);
    ctx_start(c, f);
    for (int i = 0; i < N_KEYLESS; i++) {
        char value[32];
        snprintf(value, sizeof value, "k%d", i);
        produce_one(c, "rotor.commands", "", value, i);
    }
    target = N_KEYLESS;
    assert_true(run_until(c, all_done, 30000));
    int seen[N_KEYLESS] = {0};
    for (int i = 0; i < c->nrecv; i++) {
        assert_int_equal(c->recv[i].key[0], '\0');
        seen[atoi(c->recv[i].value + 1)]++;
    }
    for (int i = 0; i < N_KEYLESS; i++)
        assert_int_equal(seen[i], 1);
    ctx_stop(c);
    free(c);
}

/* An idle consumer keeps its partitions: librdkafka's max.poll.interval.ms counts from the last
 * poll, and with nothing to consume nothing wakes the pipe. */
static void test_idle_keeps_membership(void **state)
{
    fixture_t *f = *state;
    cfg_kv_t props[3] = {f->props[0], f->props[1], {"max.poll.interval.ms", "4500"}};
    rotor_config_t cfg = f->cfg;
    cfg.kafka.properties = props;
    cfg.kafka.nproperties = 3;
    ctx_t *c = util_calloc(1, sizeof *c);
    ctx_init(c);
    char err[256] = "";
    assert_int_equal(
        kafka_start(&c->loop, &cfg, broker_bootstrap(f->broker), &c->cbs, &c->k, err, sizeof err),
        0);
    assert_true(run_until(c, all_assigned, 30000));
    target = 1;
    run_until(c, got_target, 8000); /* idle for longer than max.poll.interval.ms */
    assert_int_equal(c->nrevoked, 0);
    produce_one(c, "rotor.commands", "late", "after-idle", 0);
    assert_true(run_until(c, got_target, 10000));
    assert_int_equal(c->nrevoked, 0);
    ctx_stop(c);
    free(c);
}

/* A message with the owner whose acknowledgement falls due after on_closed (a late journal reply,
 * or the done_later timer that libuv runs after the close callbacks in UV_RUN_ONCE): kafka has
 * freed it, so the owner must drop it at on_closed and never pass it to kafka_msg_done. Without
 * that, test_idle_keeps_membership crashed under load (heap-use-after-free in kafka_msg_done). */
static void test_ack_due_after_close(void **state)
{
    fixture_t *f = *state;
    ctx_t *c = util_calloc(1, sizeof *c);
    ctx_init(c);
    ctx_start(c, f);
    produce_one(c, "rotor.commands", "late-ack", "v", 0);
    target = 1;
    assert_true(run_until(c, got_target, 30000));
    assert_int_equal(c->outstanding, 1);
    uv_timer_stop(&c->done_later); /* its acknowledgement is still owed at the close */
    kafka_stop(c->k, 10000);
    assert_true(run_until(c, is_closed, 15000));
    assert_int_equal(c->outstanding, 0);
    uv_timer_start(&c->done_later, on_done_later, 0, 0);
    uv_run(&c->loop, UV_RUN_NOWAIT);
    kafka_free(c->k);
    c->k = NULL;
    uv_close((uv_handle_t *)&c->guard, NULL);
    uv_close((uv_handle_t *)&c->done_later, NULL);
    uv_run(&c->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&c->loop), 0);
    free(c);
}

/* The broker goes away under a running consumer and producer (what an operator meets when Kafka
 * is down): the idle poll, an acknowledgement and a produce go on without it, and kafka_stop
 * still ends in on_closed within its bound, with nothing left behind. */
static void test_broker_gone(void **state)
{
    fixture_t *f = *state;
    ctx_t *c = util_calloc(1, sizeof *c);
    ctx_init(c);
    ctx_start(c, f);
    assert_true(run_until(c, all_assigned, 30000));
    produce_one(c, "rotor.commands", "gone", "v0", 0);
    target = 1;
    assert_true(run_until(c, got_target, 10000));
    uv_timer_stop(&c->done_later); /* acknowledged once the broker is gone */
    broker_stop(f->broker);
    f->broker = NULL;
    /* Nothing more can arrive: these runs only let time pass, past two idle polls (KAFKA_LAG_MS)
     * without a broker. */
    target = 2;
    run_until(c, got_target, 2500);
    on_done_later(&c->done_later);
    assert_int_equal(c->outstanding, 0);
    produce_one(c, "rotor.commands", "gone", "v1", 1);
    run_until(c, got_target, 1500);
    kafka_stop(c->k, 3000);
    assert_true(run_until(c, is_closed, 10000));
    kafka_free(c->k);
    c->k = NULL;
    uv_close((uv_handle_t *)&c->guard, NULL);
    uv_close((uv_handle_t *)&c->done_later, NULL);
    uv_run(&c->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&c->loop), 0);
    free(c);
}

static void test_bad_property(void **state)
{
    fixture_t *f = *state;
    cfg_kv_t bad = {"no.such.property", "1"};
    rotor_config_t cfg = f->cfg;
    cfg.kafka.properties = &bad;
    cfg.kafka.nproperties = 1;
    ctx_t *c = util_calloc(1, sizeof *c);
    ctx_init(c);
    char err[256] = "";
    int rc =
        kafka_start(&c->loop, &cfg, broker_bootstrap(f->broker), &c->cbs, &c->k, err, sizeof err);
    assert_int_equal(rc, ROTOR_ECONFIG);
    assert_non_null(strstr(err, "no.such.property"));
    uv_close((uv_handle_t *)&c->guard, NULL);
    uv_close((uv_handle_t *)&c->done_later, NULL);
    uv_run(&c->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&c->loop), 0);
    free(c);
}

int main(void)
{
    log_init(LOG_WARN, stderr);
    if (getenv("ROTOR_TEST_FILTER")) /* one test by name, for a quick run by hand */
        cmocka_set_test_filter(getenv("ROTOR_TEST_FILTER"));
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_bootstrap_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_at_least_once, setup, teardown),
        cmocka_unit_test_setup_teardown(test_partition_of, setup, teardown),
        cmocka_unit_test_setup_teardown(test_kcat_interop, setup, teardown),
        cmocka_unit_test_setup_teardown(test_queue_full, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_property, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lanes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_batched_commits, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pause_resume, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pause_across_rebalance, setup, teardown),
        cmocka_unit_test_setup_teardown(test_keyless_lane, setup, teardown),
        cmocka_unit_test_setup_teardown(test_idle_keeps_membership, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ack_due_after_close, setup, teardown),
        cmocka_unit_test_setup_teardown(test_broker_gone, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
