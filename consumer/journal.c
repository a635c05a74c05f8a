/* journal.c: the PostgreSQL journal: migrations, compare-and-set, history, outbox. */
#include "journal.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "pg.h"
#include "secret.h"
#include "util.h"

/* Versioned migrations: applied in order, each in the transaction that records its version,
 * under an advisory lock so that several replicas starting together apply each exactly once.
 * Never edit a migration that has shipped; append a new one. */
const char *const journal_migrations[] = {
    /* 1: rotations, secrets, history, outbox */
    "CREATE TABLE rotor.secrets ("
    "  name text PRIMARY KEY,"
    "  active_slot text NOT NULL CHECK (active_slot IN ('blue', 'green')),"
    "  first_seen timestamptz NOT NULL DEFAULT now(),"
    "  last_rotated timestamptz,"
    "  last_rotation uuid);"
    "CREATE TABLE rotor.rotations ("
    "  id uuid PRIMARY KEY,"
    "  secret text NOT NULL REFERENCES rotor.secrets (name),"
    "  stage text NOT NULL,"
    "  status text NOT NULL CHECK (status IN ('pending', 'running', 'waiting', 'failed',"
    "                                          'completed', 'rolled-back', 'aborted')),"
    "  seq integer NOT NULL DEFAULT 1,"
    "  attempt integer NOT NULL DEFAULT 0,"
    "  from_slot text NOT NULL,"
    "  to_slot text NOT NULL,"
    "  swapped boolean NOT NULL DEFAULT false,"
    "  trigger text NOT NULL,"
    "  request_id text,"
    "  reason text,"
    "  error text,"
    "  traceparent text,"
    "  version text,"
    "  old_version text,"
    "  actor text,"
    "  next_at timestamptz NOT NULL DEFAULT now(),"
    "  expires_at timestamptz,"
    "  created_at timestamptz NOT NULL DEFAULT now(),"
    "  updated_at timestamptz NOT NULL DEFAULT now(),"
    "  finished_at timestamptz);"
    /* One open rotation per secret: the per-secret lock. */
    "CREATE UNIQUE INDEX rotations_one_open ON rotor.rotations (secret)"
    "  WHERE status IN ('pending', 'running', 'waiting', 'failed');"
    "CREATE INDEX rotations_by_secret ON rotor.rotations (secret, created_at DESC);"
    "CREATE INDEX rotations_by_request ON rotor.rotations (request_id)"
    "  WHERE request_id IS NOT NULL;"
    "CREATE TABLE rotor.history ("
    "  id bigserial PRIMARY KEY,"
    "  rotation_id uuid NOT NULL REFERENCES rotor.rotations (id),"
    "  at timestamptz NOT NULL DEFAULT clock_timestamp(),"
    "  trigger text,"
    "  actor text,"
    "  stage text,"
    "  outcome text NOT NULL,"
    "  attempt integer,"
    "  duration_ms bigint,"
    "  error text,"
    "  request_id text);"
    "CREATE INDEX history_by_request ON rotor.history (request_id) WHERE request_id IS NOT NULL;"
    "CREATE INDEX history_by_rotation ON rotor.history (rotation_id, id);"
    /* The audit trail is append-only: updates and deletes are refused by the database itself. */
    "CREATE FUNCTION rotor.history_append_only() RETURNS trigger LANGUAGE plpgsql AS $$"
    "  BEGIN RAISE EXCEPTION 'rotor.history is append-only'; END $$;"
    "CREATE TRIGGER history_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON rotor.history"
    "  FOR EACH STATEMENT EXECUTE FUNCTION rotor.history_append_only();"
    "CREATE TABLE rotor.outbox ("
    "  id bigserial PRIMARY KEY,"
    "  topic text NOT NULL,"
    "  key bytea,"
    "  value bytea NOT NULL,"
    "  headers jsonb,"
    "  owner text NOT NULL DEFAULT current_setting('application_name'),"
    "  created_at timestamptz NOT NULL DEFAULT now(),"
    "  sent_at timestamptz);"
    "CREATE INDEX outbox_unsent ON rotor.outbox (id) WHERE sent_at IS NULL;"
    "CREATE TABLE rotor.schedule_claims ("
    "  secret text NOT NULL,"
    "  due timestamptz NOT NULL,"
    "  claimed_by text NOT NULL DEFAULT current_setting('application_name'),"
    "  claimed_at timestamptz NOT NULL DEFAULT now(),"
    "  PRIMARY KEY (secret, due));",
    /* 6: relay */
    /* An outbox row Kafka refuses for good (too large, unknown topic) is parked instead of
     * blocking every row behind it: parked_at and park_reason say when and why; an operator
     * replays it by setting parked_at back to NULL (docs/operations.md). Only adds columns, so
     * its order against other appended migrations does not matter. */
    "ALTER TABLE rotor.outbox ADD COLUMN IF NOT EXISTS parked_at timestamptz,"
    "  ADD COLUMN IF NOT EXISTS park_reason text;",
    /* 7: fence */
    /* Who owns which partition of the commands topic, under which epoch: a claim bumps the
     * epoch, and every rotation write names the claim it was made under (journal_update). The
     * running attempt's claim and deadline are on the row, so that a new owner waits for an
     * attempt its predecessor may still be running. */
    "CREATE TABLE rotor.owners ("
    "  part integer PRIMARY KEY,"
    "  instance text NOT NULL,"
    "  epoch bigint NOT NULL,"
    "  nparts integer NOT NULL,"
    "  claimed_at timestamptz NOT NULL DEFAULT now());"
    "ALTER TABLE rotor.rotations ADD COLUMN run_by text, ADD COLUMN run_part integer,"
    "  ADD COLUMN run_epoch bigint, ADD COLUMN run_pid integer,"
    "  ADD COLUMN run_started timestamptz, ADD COLUMN run_until timestamptz;",
    /* 8: commands */
    /* The commands (approve, reject, retry, abort, a pipeline's answer) applied to a rotation, by
     * CloudEvents id: the write that applies one inserts its id here in the same statement, and
     * refuses an id already present, so that a redelivered copy changes nothing even when the
     * rotation is back in the state the original found (a second approval gate, a second
     * failure). Requests are recognised by their history lines (journal_by_request). */
    "CREATE TABLE rotor.commands ("
    "  rotation_id uuid NOT NULL REFERENCES rotor.rotations (id) ON DELETE CASCADE,"
    "  event_id text NOT NULL,"
    "  type text NOT NULL,"
    "  applied_at timestamptz NOT NULL DEFAULT now(),"
    "  PRIMARY KEY (rotation_id, event_id));",
};
const int journal_nmigrations = sizeof journal_migrations / sizeof journal_migrations[0];

static const char *const status_names[RS__COUNT] = {
    "pending", "running", "waiting", "failed", "completed", "rolled-back", "aborted",
};

const char *journal_status_name(journal_status_t s)
{
    return s < RS__COUNT ? status_names[s] : "?";
}

int journal_status_parse(const char *name, journal_status_t *out)
{
    for (int i = 0; i < RS__COUNT; i++) {
        if (name && strcmp(name, status_names[i]) == 0) {
            *out = (journal_status_t)i;
            return 0;
        }
    }
    return ROTOR_EINVALID;
}

bool journal_status_open(journal_status_t s)
{
    return s <= RS_FAILED;
}

struct journal_s {
    uv_loop_t *loop;
    pgc_conn_t *conn;
    char *dsn; /* kept to reconnect (may hold a password: wiped on close) */
    char appname[128];
    uv_timer_t retry; /* reconnects after a failure, with backoff */
    uint64_t backoff_ms;
    bool reconnecting;
    journal_open_cb open_cb;
    void *open_arg;
    int migration; /* next migration to check while opening */
    void (*outbox_fn)(void *arg);
    void *outbox_arg;
    void (*reconnect_fn)(void *arg);
    void *reconnect_arg;
    uint64_t connect_ms, query_ms; /* deadlines once open (journal_set_timeouts) */
};

/* One request: what to call back, and how to read the result. */
typedef struct {
    journal_t *j;
    void *cb;
    void *arg;
    bool outbox; /* the statement may have added outbox rows */
} jreq_t;

static jreq_t *jreq_new(journal_t *j, void *cb, void *arg, bool outbox)
{
    jreq_t *q = util_calloc(1, sizeof *q);
    q->j = j;
    q->cb = cb;
    q->arg = arg;
    q->outbox = outbox;
    return q;
}

