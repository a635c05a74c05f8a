/* bench_fleet_baseline.c: the database work of a fleet of rotations done by bare libpq, as the
 * baseline of bench/fleet.sh. For each role pair <prefix><i>_blue / <prefix><i>_green it does
 * what rotor's set-db, verify and retire do to PostgreSQL, and nothing else: a SCRAM-SHA-256
 * verifier computed client-side (PQencryptPasswordConn), ALTER ROLE green LOGIN PASSWORD
 * '<verifier>' VALID UNTIL ..., a login as green with the password and SELECT 1, ALTER ROLE blue
 * NOLOGIN. The pairs are split between --procs processes (fork), each with one kept admin
 * connection (libpq's environment: PGHOST, PGPORT, PGUSER; --dbname names the database).
 *
 * Prints: RESULT-FLEET <n> <seconds> <rotations/s>. Blocking libpq is fine here: no loop. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>

#include "bench_common.h"

static void die(const char *what, PGconn *c)
{
    fprintf(stderr, "bench_fleet_baseline: %s: %s\n", what, c ? PQerrorMessage(c) : "");
    exit(1);
}

static void exec_ok(PGconn *c, const char *sql)
{
    PGresult *res = PQexec(c, sql);
    ExecStatusType st = PQresultStatus(res);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK)
        die(sql, c);
    PQclear(res);
}

/* One rotation of pair i: the four database effects, in rotor's order. */
static void rotate(PGconn *admin, const char *dbname, const char *prefix, long i)
{
    char green[128], blue[128], password[40], sql[1024];
    snprintf(green, sizeof green, "%s%ld_green", prefix, i);
    snprintf(blue, sizeof blue, "%s%ld_blue", prefix, i);
    static const char alphabet[] = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    for (size_t k = 0; k < 32; k++)
        password[k] = alphabet[(size_t)rand() % (sizeof alphabet - 1)];
    password[32] = '\0';

    char *verifier = PQencryptPasswordConn(admin, password, green, "scram-sha-256");
    if (!verifier)
        die("PQencryptPasswordConn", admin);
    char *ident = PQescapeIdentifier(admin, green, strlen(green));
    char *lit = PQescapeLiteral(admin, verifier, strlen(verifier));
    snprintf(sql, sizeof sql, "ALTER ROLE %s WITH LOGIN PASSWORD %s VALID UNTIL '2099-01-01'",
             ident, lit);
    exec_ok(admin, sql);
    PQfreemem(ident);
    PQfreemem(lit);
    PQfreemem(verifier);

    const char *const kw[] = {"user", "password", "dbname", NULL};
    const char *const val[] = {green, password, dbname, NULL};
    PGconn *login = PQconnectdbParams(kw, val, 0);
    if (PQstatus(login) != CONNECTION_OK)
        die("login as the standby role", login);
    exec_ok(login, "SELECT 1");
    PQfinish(login);

    ident = PQescapeIdentifier(admin, blue, strlen(blue));
    snprintf(sql, sizeof sql, "ALTER ROLE %s NOLOGIN", ident);
    exec_ok(admin, sql);
    PQfreemem(ident);
}

static void worker(const char *dbname, const char *prefix, long n, int procs, int k)
{
    srand((unsigned)getpid());
    const char *const kw[] = {"dbname", NULL};
    const char *const val[] = {dbname, NULL};
    PGconn *admin = PQconnectdbParams(kw, val, 0);
    if (PQstatus(admin) != CONNECTION_OK)
        die("admin connection", admin);
    for (long i = k; i < n; i += procs)
        rotate(admin, dbname, prefix, i);
    PQfinish(admin);
}

int main(int argc, char **argv)
{
    long n = 100;
    int procs = 2;
    const char *dbname = "postgres", *prefix = "app_";
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--n") == 0 && i + 1 < argc)
            n = strtol(argv[++i], NULL, 10);
        else if (strcmp(argv[i], "--procs") == 0 && i + 1 < argc)
            procs = atoi(argv[++i]);
        else if (strcmp(argv[i], "--dbname") == 0 && i + 1 < argc)
            dbname = argv[++i];
        else if (strcmp(argv[i], "--prefix") == 0 && i + 1 < argc)
            prefix = argv[++i];
        else {
            fprintf(stderr, "usage: %s [--n N] [--procs P] [--dbname DB] [--prefix app_]\n",
                    argv[0]);
            return 2;
        }
    }
    if (n < 1 || procs < 1) {
        fprintf(stderr, "bench_fleet_baseline: --n and --procs must be positive\n");
        return 2;
    }
    uint64_t t0 = bench_now_ns();
    for (int k = 0; k < procs; k++) {
        pid_t pid = fork();
        if (pid < 0) {
            perror("fork");
            return 1;
        }
        if (pid == 0) {
            worker(dbname, prefix, n, procs, k);
            _exit(0);
        }
    }
    int failed = 0;
    for (int k = 0; k < procs; k++) {
        int st = 0;
        while (wait(&st) < 0 && errno == EINTR)
            ;
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
            failed = 1;
    }
    double secs = (double)(bench_now_ns() - t0) / 1e9;
    if (failed)
        return 1;
    printf("RESULT-FLEET\t%ld\t%.3f\t%.2f\n", n, secs, (double)n / secs);
    return 0;
}
