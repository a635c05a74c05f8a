/* db_postgres.c: the `postgres` database driver: role checks, SCRAM password, login, retirement. */
#include "db.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pg.h"
#include "rotor.h"
#include "util.h"

typedef struct db_op_s db_op_t;
typedef struct db_pool_s db_pool_t;

struct db_req_s {
    uv_loop_t *loop;
    const db_op_t *op;
    pgc_conn_t *conn;
    db_pool_t *pool; /* admin operations: the pool their connection belongs to */
    bool reused;     /* the connection came from the pool (it may have died while idle) */
    bool retried;    /* already moved to a fresh connection once */
    db_req_t *next_waiting;
    char *role, *other, *probe;
    rotor_secret_t *password;
    int64_t valid_until_ms;
    db_cb cb;
    void *arg;
    uv_work_t work;
    bool work_active; /* the threadpool holds req and the connection */
    char *verifier;   /* from PQencryptPasswordConn; PQfreemem */
    bool done;        /* cb has run */
    long count;
    char reason[512];
};

/* One operation: what to do once connected, and how to read the query's result. */
struct db_op_s {
    const char *name;
    bool as_role; /* logs in as the managed role: a failed connect is a failed login */
    void (*start)(db_req_t *r);
    void (*result)(db_req_t *r, PGresult *res);
};

/* ---- the admin connection pool ------------------------------------------------------------ */

/* Connections to one admin DSN are kept after an operation that succeeded and reused by the next:
 * a fleet of rotations would otherwise have the server fork and authenticate a backend for
 * every role check, ALTER ROLE and session sweep, which costs it more than the statements. At
 * most DB_POOL_MAX are open per DSN at once; operations beyond that wait, FIFO, for one to be
 * handed back. A connection whose operation failed or was canceled is closed, never kept; one
 * that died while idle (a restart, pg_terminate_backend) is replaced once by a fresh one, and one
 * idle for over DB_POOL_IDLE_MS is closed by the next operation of any pool (an Entra token's
 * DSN changes with the token: its pool empties this way). Logins as a managed role (verify) are
 * never pooled. Loop thread only. */
#define DB_POOL_MAX 8
#define DB_POOL_IDLE_MS 60000

struct db_pool_s {
    uv_loop_t *loop;
    char *dsn;                     /* may hold a password: wiped on free */
    pgc_conn_t *idle[DB_POOL_MAX]; /* a stack: the longest idle first */
    int64_t idle_since[DB_POOL_MAX];
    int nidle;
    int nopen; /* idle, in use, or connecting */
    db_req_t *wait_head, *wait_tail;
    db_pool_t *next;
};

static db_pool_t *pools;

static db_pool_t *pool_of(uv_loop_t *loop, const char *dsn)
{
    for (db_pool_t *p = pools; p; p = p->next) {
        if (p->loop == loop && strcmp(p->dsn, dsn) == 0)
            return p;
    }
    db_pool_t *p = util_calloc(1, sizeof *p);
    p->loop = loop;
    p->dsn = util_strdup(dsn);
    p->next = pools;
    pools = p;
    return p;
}

static void pool_free_if_unused(db_pool_t *p)
{
    if (p->nopen > 0 || p->wait_head)
        return;
    for (db_pool_t **pp = &pools; *pp; pp = &(*pp)->next) {
        if (*pp == p) {
            *pp = p->next;
            break;
        }
    }
    secret_wipe(p->dsn, strlen(p->dsn));
    free(p->dsn);
    free(p);
}

void db_close_idle(uv_loop_t *loop)
{
    for (db_pool_t *p = pools, *next; p; p = next) {
        next = p->next;
        if (p->loop != loop)
            continue;
        while (p->nidle > 0) {
            pgc_close(p->idle[--p->nidle]);
            p->nopen--;
        }
        pool_free_if_unused(p);
    }
}

static void on_connected(pgc_conn_t *c, int status, void *arg);
static void req_finish(db_req_t *r, int status, const char *reason);

