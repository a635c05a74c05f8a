/* testsrv.c: see testsrv.h. */
#include "testsrv.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

const char *testsrv_source_dir(void)
{
    const char *d = getenv("ROTOR_SOURCE_DIR");
    return d && *d ? d : ".";
}

int testsrv_make_ca(const char *dir, const char *host)
{
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "%s/tests/support/make-ca.sh %s %s", testsrv_source_dir(), dir,
             host ? host : "");
    return system(cmd) == 0 ? 0 : -1;
}

/* Waits up to 20 s for the server to write its port. */
static int read_port(testsrv_t *s, const char *portfile, const char *scheme)
{
    for (int i = 0; i < 400; i++) {
        FILE *f = fopen(portfile, "r");
        if (f) {
            int ok = fscanf(f, "%d", &s->port) == 1;
            fclose(f);
            if (ok) {
                snprintf(s->base, sizeof s->base, "%s://127.0.0.1:%d", scheme, s->port);
                return 0;
            }
        }
        usleep(50 * 1000);
    }
    return -1;
}

int testsrv_start(testsrv_t *s, const char *script, const char *certdir, const char *portfile)
{
    char path[512], cert[512], key[512];
    snprintf(path, sizeof path, "%s/tests/support/%s", testsrv_source_dir(), script);
    char *argv[10] = {"/usr/bin/python3", path};
    int n = 2;
    if (certdir) {
        snprintf(cert, sizeof cert, "%s/server.pem", certdir);
        snprintf(key, sizeof key, "%s/server.key", certdir);
        argv[n++] = "--cert";
        argv[n++] = cert;
        argv[n++] = "--key";
        argv[n++] = key;
    }
    argv[n++] = "--port-file";
    argv[n++] = (char *)portfile;
    argv[n++] = "--watch-stdin";
    argv[n] = NULL;

    int fds[2];
    s->pid = 0;
    if (pipe2(fds, O_CLOEXEC) != 0)
        return -1;
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, fds[0], 0);
    int rc = posix_spawn(&s->pid, argv[0], &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    close(fds[0]);
    s->stdin_fd = fds[1];
    if (rc != 0) {
        s->pid = 0;
        close(s->stdin_fd);
        return -1;
    }
    return read_port(s, portfile, certdir ? "https" : "http");
}

void testsrv_stop(testsrv_t *s)
{
    if (s->pid <= 0)
        return;
    close(s->stdin_fd);
    kill(s->pid, SIGTERM);
    waitpid(s->pid, NULL, 0);
    s->pid = 0;
}

int testsrv_ci(void)
{
    const char *ci = getenv("CI");
    return ci && (strcmp(ci, "true") == 0 || strcmp(ci, "1") == 0 || strcmp(ci, "yes") == 0);
}