static void log_db_error(const char *what, pgc_conn_t *c, PGresult *res)
{
    const char *msg = res ? PQresultErrorMessage(res) : NULL;
    if (!msg || !*msg)
        msg = pgc_error(c);
    char line[512];
    util_strlcpy(line, msg ? msg : "unknown", sizeof line);
    line[strcspn(line, "\n")] = '\0';
    log_error("journal.query.failed", "query", what, "error", line);
}

/* What a failed query (status < 0) reports to its caller: a cancel as is, since whoever canceled
 * knows; anything else is logged here, once, and is ROTOR_EDB. */
static int db_failed(int status, const char *what, pgc_conn_t *c, PGresult *res)
{
    if (status == ROTOR_ECANCELED)
        return status;
    log_db_error(what, c, res);
    return ROTOR_EDB;
}

/* ---- opening: connect, lock, migrate ---------------------------------------------------- */

/* Journal connections are short requests: one that the server leaves unanswered for this long is
 * taken for cut (a partition that blackholes, a firewall that dropped its state) and made anew.
 * Not while opening: a migration may rightly run long (an index built on a large table), and a
 * start-up that fails is retried by whoever restarts rotor. */
#define JOURNAL_CONNECT_TIMEOUT_MS 10000
#define JOURNAL_QUERY_TIMEOUT_MS 30000

/* The server-side statement_timeout of the journal session: a little under the client's
 * deadline. When the deadline fires the client closes, but a backend waiting on a lock does not
 * notice the closed socket: without this it would stay, and run the statement once the lock is
 * gone (a claim that bumps the epoch and fences this very process). With it the server cancels
 * the statement itself (57014), which the client reports as any failed query. */
static uint64_t statement_timeout_ms(uint64_t query_ms)
{
    uint64_t margin = query_ms / 6 > 500 ? query_ms / 6 : 500;
    return query_ms > margin ? query_ms - margin : query_ms;
}

static void on_statement_timeout_set(pgc_conn_t *c, PGresult *res, int status, void *arg)
{
    (void)arg;
    if (status != 0 && status != ROTOR_ECANCELED)
        log_db_error("set statement_timeout", c, res); /* the next query finds the broken link */
}

/* Queues, first on a session just opened or reconnected, the statement_timeout: only where
 * none is set (0), so that an operator's own value (DSN options, ALTER ROLE ... SET) wins. Not
 * while opening: a migration may rightly run long. */
static void arm_statement_timeout(journal_t *j)
{
    char ms[32];
    snprintf(ms, sizeof ms, "%llu", (unsigned long long)statement_timeout_ms(j->query_ms));
    const char *const params[] = {ms};
    pgc_query(j->conn,
              "SELECT set_config('statement_timeout', $1, false)"
              " WHERE current_setting('statement_timeout') = '0'",
              1, params, on_statement_timeout_set, j);
}

void journal_set_timeouts(journal_t *j, uint64_t connect_ms, uint64_t query_ms)
{
    j->connect_ms = connect_ms;
    j->query_ms = query_ms;
}

/* A failed open leaves its transaction (migration or bootstrap) open: whoever opened the journal
 * closes it on failure (the daemon exits, the CLI reports), and the closed connection rolls the
 * transaction back. */
static void open_done(journal_t *j, int status, const char *reason)
{
    journal_open_cb cb = j->open_cb;
    j->open_cb = NULL;
    if (status == 0) {
        pgc_set_deadlines(j->conn, j->connect_ms, j->query_ms);
        arm_statement_timeout(j);
    }
    if (cb)
        cb(j, status, reason, j->open_arg);
}

static void migrate_next(journal_t *j);

static void on_migration_applied(pgc_conn_t *c, PGresult *res, int status, void *arg)
{
    journal_t *j = arg;
    if (status != 0) {
        if (status == ROTOR_ECANCELED)
            return;
        log_db_error("migrate", c, res);
        open_done(j, ROTOR_EDB, "journal migration failed");
        return;
    }
    j->migration++;
    migrate_next(j);
}

static void on_version_read(pgc_conn_t *c, PGresult *res, int status, void *arg)
{
    journal_t *j = arg;
    if (status != 0) {
        if (status != ROTOR_ECANCELED) {
            log_db_error("schema_version", c, res);
            open_done(j, ROTOR_EDB, "cannot read the journal's schema version");
        }
        return;
    }
    int have = atoi(PQgetvalue(res, 0, 0));
    if (have > journal_nmigrations) {
        open_done(j, ROTOR_EDB, "the journal was migrated by a newer rotor");
        return;
    }
    j->migration = have;
    migrate_next(j);
}

static void on_migrations_committed(pgc_conn_t *c, PGresult *res, int status, void *arg)
{
    journal_t *j = arg;
    if (status == ROTOR_ECANCELED)
        return;
    if (status != 0) {
        log_db_error("commit", c, res);
        open_done(j, ROTOR_EDB, "journal migration commit failed");
        return;
    }
    char v[16];
    snprintf(v, sizeof v, "%d", journal_nmigrations);
    log_info("journal.ready", "schema_version", v);
    open_done(j, 0, NULL);
}

static void migrate_next(journal_t *j)
{
    if (j->migration >= journal_nmigrations) {
        pgc_query(j->conn, "COMMIT", 0, NULL, on_migrations_committed, j);
        return;
    }
    char v[16];
    snprintf(v, sizeof v, "%d", j->migration + 1);
    log_info("journal.migrate", "version", v);
    /* A migration is several statements: rotor.apply_migration EXECUTEs them and records the
     * version, inside the transaction that holds the advisory lock. */
    const char *params[] = {journal_migrations[j->migration], v};
    pgc_query(j->conn, "SELECT rotor.apply_migration($1, $2::int)", 2, params, on_migration_applied,
              j);
}

static void on_locked(pgc_conn_t *c, PGresult *res, int status, void *arg)
{
    journal_t *j = arg;
    if (status != 0) {
        if (status != ROTOR_ECANCELED) {
            log_db_error("lock", c, res);
            open_done(j, ROTOR_EDB, "cannot prepare the journal schema");
        }
        return;
    }
    pgc_query(c, "SELECT coalesce(max(version), 0) FROM rotor.schema_version", 0, NULL,
              on_version_read, j);
}

/* The bootstrap that every later migration relies on: the schema, its version table, and a
 * function that runs one migration's statements and records its version. Idempotent. */
static const char *const bootstrap_sql[] = {
    "BEGIN",
    /* Serialise concurrent start-ups across replicas for the whole migration transaction. */
    "SELECT pg_advisory_xact_lock(7270715)",
    "CREATE SCHEMA IF NOT EXISTS rotor",
    "CREATE TABLE IF NOT EXISTS rotor.schema_version ("
    "  version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())",
    "CREATE OR REPLACE FUNCTION rotor.apply_migration(body text, v integer) RETURNS void"
    "  LANGUAGE plpgsql AS $$ BEGIN EXECUTE body;"
    "  INSERT INTO rotor.schema_version (version) VALUES (v); END $$",
};

static void on_bootstrap_step(pgc_conn_t *c, PGresult *res, int status, void *arg)
{
    journal_t *j = arg;
    if (status == ROTOR_ECANCELED)
        return;
    if (status != 0) {
        log_db_error("bootstrap", c, res);
        open_done(j, ROTOR_EDB, "cannot create the journal schema");
        return;
    }
    j->migration++;
    int n = (int)(sizeof bootstrap_sql / sizeof bootstrap_sql[0]);
    if (j->migration < n)
        pgc_query(c, bootstrap_sql[j->migration], 0, NULL, on_bootstrap_step, j);
    else
        on_locked(c, res, 0, j);
}

/* The outbox's owner, adoption and fencing all compare rows with this session's
 * application_name: a server that keeps another value (cut, bytes replaced) would make two
 * instances one, or an instance a stranger to its own rows. So it must be the name sent. */
static void on_appname(pgc_conn_t *c, PGresult *res, int status, void *arg)
{
    journal_t *j = arg;
    if (status == ROTOR_ECANCELED)
        return;
    if (status != 0) {
        log_db_error("application_name", c, res);
        open_done(j, ROTOR_EDB, "cannot read the journal session's application_name");
        return;
    }
    const char *got = PQgetvalue(res, 0, 0);
    if (strcmp(got, j->appname) != 0) {
        char reason[512];
        snprintf(reason, sizeof reason,
                 "the journal session's application_name is \"%.150s\", not \"%.150s\": "
                 "the instance identity would be ambiguous (check the server's and the DSN's "
                 "settings of application_name)",
                 got, j->appname);
        util_utf8_trim(reason);
        open_done(j, ROTOR_ECONFIG, reason);
        return;
    }
    j->migration = 0;
    pgc_query(c, bootstrap_sql[0], 0, NULL, on_bootstrap_step, j);
}