/* Closes the connections of loop's pools idle for too long (keep stays, even if empty). */
static void pool_prune(uv_loop_t *loop, const db_pool_t *keep)
{
    int64_t old = util_now_ms() - DB_POOL_IDLE_MS;
    for (db_pool_t *p = pools, *next; p; p = next) {
        next = p->next;
        if (p->loop != loop)
            continue;
        int n = 0;
        while (n < p->nidle && p->idle_since[n] < old)
            pgc_close(p->idle[n++]);
        if (n == 0)
            continue;
        memmove(p->idle, p->idle + n, (size_t)(p->nidle - n) * sizeof p->idle[0]);
        memmove(p->idle_since, p->idle_since + n, (size_t)(p->nidle - n) * sizeof p->idle_since[0]);
        p->nidle -= n;
        p->nopen -= n;
        if (p != keep)
            pool_free_if_unused(p);
    }
}

/* Gives r a connection of its pool: an idle one (the operation starts now), a new one (it starts
 * once connected) or, with DB_POOL_MAX open, a place in the queue. 0 or a negative error. */
static int pool_acquire(db_req_t *r)
{
    db_pool_t *p = r->pool;
    while (p->nidle > 0) {
        pgc_conn_t *c = p->idle[--p->nidle];
        if (pgc_ok(c)) {
            r->conn = c;
            r->reused = true;
            r->op->start(r);
            return 0;
        }
        pgc_close(c);
        p->nopen--;
    }
    if (p->nopen >= DB_POOL_MAX) {
        if (p->wait_tail)
            p->wait_tail->next_waiting = r;
        else
            p->wait_head = r;
        p->wait_tail = r;
        return 0;
    }
    int rc = pgc_connect_dsn(r->loop, p->dsn, on_connected, r, &r->conn);
    if (rc != 0) {
        r->conn = NULL;
        return rc;
    }
    p->nopen++;
    return 0;
}

static bool pool_unqueue(db_pool_t *p, db_req_t *r)
{
    for (db_req_t **pp = &p->wait_head, *prev = NULL; *pp; prev = *pp, pp = &(*pp)->next_waiting) {
        if (*pp == r) {
            *pp = r->next_waiting;
            if (p->wait_tail == r)
                p->wait_tail = prev;
            r->next_waiting = NULL;
            return true;
        }
    }
    return false;
}

/* Takes back r's connection: kept (or handed to the first waiting operation) when r succeeded
 * and it is at rest, else closed, and its place given to the first waiting operation. */
static void pool_release(db_req_t *r, bool keep)
{
    db_pool_t *p = r->pool;
    pgc_conn_t *c = r->conn;
    r->conn = NULL;
    if (!c)
        return;
    keep = keep && pgc_ok(c) && pgc_pending(c) == 0;
    if (!keep) {
        pgc_close(c);
        p->nopen--;
    }
    db_req_t *w = p->wait_head;
    if (w) {
        p->wait_head = w->next_waiting;
        if (!p->wait_head)
            p->wait_tail = NULL;
        w->next_waiting = NULL;
        if (keep) {
            w->conn = c;
            w->reused = true;
            w->op->start(w);
        } else if (pool_acquire(w) != 0) {
            req_finish(w, ROTOR_EDB, "cannot connect to the admin database");
        }
        return;
    }
    if (keep) {
        p->idle_since[p->nidle] = util_now_ms();
        p->idle[p->nidle++] = c;
        pool_prune(p->loop, p);
    } else {
        pool_free_if_unused(p);
    }
}

static void req_free(db_req_t *r)
{
    free(r->role);
    free(r->other);
    free(r->probe);
    secret_free(r->password);
    if (r->verifier) {
        secret_wipe(r->verifier, strlen(r->verifier));
        PQfreemem(r->verifier);
    }
    free(r);
}

static void req_close_conn(db_req_t *r)
{
    pgc_conn_t *c = r->conn;
    r->conn = NULL;
    if (c)
        pgc_close(c);
}

/* Reports once. While the threadpool still uses the connection it stays open; the work's
 * completion closes it and frees the request. */
static void req_finish(db_req_t *r, int status, const char *reason)
{
    if (r->done)
        return;
    r->done = true;
    if (r->pool && !r->conn && pool_unqueue(r->pool, r)) {
        /* canceled while waiting for a connection: nothing to give back */
    } else if (!r->work_active && r->pool) {
        pool_release(r, status == 0);
    } else if (!r->work_active) {
        req_close_conn(r);
    }
    r->cb(r->arg, status, status == 0 ? NULL : reason, status == 0 ? r->count : 0);
    if (!r->work_active)
        req_free(r);
}

