/* app_db.c: the sample application's connection pool: blocking libpq, re-reading the password
 * file on every connection so that it follows credential rotations. */
#include "app_db.h"
#include "app_log.h"
#include "app_util.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Key Vault caps secret values at 25 KiB; a database password is far shorter. */
#define APP_DB_PASSWORD_MAX 1024
#define APP_DB_WAIT_SECONDS 10

typedef struct {
    PGconn *conn; /* NULL until connected, and after it broke */
    bool busy;
} app_db_slot_t;

struct app_db {
    char *dsn;
    char *role;
    char *password_file;
    int size;
    app_db_slot_t *slots;
    pthread_mutex_t mu;
    pthread_cond_t freed;
};

app_db_t *app_db_open(const char *dsn, const char *role, const char *password_file, int size)
{
    app_db_t *db = app_xcalloc(1, sizeof *db);
    db->dsn = app_xstrdup(dsn);
    db->role = app_xstrdup(role);
    db->password_file = app_xstrdup(password_file);
    db->size = size;
    db->slots = app_xcalloc((size_t)size, sizeof *db->slots);
    pthread_mutex_init(&db->mu, NULL);
    pthread_cond_init(&db->freed, NULL);
    return db;
}

void app_db_close(app_db_t *db)
{
    if (!db)
        return;
    for (int i = 0; i < db->size; i++)
        PQfinish(db->slots[i].conn);
    pthread_cond_destroy(&db->freed);
    pthread_mutex_destroy(&db->mu);
    free(db->slots);
    free(db->password_file);
    free(db->role);
    free(db->dsn);
    free(db);
}

int app_db_read_password(const char *path, char *buf, size_t cap, char *err, size_t errlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, errlen, "cannot open password file %s: %s", path, strerror(errno));
        return APP_DB_EUNAVAILABLE;
    }
    size_t n = 0;
    ssize_t got = 0;
    while (n < cap && (got = read(fd, buf + n, cap - n)) != 0) {
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0)
            break;
        n += (size_t)got;
    }
    int saved = errno;
    close(fd);
    if (got < 0) {
        snprintf(err, errlen, "cannot read password file %s: %s", path, strerror(saved));
        return APP_DB_EUNAVAILABLE;
    }
    if (n == cap) {
        snprintf(err, errlen, "password file %s is longer than %zu bytes", path, cap - 1);
        return APP_DB_EUNAVAILABLE;
    }
    /* The CSI driver writes the bare value; editors and `echo` add one newline. */
    if (n > 0 && buf[n - 1] == '\n')
        n--;
    if (n > 0 && buf[n - 1] == '\r')
        n--;
    buf[n] = '\0';
    if (n == 0 || strlen(buf) != n) {
        snprintf(err, errlen, "password file %s is empty or holds a NUL byte", path);
        return APP_DB_EUNAVAILABLE;
    }
    return 0;
}

/* libpq ends its messages with a newline, sometimes two lines; the log and 503 body want one. */
static void app_db_set_error(char *err, size_t errlen, const char *what, const char *msg)
{
    snprintf(err, errlen, "%s: %s", what, msg && *msg ? msg : "unknown error");
    for (char *p = err; *p; p++)
        if (*p == '\n' || *p == '\r')
            *p = ' ';
    for (size_t n = strlen(err); n > 0 && err[n - 1] == ' '; n--)
        err[n - 1] = '\0';
}

static int app_db_connect(app_db_t *db, PGconn **out, char *err, size_t errlen)
{
    char password[APP_DB_PASSWORD_MAX + 1];
    int rc = app_db_read_password(db->password_file, password, sizeof password, err, errlen);
    if (rc < 0) {
        explicit_bzero(password, sizeof password);
        return rc;
    }
    /* Keywords after the expanded dsn win, so the dsn cannot log in as another role; the ones
     * before it are defaults the dsn may override. */
    const char *keys[] = {
        "connect_timeout", "fallback_application_name", "dbname", "user", "password", NULL};
    const char *values[] = {"5", "rotor-sample-app", db->dsn, db->role, password, NULL};
    PGconn *conn = PQconnectdbParams(keys, values, 1);
    explicit_bzero(password, sizeof password);
    if (!conn || PQstatus(conn) != CONNECTION_OK) {
        app_db_set_error(err, errlen, "connect", conn ? PQerrorMessage(conn) : "out of memory");
        PQfinish(conn);
        return APP_DB_EUNAVAILABLE;
    }
    *out = conn;
    return 0;
}

