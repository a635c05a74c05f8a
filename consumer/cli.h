/* cli.h: the rotor command line: one handler per subcommand and what they share (config, journal
 * reads, publishing a command, following a rotation). CLI code runs outside the daemon's loop, so
 * it may block (PQexec, rd_kafka_flush). It only READS the journal and talks to the daemon only
 * through Kafka. */
#ifndef ROTOR_CLI_H
#define ROTOR_CLI_H

#include <jansson.h>
#include <libpq-fe.h>
#include <stdbool.h>
#include <stdint.h>

#include "config.h"
#include "journal.h"

/* Process exit codes of every command that waits for a rotation (documented in docs/cli.md). */
enum {
    CLI_EXIT_OK = 0,          /* completed (or the command succeeded) */
    CLI_EXIT_ERROR = 1,       /* usage, configuration or connection error */
    CLI_EXIT_FAILED = 2,      /* the rotation failed */
    CLI_EXIT_ROLLED_BACK = 3, /* the rotation was rolled back */
    CLI_EXIT_ABORTED = 4,     /* the rotation was aborted */
    CLI_EXIT_TIMEOUT = 5,     /* gave up waiting */
};

/* Handler results that are not exit codes: main prints the command's usage for them. */
enum {
    CLI_USAGE = -1, /* bad arguments (message already on stderr): usage on stderr, exit 1 */
    CLI_HELP = -2,  /* --help: usage on stdout, exit 0 */
};

typedef struct {
    const char *config_path; /* borrowed from argv */
    rotor_config_t *cfg;     /* loaded by cli_config(); owned, freed by main */
} cli_ctx_t;

typedef int (*cli_handler_t)(cli_ctx_t *ctx, int argc, char **argv);

/* The subcommands (argv[0] is "rotor NAME"; getopt_long may permute argv). */
int cli_request(cli_ctx_t *ctx, int argc, char **argv);
int cli_approve(cli_ctx_t *ctx, int argc, char **argv);
int cli_reject(cli_ctx_t *ctx, int argc, char **argv);
int cli_retry(cli_ctx_t *ctx, int argc, char **argv);
int cli_abort(cli_ctx_t *ctx, int argc, char **argv);
int cli_complete(cli_ctx_t *ctx, int argc, char **argv);
int cli_status(cli_ctx_t *ctx, int argc, char **argv);
int cli_watch(cli_ctx_t *ctx, int argc, char **argv);
int cli_check(cli_ctx_t *ctx, int argc, char **argv);
int cli_broker(cli_ctx_t *ctx, int argc, char **argv);

/* Loads ctx->config_path once. Returns the config (borrowed from ctx) or NULL after printing
 * the error, which names the file, line and key, on stderr. */
const rotor_config_t *cli_config(cli_ctx_t *ctx);

/* "$USER@hostname", or "cli" when either is unknown. buf >= 320 bytes. */
void cli_whoami(char *buf, size_t len);

/* Parses a --timeout value; prints the error. Returns 0 or CLI_USAGE. */
int cli_parse_timeout(const char *prog, const char *text, uint64_t *ms);

#define CLI_TEXT_MAX 1024 /* the schemas' maxLength for a reason or comment */
#define CLI_BY_MAX 256    /* the schemas' maxLength for an actor */

/* --wait, --timeout DUR and --until STATE (getopt letters 'w', 't', 'u'), which request and the
 * decisions share. Returns 1 when ch was one of them, 0 when it is another option, CLI_USAGE
 * after a message on a bad value. --until implies --wait. */
int cli_wait_option(int ch, const char *prog, const char *arg, bool *wait, uint64_t *timeout_ms);

/* Bootstrap servers for the CLI's Kafka clients: the configured list, or the embedded broker's
 * address from cfg->kafka.bootstrap_file. Returns 0 and a malloc'ed string the caller frees, or
 * ROTOR_EKAFKA with a message in err. */
int cli_brokers(const rotor_config_t *cfg, char **out, char *err, size_t errlen);

