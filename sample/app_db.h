/* app_db.h: a small pool of PostgreSQL connections that logs in as one role with the password
 * read from that role's file, and follows rotations of that file.
 *
 * Every (re)connection reads the password file again (the Key Vault CSI mount layout: the file
 * holds the value, maybe with one trailing newline), so when rotor writes a new password and ends
 * the old sessions, the next connection uses the new one. A query that fails because its connection
 * broke is retried once on a fresh connection. The password lives on the stack only for the
 * duration of a connection attempt and is wiped afterwards; it never reaches an error message. */
#ifndef SAMPLE_APP_DB_H
#define SAMPLE_APP_DB_H

#include <stddef.h>

#include <libpq-fe.h>

/* No connection could be made or kept (cannot log in, server down, password file unreadable). */
#define APP_DB_EUNAVAILABLE (-1)
/* The connection is fine but the statement failed (permissions, missing table). */
#define APP_DB_EQUERY (-2)
/* Every connection of the pool stayed busy for the whole wait. */
#define APP_DB_EBUSY (-3)

typedef struct app_db app_db_t;

/* dsn (without the password), role and password_file are copied. size >= 1. */
app_db_t *app_db_open(const char *dsn, const char *role, const char *password_file, int size);
/* Closes every connection; no query may be running. */
void app_db_close(app_db_t *db);

/* Runs sql (no parameters). On success returns 0 and *out, which the caller owns (PQclear).
 * On failure returns an APP_DB_E* code and writes the reason to err. */
int app_db_query(app_db_t *db, const char *sql, PGresult **out, char *err, size_t errlen);

/* Reads the password file into buf (cap bytes), without its one trailing newline, as a C string.
 * Returns 0 or APP_DB_EUNAVAILABLE with the reason (never the content) in err. The caller wipes
 * buf. */
int app_db_read_password(const char *path, char *buf, size_t cap, char *err, size_t errlen);

#endif