static void on_connected(pgc_conn_t *c, int status, void *arg)
{
    journal_t *j = arg;
    if (status != 0) {
        char reason[512];
        snprintf(reason, sizeof reason, "cannot connect to the journal: %s", pgc_error(c));
        reason[strcspn(reason, "\n")] = '\0';
        open_done(j, ROTOR_EDB, reason);
        return;
    }
    pgc_query(c, "SELECT current_setting('application_name')", 0, NULL, on_appname, j);
}

/* Connects j->conn with the DSN. TCP keepalives notice a peer host that is gone (libpq's default
 * would wait two hours); they come before the DSN so that the operator's own settings win. */
static int journal_connect(journal_t *j, pgc_connect_cb cb)
{
    const char *const keys[] = {
        "keepalives",       "keepalives_idle", "keepalives_interval", "keepalives_count",
        "tcp_user_timeout", "dbname",          "application_name",    NULL};
    const char *const vals[] = {"1", "10", "5", "3", "30000", j->dsn, j->appname, NULL};
    int rc = pgc_connect(j->loop, keys, vals, cb, j, &j->conn);
    if (rc == 0) /* a reconnection has no migration to run: a deadline on every query */
        pgc_set_deadlines(j->conn, j->connect_ms, j->open_cb ? 0 : j->query_ms);
    return rc;
}

int journal_open(uv_loop_t *loop, const char *dsn, const char *instance, journal_open_cb cb,
                 void *arg, journal_t **out)
{
    journal_t *j = util_calloc(1, sizeof *j);
    j->loop = loop;
    j->open_cb = cb;
    j->open_arg = arg;
    j->connect_ms = JOURNAL_CONNECT_TIMEOUT_MS;
    j->query_ms = JOURNAL_QUERY_TIMEOUT_MS;
    j->dsn = util_strdup(dsn);
    snprintf(j->appname, sizeof j->appname, "rotor/%s", instance);
    uv_timer_init(loop, &j->retry);
    j->retry.data = j;
    int rc = journal_connect(j, on_connected);
    if (rc < 0) {
        journal_close(j);
        return rc;
    }
    *out = j;
    return 0;
}

/* ---- reconnecting: a failover or restart of PostgreSQL must not stop rotor for good --------- */

static void journal_retry_later(journal_t *j);

static void on_reconnected(pgc_conn_t *c, int status, void *arg)
{
    journal_t *j = arg;
    if (status == ROTOR_ECANCELED)
        return;
    if (status != 0) {
        char why[256];
        util_strlcpy(why, pgc_error(c), sizeof why);
        why[strcspn(why, "\n")] = '\0';
        log_warn("journal.reconnect_failed", "error", why);
        j->backoff_ms =
            j->backoff_ms ? (j->backoff_ms * 2 > 30000 ? 30000 : j->backoff_ms * 2) : 1000;
        journal_retry_later(j);
        return;
    }
    j->reconnecting = false;
    j->backoff_ms = 0;
    log_info("journal.reconnected");
    arm_statement_timeout(j); /* first in the queue: before any caller's statement */
    if (j->outbox_fn)
        j->outbox_fn(j->outbox_arg); /* rows written before the failure may wait */
    if (j->reconnect_fn)
        j->reconnect_fn(j->reconnect_arg);
}

static void on_retry(uv_timer_t *t)
{
    journal_t *j = t->data;
    pgc_close(j->conn);
    if (journal_connect(j, on_reconnected) < 0) {
        j->conn = NULL;
        journal_retry_later(j);
    }
}

static void journal_retry_later(journal_t *j)
{
    uv_timer_start(&j->retry, on_retry, j->backoff_ms ? j->backoff_ms : 1000, 0);
}

/* Sends a request if the connection is up; else starts reconnecting and reports ROTOR_EDB, which
 * every caller already treats as "try again shortly". */
static int jq(journal_t *j, const char *sql, int nparams, const char *const *params,
              pgc_result_cb cb, void *arg)
{
    if (j->conn && pgc_ok(j->conn)) {
        int rc = pgc_query(j->conn, sql, nparams, params, cb, arg);
        if (rc < 0)
            free(arg);
        return rc;
    }
    if (!j->reconnecting && !j->open_cb) {
        j->reconnecting = true;
        log_warn("journal.connection_lost", "note", "reconnecting");
        journal_retry_later(j);
    }
    free(arg); /* every jreq_t is a plain allocation the callback would have freed */
    return ROTOR_EDB;
}

static void on_journal_closed(uv_handle_t *h)
{
    journal_t *j = h->data;
    if (j->dsn) {
        secret_wipe(j->dsn, strlen(j->dsn));
        free(j->dsn);
    }
    free(j);
}

void journal_close(journal_t *j)
{
    if (!j)
        return;
    if (j->conn)
        pgc_close(j->conn);
    j->conn = NULL;
    uv_close((uv_handle_t *)&j->retry, on_journal_closed);
}

int journal_ok(journal_t *j)
{
    return j && j->conn && pgc_ok(j->conn);
}

void journal_on_outbox(journal_t *j, void (*fn)(void *arg), void *arg)
{
    j->outbox_fn = fn;
    j->outbox_arg = arg;
}

void journal_on_reconnect(journal_t *j, void (*fn)(void *arg), void *arg)
{
    j->reconnect_fn = fn;
    j->reconnect_arg = arg;
}

/* ---- rows ------------------------------------------------------------------------------- */

/* The last column: is the backend that journaled the running attempt still there. Asked of
 * pg_stat_get_activity(pid), the one backend's row: the pg_stat_activity view gathers every
 * backend and joins pg_database and pg_authid, which made parsing and planning every row read
 * (journal_by_request: 0.38 ms against 0.18) twice as slow as before the column came. A NULL
 * argument would give every backend: no run_pid, no backend. */
#define ROT_COLUMNS                                                                                \
    "id::text, secret, stage, status, seq, attempt, from_slot, to_slot, swapped, trigger,"         \
    " coalesce(request_id, ''), coalesce(reason, ''), coalesce(error, ''),"                        \
    " coalesce(traceparent, ''), coalesce(version, ''), coalesce(old_version, ''),"                \
    " coalesce(actor, ''), (extract(epoch from next_at) * 1000)::bigint,"                          \
    " coalesce((extract(epoch from expires_at) * 1000)::bigint, 0),"                               \
    " (extract(epoch from created_at) * 1000)::bigint, coalesce(run_part, -1),"                    \
    " coalesce(run_epoch, 0), coalesce((extract(epoch from run_until) * 1000)::bigint, 0),"        \
    " run_pid IS NOT NULL AND EXISTS (SELECT 1 FROM pg_stat_get_activity(run_pid) a WHERE"         \
    "  (a.backend_start = run_started OR a.backend_start IS NULL))"

static int row_read(PGresult *res, int i, journal_rot_t *r)
{
    memset(r, 0, sizeof *r);
    int c = 0;
    util_strlcpy(r->id, PQgetvalue(res, i, c++), sizeof r->id);
    util_strlcpy(r->secret, PQgetvalue(res, i, c++), sizeof r->secret);
    if (rotor_stage_parse(PQgetvalue(res, i, c++), &r->stage) < 0 ||
        journal_status_parse(PQgetvalue(res, i, c++), &r->status) < 0)
        return ROTOR_EINVALID;
    r->seq = atoi(PQgetvalue(res, i, c++));
    r->attempt = atoi(PQgetvalue(res, i, c++));
    if (rotor_slot_parse(PQgetvalue(res, i, c++), &r->from_slot) < 0 ||
        rotor_slot_parse(PQgetvalue(res, i, c++), &r->to_slot) < 0)
        return ROTOR_EINVALID;
    r->swapped = PQgetvalue(res, i, c++)[0] == 't';
    util_strlcpy(r->trigger, PQgetvalue(res, i, c++), sizeof r->trigger);
    util_strlcpy(r->request_id, PQgetvalue(res, i, c++), sizeof r->request_id);
    util_strlcpy(r->reason, PQgetvalue(res, i, c++), sizeof r->reason);
    util_strlcpy(r->error, PQgetvalue(res, i, c++), sizeof r->error);
    util_strlcpy(r->traceparent, PQgetvalue(res, i, c++), sizeof r->traceparent);
    util_strlcpy(r->version, PQgetvalue(res, i, c++), sizeof r->version);
    util_strlcpy(r->old_version, PQgetvalue(res, i, c++), sizeof r->old_version);
    util_strlcpy(r->actor, PQgetvalue(res, i, c++), sizeof r->actor);
    r->next_at_ms = strtoll(PQgetvalue(res, i, c++), NULL, 10);
    r->expires_at_ms = strtoll(PQgetvalue(res, i, c++), NULL, 10);
    r->created_at_ms = strtoll(PQgetvalue(res, i, c++), NULL, 10);
    r->run_part = atoi(PQgetvalue(res, i, c++));
    r->run_epoch = strtoll(PQgetvalue(res, i, c++), NULL, 10);
    r->run_until_ms = strtoll(PQgetvalue(res, i, c++), NULL, 10);
    r->run_live = PQgetvalue(res, i, c++)[0] == 't';
    return 0;
}

