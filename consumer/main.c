/* main.c: the rotor binary: global options, then one table of subcommands. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>

#include "cli.h"
#include "daemon.h"
#include "rotor.h"
#include "secret.h"
#include "store.h"

#define CLI_DEFAULT_CONFIG "./rotor.yaml"

#define CLI_EXIT_CODES                                                                             \
    "Exit codes when following a rotation (--wait, watch):\n"                                      \
    "  0 completed, 1 usage/config/connection error, 2 failed, 3 rolled back, 4 aborted,\n"        \
    "  5 timed out waiting.\n"

#define CLI_WAIT_OPTS                                                                              \
    "  --wait              follow the rotation until it ends, printing its history\n"              \
    "  --timeout DURATION  with --wait: give up after DURATION (e.g. 10m; default: no limit)\n"    \
    "  --until STATE       with --wait: stop (exit 0) once the rotation completed stage STATE,\n"  \
    "                      or is waiting for approval (STATE awaiting-approval)\n"

static int cli_run(cli_ctx_t *ctx, int argc, char **argv);
static int cli_version(cli_ctx_t *ctx, int argc, char **argv);
static int cli_help(cli_ctx_t *ctx, int argc, char **argv);

typedef struct {
    const char *name;
    cli_handler_t handler;
    const char *help;  /* one line, for `rotor --help` */
    const char *usage; /* for `rotor NAME --help` and usage errors */
} cli_command_t;

static const cli_command_t cli_commands[] = {
    {"run", cli_run, "run the daemon (consumes commands, runs rotations)",
     "Usage: rotor run [-c FILE]\n"
     "Runs the rotor daemon in the foreground until SIGINT or SIGTERM.\n"},
    {"request", cli_request, "ask for a rotation of SECRET",
     "Usage: rotor request SECRET [--reason TEXT] [--wait] [--timeout DURATION] [--until STATE]\n"
     "Publishes rotation.requested for SECRET (a configured secret) and prints the request id.\n"
     "  --reason TEXT       why (recorded in the journal, at most 1024 bytes)\n" CLI_WAIT_OPTS
         CLI_EXIT_CODES},
    {"approve", cli_approve, "approve rotation ID waiting for approval",
     "Usage: rotor approve ID [--gate swap|retire] [--by NAME] [--comment TEXT] [--wait]\n"
     "                        [--timeout DURATION]\n"
     "Publishes rotation.approved for rotation ID, which must be waiting at stage approve.\n"
     "  --gate swap|retire  the gate approved (default: the one the rotation waits at);\n"
     "                      refused when the rotation waits at the other one\n"
     "  --by NAME           who approves (default: $USER@hostname)\n"
     "  --comment TEXT      a comment for the audit trail\n" CLI_WAIT_OPTS CLI_EXIT_CODES},
    {"reject", cli_reject, "reject rotation ID (swaps back)",
     "Usage: rotor reject ID [--gate swap|retire] [--by NAME] [--reason TEXT] [--wait]\n"
     "                       [--timeout DURATION]\n"
     "Publishes rotation.rejected for rotation ID, which must be waiting at stage approve;\n"
     "the rotation then rolls back.\n"
     "  --gate swap|retire  the gate rejected (default: the one the rotation waits at)\n"
     "  --by NAME           who rejects (default: $USER@hostname)\n"
     "  --reason TEXT       why\n" CLI_WAIT_OPTS CLI_EXIT_CODES},
    {"retry", cli_retry, "retry failed rotation ID",
     "Usage: rotor retry ID [--by NAME] [--wait] [--timeout DURATION]\n"
     "Publishes rotation.retry for rotation ID, which must have status failed.\n"
     "  --by NAME           who retries (default: $USER@hostname)\n" CLI_WAIT_OPTS CLI_EXIT_CODES},
    {"abort", cli_abort, "abort rotation ID",
     "Usage: rotor abort ID [--by NAME] [--reason TEXT] [--wait] [--timeout DURATION]\n"
     "Publishes rotation.abort for rotation ID, which must not have ended.\n"
     "  --by NAME           who aborts (default: $USER@hostname)\n"
     "  --reason TEXT       why\n" CLI_WAIT_OPTS CLI_EXIT_CODES},
    {"complete", cli_complete, "answer rotor's stage.requested (deploy kind external)",
     "Usage: rotor complete ID STAGE [--failed REASON] [--by NAME]\n"
     "Publishes stage.completed (or, with --failed, stage.failed) for STAGE of rotation ID,\n"
     "which must be running that stage and waiting for a pipeline (deploy kind external).\n"
     "  --failed REASON     the pipeline failed the stage; the rotation retries or fails\n"
     "  --by NAME           who answers (default: $USER@hostname)\n"},
    {"status", cli_status, "show the managed secrets, a secret or rotation ID",
     "Usage: rotor status [SECRET|ID] [--json]\n"
     "Without an argument: one line per configured secret (active slot and role, open\n"
     "rotation, last rotated). With SECRET: its open (else latest) rotation and history.\n"
     "With ID: that rotation and its history.\n"
     "  --json              print JSON instead of text\n"},
    {"watch", cli_watch, "follow rotation ID live",
     "Usage: rotor watch ID [--timeout DURATION] [--until STATE]\n"
     "Follows rotation ID until it ends: a live view of its stages on a terminal, otherwise\n"
     "one line per history entry.\n"
     "  --timeout DURATION  give up after DURATION (default: no limit)\n"
     "  --until STATE       stop (exit 0) once the rotation completed stage STATE, or is waiting\n"
     "                      for approval (STATE awaiting-approval)\n" CLI_EXIT_CODES},
    {"check", cli_check, "check config, journal, databases, stores and Kafka",
     "Usage: rotor check [-c FILE]\n"
     "Loads the configuration, connects to the journal, to each managed database (both roles\n"
     "must exist), checks each store directory and reads Kafka's metadata (5s timeout).\n"
     "Prints one ok/FAIL line per check; exits 0 when all are ok, else 1.\n"},
    {"broker", cli_broker, "run the embedded Kafka broker alone",
     "Usage: rotor broker [--bootstrap-file PATH]\n"
     "Runs the embedded Kafka broker in the foreground until SIGINT or SIGTERM and writes its\n"
     "address to PATH (default: kafka.bootstrap_file, or ./var/rotor.bootstrap without a\n"
     "config file).\n"
     "  --bootstrap-file PATH  where to write the bootstrap address\n"},
    {"version", cli_version, "print the version", "Usage: rotor version\n"},
    {"help", cli_help, "print help about rotor or a command", "Usage: rotor help [COMMAND]\n"},
};
static const size_t cli_ncommands = sizeof cli_commands / sizeof cli_commands[0];

