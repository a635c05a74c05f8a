/* app.c: rotor-sample-app, the blue/green "source application": serves rows of app.users as its
 * slot's database role, with the password read from its slot's file, and stops gracefully. */
#include "app_db.h"
#include "app_http.h"
#include "app_log.h"

#include <arpa/inet.h>
#include <getopt.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const char *listen;
    const char *slot;
    const char *role;
    const char *password_file;
    const char *dsn;
    int pool_size;
    int drain_ms;
    char role_buf[64];
    char file_buf[PATH_MAX];
} app_options_t;

static const char app_usage[] =
    "usage: rotor-sample-app [--listen ADDR:PORT] --slot blue|green [--role ROLE]\n"
    "                        [--password-file PATH] [--db DSN] [--pool-size N]\n"
    "                        [--drain-timeout-ms MS]\n"
    "  --listen          address to serve on (env SAMPLE_LISTEN; default 0.0.0.0:8080)\n"
    "  --slot            the slot this instance is (env SAMPLE_SLOT)\n"
    "  --role            its database role (env SAMPLE_ROLE; default app_SLOT)\n"
    "  --password-file   the role's password, as the Key Vault CSI driver mounts it\n"
    "                    (env SAMPLE_PASSWORD_FILE; default /mnt/secrets-store/pg-SLOT)\n"
    "  --db              libpq connection string without user and password (env SAMPLE_DB_DSN)\n"
    "  --pool-size       database connections (default 4)\n"
    "  --drain-timeout-ms  how long SIGTERM waits for in-flight requests (default 10000)\n";

static const char *app_env(const char *name, const char *fallback)
{
    const char *v = getenv(name);
    return v && *v ? v : fallback;
}

static int app_parse_int(const char *text, int min, int max, int *out)
{
    char *end;
    long v = strtol(text, &end, 10);
    if (!*text || *end || v < min || v > max)
        return -1;
    *out = (int)v;
    return 0;
}

/* Returns 0, 1 when --help was asked, or -1 after printing why the arguments are wrong. */
static int app_parse_args(int argc, char **argv, app_options_t *o)
{
    static const struct option longs[] = {{"listen", required_argument, NULL, 'l'},
                                          {"slot", required_argument, NULL, 's'},
                                          {"role", required_argument, NULL, 'r'},
                                          {"password-file", required_argument, NULL, 'p'},
                                          {"db", required_argument, NULL, 'd'},
                                          {"pool-size", required_argument, NULL, 'n'},
                                          {"drain-timeout-ms", required_argument, NULL, 't'},
                                          {"help", no_argument, NULL, 'h'},
                                          {NULL, 0, NULL, 0}};
    o->listen = app_env("SAMPLE_LISTEN", "0.0.0.0:8080");
    o->slot = app_env("SAMPLE_SLOT", NULL);
    o->role = app_env("SAMPLE_ROLE", NULL);
    o->password_file = app_env("SAMPLE_PASSWORD_FILE", NULL);
    o->dsn = app_env("SAMPLE_DB_DSN", NULL);
    o->pool_size = 4;
    o->drain_ms = 10000;
    int c, bad = 0;
    while ((c = getopt_long(argc, argv, "h", longs, NULL)) != -1) {
        switch (c) {
        case 'l':
            o->listen = optarg;
            break;
        case 's':
            o->slot = optarg;
            break;
        case 'r':
            o->role = optarg;
            break;
        case 'p':
            o->password_file = optarg;
            break;
        case 'd':
            o->dsn = optarg;
            break;
        case 'n':
            bad |= app_parse_int(optarg, 1, 64, &o->pool_size);
            break;
        case 't':
            bad |= app_parse_int(optarg, 0, 3600000, &o->drain_ms);
            break;
        case 'h':
            fputs(app_usage, stdout);
            return 1;
        default:
            bad = -1;
        }
    }
    if (bad || optind != argc || !o->slot ||
        (strcmp(o->slot, "blue") != 0 && strcmp(o->slot, "green") != 0) || !o->dsn) {
        fputs("rotor-sample-app: --slot blue|green and --db (or SAMPLE_DB_DSN) are required, "
              "and numbers must be in range\n",
              stderr);
        fputs(app_usage, stderr);
        return -1;
    }
    if (!o->role) {
        snprintf(o->role_buf, sizeof o->role_buf, "app_%s", o->slot);
        o->role = o->role_buf;
    }
    if (!o->password_file) {
        snprintf(o->file_buf, sizeof o->file_buf, "/mnt/secrets-store/pg-%s", o->slot);
        o->password_file = o->file_buf;
    }
    return 0;
}