static void on_rows(pgc_conn_t *c, PGresult *res, int status, void *arg)
{
    jreq_t *q = arg;
    journal_rows_cb cb = (journal_rows_cb)q->cb;
    if (status != 0) {
        cb(q->arg, db_failed(status, "rotations", c, res), NULL, 0);
        free(q);
        return;
    }
    int n = PQntuples(res);
    journal_rot_t *rows = util_calloc((size_t)n, sizeof *rows);
    int bad = 0;
    for (int i = 0; i < n; i++)
        bad |= row_read(res, i, &rows[i]);
    cb(q->arg, bad ? ROTOR_EDB : 0, bad ? NULL : rows, bad ? 0 : n);
    free(rows);
    free(q);
}

int journal_load_open(journal_t *j, journal_rows_cb cb, void *arg)
{
    return jq(j,
              "SELECT " ROT_COLUMNS " FROM rotor.rotations"
              " WHERE status IN ('pending', 'running', 'waiting', 'failed')"
              " ORDER BY created_at",
              0, NULL, on_rows, jreq_new(j, (void *)cb, arg, false));
}

int journal_find(journal_t *j, const char *id, journal_rows_cb cb, void *arg)
{
    const char *params[] = {id};
    return jq(j, "SELECT " ROT_COLUMNS " FROM rotor.rotations WHERE id::text = $1", 1, params,
              on_rows, jreq_new(j, (void *)cb, arg, false));
}

/* A history line that names a request (its rotation's first line, or the request absorbed into
 * it): other lines carry the CloudEvents id of a decision or a pipeline's answer in request_id,
 * which is another producer's id space and never makes a request "seen". */
#define REQUEST_LINE " outcome IN ('requested', 'absorbed')"

int journal_by_request(journal_t *j, const char *request_id, journal_rows_cb cb, void *arg)
{
    const char *params[] = {request_id};
    return jq(j,
              "SELECT " ROT_COLUMNS " FROM rotor.rotations WHERE request_id = $1"
              " OR id = (SELECT rotation_id FROM rotor.history WHERE request_id = $1"
              "          AND" REQUEST_LINE " LIMIT 1) LIMIT 1",
              1, params, on_rows, jreq_new(j, (void *)cb, arg, false));
}

int journal_latest(journal_t *j, const char *secret, journal_rows_cb cb, void *arg)
{
    const char *params[] = {secret};
    return jq(j,
              "SELECT " ROT_COLUMNS " FROM rotor.rotations WHERE secret = $1"
              " ORDER BY (status IN ('pending', 'running', 'waiting', 'failed')) DESC,"
              " created_at DESC LIMIT 1",
              1, params, on_rows, jreq_new(j, (void *)cb, arg, false));
}

/* ---- secrets ------------------------------------------------------------------------------ */

static void on_secret(pgc_conn_t *c, PGresult *res, int status, void *arg)
{
    jreq_t *q = arg;
    journal_secret_cb cb = (journal_secret_cb)q->cb;
    rotor_slot_t slot = SLOT_BLUE;
    if (status == 0 && (PQntuples(res) != 1 || rotor_slot_parse(PQgetvalue(res, 0, 0), &slot) < 0))
        status = ROTOR_EDB;
    if (status != 0) {
        cb(q->arg, db_failed(status, "secrets", c, res), slot, 0, 0);
    } else {
        cb(q->arg, 0, slot, strtoll(PQgetvalue(res, 0, 1), NULL, 10),
           strtoll(PQgetvalue(res, 0, 2), NULL, 10));
    }
    free(q);
}

int journal_secret(journal_t *j, const char *name, rotor_slot_t active, journal_secret_cb cb,
                   void *arg)
{
    const char *params[] = {name, rotor_slot_name(active)};
    return jq(j,
              /* An upsert returns the row whoever inserted it: two replicas meeting a new
               * secret at the same moment both get it (the conflicting one waits for the
               * other's commit); the recorded active slot is never overwritten. */
              "INSERT INTO rotor.secrets AS s (name, active_slot) VALUES ($1, $2)"
              " ON CONFLICT (name) DO UPDATE SET active_slot = s.active_slot"
              " RETURNING active_slot, (extract(epoch from first_seen) * 1000)::bigint,"
              "  coalesce((extract(epoch from last_rotated) * 1000)::bigint, 0)",
              2, params, on_secret, jreq_new(j, (void *)cb, arg, false));
}

static void on_secrets(pgc_conn_t *c, PGresult *res, int status, void *arg)
{
    jreq_t *q = arg;
    journal_secrets_cb cb = (journal_secrets_cb)q->cb;
    if (status != 0) {
        cb(q->arg, db_failed(status, "secrets", c, res), NULL, 0);
        free(q);
        return;
    }
    int n = PQntuples(res);
    journal_secret_row_t *rows = util_calloc((size_t)n + 1, sizeof *rows);
    for (int i = 0; i < n; i++) {
        rows[i].index = (int)strtol(PQgetvalue(res, i, 0), NULL, 10) - 1;
        rows[i].first_seen_ms = strtoll(PQgetvalue(res, i, 1), NULL, 10);
        rows[i].last_rotated_ms = strtoll(PQgetvalue(res, i, 2), NULL, 10);
    }
    cb(q->arg, 0, rows, n);
    free(rows);
    free(q);
}

/* An array literal ({"a","b"}) of strs[0..n-1], each quoted and escaped; malloc'ed. */
static char *array_literal(const char *const *strs, int n)
{
    size_t cap = 3;
    for (int i = 0; i < n; i++)
        cap += 2 * strlen(strs[i]) + 3;
    char *b = util_malloc(cap), *o = b;
    *o++ = '{';
    for (int i = 0; i < n; i++) {
        if (i)
            *o++ = ',';
        *o++ = '"';
        for (const char *s = strs[i]; *s; s++) {
            if (*s == '"' || *s == '\\')
                *o++ = '\\';
            *o++ = *s;
        }
        *o++ = '"';
    }
    *o++ = '}';
    *o = '\0';
    return b;
}

int journal_secrets(journal_t *j, const char *const *names, const rotor_slot_t *active, int n,
                    journal_secrets_cb cb, void *arg)
{
    const char **slots = util_calloc((size_t)n + 1, sizeof *slots);
    for (int i = 0; i < n; i++)
        slots[i] = rotor_slot_name(active[i]);
    char *nb = array_literal(names, n), *ab = array_literal(slots, n);
    free(slots);
    const char *params[] = {nb, ab};
    /* DO NOTHING, not journal_secret's DO UPDATE: a secret met before is not rewritten, so a
     * round over every secret leaves no dead row versions behind. The rows the INSERT adds are
     * not in the statement's snapshot, hence the UNION ALL. */
    int rc = jq(j,
                "WITH want AS (SELECT n, a, i FROM unnest($1::text[], $2::text[])"
                "  WITH ORDINALITY AS u(n, a, i)),"
                " ins AS (INSERT INTO rotor.secrets (name, active_slot) SELECT n, a FROM want"
                "  ON CONFLICT (name) DO NOTHING RETURNING name, first_seen, last_rotated)"
                " SELECT w.i, (extract(epoch from x.first_seen) * 1000)::bigint,"
                "  coalesce((extract(epoch from x.last_rotated) * 1000)::bigint, 0)"
                " FROM want w JOIN (SELECT name, first_seen, last_rotated FROM ins UNION ALL"
                "  SELECT name, first_seen, last_rotated FROM rotor.secrets"
                "  WHERE name = ANY ($1::text[])) x ON x.name = w.n",
                2, params, on_secrets, jreq_new(j, (void *)cb, arg, false));
    free(nb);
    free(ab);
    return rc;
}

