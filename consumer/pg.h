/* pg.h: asynchronous libpq on the libuv loop (prefix pgc_).
 *
 * A pgc_conn_t is a handle: one PostgreSQL connection whose socket is watched by a uv_poll
 * (re-created when PQsocket changes during connection). Host names are resolved with
 * uv_getaddrinfo before libpq sees them (libpq would block on DNS). Queries are requests queued
 * FIFO on the handle; each is sent with PQsendQueryParams in non-blocking mode, flushed, and its
 * results read with PQconsumeInput/PQgetResult. Only one query is on the wire at a time.
 * The poll is active only while connecting or while a query is in flight, so a connection at rest
 * can be touched by a worker thread (PQencryptPasswordConn) without racing the loop.
 * Each PQconnectPoll of the connect phase runs on the libuv threadpool (the SCRAM client proof is
 * a PBKDF2 of some milliseconds; see pg.c), never while the loop watches or touches the
 * connection; callbacks still run on the loop. */
#ifndef ROTOR_PG_H
#define ROTOR_PG_H

#include <libpq-fe.h>
#include <stdint.h>
#include <uv.h>

typedef struct pgc_conn_s pgc_conn_t;

/* status: 0 when connected, else negative (ROTOR_EDB); pgc_error() says why. */
typedef void (*pgc_connect_cb)(pgc_conn_t *c, int status, void *arg);

/* res: the last non-NULL PGresult of the query (borrowed: cleared after the callback returns),
 * or NULL on failure. status: 0 when res is PGRES_COMMAND_OK or PGRES_TUPLES_OK, ROTOR_EDB on a
 * server or connection error (pgc_error() / res say why), ROTOR_ECANCELED when the handle was
 * closed before the query ran. */
typedef void (*pgc_result_cb)(pgc_conn_t *c, PGresult *res, int status, void *arg);

/* Starts connecting with PQconnectStartParams(keywords, values, expand_dbname=1). Both arrays are
 * borrowed for the duration of the call only (copied inside, and wiped on close as they may hold a
 * password). Returns 0 and *out; the callback runs exactly once, later. On a negative return the
 * callback never runs. */
int pgc_connect(uv_loop_t *loop, const char *const *keywords, const char *const *values,
                pgc_connect_cb cb, void *arg, pgc_conn_t **out);

/* Convenience: connect from a conninfo string or URI (borrowed; copied). */
int pgc_connect_dsn(uv_loop_t *loop, const char *dsn, pgc_connect_cb cb, void *arg,
                    pgc_conn_t **out);

/* Queues a query with text parameters (NULL entries are SQL NULL). sql and params are copied.
 * Returns 0 (cb runs exactly once, later) or a negative error (cb never runs). */
int pgc_query(pgc_conn_t *c, const char *sql, int nparams, const char *const *params,
              pgc_result_cb cb, void *arg);

/* Deadlines (ms, 0 = none): a connection attempt (from pgc_connect, 30 s unless set) or a query
 * on the wire (none unless set) that the server leaves unanswered that long gives the connection
 * up: pgc_error says so, the connect callback or every queued query gets ROTOR_EDB, and the owner
 * closes it and reconnects. A silent server is otherwise waited for forever (libpq's
 * connect_timeout does not apply to PQconnectPoll, TCP keepalives see only a dead peer host).
 * Setting them restarts the running deadline. A query that may rightly run long (a lock wait, a
 * slow probe) needs a bound above it, or none. */
void pgc_set_deadlines(pgc_conn_t *c, uint64_t connect_ms, uint64_t query_ms);

/* Closes the handle: queued and in-flight queries complete with ROTOR_ECANCELED (their callbacks
 * run from within pgc_close or soon after), the connection is finished, and memory is freed in
 * the uv close callback. c must not be used after this call. */
void pgc_close(pgc_conn_t *c);

/* Last error message of the connection (borrowed, valid until the next call on c). A failed
 * connection's message is redacted (see pgc_redact_error): it may be logged and journaled. */
const char *pgc_error(pgc_conn_t *c);

/* libpq's message about a connection that failed (msg), with every quoted fragment that may come
 * from the conninfo replaced by "***" (the host or socket of an attempt and the server's answer
 * are kept) and any password of keywords/values (as given to PQconnectdbParams, expanded dbname
 * included; NULL-terminated) blotted out. Returns a malloc'ed string: wipe and free it. */
char *pgc_redact_error(const char *msg, const char *const *keywords, const char *const *values);

/* The libpq connection (borrowed), e.g. for PQescapeIdentifier. Never use it for I/O. NULL while
 * a step of the connect phase runs on the threadpool (libpq's functions take NULL as a bad
 * connection); never NULL once connected. */
PGconn *pgc_raw(pgc_conn_t *c);

/* 1 if connected and usable. */
int pgc_ok(pgc_conn_t *c);

/* Number of queries queued or in flight. */
int pgc_pending(pgc_conn_t *c);

#endif