/* libpq messages end in a newline and may span lines: keep them on one line for the reason. */
static void finish_pg(db_req_t *r, int status, const char *what, const char *msg)
{
    char buf[sizeof r->reason];
    snprintf(buf, sizeof buf, "%s: %s", what, msg && *msg ? msg : "unknown error");
    size_t n = strlen(buf);
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == ' '))
        buf[--n] = '\0';
    for (char *p = buf; *p; p++)
        if (*p == '\n')
            *p = ' ';
    req_finish(r, status, buf);
}

/* Whether a failed statement failed because the session is gone rather than because of what
 * it asked: the socket is closed, or the server said so first (57P01 admin_shutdown from
 * pg_terminate_backend or a restart, class 08 connection exceptions). libpq reports the server's
 * FATAL before it has seen the end of the socket, so PQstatus alone misses the common case. */
static bool session_lost(pgc_conn_t *c, const PGresult *res)
{
    if (PQstatus(pgc_raw(c)) == CONNECTION_BAD)
        return true;
    const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    return state && (strncmp(state, "57P", 3) == 0 || strncmp(state, "08", 2) == 0);
}

static void on_result(pgc_conn_t *c, PGresult *res, int status, void *arg)
{
    db_req_t *r = arg;
    if (r->done)
        return;
    if (status != 0 && status != ROTOR_ECANCELED && r->reused && !r->retried &&
        session_lost(c, res)) {
        /* A pooled connection the server closed while it was idle: once more, on a fresh one
         * (it takes the dead one's place in the pool). */
        r->retried = true;
        r->reused = false;
        pgc_close(r->conn);
        r->conn = NULL;
        if (pgc_connect_dsn(r->loop, r->pool->dsn, on_connected, r, &r->conn) != 0) {
            r->conn = NULL;
            r->pool->nopen--;
            finish_pg(r, ROTOR_EDB, r->op->name, "cannot reconnect to the admin database");
        }
        return;
    }
    if (status != 0) {
        finish_pg(r, status == ROTOR_ECANCELED ? ROTOR_ECANCELED : ROTOR_EDB, r->op->name,
                  pgc_error(c));
        return;
    }
    r->op->result(r, res);
}

static void query(db_req_t *r, const char *sql, int nparams, const char *const *params)
{
    int rc = pgc_query(r->conn, sql, nparams, params, on_result, r);
    if (rc != 0)
        finish_pg(r, ROTOR_EDB, r->op->name, pgc_error(r->conn));
}

static void on_connected(pgc_conn_t *c, int status, void *arg)
{
    db_req_t *r = arg;
    if (r->done)
        return;
    if (status != 0) {
        char what[160];
        if (r->op->as_role)
            snprintf(what, sizeof what, "%s: login as %s failed", r->op->name, r->role);
        else
            snprintf(what, sizeof what, "%s: cannot connect", r->op->name);
        finish_pg(r, status == ROTOR_ECANCELED ? ROTOR_ECANCELED : ROTOR_EDB, what, pgc_error(c));
        return;
    }
    r->op->start(r);
}

/* ---- check roles ---- */

/* Membership differences are computed by the server, both ways, over role names. */
static const char check_roles_sql[] =
    "WITH m AS (SELECT u.rolname AS member, g.rolname AS grp FROM pg_auth_members am "
    "JOIN pg_roles u ON u.oid = am.member JOIN pg_roles g ON g.oid = am.roleid) "
    "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1), "
    "EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $2), "
    "coalesce((SELECT rolcanlogin FROM pg_roles WHERE rolname = $1), false), "
    "(SELECT string_agg(grp, ', ' ORDER BY grp) FROM (SELECT grp FROM m WHERE member = $1 "
    "EXCEPT SELECT grp FROM m WHERE member = $2) s), "
    "(SELECT string_agg(grp, ', ' ORDER BY grp) FROM (SELECT grp FROM m WHERE member = $2 "
    "EXCEPT SELECT grp FROM m WHERE member = $1) s)";

static void check_roles_start(db_req_t *r)
{
    const char *params[] = {r->role, r->other};
    query(r, check_roles_sql, 2, params);
}