/* ---- per-secret figures (metrics) ----------------------------------------------------------- */

static void on_secret_figures(pgc_conn_t *c, PGresult *res, int status, void *arg)
{
    jreq_t *q = arg;
    journal_figures_cb cb = (journal_figures_cb)q->cb;
    if (status != 0) {
        cb(q->arg, db_failed(status, "secret figures", c, res), NULL, 0);
        free(q);
        return;
    }
    int n = PQntuples(res);
    journal_figures_t *rows = util_calloc((size_t)n, sizeof *rows);
    for (int i = 0; i < n; i++) {
        util_strlcpy(rows[i].secret, PQgetvalue(res, i, 0), sizeof rows[i].secret);
        rows[i].rotated_ms = strtoll(PQgetvalue(res, i, 1), NULL, 10);
        rows[i].valid_until_ms = strtoll(PQgetvalue(res, i, 2), NULL, 10);
    }
    cb(q->arg, 0, rows, n);
    free(rows);
    free(q);
}

int journal_secret_figures(journal_t *j, journal_figures_cb cb, void *arg)
{
    /* The password production uses is the one of the latest rotation that ended on the new
     * slot: completed, or aborted after the swap (journal_update makes its to_slot active, as
     * for a completed one). A rollback or an earlier abort left the one before in place. So
     * that row's expires_at is the VALID UNTIL that matters. */
    return jq(j,
              "SELECT DISTINCT ON (secret) secret,"
              "  (extract(epoch from finished_at) * 1000)::bigint,"
              "  coalesce((extract(epoch from expires_at) * 1000)::bigint, 0)"
              " FROM rotor.rotations"
              " WHERE (status = 'completed' OR (status = 'aborted' AND swapped))"
              "  AND finished_at IS NOT NULL"
              " ORDER BY secret, finished_at DESC",
              0, NULL, on_secret_figures, jreq_new(j, (void *)cb, arg, false));
}

/* ---- writes: mutation + history + outbox in one statement ---------------------------------- */

/* Inserts the outbox rows of the JSON array `arr` ({topic, key, value, headers}); `from` joins
 * what gates the insert (the mutation that must have happened). */
#define OUTBOX_INSERT(from, arr)                                                                   \
    "INSERT INTO rotor.outbox (topic, key, value, headers)"                                        \
    "  SELECT x.topic, convert_to(x.key, 'UTF8'), convert_to(x.value, 'UTF8'), x.headers"          \
    "  FROM " from " jsonb_to_recordset(" arr ") AS x(topic text, key text, value text,"           \
    "   headers jsonb)"

/* Wraps a mutation CTE named m (which must RETURN id) with the history lines and the outbox rows,
 * both taken from JSON parameters $h and $o and written only if m touched a row. $h is one
 * history object or an array of them (a write that ends one stage and starts the next carries a
 * line for each), inserted in array order. */
#define HISTORY_AND_OUTBOX(h, o)                                                                   \
    ", hist AS (INSERT INTO rotor.history (rotation_id, trigger, actor, stage, outcome, attempt,"  \
    "   duration_ms, error, request_id)"                                                           \
    "  SELECT m.id, x.trigger, x.actor, x.stage, x.outcome, x.attempt, x.duration_ms, x.error,"    \
    "   x.request_id"                                                                              \
    "  FROM m, jsonb_to_recordset(CASE jsonb_typeof(" h "::jsonb) WHEN 'array' THEN " h "::jsonb"  \
    "   ELSE jsonb_build_array(" h "::jsonb) END) AS x(trigger text, actor text, stage text,"      \
    "   outcome text, attempt int, duration_ms bigint, error text, request_id text)"               \
    "  WHERE " h " IS NOT NULL)"                                                                   \
    ", ob AS (" OUTBOX_INSERT("(SELECT DISTINCT 1 FROM m) AS one,",                                \
                              "coalesce(" o "::jsonb, '[]')") ")"
#define WITH_HISTORY_AND_OUTBOX(h, o) HISTORY_AND_OUTBOX(h, o) " SELECT count(*) FROM m"

/* ---- fencing -------------------------------------------------------------------------------
 * The one place that decides whether a rotation write still belongs to its owner. A CTE f holds
 * a row only while rotor.owners names this instance with the write's epoch for its partition
 * and no claim counts more partitions (a process that has not yet seen the topic grow maps
 * secrets to stale partitions). FOR SHARE orders the write with a competing claim: a claim
 * committed first makes this write see the new epoch and be refused; a write that locked first
 * makes the claim wait for its commit, so the new owner reads what it wrote. The mutation m
 * requires FENCE_HOLDS; FENCED_RESULT reports (rows written, fence held), and on_write tells a
 * lost fence (ROTOR_EFENCED) from a lost compare-and-set (ROTOR_ECONFLICT). The claim is
 * bound as $22..$24 (part, epoch, nparts), as row_params() lays them out. */
#define FENCE_CTE                                                                                  \
    "f AS (SELECT 1 FROM rotor.owners o WHERE o.part = $22::int"                                   \
    "  AND o.instance = current_setting('application_name') AND o.epoch = $23::bigint"             \
    "  AND $24::int >= (SELECT max(nparts) FROM rotor.owners) FOR SHARE OF o)"
#define FENCE_HOLDS " EXISTS (SELECT 1 FROM f)"
#define FENCED_RESULT " SELECT count(*), (SELECT count(*) FROM f) FROM m"

static void on_write(pgc_conn_t *c, PGresult *res, int status, void *arg)
{
    jreq_t *q = arg;
    journal_done_cb cb = (journal_done_cb)q->cb;
    if (status == 0 && atoi(PQgetvalue(res, 0, 0)) == 0) {
        /* A write that applies a command reports whether its event id was applied before
         * (column "already"); a fenced write whether its claim held (FENCED_RESULT). */
        int already = PQfnumber(res, "already");
        bool fenced = PQnfields(res) > 1 && atoi(PQgetvalue(res, 0, 1)) == 0;
        status = fenced ? ROTOR_EFENCED : ROTOR_ECONFLICT;
        if (already >= 0 && PQgetvalue(res, 0, already)[0] == 't')
            status = ROTOR_EALREADY;
    } else if (status == 0) {
        if (q->outbox && q->j->outbox_fn)
            q->j->outbox_fn(q->j->outbox_arg);
    } else {
        status = db_failed(status, "write", c, res);
    }
    if (cb)
        cb(q->arg, status);
    free(q);
}

static void fmt_ms(char *buf, size_t len, int64_t ms)
{
    snprintf(buf, len, "%" PRId64, ms);
}

/* Text parameters of a row, in the order the INSERT and UPDATE below use them: $1..$19 the row,
 * $20 the history line, $21 the outbox rows, $22..$24 the fence (part, epoch, nparts), $25 the
 * running attempt's deadline; the UPDATE adds $26 and $27, the command it applies (event id and
 * type, NULL for none). */
typedef struct {
    char seq[16], attempt[16], next_at[24], expires_at[24];
    char part[16], epoch[24], nparts[16], run_until[24];
    const char *v[27];
} row_params_t;