/* Takes a free slot, waiting up to APP_DB_WAIT_SECONDS. */
static int app_db_take(app_db_t *db, app_db_slot_t **out)
{
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += APP_DB_WAIT_SECONDS;
    pthread_mutex_lock(&db->mu);
    for (;;) {
        /* Prefer a connected slot: connecting costs a SCRAM exchange. */
        app_db_slot_t *pick = NULL;
        for (int i = 0; i < db->size; i++) {
            app_db_slot_t *s = &db->slots[i];
            if (!s->busy && (!pick || (!pick->conn && s->conn)))
                pick = s;
        }
        if (pick) {
            pick->busy = true;
            pthread_mutex_unlock(&db->mu);
            *out = pick;
            return 0;
        }
        if (pthread_cond_timedwait(&db->freed, &db->mu, &deadline) == ETIMEDOUT) {
            pthread_mutex_unlock(&db->mu);
            return APP_DB_EBUSY;
        }
    }
}

static void app_db_give_back(app_db_t *db, app_db_slot_t *s)
{
    if (s->conn && PQstatus(s->conn) != CONNECTION_OK) {
        PQfinish(s->conn);
        s->conn = NULL;
    }
    pthread_mutex_lock(&db->mu);
    s->busy = false;
    pthread_cond_signal(&db->freed);
    pthread_mutex_unlock(&db->mu);
}

/* Class 08 is connection exception, 57P01..57P05 an administrator or crash shutdown of the
 * session (pg_terminate_backend sends 57P01). */
static bool app_db_broken(PGconn *conn, const PGresult *res)
{
    if (PQstatus(conn) != CONNECTION_OK)
        return true;
    const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    return !state || strncmp(state, "08", 2) == 0 || strncmp(state, "57P", 3) == 0;
}

/* One try on slot s; fresh drops whatever connection s held first. */
static int app_db_try(app_db_t *db, app_db_slot_t *s, bool fresh, const char *sql, PGresult **out,
                      char *err, size_t errlen)
{
    if (fresh && s->conn) {
        PQfinish(s->conn);
        s->conn = NULL;
    }
    if (!s->conn) {
        int rc = app_db_connect(db, &s->conn, err, errlen);
        if (rc < 0)
            return rc;
        app_log_info("db.connected", "role", db->role);
    }
    PGresult *res = PQexec(s->conn, sql);
    ExecStatusType st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
    if (st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK) {
        *out = res;
        return 0;
    }
    bool broken = app_db_broken(s->conn, res);
    app_db_set_error(err, errlen, "query",
                     res ? PQresultErrorMessage(res) : PQerrorMessage(s->conn));
    PQclear(res);
    if (!broken)
        return APP_DB_EQUERY;
    PQfinish(s->conn);
    s->conn = NULL;
    app_log_warn("db.connection.broken", "role", db->role, "reason", err);
    /* Positive: the caller may retry on a fresh connection. */
    return 1;
}

int app_db_query(app_db_t *db, const char *sql, PGresult **out, char *err, size_t errlen)
{
    app_db_slot_t *s;
    if (app_db_take(db, &s) < 0) {
        snprintf(err, errlen, "every database connection stayed busy for %d s",
                 APP_DB_WAIT_SECONDS);
        return APP_DB_EBUSY;
    }
    int rc = app_db_try(db, s, false, sql, out, err, errlen);
    if (rc > 0)
        rc = app_db_try(db, s, true, sql, out, err, errlen);
    if (rc > 0)
        rc = APP_DB_EUNAVAILABLE;
    app_db_give_back(db, s);
    return rc;
}