static void check_roles_result(db_req_t *r, PGresult *res)
{
    if (PQntuples(res) != 1 || PQnfields(res) != 5) {
        req_finish(r, ROTOR_EDB, "check-roles: unexpected result shape");
        return;
    }
    const char *missing = PQgetisnull(res, 0, 3) ? NULL : PQgetvalue(res, 0, 3);
    const char *extra = PQgetisnull(res, 0, 4) ? NULL : PQgetvalue(res, 0, 4);
    char *reason = r->reason;
    size_t len = sizeof r->reason;
    if (strcmp(PQgetvalue(res, 0, 0), "t") != 0 || strcmp(PQgetvalue(res, 0, 1), "t") != 0) {
        const char *absent = strcmp(PQgetvalue(res, 0, 0), "t") != 0 ? r->role : r->other;
        snprintf(reason, len, "role %s does not exist", absent);
        req_finish(r, ROTOR_ENOTFOUND, reason);
    } else if (strcmp(PQgetvalue(res, 0, 2), "t") != 0) {
        snprintf(reason, len, "active role %s cannot log in", r->role);
        req_finish(r, ROTOR_EFAIL, reason);
    } else if (missing || extra) {
        if (missing)
            snprintf(reason, len, "role %s is not a member of: %s", r->other, missing);
        size_t n = strlen(reason);
        if (extra)
            snprintf(reason + n, len - n, "%srole %s is a member of extra: %s", n ? "; " : "",
                     r->other, extra);
        req_finish(r, ROTOR_EFAIL, reason);
    } else {
        req_finish(r, 0, NULL);
    }
}

/* ---- set password ---- */

/* Runs on the threadpool: the connection is at rest (pg.c's poll is stopped), and with an explicit
 * algorithm PQencryptPasswordConn does no I/O, only the hash. */
static void hash_work(uv_work_t *w)
{
    db_req_t *r = w->data;
    r->verifier =
        PQencryptPasswordConn(pgc_raw(r->conn), r->password->buf, r->role, "scram-sha-256");
    secret_free(r->password);
    r->password = NULL;
}

static char *escaped(PGconn *pg, const char *s, bool ident)
{
    char *e = ident ? PQescapeIdentifier(pg, s, strlen(s)) : PQescapeLiteral(pg, s, strlen(s));
    char *copy = e ? util_strdup(e) : NULL;
    if (e) {
        secret_wipe(e, strlen(e));
        PQfreemem(e);
    }
    return copy;
}

static void set_password_send(db_req_t *r)
{
    PGconn *pg = pgc_raw(r->conn);
    char until[40];
    util_format_time(r->valid_until_ms, until, sizeof until);
    char *ident = escaped(pg, r->role, true);
    char *verifier = escaped(pg, r->verifier, false);
    char *valid = escaped(pg, until, false);
    if (!ident || !verifier || !valid) {
        /* r is reported and freed inside: nothing of it is used after this call */
        finish_pg(r, ROTOR_EDB, "set-password: cannot quote the role or the verifier",
                  PQerrorMessage(pg));
    } else {
        size_t n = strlen(ident) + strlen(verifier) + strlen(valid) + 64;
        char *sql = util_malloc(n);
        snprintf(sql, n, "ALTER ROLE %s WITH LOGIN PASSWORD %s VALID UNTIL %s", ident, verifier,
                 valid);
        query(r, sql, 0, NULL);
        secret_wipe(sql, n);
        free(sql);
    }
    free(ident);
    if (verifier)
        secret_wipe(verifier, strlen(verifier));
    free(verifier);
    free(valid);
}

static void hash_done(uv_work_t *w, int status)
{
    db_req_t *r = w->data;
    r->work_active = false;
    if (r->done) {
        /* Canceled while hashing: the callback already ran; release what the work held. */
        if (r->pool)
            pool_release(r, false);
        else
            req_close_conn(r);
        req_free(r);
        return;
    }
    if (status != 0 || !r->verifier) {
        finish_pg(r, ROTOR_EDB, "set-password: cannot hash the password",
                  status != 0 ? uv_strerror(status) : PQerrorMessage(pgc_raw(r->conn)));
        return;
    }
    set_password_send(r); /* the verifier stays (wiped in req_free) for a retry */
}

static void set_password_start(db_req_t *r)
{
    if (r->verifier) {
        /* again on a fresh connection (pool_acquire's retry): already hashed */
        set_password_send(r);
        return;
    }
    r->work.data = r;
    if (uv_queue_work(r->loop, &r->work, hash_work, hash_done) != 0) {
        req_finish(r, ROTOR_EFAIL, "set-password: cannot queue the hash");
        return;
    }
    r->work_active = true;
}

static void command_result(db_req_t *r, PGresult *res)
{
    (void)res;
    req_finish(r, 0, NULL);
}

/* ---- nologin, end sessions, verify ---- */