static void row_params(const journal_rot_t *r, const char *history, const char *outbox,
                       row_params_t *p)
{
    snprintf(p->seq, sizeof p->seq, "%d", r->seq);
    snprintf(p->attempt, sizeof p->attempt, "%d", r->attempt);
    fmt_ms(p->next_at, sizeof p->next_at, r->next_at_ms);
    fmt_ms(p->expires_at, sizeof p->expires_at, r->expires_at_ms);
#define OPT(s) ((s)[0] ? (s) : NULL)
    const char *v[] = {
        r->id,                                   /* $1 */
        r->secret,                               /* $2 */
        rotor_stage_name(r->stage),              /* $3 */
        journal_status_name(r->status),          /* $4 */
        p->seq,                                  /* $5 */
        p->attempt,                              /* $6 */
        rotor_slot_name(r->from_slot),           /* $7 */
        rotor_slot_name(r->to_slot),             /* $8 */
        r->swapped ? "t" : "f",                  /* $9 */
        r->trigger,                              /* $10 */
        OPT(r->request_id),                      /* $11 */
        OPT(r->reason),                          /* $12 */
        OPT(r->error),                           /* $13 */
        OPT(r->traceparent),                     /* $14 */
        OPT(r->version),                         /* $15 */
        OPT(r->old_version),                     /* $16 */
        OPT(r->actor),                           /* $17 */
        p->next_at,                              /* $18 */
        r->expires_at_ms ? p->expires_at : NULL, /* $19 */
    };
#undef OPT
    memcpy(p->v, v, sizeof v);
    p->v[19] = history;
    p->v[20] = outbox;
    snprintf(p->part, sizeof p->part, "%" PRId32, r->fence.part);
    fmt_ms(p->epoch, sizeof p->epoch, r->fence.epoch);
    snprintf(p->nparts, sizeof p->nparts, "%" PRId32, r->fence.nparts);
    fmt_ms(p->run_until, sizeof p->run_until, r->run_until_ms);
    p->v[21] = p->part;
    p->v[22] = p->epoch;
    p->v[23] = p->nparts;
    p->v[24] = p->run_until;
}

/* The runner of an attempt is its writer's journal session: the backend's pid and, since a pid
 * is reused, its start. The attempt's process is live while that session is (ROT_COLUMNS). */
#define RUN_STARTED "(SELECT a.backend_start FROM pg_stat_get_activity(pg_backend_pid()) a)"

int journal_create(journal_t *j, const journal_rot_t *r, const char *history, const char *outbox,
                   journal_done_cb cb, void *arg)
{
    row_params_t p;
    row_params(r, history, outbox, &p);
    /* A request's first attempt may start in its insert (prepare, status running): the row then
     * records whose attempt it is and until when ($25), as journal_update does. */
    return jq(j,
              "WITH " FENCE_CTE ","
              " m AS (INSERT INTO rotor.rotations (id, secret, stage, status, seq, attempt,"
              "  from_slot, to_slot, swapped, trigger, request_id, reason, error, traceparent,"
              "  version, old_version, actor, next_at, expires_at, run_until, run_by, run_part,"
              "  run_epoch, run_pid, run_started)"
              " SELECT $1::uuid, $2, $3, $4, $5::int, $6::int, $7, $8, $9::boolean, $10, $11,"
              "  $12, $13, $14, $15, $16, $17, to_timestamp($18::bigint / 1000.0),"
              "  to_timestamp($19::bigint / 1000.0),"
              "  CASE WHEN $4 = 'running' THEN to_timestamp($25::bigint / 1000.0) END,"
              "  CASE WHEN $4 = 'running' THEN current_setting('application_name') END,"
              "  CASE WHEN $4 = 'running' THEN $22::int END,"
              "  CASE WHEN $4 = 'running' THEN $23::bigint END,"
              "  CASE WHEN $4 = 'running' THEN pg_backend_pid() END,"
              "  CASE WHEN $4 = 'running' THEN " RUN_STARTED " END"
              " FROM rotor.secrets s WHERE s.name = $2 AND s.active_slot = $7 AND" FENCE_HOLDS
              /* a request the journal has seen (it created or was absorbed into a rotation, and
               * wrote a history line with its id) is never applied twice */
              "  AND NOT EXISTS (SELECT 1 FROM rotor.history h WHERE h.request_id = $11"
              "   AND" REQUEST_LINE ")"
              " ON CONFLICT (secret) WHERE status IN ('pending', 'running', 'waiting', 'failed')"
              "  DO NOTHING RETURNING id)" HISTORY_AND_OUTBOX("$20", "$21") FENCED_RESULT,
              25, p.v, on_write, jreq_new(j, (void *)cb, arg, true));
}

int journal_update(journal_t *j, const journal_rot_t *r, const char *history, const char *outbox,
                   journal_done_cb cb, void *arg)
{
    return journal_update_command(j, r, NULL, NULL, history, outbox, cb, arg);
}

int journal_update_command(journal_t *j, const journal_rot_t *r, const char *event_id,
                           const char *type, const char *history, const char *outbox,
                           journal_done_cb cb, void *arg)
{
    row_params_t p;
    row_params(r, history, outbox, &p);
    p.v[25] = event_id;
    p.v[26] = event_id ? type : NULL;
    /* $2, $7 and $10 are part of the row's identity and do not change; they are still bound so
     * one parameter list serves both statements. A running attempt records whose it is and
     * until when ($25); the last runner stays on the row for the audit, its deadline does not. */
    return jq(j,
              "WITH " FENCE_CTE ","
              " m AS (UPDATE rotor.rotations SET stage = $3, status = $4, seq = seq + 1,"
              "  attempt = $6::int, to_slot = $8, swapped = $9::boolean, error = $13,"
              "  version = $15, old_version = $16, actor = $17,"
              "  next_at = to_timestamp($18::bigint / 1000.0),"
              "  expires_at = to_timestamp($19::bigint / 1000.0), updated_at = now(),"
              "  finished_at = CASE WHEN $4 IN ('completed', 'rolled-back', 'aborted')"
              "   THEN now() END,"
              "  run_until = CASE WHEN $4 = 'running' THEN to_timestamp($25::bigint / 1000.0) END,"
              "  run_by = CASE WHEN $4 = 'running' THEN current_setting('application_name')"
              "   ELSE run_by END,"
              "  run_part = CASE WHEN $4 = 'running' THEN $22::int ELSE run_part END,"
              "  run_epoch = CASE WHEN $4 = 'running' THEN $23::bigint ELSE run_epoch END,"
              "  run_pid = CASE WHEN $4 = 'running' THEN pg_backend_pid() ELSE run_pid END,"
              "  run_started = CASE WHEN $4 = 'running' THEN " RUN_STARTED " ELSE run_started END"
              " WHERE id = $1::uuid AND seq = $5::int AND secret = $2 AND from_slot = $7"
              "  AND trigger = $10 AND coalesce(request_id, '') = coalesce($11, '')"
              "  AND coalesce(reason, '') = coalesce($12, '')"
              "  AND coalesce(traceparent, '') = coalesce($14, '') AND" FENCE_HOLDS
              /* a command is applied once: its id recorded below refuses every later copy. A
               * concurrent copy waits for this row's lock and then finds seq moved. */
              "  AND ($26::text IS NULL OR NOT EXISTS (SELECT 1 FROM rotor.commands k"
              "   WHERE k.rotation_id = $1::uuid AND k.event_id = $26))"
              " RETURNING id, secret, status, swapped, to_slot)"
              ", cmd AS (INSERT INTO rotor.commands (rotation_id, event_id, type)"
              "  SELECT m.id, $26, $27 FROM m WHERE $26::text IS NOT NULL)"
              /* The secret's active slot follows production: completed, or aborted after the
               * swap. */
              ", sec AS (UPDATE rotor.secrets s SET active_slot = m.to_slot, last_rotated = now(),"
              "  last_rotation = m.id FROM m WHERE s.name = m.secret"
              "  AND (m.status = 'completed' OR (m.status = 'aborted' AND "
              "m.swapped)))" HISTORY_AND_OUTBOX("$20", "$21")
              /* FENCED_RESULT, and whether the command was applied before */
              " SELECT count(*), (SELECT count(*) FROM f),"
              "  $26::text IS NOT NULL AND EXISTS (SELECT 1 FROM rotor.commands k"
              "  WHERE k.rotation_id = $1::uuid AND k.event_id = $26) AS already FROM m",
              27, p.v, on_write, jreq_new(j, (void *)cb, arg, true));
}

static void on_claimed(pgc_conn_t *c, PGresult *res, int status, void *arg)
{
    jreq_t *q = arg;
    journal_claim_cb cb = (journal_claim_cb)q->cb;
    int64_t epoch = 0;
    if (status == 0 && PQntuples(res) == 1)
        epoch = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    else
        status = db_failed(status ? status : ROTOR_EDB, "claim", c, res);
    cb(q->arg, status, epoch);
    free(q);
}

