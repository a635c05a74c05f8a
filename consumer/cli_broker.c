/* cli_broker.c: `rotor broker`: the embedded Kafka broker alone in the foreground, so that a test
 * can kill -9 `rotor run` without losing the broker and its topics, and can stage a broker outage:
 * SIGUSR1 takes the broker down (connections closed, new ones refused), SIGUSR2 brings it back. */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "broker.h"
#include "cli.h"
#include "log.h"

/* The kafka section of the defaults, for when there is no config file (docs/configuration.md). */
static void cli_broker_defaults(rotor_config_t *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->path = "(defaults)";
    cfg->kafka.brokers = "embedded";
    cfg->kafka.group = "rotor";
    cfg->kafka.topic_commands = "rotor.commands";
    cfg->kafka.topic_events = "rotor.events";
    cfg->kafka.topic_deadletter = "rotor.deadletter";
    cfg->kafka.bootstrap_file = "./var/rotor.bootstrap";
    cfg->kafka.partitions = 3;
    cfg->kafka.max_message_bytes = 1048576;
}

/* Blocks until a signal of set arrives; they are blocked first so none is lost before sigwait. */
static int cli_wait_signal(const sigset_t *set)
{
    int sig = 0;
    while (sigwait(set, &sig) != 0)
        ;
    return sig;
}

static int cli_broker_run(const rotor_config_t *cfg)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGUSR1);
    sigaddset(&set, SIGUSR2);
    sigprocmask(SIG_BLOCK, &set, NULL);
    log_init(LOG_INFO, stdout);
    broker_t *b = NULL;
    char err[1024] = "";
    int rc = broker_start(cfg, &b, err, sizeof err);
    if (rc) {
        fprintf(stderr, "rotor: %s\n", err[0] ? err : rotor_strerror(rc));
        return CLI_EXIT_ERROR;
    }
    int sig;
    while ((sig = cli_wait_signal(&set)) == SIGUSR1 || sig == SIGUSR2)
        broker_set_up(b, sig == SIGUSR2); /* logs either way; an outage test checks the log */
    log_info("kafka.broker.stopping", "signal", sig == SIGINT ? "SIGINT" : "SIGTERM");
    broker_stop(b);
    return CLI_EXIT_OK;
}

int cli_broker(cli_ctx_t *ctx, int argc, char **argv)
{
    static const struct option opts[] = {{"bootstrap-file", required_argument, NULL, 'b'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    const char *bootstrap_file = NULL;
    int ch;
    optind = 0;
    while ((ch = getopt_long(argc, argv, "b:h", opts, NULL)) != -1) {
        if (ch == 'h')
            return CLI_HELP;
        if (ch != 'b')
            return CLI_USAGE;
        bootstrap_file = optarg;
    }
    if (optind != argc) {
        fprintf(stderr, "%s: takes no arguments\n", argv[0]);
        return CLI_USAGE;
    }
    rotor_config_t defaults;
    rotor_config_t cfg;
    if (access(ctx->config_path, F_OK) != 0 && errno == ENOENT) {
        cli_broker_defaults(&defaults);
        cfg = defaults;
    } else {
        const rotor_config_t *loaded = cli_config(ctx);
        if (!loaded)
            return CLI_EXIT_ERROR;
        cfg = *loaded; /* a shallow copy: only bootstrap_file changes, strings stay borrowed */
    }
    if (bootstrap_file)
        cfg.kafka.bootstrap_file = (char *)bootstrap_file;
    return cli_broker_run(&cfg);
}
