/* kafka_tool.c: test helper: an embedded broker in its own process, or a group consumer that
 * prints what it gets, so crash-recovery tests can kill either one.
 *
 *   kafka_tool broker BOOTSTRAP_FILE [PARTITIONS]
 *       runs the mock broker (topics rotor.commands, rotor.events, rotor.deadletter) until
 *       SIGTERM/SIGINT; writes its address to BOOTSTRAP_FILE.
 *   kafka_tool consume BOOTSTRAP GROUP [SESSION_TIMEOUT_MS]
 *       consumes rotor.commands in GROUP with kafka.c, prints "assigned P,..", "revoked P,..",
 *       "message P OFFSET KEY VALUE" lines (stdout, flushed), acknowledges every message; stops
 *       cleanly on SIGTERM/SIGINT. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "broker.h"
#include "kafka.h"
#include "log.h"

static void tool_config(rotor_config_t *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->kafka.brokers = "embedded";
    cfg->kafka.topic_commands = "rotor.commands";
    cfg->kafka.topic_events = "rotor.events";
    cfg->kafka.topic_deadletter = "rotor.deadletter";
    cfg->kafka.partitions = 3;
    cfg->kafka.max_message_bytes = 1 << 20;
}

static void on_signal(uv_signal_t *h, int signum)
{
    (void)signum;
    if (h->data)
        kafka_stop(h->data, 10000);
    else
        uv_stop(h->loop);
}

static int tool_broker(int argc, char **argv)
{
    rotor_config_t cfg;
    tool_config(&cfg);
    cfg.kafka.bootstrap_file = argv[2];
    if (argc > 3)
        cfg.kafka.partitions = atoi(argv[3]);
    broker_t *b;
    char err[256];
    if (broker_start(&cfg, &b, err, sizeof err)) {
        fprintf(stderr, "kafka_tool: %s\n", err);
        return 1;
    }
    printf("%s\n", broker_bootstrap(b));
    fflush(stdout);
    uv_loop_t *loop = uv_default_loop();
    uv_signal_t sig[2];
    int signums[2] = {SIGTERM, SIGINT};
    for (int i = 0; i < 2; i++) {
        uv_signal_init(loop, &sig[i]);
        sig[i].data = NULL;
        uv_signal_start(&sig[i], on_signal, signums[i]);
    }
    uv_run(loop, UV_RUN_DEFAULT);
    for (int i = 0; i < 2; i++)
        uv_close((uv_handle_t *)&sig[i], NULL);
    uv_run(loop, UV_RUN_DEFAULT);
    uv_loop_close(loop);
    broker_stop(b);
    return 0;
}

static void on_message(kafka_t *k, kafka_msg_t *msg, void *arg)
{
    (void)arg;
    printf("message %d %lld %.*s %.*s\n", (int)msg->partition, (long long)msg->offset,
           (int)msg->key_len, (const char *)msg->key, (int)msg->len, (const char *)msg->value);
    fflush(stdout);
    kafka_msg_done(k, msg);
}

static void on_rebalance(kafka_t *k, const int32_t *parts, int n, int assigned, void *arg)
{
    (void)k;
    (void)arg;
    printf("%s ", assigned ? "assigned" : "revoked");
    for (int i = 0; i < n; i++)
        printf("%s%d", i ? "," : "", (int)parts[i]);
    printf("\n");
    fflush(stdout);
}

static void on_closed(kafka_t *k, void *arg)
{
    (void)k;
    uv_signal_t *sig = arg;
    uv_close((uv_handle_t *)&sig[0], NULL);
    uv_close((uv_handle_t *)&sig[1], NULL);
}

static int tool_consume(int argc, char **argv)
{
    rotor_config_t cfg;
    tool_config(&cfg);
    cfg.kafka.group = argv[3];
    cfg_kv_t props[2] = {{"session.timeout.ms", argc > 4 ? argv[4] : "4000"},
                         {"heartbeat.interval.ms", "500"}};
    cfg.kafka.properties = props;
    cfg.kafka.nproperties = 2;
    uv_loop_t *loop = uv_default_loop();
    uv_signal_t sig[2];
    kafka_callbacks_t cbs = {on_message, NULL, on_rebalance, on_closed, sig};
    kafka_t *k;
    char err[256];
    if (kafka_start(loop, &cfg, argv[2], &cbs, &k, err, sizeof err)) {
        fprintf(stderr, "kafka_tool: %s\n", err);
        return 1;
    }
    int signums[2] = {SIGTERM, SIGINT};
    for (int i = 0; i < 2; i++) {
        uv_signal_init(loop, &sig[i]);
        sig[i].data = k;
        uv_signal_start(&sig[i], on_signal, signums[i]);
    }
    uv_run(loop, UV_RUN_DEFAULT);
    kafka_free(k);
    return uv_loop_close(loop) == 0 ? 0 : 1;
}

int main(int argc, char **argv)
{
    log_init(LOG_WARN, stderr);
    if (argc >= 3 && strcmp(argv[1], "broker") == 0)
        return tool_broker(argc, argv);
    if (argc >= 4 && strcmp(argv[1], "consume") == 0)
        return tool_consume(argc, argv);
    fprintf(stderr, "usage: kafka_tool broker BOOTSTRAP_FILE [PARTITIONS]\n"
                    "       kafka_tool consume BOOTSTRAP GROUP [SESSION_TIMEOUT_MS]\n");
    return 2;
}
