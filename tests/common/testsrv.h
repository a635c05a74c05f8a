/* testsrv: the integration tests' scripted servers (tests/support/https_server.py and
 * probe_server.py) and the CA they serve with (tests/support/make-ca.sh). Blocking: tests only. */
#ifndef ROTOR_TESTSRV_H
#define ROTOR_TESTSRV_H

#include <sys/types.h>

typedef struct {
    pid_t pid;
    int stdin_fd; /* closing it stops the server, also if this process dies */
    int port;
    char base[64]; /* "http://127.0.0.1:PORT" or "https://..." */
} testsrv_t;

/* The source tree: $ROTOR_SOURCE_DIR, else ".". */
const char *testsrv_source_dir(void);

/* Writes a CA and a server certificate for 127.0.0.1, ::1 and localhost (and host, unless NULL)
 * into dir: ca.pem, server.pem, server.key. Returns 0 or -1. */
int testsrv_make_ca(const char *dir, const char *host);

/* Starts tests/support/<script> on a free port, over HTTPS with certdir's server.pem and
 * server.key when certdir is not NULL, else over HTTP; the server writes its port to portfile.
 * Returns 0 once the port is known, -1 if the server could not start. */
int testsrv_start(testsrv_t *s, const char *script, const char *certdir, const char *portfile);

/* True under CI=true: a test that would skip for a missing tool must fail there instead, or a
 * machine without the tool passes CI while testing less. */
int testsrv_ci(void);

/* Stops a server testsrv_start started; nothing if it never started. */
void testsrv_stop(testsrv_t *s);

#endif