static void set_nologin_start(db_req_t *r)
{
    char *ident = escaped(pgc_raw(r->conn), r->role, true);
    if (!ident) {
        finish_pg(r, ROTOR_EDB, "set-nologin", PQerrorMessage(pgc_raw(r->conn)));
        return;
    }
    char sql[512];
    int n = snprintf(sql, sizeof sql, "ALTER ROLE %s NOLOGIN", ident);
    free(ident);
    if (n < 0 || (size_t)n >= sizeof sql) {
        req_finish(r, ROTOR_EINVALID, "set-nologin: role name too long");
        return;
    }
    query(r, sql, 0, NULL);
}

static void end_sessions_start(db_req_t *r)
{
    const char *params[] = {r->role};
    query(r,
          "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
          "WHERE usename = $1 AND pid <> pg_backend_pid()",
          1, params);
}

static void end_sessions_result(db_req_t *r, PGresult *res)
{
    if (PQntuples(res) != 1 || PQgetisnull(res, 0, 0)) {
        req_finish(r, ROTOR_EDB, "end-sessions: unexpected result shape");
        return;
    }
    r->count = strtol(PQgetvalue(res, 0, 0), NULL, 10);
    req_finish(r, 0, NULL);
}

static void can_login_start(db_req_t *r)
{
    const char *params[] = {r->role};
    query(r, "SELECT coalesce((SELECT rolcanlogin FROM pg_roles WHERE rolname = $1), false)", 1,
          params);
}

static void can_login_result(db_req_t *r, PGresult *res)
{
    if (PQntuples(res) != 1 || PQgetisnull(res, 0, 0)) {
        req_finish(r, ROTOR_EDB, "can-login: unexpected result shape");
        return;
    }
    r->count = strcmp(PQgetvalue(res, 0, 0), "t") == 0;
    req_finish(r, 0, NULL);
}

static void verify_start(db_req_t *r)
{
    query(r, r->probe, 0, NULL);
}

/* count = 1 when the server asked for the password: a login under pg_hba trust (or peer, cert)
 * succeeds with any password and proves nothing about it. */
static void verify_result(db_req_t *r, PGresult *res)
{
    (void)res;
    r->count = PQconnectionUsedPassword(pgc_raw(r->conn)) ? 1 : 0;
    req_finish(r, 0, NULL);
}

static const db_op_t op_check_roles = {"check-roles", false, check_roles_start, check_roles_result};
static const db_op_t op_set_password = {"set-password", false, set_password_start, command_result};
static const db_op_t op_verify = {"verify-login", true, verify_start, verify_result};
static const db_op_t op_set_nologin = {"set-nologin", false, set_nologin_start, command_result};
static const db_op_t op_can_login = {"can-login", false, can_login_start, can_login_result};
static const db_op_t op_end_sessions = {"end-sessions", false, end_sessions_start,
                                        end_sessions_result};

/* ---- entry points ---- */

static db_req_t *req_new(uv_loop_t *loop, const db_op_t *op, const char *role, db_cb cb, void *arg)
{
    db_req_t *r = util_calloc(1, sizeof *r);
    r->loop = loop;
    r->op = op;
    r->role = util_strdup(role);
    r->cb = cb;
    r->arg = arg;
    return r;
}

/* Admin operations run on a connection of the DSN's pool. */
static int req_start_dsn(db_req_t *r, const char *dsn, db_req_t **out)
{
    r->pool = pool_of(r->loop, dsn);
    pool_prune(r->loop, r->pool);
    *out = r;
    int rc = pool_acquire(r);
    if (rc != 0) {
        pool_free_if_unused(r->pool);
        req_free(r);
        *out = NULL;
        return rc;
    }
    return 0;
}

static bool args_ok(uv_loop_t *loop, const char *dsn, const char *role, db_cb cb, db_req_t **out)
{
    /* PostgreSQL's names are at most 63 bytes: a longer one is refused here, before a pooled
     * connection could start the operation (and fail it) inside this call. */
    return loop && dsn && role && *role && strlen(role) <= 255 && cb && out;
}

int db_check_roles(uv_loop_t *loop, const char *dsn, const char *active_role,
                   const char *standby_role, db_cb cb, void *arg, db_req_t **out)
{
    if (!args_ok(loop, dsn, active_role, cb, out) || !standby_role || !*standby_role)
        return -EINVAL;
    db_req_t *r = req_new(loop, &op_check_roles, active_role, cb, arg);
    r->other = util_strdup(standby_role);
    return req_start_dsn(r, dsn, out);
}