int journal_claim(journal_t *j, int32_t part, int32_t nparts, int64_t held, journal_claim_cb cb,
                  void *arg)
{
    char p[16], n[16], h[24];
    snprintf(p, sizeof p, "%" PRId32, part);
    snprintf(n, sizeof n, "%" PRId32, nparts);
    fmt_ms(h, sizeof h, held);
    const char *params[] = {p, n, h};
    /* The recorded count only grows: a claim under a stale (smaller) count leaves the larger one,
     * which then fences this claim's writes until it is made again under the new count. */
    return jq(j,
              "INSERT INTO rotor.owners AS o (part, instance, epoch, nparts)"
              " VALUES ($1::int, current_setting('application_name'), 1, $2::int)"
              " ON CONFLICT (part) DO UPDATE SET instance = excluded.instance,"
              "  epoch = CASE WHEN o.instance = excluded.instance AND o.epoch = $3::bigint"
              "   THEN o.epoch ELSE o.epoch + 1 END,"
              "  nparts = greatest(o.nparts, excluded.nparts), claimed_at = now()"
              " RETURNING epoch",
              3, params, on_claimed, jreq_new(j, (void *)cb, arg, false));
}

int journal_release(journal_t *j, const char *id, int32_t part, int64_t epoch, const char *history,
                    journal_done_cb cb, void *arg)
{
    char p[16], e[24];
    snprintf(p, sizeof p, "%" PRId32, part);
    fmt_ms(e, sizeof e, epoch);
    const char *params[] = {id, p, e, history};
    /* Not fenced by rotor.owners: a process that lost the secret may still say that its own
     * attempt is over; the attempt's claim on the row is what identifies it. A released attempt
     * is given back (attempt - 1): it was stopped by a rebalance, not by its effect, so the next
     * owner runs it under the same number and a series of rebalances cannot spend max_attempts.
     * A crash releases nothing, so crash loops still count. */
    return jq(j,
              "WITH m AS (UPDATE rotor.rotations SET run_until = NULL, seq = seq + 1,"
              "  attempt = greatest(attempt - 1, 0), updated_at = now()"
              " WHERE id = $1::uuid AND status = 'running' AND run_part = $2::int"
              "  AND run_epoch = $3::bigint AND run_by = current_setting('application_name')"
              "  AND run_until IS NOT NULL"
              " RETURNING id)" WITH_HISTORY_AND_OUTBOX("$4", "NULL"),
              4, params, on_write, jreq_new(j, (void *)cb, arg, false));
}

/* What journal_note reports: rows noted, a fence that always holds, and whether the command
 * was noted before (the rotation exists, the note did not insert its id). */
#define NOTE_RESULT                                                                                \
    " SELECT count(*), 1, $4::text IS NOT NULL AND"                                                \
    "  EXISTS (SELECT 1 FROM rotor.rotations WHERE id = $1::uuid) AS already FROM m"

int journal_note(journal_t *j, const char *id, const char *event_id, const char *type,
                 const char *history, const char *outbox, journal_done_cb cb, void *arg)
{
    const char *params[] = {id, history, outbox, event_id, event_id ? type : NULL};
    /* With an event id, the note is written only if it inserts the id into rotor.commands (a
     * concurrent copy waits for the first one's commit, then inserts nothing) and no history
     * line of the rotation carries it (a pipeline's answer noted before rotor.commands). */
    return jq(j,
              "WITH c AS (INSERT INTO rotor.commands (rotation_id, event_id, type)"
              "  SELECT r.id, $4, $5 FROM rotor.rotations r WHERE r.id = $1::uuid"
              "  AND $4::text IS NOT NULL AND NOT EXISTS (SELECT 1 FROM rotor.history h"
              "   WHERE h.request_id = $4 AND h.rotation_id = $1::uuid)"
              "  ON CONFLICT DO NOTHING RETURNING rotation_id AS id),"
              " m AS (SELECT id FROM rotor.rotations WHERE id = $1::uuid AND $4::text IS NULL"
              "  UNION ALL SELECT id FROM c)" HISTORY_AND_OUTBOX("$2", "$3") NOTE_RESULT,
              5, params, on_write, jreq_new(j, (void *)cb, arg, true));
}

static void on_applied(pgc_conn_t *c, PGresult *res, int status, void *arg)
{
    jreq_t *q = arg;
    journal_applied_cb cb = (journal_applied_cb)q->cb;
    if (status == 0 && PQntuples(res) != 1)
        status = ROTOR_EDB;
    if (status != 0)
        cb(q->arg, db_failed(status, "command applied", c, res), false);
    else
        cb(q->arg, 0, PQgetvalue(res, 0, 0)[0] == 't');
    free(q);
}

int journal_command_applied(journal_t *j, const char *rotation_id, const char *event_id,
                            journal_applied_cb cb, void *arg)
{
    const char *params[] = {rotation_id, event_id};
    return jq(j,
              "SELECT EXISTS (SELECT 1 FROM rotor.commands WHERE rotation_id = $1::uuid"
              "  AND event_id = $2) OR EXISTS (SELECT 1 FROM rotor.history"
              "  WHERE request_id = $2 AND rotation_id = $1::uuid)",
              2, params, on_applied, jreq_new(j, (void *)cb, arg, false));
}

int journal_absorb(journal_t *j, const char *id, const char *request_id, const char *history,
                   const char *outbox, journal_done_cb cb, void *arg)
{
    const char *params[] = {id, history, outbox, request_id};
    /* journal_by_request's question, asked in the write: a redelivery writes nothing. The id
     * goes into rotor.commands as journal_note's would, so that a concurrent copy (which waits
     * for this commit) inserts nothing either. */
    return jq(j,
              "WITH c AS (INSERT INTO rotor.commands (rotation_id, event_id, type)"
              "  SELECT r.id, $4, 'rotation.requested' FROM rotor.rotations r"
              "  WHERE r.id = $1::uuid"
              "  AND NOT EXISTS (SELECT 1 FROM rotor.rotations WHERE request_id = $4)"
              "  AND NOT EXISTS (SELECT 1 FROM rotor.history WHERE request_id = $4"
              "   AND" REQUEST_LINE ")"
              "  ON CONFLICT DO NOTHING RETURNING rotation_id AS id),"
              " m AS (SELECT id FROM c)" WITH_HISTORY_AND_OUTBOX("$2", "$3"),
              4, params, on_write, jreq_new(j, (void *)cb, arg, true));
}

static char *hex_encode(const void *data, size_t len)
{
    static const char digits[] = "0123456789abcdef";
    const unsigned char *b = data;
    char *out = util_malloc(len * 2 + 1);
    for (size_t i = 0; i < len; i++) {
        out[2 * i] = digits[b[i] >> 4];
        out[2 * i + 1] = digits[b[i] & 15];
    }
    out[len * 2] = '\0';
    return out;
}

int journal_dead_letter(journal_t *j, const char *dlq_topic, const char *topic, int32_t partition,
                        int64_t offset, const void *key, size_t key_len, const void *value,
                        size_t len, const char *headers, const char *reason, journal_done_cb cb,
                        void *arg)
{
    char part[16], off[24];
    snprintf(part, sizeof part, "%" PRId32, partition);
    fmt_ms(off, sizeof off, offset);
    char *hkey = key ? hex_encode(key, key_len) : NULL;
    char *hval = hex_encode(value ? value : "", value ? len : 0);
    const char *params[] = {dlq_topic, hkey, hval, headers, reason, topic, part, off};
    int rc =
        jq(j,

           "WITH m AS (INSERT INTO rotor.outbox (topic, key, value, headers)"
           " VALUES ($1, decode($2, 'hex'), decode($3, 'hex'), coalesce($4::jsonb, '{}'::jsonb)"
           "  || jsonb_build_object('rotor-dlq-reason', $5::text, 'rotor-dlq-topic', $6::text,"
           "  'rotor-dlq-partition', $7::text, 'rotor-dlq-offset', $8::text)) RETURNING id)"
           " SELECT count(*) FROM m",
           8, params, on_write, jreq_new(j, (void *)cb, arg, true));
    free(hkey);
    free(hval);
    return rc;
}

int journal_outbox_add(journal_t *j, const char *outbox, journal_done_cb cb, void *arg)
{
    const char *params[] = {outbox};
    return jq(j,

              "WITH m AS (" OUTBOX_INSERT("", "$1::jsonb") " RETURNING id)"
                                                           " SELECT count(*) + 1 FROM m",
              1, params, on_write, jreq_new(j, (void *)cb, arg, true));
}

int journal_version_written(journal_t *j, const char *secret, const char *version,
                            journal_rows_cb cb, void *arg)
{
    const char *params[] = {secret, version};
    return jq(j,
              "SELECT " ROT_COLUMNS " FROM rotor.rotations"
              " WHERE secret = $1 AND version = $2 LIMIT 1",
              2, params, on_rows, jreq_new(j, (void *)cb, arg, false));
}