static void cli_usage(FILE *out)
{
    fprintf(out, "Usage: rotor [-c FILE] COMMAND [ARGS...]\n"
                 "Rotates PostgreSQL credentials with zero downtime.\n\n"
                 "Options:\n"
                 "  -c, --config FILE   configuration file (default " CLI_DEFAULT_CONFIG
                 "; accepted before or after COMMAND)\n"
                 "  -h, --help          print this help\n\n"
                 "Commands:\n");
    for (size_t i = 0; i < cli_ncommands; i++)
        fprintf(out, "  %-10s %s\n", cli_commands[i].name, cli_commands[i].help);
    fprintf(out, "\nRun `rotor COMMAND --help` for a command's options. See docs/cli.md.\n");
}

static const cli_command_t *cli_find(const char *name)
{
    for (size_t i = 0; i < cli_ncommands; i++)
        if (strcmp(cli_commands[i].name, name) == 0)
            return &cli_commands[i];
    return NULL;
}

static int cli_run(cli_ctx_t *ctx, int argc, char **argv)
{
    if (argc > 1) {
        if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)
            return CLI_HELP;
        fprintf(stderr, "%s: unexpected argument \"%s\"\n", argv[0], argv[1]);
        return CLI_USAGE;
    }
    const rotor_config_t *cfg = cli_config(ctx);
    if (!cfg)
        return CLI_EXIT_ERROR;
    /* Every DSN is parsed before anything starts: a malformed one is refused here, naming its
     * key, rather than quoted by libpq into the journal, the events and the logs later. */
    char err[1024];
    if (config_check_dsns(cfg, err, sizeof err) != 0) {
        fprintf(stderr, "rotor: %s\n", err);
        return CLI_EXIT_ERROR;
    }
    /* A file store's directory that is not rotor's own is refused before anything starts too. */
    for (size_t i = 0; i < cfg->nsecrets; i++) {
        const cfg_secret_t *s = &cfg->secrets[i];
        if (s->store.kind_id == STORE_FILE && store_file_check(s->store.dir, err, sizeof err)) {
            fprintf(stderr, "rotor: secret %s: %s\n", s->name, err);
            return CLI_EXIT_ERROR;
        }
    }
    return daemon_run(cfg);
}