/* "host:port" or "[v6]:port", numeric only: a sample has no reason to resolve names here. */
static int app_parse_listen(const char *text, struct sockaddr_storage *out)
{
    char host[64];
    const char *colon = strrchr(text, ':');
    int port;
    if (!colon || (size_t)(colon - text) >= sizeof host ||
        app_parse_int(colon + 1, 0, 65535, &port) < 0)
        return -1;
    memcpy(host, text, (size_t)(colon - text));
    host[colon - text] = '\0';
    memset(out, 0, sizeof *out);
    size_t n = strlen(host);
    if (n >= 2 && host[0] == '[' && host[n - 1] == ']') {
        struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)out;
        host[n - 1] = '\0';
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)port);
        return inet_pton(AF_INET6, host + 1, &a6->sin6_addr) == 1 ? 0 : -1;
    }
    struct sockaddr_in *a4 = (struct sockaddr_in *)out;
    a4->sin_family = AF_INET;
    a4->sin_port = htons((uint16_t)port);
    return inet_pton(AF_INET, host, &a4->sin_addr) == 1 ? 0 : -1;
}

/* Warms one connection so the log says at once whether the role can log in; the app serves
 * either way, and /readyz reports the reason until it can. */
static void app_check_db(app_db_t *db, const char *role)
{
    char err[512];
    PGresult *res = NULL;
    if (app_db_query(db, "SELECT 1", &res, err, sizeof err) == 0) {
        PQclear(res);
        app_log_info("db.ready", "role", role);
    } else {
        app_log_warn("db.unavailable", "role", role, "reason", err);
    }
}

int main(int argc, char **argv)
{
    app_options_t o = {0};
    int rc = app_parse_args(argc, argv, &o);
    if (rc != 0)
        return rc > 0 ? 0 : 2;
    struct sockaddr_storage addr;
    if (app_parse_listen(o.listen, &addr) < 0) {
        fprintf(stderr, "rotor-sample-app: bad --listen %s (want ADDR:PORT)\n", o.listen);
        return 2;
    }
    app_log_init(o.slot);
    /* Blocked before any thread starts, so every thread inherits the mask and only sigwait
     * below sees the stop signals. */
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGTERM);
    sigaddset(&stop, SIGINT);
    pthread_sigmask(SIG_BLOCK, &stop, NULL);
    signal(SIGPIPE, SIG_IGN);

    app_db_t *db = app_db_open(o.dsn, o.role, o.password_file, o.pool_size);
    app_http_t *http = app_http_start(&addr, db, o.slot, o.role);
    if (!http) {
        app_db_close(db);
        return 1;
    }
    char port[8];
    snprintf(port, sizeof port, "%u", (unsigned)app_http_port(http));
    app_log_info("app.listening", "listen", o.listen, "port", port, "role", o.role, "password_file",
                 o.password_file);
    app_check_db(db, o.role);

    int sig = 0;
    sigwait(&stop, &sig);
    app_log_info("app.stopping", "signal", sig == SIGINT ? "SIGINT" : "SIGTERM");
    int left = app_http_stop(http, o.drain_ms);
    app_db_close(db);
    if (left > 0) {
        char n[16];
        snprintf(n, sizeof n, "%d", left);
        app_log_warn("app.drain.timeout", "requests_cut", n);
    }
    app_log_info("app.stopped");
    return 0;
}
