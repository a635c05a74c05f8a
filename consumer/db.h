/* db.h: the managed database driver (`postgres`, db_postgres.c; prefix db_). Each operation takes a
 * connection through pg.c (the admin ones from a small pool per DSN: db_postgres.c), does one
 * effect, and reports back: drivers know nothing
 * of Kafka or the journal. Identifiers are quoted with PQescapeIdentifier; the password never
 * leaves rotor as plaintext: set-db sends a SCRAM-SHA-256 verifier computed client-side with
 * PQencryptPasswordConn on the libuv threadpool.
 *
 * Every operation returns 0 and a request handle (valid until its callback returns) and calls cb
 * exactly once, later; or returns a negative error and never calls it. */
#ifndef ROTOR_DB_H
#define ROTOR_DB_H

#include <stdint.h>
#include <uv.h>

#include "secret.h"

typedef struct db_req_s db_req_t;

/* status 0 or negative; reason (borrowed, valid during the call) says why on failure. For
 * db_end_sessions, `count` is the number of sessions ended; for db_can_login, 1 or 0; otherwise
 * 0. */
typedef void (*db_cb)(void *arg, int status, const char *reason, long count);

/* prepare: both roles exist; the active role can log in; the standby role is a member of exactly
 * the same roles as the active one. dsn is the admin DSN (borrowed for the call). */
int db_check_roles(uv_loop_t *loop, const char *dsn, const char *active_role,
                   const char *standby_role, db_cb cb, void *arg, db_req_t **out);

/* set-db: ALTER ROLE role LOGIN PASSWORD '<scram verifier>' VALID UNTIL '<valid_until>'.
 * password is copied (and the copy wiped) inside. */
int db_set_password(uv_loop_t *loop, const char *dsn, const char *role,
                    const rotor_secret_t *password, int64_t valid_until_ms, db_cb cb, void *arg,
                    db_req_t **out);

/* verify: logs in as role with password (host, port and database from the admin DSN) and runs
 * probe; fails if the login or the probe fails. count = 1 when the server asked for the password,
 * 0 when it let the role in without one (pg_hba trust, peer, cert): such a login proves nothing
 * about the password. password is copied inside. */
int db_verify_login(uv_loop_t *loop, const char *dsn, const char *role,
                    const rotor_secret_t *password, const char *probe, db_cb cb, void *arg,
                    db_req_t **out);

/* ALTER ROLE role NOLOGIN (retire; rollback of the standby). */
int db_set_nologin(uv_loop_t *loop, const char *dsn, const char *role, db_cb cb, void *arg,
                   db_req_t **out);

/* Whether role can log in (pg_roles.rolcanlogin): count = 1 if it can, 0 if not. */
int db_can_login(uv_loop_t *loop, const char *dsn, const char *role, db_cb cb, void *arg,
                 db_req_t **out);

/* Ends role's remaining sessions with pg_terminate_backend; count = sessions ended. */
int db_end_sessions(uv_loop_t *loop, const char *dsn, const char *role, db_cb cb, void *arg,
                    db_req_t **out);

/* Closes the idle connections that admin operations keep for reuse on loop (shutdown: before the
 * loop is closed). */
void db_close_idle(uv_loop_t *loop);

/* Cancels a pending request: its callback runs with ROTOR_ECANCELED (possibly from within this
 * call). Must not be called after the callback ran. */
void db_cancel(db_req_t *req);

#endif