int journal_schedule_claim(journal_t *j, const char *secret, int64_t due_ms, const char *outbox,
                           journal_done_cb cb, void *arg)
{
    char due[24];
    fmt_ms(due, sizeof due, due_ms);
    const char *params[] = {secret, due, outbox};
    return jq(j,

              "WITH m AS (INSERT INTO rotor.schedule_claims (secret, due)"
              "  VALUES ($1, to_timestamp($2::bigint / 1000.0)) ON CONFLICT DO NOTHING RETURNING 1)"
              ", ob AS (" OUTBOX_INSERT("m,", "$3::jsonb") ")"
                                                           " SELECT count(*) FROM m",
              3, params, on_write, jreq_new(j, (void *)cb, arg, true));
}

/* ---- outbox ------------------------------------------------------------------------------ */

static void on_outbox_rows(pgc_conn_t *c, PGresult *res, int status, void *arg)
{
    jreq_t *q = arg;
    journal_outbox_cb cb = (journal_outbox_cb)q->cb;
    if (status != 0) {
        cb(q->arg, db_failed(status, "outbox", c, res), NULL, 0);
        free(q);
        return;
    }
    int n = PQntuples(res);
    journal_outbox_row_t *rows = util_calloc((size_t)n, sizeof *rows);
    unsigned char **bufs = util_calloc((size_t)n * 2, sizeof *bufs);
    for (int i = 0; i < n; i++) {
        rows[i].id = strtoll(PQgetvalue(res, i, 0), NULL, 10);
        rows[i].topic = PQgetvalue(res, i, 1);
        if (!PQgetisnull(res, i, 2)) {
            bufs[2 * i] =
                PQunescapeBytea((const unsigned char *)PQgetvalue(res, i, 2), &rows[i].key_len);
            rows[i].key = bufs[2 * i];
        }
        bufs[2 * i + 1] =
            PQunescapeBytea((const unsigned char *)PQgetvalue(res, i, 3), &rows[i].len);
        rows[i].value = bufs[2 * i + 1];
        rows[i].headers = PQgetisnull(res, i, 4) ? NULL : PQgetvalue(res, i, 4);
    }
    cb(q->arg, 0, rows, n);
    for (int i = 0; i < 2 * n; i++)
        PQfreemem(bufs[i]);
    free(bufs);
    free(rows);
    free(q);
}

int journal_outbox_fetch(journal_t *j, int64_t after_id, int limit, size_t max_bytes,
                         journal_outbox_cb cb, void *arg)
{
    char after[24], lim[16], bytes[24];
    fmt_ms(after, sizeof after, after_id);
    snprintf(lim, sizeof lim, "%d", limit);
    snprintf(bytes, sizeof bytes, "%zu", max_bytes);
    const char *params[] = {after, lim, bytes};
    /* An instance that restarts under its own name resumes its rows at once; rows of another
     * instance become this one's through journal_outbox_adopt. The rows before one must hold
     * less than max_bytes for it to come along: octet_length reads a bytea's size from its
     * TOAST pointer, so rows left out are never read in full. */
    return jq(j,
              "SELECT id, topic, key, value, headers FROM ("
              " SELECT id, topic, key, value, headers, coalesce(sum(size) OVER (ORDER BY id"
              "   ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS before FROM ("
              "  SELECT id, topic, key, value, headers::text AS headers,"
              "   coalesce(octet_length(key), 0) + octet_length(value)"
              "    + coalesce(octet_length(headers::text), 0) AS size FROM rotor.outbox"
              "  WHERE sent_at IS NULL AND parked_at IS NULL AND id > $1::bigint"
              "   AND owner = current_setting('application_name')"
              "  ORDER BY id LIMIT $2::int) s) w"
              " WHERE before < $3::bigint ORDER BY id",
              3, params, on_outbox_rows, jreq_new(j, (void *)cb, arg, false));
}

static void on_adopted(pgc_conn_t *c, PGresult *res, int status, void *arg)
{
    jreq_t *q = arg;
    journal_adopt_cb cb = (journal_adopt_cb)q->cb;
    if (status != 0 && status != ROTOR_ECANCELED)
        log_db_error("outbox adopt", c, res);
    int64_t first = 0;
    if (status == 0 && !PQgetisnull(res, 0, 0))
        first = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    cb(q->arg, status == 0 ? 0 : ROTOR_EDB, first);
    free(q);
}

/* Owned by the relay (relay.c). */
int journal_outbox_adopt(journal_t *j, journal_adopt_cb cb, void *arg)
{
    /* A pod replaced under a new name leaves unsent rows behind; after a minute they are this
     * instance's to publish (one instance wins each row: the UPDATE locks it).
     * Only rows of an owner with no journal session left (its application_name is gone from
     * pg_stat_activity, which every role may read) are taken: a live replica whose rows wait on
     * a slow broker keeps them, instead of two replicas taking one row from each other every ten
     * seconds and publishing one secret's events from two producers out of order. Parked rows
     * are never adopted: another producer would refuse them just the same. */
    return jq(j,
              "WITH m AS (UPDATE rotor.outbox o SET owner = current_setting('application_name')"
              " WHERE sent_at IS NULL AND parked_at IS NULL"
              "  AND owner <> current_setting('application_name')"
              "  AND created_at < now() - interval '1 minute'"
              "  AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a"
              "   WHERE a.application_name = o.owner) RETURNING id)"
              " SELECT min(id) FROM m",
              0, NULL, on_adopted, jreq_new(j, (void *)cb, arg, false));
}

/* Owned by the relay (relay.c). */
int journal_outbox_park(journal_t *j, int64_t id, const char *reason, journal_done_cb cb, void *arg)
{
    char ids[24];
    fmt_ms(ids, sizeof ids, id);
    const char *params[] = {ids, reason};
    /* A row already sent (a copy went through before the refusal) stays sent. */
    return jq(j,
              "WITH m AS (UPDATE rotor.outbox SET parked_at = now(), park_reason = $2"
              " WHERE id = $1::bigint AND sent_at IS NULL AND parked_at IS NULL RETURNING id)"
              " SELECT count(*) + 1 FROM m",
              2, params, on_write, jreq_new(j, (void *)cb, arg, false));
}

static void on_outbox_stats(pgc_conn_t *c, PGresult *res, int status, void *arg)
{
    jreq_t *q = arg;
    journal_outbox_stats_cb cb = (journal_outbox_stats_cb)q->cb;
    int64_t backlog = 0, parked = 0;
    if (status == 0) {
        backlog = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
        parked = strtoll(PQgetvalue(res, 0, 1), NULL, 10);
    } else {
        status = db_failed(status, "outbox stats", c, res);
    }
    cb(q->arg, status, backlog, parked);
    free(q);
}

/* Owned by the relay (relay.c). */
int journal_outbox_stats(journal_t *j, journal_outbox_stats_cb cb, void *arg)
{
    /* Whole journal, every owner: what an operator alerts on. The outbox_unsent index keeps it
     * to the unsent rows. */
    return jq(j,
              "SELECT count(*) FILTER (WHERE parked_at IS NULL),"
              " count(*) FILTER (WHERE parked_at IS NOT NULL)"
              " FROM rotor.outbox WHERE sent_at IS NULL",
              0, NULL, on_outbox_stats, jreq_new(j, (void *)cb, arg, false));
}

/* Owned by the relay (relay.c): one statement for a whole batch of delivery reports. */
int journal_outbox_sent(journal_t *j, const int64_t *ids, int n, journal_done_cb cb, void *arg)
{
    /* "{1,2,3}" as one array parameter. */
    size_t cap = (size_t)n * 21 + 3, used = 0;
    char *arr = util_malloc(cap);
    arr[used++] = '{';
    for (int i = 0; i < n; i++)
        used += (size_t)snprintf(arr + used, cap - used, "%s%" PRId64, i ? "," : "", ids[i]);
    arr[used++] = '}';
    arr[used] = '\0';
    const char *params[] = {arr};
    int rc = jq(j,
                "WITH m AS (UPDATE rotor.outbox SET sent_at = now()"
                " WHERE id = ANY($1::bigint[]) AND sent_at IS NULL RETURNING id)"
                " SELECT count(*) + 1 FROM m",
                1, params, on_write, jreq_new(j, (void *)cb, arg, false));
    free(arr);
    return rc;
}