int db_set_password(uv_loop_t *loop, const char *dsn, const char *role,
                    const rotor_secret_t *password, int64_t valid_until_ms, db_cb cb, void *arg,
                    db_req_t **out)
{
    if (!args_ok(loop, dsn, role, cb, out) || !password || !password->buf)
        return -EINVAL;
    db_req_t *r = req_new(loop, &op_set_password, role, cb, arg);
    r->password = secret_from(password->buf, password->len);
    r->valid_until_ms = valid_until_ms;
    return req_start_dsn(r, dsn, out);
}

/* The admin DSN's location and TLS settings with the role's credentials in place of the admin's. */
static int verify_connect(db_req_t *r, const char *dsn)
{
    char *err = NULL;
    PQconninfoOption *opts = PQconninfoParse(dsn, &err);
    if (!opts) {
        /* libpq's message quotes the token it could not parse, which may be the password: it
         * is wiped, never passed on (config_dsn refuses such a DSN at start-up). */
        if (err)
            secret_wipe(err, strlen(err));
        PQfreemem(err);
        return ROTOR_ECONFIG;
    }
    size_t n = 0;
    for (PQconninfoOption *o = opts; o->keyword; o++)
        n++;
    const char **kw = util_calloc(n + 3, sizeof *kw);
    const char **val = util_calloc(n + 3, sizeof *val);
    size_t k = 0;
    for (PQconninfoOption *o = opts; o->keyword; o++) {
        if (!o->val || strcmp(o->keyword, "user") == 0 || strcmp(o->keyword, "password") == 0 ||
            strcmp(o->keyword, "passfile") == 0)
            continue;
        kw[k] = o->keyword;
        val[k++] = o->val;
    }
    kw[k] = "user";
    val[k++] = r->role;
    kw[k] = "password";
    val[k++] = r->password->buf;
    int rc = pgc_connect(r->loop, kw, val, on_connected, r, &r->conn);
    free(kw);
    free(val);
    for (PQconninfoOption *o = opts; o->keyword; o++)
        if (o->val)
            secret_wipe(o->val, strlen(o->val));
    PQconninfoFree(opts);
    /* pg.c holds its own (wiped) copy now. */
    secret_free(r->password);
    r->password = NULL;
    return rc;
}

int db_verify_login(uv_loop_t *loop, const char *dsn, const char *role,
                    const rotor_secret_t *password, const char *probe, db_cb cb, void *arg,
                    db_req_t **out)
{
    if (!args_ok(loop, dsn, role, cb, out) || !password || !password->buf || !probe)
        return -EINVAL;
    db_req_t *r = req_new(loop, &op_verify, role, cb, arg);
    r->password = secret_from(password->buf, password->len);
    r->probe = util_strdup(probe);
    int rc = verify_connect(r, dsn);
    if (rc != 0) {
        r->conn = NULL;
        req_free(r);
        return rc;
    }
    *out = r;
    return 0;
}

int db_set_nologin(uv_loop_t *loop, const char *dsn, const char *role, db_cb cb, void *arg,
                   db_req_t **out)
{
    if (!args_ok(loop, dsn, role, cb, out))
        return -EINVAL;
    return req_start_dsn(req_new(loop, &op_set_nologin, role, cb, arg), dsn, out);
}

int db_can_login(uv_loop_t *loop, const char *dsn, const char *role, db_cb cb, void *arg,
                 db_req_t **out)
{
    if (!args_ok(loop, dsn, role, cb, out))
        return -EINVAL;
    return req_start_dsn(req_new(loop, &op_can_login, role, cb, arg), dsn, out);
}

int db_end_sessions(uv_loop_t *loop, const char *dsn, const char *role, db_cb cb, void *arg,
                    db_req_t **out)
{
    if (!args_ok(loop, dsn, role, cb, out))
        return -EINVAL;
    return req_start_dsn(req_new(loop, &op_end_sessions, role, cb, arg), dsn, out);
}

void db_cancel(db_req_t *req)
{
    if (!req || req->done)
        return;
    /* A hash not yet started is dropped; one running finishes and is discarded in hash_done. */
    if (req->work_active)
        uv_cancel((uv_req_t *)&req->work);
    req_finish(req, ROTOR_ECANCELED, "canceled");
}