static int cli_version(cli_ctx_t *ctx, int argc, char **argv)
{
    (void)ctx;
    if (argc > 1)
        return strcmp(argv[1], "--help") == 0 ? CLI_HELP : CLI_USAGE;
    printf("rotor %s\n", ROTOR_VERSION);
    return CLI_EXIT_OK;
}

static int cli_help(cli_ctx_t *ctx, int argc, char **argv)
{
    (void)ctx;
    if (argc > 1 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0))
        return CLI_HELP;
    if (argc < 2) {
        cli_usage(stdout);
        return CLI_EXIT_OK;
    }
    const cli_command_t *cmd = cli_find(argv[1]);
    if (!cmd) {
        fprintf(stderr, "rotor: unknown command \"%s\"\n", argv[1]);
        return CLI_USAGE;
    }
    fputs(cmd->usage, stdout);
    return CLI_EXIT_OK;
}

/* A password can be in this process's memory: never let it reach a core file. */
static void cli_no_core_dumps(void)
{
    struct rlimit none = {0, 0};
    setrlimit(RLIMIT_CORE, &none);
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
}

/* Takes -c/--config out of argv wherever it is (before "--"), so that every subcommand's own
 * getopt_long sees only its options. Returns the new argc, or -1 after printing an error. */
static int cli_take_config(int argc, char **argv, const char **path)
{
    int out = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--") == 0) {
            while (i < argc)
                argv[out++] = argv[i++];
            break;
        }
        if (strcmp(a, "-c") == 0 || strcmp(a, "--config") == 0) {
            if (i + 1 >= argc) {
                fprintf(stderr, "rotor: %s needs a FILE\n", a);
                return -1;
            }
            *path = argv[++i];
        } else if (strncmp(a, "--config=", 9) == 0) {
            *path = a + 9;
        } else if (strncmp(a, "-c", 2) == 0 && a[2]) {
            *path = a + 2;
        } else {
            argv[out++] = argv[i];
        }
    }
    argv[out] = NULL;
    return out;
}

/* Runs cmd with argv[0] = "rotor NAME" (for getopt's messages) and maps CLI_USAGE/CLI_HELP. */
static int cli_dispatch(cli_ctx_t *ctx, const cli_command_t *cmd, int argc, char **argv)
{
    char prog[64];
    snprintf(prog, sizeof prog, "rotor %s", cmd->name);
    argv[0] = prog;
    int rc = cmd->handler(ctx, argc, argv);
    if (rc == CLI_HELP) {
        fputs(cmd->usage, stdout);
        return CLI_EXIT_OK;
    }
    if (rc == CLI_USAGE) {
        fputs(cmd->usage, stderr);
        return CLI_EXIT_ERROR;
    }
    return rc < 0 ? CLI_EXIT_ERROR : rc;
}

int main(int argc, char **argv)
{
    cli_no_core_dumps();
    secret_wipe_json_frees();
    cli_ctx_t ctx = {CLI_DEFAULT_CONFIG, NULL};
    argc = cli_take_config(argc, argv, &ctx.config_path);
    if (argc < 0) {
        cli_usage(stderr);
        return CLI_EXIT_ERROR;
    }
    if (argc < 2) {
        cli_usage(stderr);
        return CLI_EXIT_ERROR;
    }
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        cli_usage(stdout);
        return CLI_EXIT_OK;
    }
    if (strcmp(argv[1], "--version") == 0)
        argv[1] = "version";
    const cli_command_t *cmd = cli_find(argv[1]);
    if (!cmd) {
        fprintf(stderr, "rotor: unknown command \"%s\"\n\n", argv[1]);
        cli_usage(stderr);
        return CLI_EXIT_ERROR;
    }
    int rc = cli_dispatch(&ctx, cmd, argc - 1, argv + 1);
    config_free(ctx.cfg);
    return rc;
}