/* A quiet librdkafka producer (idempotent) for brokers with cfg->kafka.properties applied.
 * Returns the handle (caller destroys it) or NULL with a message in err. */
struct rd_kafka_s *cli_kafka_new(const rotor_config_t *cfg, const char *brokers, char *err,
                                 size_t errlen);

/* Builds a CloudEvent of type (steals data), publishes it to the commands topic with key =
 * subject and waits for its delivery. Copies the event id into id (>= 128 bytes).
 * Returns 0 or a negative error after printing it. */
int cli_publish(const rotor_config_t *cfg, const char *type, const char *subject, json_t *data,
                char *id, size_t idlen);

/* Connects to the journal and checks that the rotor schema exists. Returns 0 and *out (caller
 * PQfinish()es it) or a negative error after printing it. *version gets the schema version
 * (0 when the schema does not exist yet, which is an error unless allow_empty). */
int cli_journal_open(const rotor_config_t *cfg, bool allow_empty, PGconn **out, int *version);

/* One rotation row as the CLI reads it. */
typedef struct {
    journal_rot_t r;
    int64_t updated_at_ms;
    int64_t finished_at_ms; /* 0 while open */
} cli_rot_t;

/* One history line. */
typedef struct {
    int64_t id;
    int64_t at_ms;
    char stage[32];
    char outcome[64];
    int attempt;         /* 0 when absent */
    int64_t duration_ms; /* -1 when absent */
    char error[2049];
    char actor[257];
    char request_id[128];
} cli_hist_t;

/* Reads rotation id. Returns 1 found, 0 unknown, or a negative error after printing it. */
int cli_rot_get(PGconn *c, const char *id, cli_rot_t *out);
/* The open rotation of secret, else its latest. Returns 1, 0 or a negative error. */
int cli_rot_latest(PGconn *c, const char *secret, cli_rot_t *out);
/* Looks a rotation up by the id of a request that started it or was absorbed into it. */
int cli_rot_by_request(PGconn *c, const char *request_id, char *id, size_t idlen);

/* History lines of rotation id with id > after, in order. Returns the number read (*out is
 * malloc'ed, the caller frees it) or a negative error after printing it. */
int cli_hist_read(PGconn *c, const char *id, int64_t after, cli_hist_t **out);

/* Looks ID up for a command: prints "unknown rotation" or a bad-id message. Returns 0, or
 * CLI_EXIT_ERROR after printing. */
int cli_rot_lookup(PGconn *c, const char *id, cli_rot_t *out);

/* The exit code for a status: completed 0, failed 2, rolled-back 3, aborted 4; -1 while open. */
int cli_exit_for(journal_status_t s);

/* Watching a rotation: called for each new history line and for the row at each poll. */
typedef struct {
    void (*on_hist)(void *arg, const cli_hist_t *h);
    void (*on_row)(void *arg, const cli_rot_t *r);
    void *arg;
} cli_follow_cb_t;

/* Polls rotation id every 200 ms, reporting history lines with id > after, until it is terminal,
 * or failed with a seq above min_seq (so that following a retry of a failed rotation waits for
 * the retry), or timeout_ms passed (0 = no limit). Returns the exit code. */
int cli_follow(PGconn *c, const char *id, int64_t after, int min_seq, uint64_t timeout_ms,
               const cli_follow_cb_t *cb);

/* --until STATE for the followers: stop with exit 0 once the rotation completed stage STATE, or
 * is waiting for approval (STATE "awaiting-approval"). Returns 0 or CLI_USAGE after a message. */
int cli_set_until(const char *prog, const char *state);

/* Prints one history line as plain text. */
void cli_hist_print(FILE *out, const cli_hist_t *h);
/* The follower for --wait: plain history lines on stdout. */
extern const cli_follow_cb_t cli_follow_plain;

/* Finds the rotation a published request became (waiting up to timeout_ms) and follows it.
 * Returns the exit code. */
int cli_wait_request(const rotor_config_t *cfg, const char *request_id, uint64_t timeout_ms);

/* Milliseconds of a monotonic clock. */
int64_t cli_mono_ms(void);

#endif
