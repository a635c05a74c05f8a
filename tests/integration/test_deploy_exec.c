/* test_deploy_exec.c: the exec deploy driver running real hook scripts (tests/support/hooks). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <ftw.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "deploy.h"
#include "log.h"
#include "rotor.h"
#include "util.h"

#define NCONC 5

typedef struct {
    uv_loop_t loop;
    char dir[64];
    char hooks[512];
    char cmd[4][1024]; /* deploy, swap, retire, rollback */
    char workdir[256];
    cfg_secret_t cfg;
    deploy_t *drv;
    FILE *log;
} fixture_t;

/* What a callback reported. */
typedef struct {
    int calls;
    int status;
    int observed;
    bool reason_null;
    char reason[8192];
} result_t;

static void on_done(void *arg, int status, const char *reason)
{
    result_t *r = arg;
    r->calls++;
    r->status = status;
    r->reason_null = reason == NULL;
    util_strlcpy(r->reason, reason ? reason : "", sizeof r->reason);
}

static void on_observe(void *arg, int status, int observed, const char *reason)
{
    result_t *r = arg;
    r->observed = observed;
    on_done(arg, status, reason);
}

static int setup(void **state)
{
    fixture_t *f = util_calloc(1, sizeof *f);
    assert_int_equal(uv_loop_init(&f->loop), 0);
    strcpy(f->dir, "/tmp/rotor-exec-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    const char *src = getenv("ROTOR_SOURCE_DIR");
    snprintf(f->hooks, sizeof f->hooks, "%s/tests/support/hooks", src ? src : ".");
    f->log = tmpfile();
    assert_non_null(f->log);
    log_init(LOG_INFO, f->log);
    f->cfg.name = "orders-db";
    f->cfg.deploy.kind = "exec";
    f->cfg.deploy.kind_id = DEPLOY_EXEC;
    f->cfg.deploy.exec.deploy = f->cmd[0];
    f->cfg.deploy.exec.swap = f->cmd[1];
    f->cfg.deploy.exec.timeout_ms = 30000;
    snprintf(f->cmd[0], sizeof f->cmd[0], "true");
    snprintf(f->cmd[1], sizeof f->cmd[1], "true");
    *state = f;
    return 0;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

static int teardown(void **state)
{
    fixture_t *f = *state;
    if (f->drv)
        f->drv->ops->close(f->drv);
    assert_int_equal(uv_run(&f->loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(uv_loop_close(&f->loop), 0);
    log_init(LOG_INFO, NULL);
    fclose(f->log);
    nftw(f->dir, rm_entry, 8, FTW_DEPTH | FTW_PHYS);
    free(f);
    return 0;
}

static void open_driver(fixture_t *f)
{
    char err[256] = "";
    assert_int_equal(deploy_open(&f->loop, &f->cfg, NULL, &f->drv, err, sizeof err), 0);
    assert_non_null(f->drv);
}

static const deploy_ctx_t ctx_green = {
    .rotation_id = "8c1f4b4e-2f7a-4f0e-9d61-3f1c2a9b7e10",
    .secret = "orders-db",
    .slot = SLOT_GREEN,
    .role = "app_green",
    .store_name = "pg-green",
    .version = "v-0002",
};

static char *slurp(const char *path)
{
    FILE *fp = fopen(path, "r");
    if (!fp)
        return NULL;
    char *buf = util_calloc(1, 65536);
    size_t n = fread(buf, 1, 65535, fp);
    buf[n] = '\0';
    fclose(fp);
    return buf;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The log lines with msg deploy.exec.output for stream, in order; returns their number. */
static size_t output_lines(fixture_t *f, const char *stream, char lines[][1100], size_t max)
{
    fflush(f->log);
    rewind(f->log);
    char buf[8192];
    size_t n = 0;
    while (fgets(buf, sizeof buf, f->log)) {
        json_t *o = json_loads(buf, 0, NULL);
        assert_non_null(o);
        const char *msg = json_string_value(json_object_get(o, "msg"));
        const char *s = json_string_value(json_object_get(o, "stream"));
        if (strcmp(msg, "deploy.exec.output") == 0 && strcmp(s, stream) == 0 && n < max) {
            util_strlcpy(lines[n++], json_string_value(json_object_get(o, "line")), 1100);
            assert_string_equal(json_string_value(json_object_get(o, "rotation_id")),
                                ctx_green.rotation_id);
        }
        json_decref(o);
    }
    return n;
}

static void test_success_env_and_output(void **state)
{
    fixture_t *f = *state;
    /* rotor's own environment holds DSNs and may hold a password: none of it may leak. */
    setenv("ROTOR_JOURNAL_DSN", "postgresql://rotor:hunter2@db/rotor", 1);
    setenv("APP_DB_ADMIN_DSN", "postgresql://admin:hunter2@db/app", 1);
    setenv("PGPASSWORD", "hunter2", 1);
    setenv("HOME", "/home/rotor-test", 1);
    char envfile[128];
    snprintf(envfile, sizeof envfile, "%s/env", f->dir);
    snprintf(f->cmd[0], sizeof f->cmd[0], "/bin/sh %s/env.sh $$ %s", f->hooks, envfile);
    open_driver(f);

    result_t r = {0};
    deploy_req_t *req = NULL;
    assert_int_equal(f->drv->ops->deploy(f->drv, &ctx_green, on_done, &r, &req), 0);
    assert_non_null(req);
    assert_int_equal(r.calls, 0);
    assert_int_equal(uv_run(&f->loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(r.calls, 1);
    assert_int_equal(r.status, 0);
    assert_true(r.reason_null);

    char *env = slurp(envfile);
    assert_non_null(env);
    assert_null(strstr(env, "hunter2"));
    char *vars[32];
    size_t n = 0;
    for (char *save, *l = strtok_r(env, "\n", &save); l && n < 32; l = strtok_r(NULL, "\n", &save))
        vars[n++] = l;
    qsort(vars, n, sizeof vars[0], cmp_str);
    static const char *const want[] = {
        "HOME=/home/rotor-test",
        "LANG=C.UTF-8",
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "ROTOR_ACTION=deploy",
        "ROTOR_ROLE=app_green",
        "ROTOR_ROTATION_ID=8c1f4b4e-2f7a-4f0e-9d61-3f1c2a9b7e10",
        "ROTOR_SECRET=orders-db",
        "ROTOR_SLOT=green",
        "ROTOR_STORE_NAME=pg-green",
        "ROTOR_VERSION=v-0002",
    };
    assert_int_equal(n, sizeof want / sizeof want[0]);
    for (size_t i = 0; i < n; i++)
        assert_string_equal(vars[i], want[i]);
    free(env);

    char lines[8][1100];
    assert_int_equal(output_lines(f, "stdout", lines, 8), 5);
    assert_string_equal(lines[0], "hello from deploy green");
    assert_string_equal(lines[1], "stdin is /dev/null");
    /* A line is cut at 1000 bytes, never inside a UTF-8 character... */
    assert_int_equal(strlen(lines[2]), 999);
    assert_int_equal(strspn(lines[2], "0"), 999);
    /* ...and the rest of a long line does not leak into the next one. */
    assert_int_equal(strlen(lines[3]), 1000);
    assert_int_equal(strspn(lines[3], "0"), 1000);
    assert_string_equal(lines[4], "last line without newline");
    assert_int_equal(output_lines(f, "stderr", lines, 8), 1);
    assert_string_equal(lines[0], "warning on stderr");
    unsetenv("ROTOR_JOURNAL_DSN");
    unsetenv("APP_DB_ADMIN_DSN");
    unsetenv("PGPASSWORD");
}

/* The msg and fields of the log's lines, one string each ("msg|stream|line" or
 * "msg|lines|bytes"), in order; returns their number. */
static size_t log_lines(fixture_t *f, char lines[][1200], size_t max)
{
    fflush(f->log);
    rewind(f->log);
    char buf[8192];
    size_t n = 0;
    while (fgets(buf, sizeof buf, f->log) && n < max) {
        json_t *o = json_loads(buf, 0, NULL);
        assert_non_null(o);
        const char *msg = json_string_value(json_object_get(o, "msg"));
        if (strcmp(msg, "deploy.exec.output") == 0)
            snprintf(lines[n++], 1200, "%s|%s|%s", msg,
                     json_string_value(json_object_get(o, "stream")),
                     json_string_value(json_object_get(o, "line")));
        else if (strcmp(msg, "deploy.exec.output_dropped") == 0)
            snprintf(lines[n++], 1200, "%s|%s|%s", msg,
                     json_string_value(json_object_get(o, "lines")),
                     json_string_value(json_object_get(o, "bytes")));
        json_decref(o);
    }
    return n;
}

/* Issue 8: a failing hook's output goes to the log only, its last 4 KiB line by line; the
 * reason, which is journaled and published, says where it is and nothing of what it says. */
static void test_failure_output_only_in_log(void **state)
{
    fixture_t *f = *state;
    snprintf(f->cmd[1], sizeof f->cmd[1], "/bin/sh %s/fail.sh", f->hooks);
    open_driver(f);
    result_t r = {0};
    assert_int_equal(f->drv->ops->swap(f->drv, &ctx_green, on_done, &r, NULL), 0);
    assert_int_equal(uv_run(&f->loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(r.calls, 1);
    assert_int_equal(r.status, ROTOR_EFAIL);
    assert_string_equal(r.reason, "hook swap exited with status 3 (output in the log)");
    /* 62 lines of about 70 bytes: the first ones are dropped, counted in one note before the
     * lines kept, which end with the last one and fit in 4096 bytes with a byte of stream and a
     * NUL each. */
    char lines[80][1200];
    size_t n = log_lines(f, lines, 80);
    assert_true(n > 40 && n < 62);
    unsigned long dropped = 0, bytes = 0;
    assert_int_equal(sscanf(lines[0], "deploy.exec.output_dropped|%lu|%lu", &dropped, &bytes), 2);
    assert_int_equal(dropped + (n - 1), 62);
    assert_string_equal(lines[n - 1], "deploy.exec.output|stderr|error: nginx reload failed");
    size_t kept = 0;
    for (size_t i = 1; i < n; i++) {
        assert_null(strstr(lines[i], "FIRST-LINE"));
        kept += strlen(lines[i]) - strlen("deploy.exec.output|stderr|") + 2;
    }
    assert_true(kept <= 4096);
    assert_true(kept + bytes + 2 * dropped > 4096);
}

static void test_failure_without_output(void **state)
{
    fixture_t *f = *state;
    snprintf(f->cmd[0], sizeof f->cmd[0], "exit 4");
    open_driver(f);
    result_t r = {0};
    assert_int_equal(f->drv->ops->deploy(f->drv, &ctx_green, on_done, &r, NULL), 0);
    assert_int_equal(uv_run(&f->loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(r.calls, 1);
    assert_int_equal(r.status, ROTOR_EFAIL);
    assert_string_equal(r.reason, "hook deploy exited with status 4 (no output)");
}

static void test_killed_by_signal(void **state)
{
    fixture_t *f = *state;
    snprintf(f->cmd[0], sizeof f->cmd[0], "echo about to die >&2; kill -TERM $$");
    open_driver(f);
    result_t r = {0};
    assert_int_equal(f->drv->ops->deploy(f->drv, &ctx_green, on_done, &r, NULL), 0);
    assert_int_equal(uv_run(&f->loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(r.calls, 1);
    assert_int_equal(r.status, ROTOR_EFAIL);
    assert_string_equal(r.reason, "hook deploy was killed by SIGTERM (output in the log)");
}

/* Gone, or a zombie waiting for init to reap it: either way no longer running. */
static bool process_gone(int pid)
{
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *fp = fopen(path, "r");
    if (!fp)
        return true;
    size_t n = fread(buf, 1, sizeof buf - 1, fp);
    fclose(fp);
    buf[n] = '\0';
    const char *paren = strrchr(buf, ')');
    return paren && (paren[2] == 'Z' || paren[2] == 'X');
}

static void assert_group_gone(const char *pidfile)
{
    int shell = 0, child = 0;
    FILE *fp = fopen(pidfile, "r");
    assert_non_null(fp);
    assert_int_equal(fscanf(fp, "%d %d", &shell, &child), 2);
    fclose(fp);
    assert_true(shell > 0 && child > 0);
    /* A killed process closes its files (the pipes' EOF) a moment before it turns zombie. */
    for (int i = 0; i < 100 && !(process_gone(shell) && process_gone(child)); i++)
        usleep(20 * 1000);
    assert_true(process_gone(shell));
    assert_true(process_gone(child));
}

static void test_timeout_kills_group(void **state)
{
    fixture_t *f = *state;
    char pidfile[128];
    snprintf(pidfile, sizeof pidfile, "%s/pids", f->dir);
    snprintf(f->cmd[0], sizeof f->cmd[0], "/bin/sh %s/hang.sh %s", f->hooks, pidfile);
    f->cfg.deploy.exec.timeout_ms = 1500;
    open_driver(f);
    result_t r = {0};
    uint64_t t0 = uv_hrtime();
    assert_int_equal(f->drv->ops->deploy(f->drv, &ctx_green, on_done, &r, NULL), 0);
    assert_int_equal(uv_run(&f->loop, UV_RUN_DEFAULT), 0);
    uint64_t ms = (uv_hrtime() - t0) / 1000000;
    assert_int_equal(r.calls, 1);
    assert_int_equal(r.status, ROTOR_ETIMEOUT);
    assert_string_equal(r.reason, "hook deploy timed out after 1s500ms (output in the log)");
    assert_true(ms >= 1400 && ms < 10000);
    assert_group_gone(pidfile);
}

typedef struct {
    fixture_t *f;
    deploy_req_t *req;
    result_t *r;
    char pidfile[128];
} canceler_t;

static void cancel_when_started(uv_timer_t *t)
{
    canceler_t *c = t->data;
    if (c->r->calls == 0 && access(c->pidfile, F_OK) != 0)
        return;
    if (c->r->calls == 0)
        c->f->drv->ops->cancel(c->req);
    uv_close((uv_handle_t *)t, NULL);
}

static void test_cancel_kills_group(void **state)
{
    fixture_t *f = *state;
    result_t r = {0};
    canceler_t c = {.f = f, .r = &r};
    snprintf(c.pidfile, sizeof c.pidfile, "%s/pids", f->dir);
    snprintf(f->cmd[1], sizeof f->cmd[1], "/bin/sh %s/hang.sh %s", f->hooks, c.pidfile);
    open_driver(f);
    uint64_t t0 = uv_hrtime();
    assert_int_equal(f->drv->ops->swap(f->drv, &ctx_green, on_done, &r, &c.req), 0);
    uv_timer_t t;
    uv_timer_init(&f->loop, &t);
    t.data = &c;
    uv_timer_start(&t, cancel_when_started, 20, 20);
    assert_int_equal(uv_run(&f->loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(r.calls, 1);
    assert_int_equal(r.status, ROTOR_ECANCELED);
    assert_string_equal(r.reason, "hook swap canceled");
    assert_true((uv_hrtime() - t0) / 1000000 < 10000);
    assert_group_gone(c.pidfile);
}

static void test_optional_actions_absent(void **state)
{
    fixture_t *f = *state;
    open_driver(f); /* no retire, no rollback command */
    result_t retire = {0}, rollback = {0}, observe = {0}, canceled = {0};
    deploy_req_t *req = NULL;
    assert_int_equal(f->drv->ops->retire(f->drv, &ctx_green, on_done, &retire, NULL), 0);
    assert_int_equal(f->drv->ops->rollback(f->drv, &ctx_green, on_done, &rollback, NULL), 0);
    assert_int_equal(f->drv->ops->observe(f->drv, &ctx_green, on_observe, &observe, NULL), 0);
    assert_int_equal(f->drv->ops->retire(f->drv, &ctx_green, on_done, &canceled, &req), 0);
    f->drv->ops->cancel(req);
    /* Never called back from inside the call. */
    assert_int_equal(retire.calls + rollback.calls + observe.calls + canceled.calls, 0);
    assert_int_equal(uv_run(&f->loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(retire.calls, 1);
    assert_int_equal(retire.status, 0);
    assert_int_equal(rollback.calls, 1);
    assert_int_equal(rollback.status, 0);
    assert_int_equal(observe.calls, 1);
    assert_int_equal(observe.status, 0);
    assert_int_equal(observe.observed, -1);
    assert_int_equal(canceled.calls, 1);
    assert_int_equal(canceled.status, ROTOR_ECANCELED);
}

static void test_concurrent_actions(void **state)
{
    fixture_t *f = *state;
    char barrier[128];
    snprintf(barrier, sizeof barrier, "%s/barrier", f->dir);
    assert_int_equal(mkdir(barrier, 0700), 0);
    snprintf(f->cmd[0], sizeof f->cmd[0], "/bin/sh %s/barrier.sh %s %d", f->hooks, barrier, NCONC);
    open_driver(f);
    result_t r[NCONC] = {0};
    char ids[NCONC][40];
    for (int i = 0; i < NCONC; i++) {
        deploy_ctx_t ctx = ctx_green;
        snprintf(ids[i], sizeof ids[i], "rotation-%d", i);
        ctx.rotation_id = ids[i];
        assert_int_equal(f->drv->ops->deploy(f->drv, &ctx, on_done, &r[i], NULL), 0);
    }
    assert_int_equal(uv_run(&f->loop, UV_RUN_DEFAULT), 0);
    for (int i = 0; i < NCONC; i++) {
        assert_int_equal(r[i].calls, 1);
        assert_int_equal(r[i].status, 0);
        char path[512];
        snprintf(path, sizeof path, "%s/%s", barrier, ids[i]);
        assert_int_equal(access(path, F_OK), 0);
    }
}

/* A hook that starts a daemon without redirecting its output must not hold the action until the
 * daemon exits: once the command has exited, its output is waited for only a short while. */
static void test_background_holder_does_not_block(void **state)
{
    fixture_t *f = *state;
    char pidfile[128];
    snprintf(pidfile, sizeof pidfile, "%s/daemon", f->dir);
    snprintf(f->cmd[0], sizeof f->cmd[0], "sleep 30 & echo $! >%s; echo started", pidfile);
    open_driver(f);
    result_t r = {0};
    uint64_t t0 = uv_hrtime();
    assert_int_equal(f->drv->ops->deploy(f->drv, &ctx_green, on_done, &r, NULL), 0);
    assert_int_equal(uv_run(&f->loop, UV_RUN_DEFAULT), 0);
    uint64_t ms = (uv_hrtime() - t0) / 1000000;
    int daemon = 0;
    FILE *fp = fopen(pidfile, "r");
    assert_non_null(fp);
    assert_int_equal(fscanf(fp, "%d", &daemon), 1);
    fclose(fp);
    assert_false(process_gone(daemon)); /* a clean exit leaves what the hook started running */
    kill(daemon, SIGKILL);
    assert_int_equal(r.calls, 1);
    assert_int_equal(r.status, 0);
    assert_true(ms < 10000);
    char lines[8][1100];
    assert_int_equal(output_lines(f, "stdout", lines, 8), 1);
    assert_string_equal(lines[0], "started");
}

typedef struct {
    fixture_t *f;
    deploy_req_t *req;
    result_t *r;
    char shellfile[128];
    char daemonfile[128];
} drain_canceler_t;

static int read_pid(const char *path)
{
    int pid = 0;
    FILE *fp = fopen(path, "r");
    if (fp) {
        if (fscanf(fp, "%d", &pid) != 1)
            pid = 0;
        fclose(fp);
    }
    return pid;
}

/* Cancels once the command's shell has exited and been reaped (no /proc entry left: the loop
 * reaped it, so the driver has seen the exit) while the background process it started still
 * holds its output. */
static void cancel_in_drain(uv_timer_t *t)
{
    drain_canceler_t *c = t->data;
    int shell = read_pid(c->shellfile);
    char proc[64];
    snprintf(proc, sizeof proc, "/proc/%d", shell);
    if (c->r->calls == 0 && (shell <= 0 || access(proc, F_OK) == 0))
        return;
    if (c->r->calls == 0)
        c->f->drv->ops->cancel(c->req);
    uv_close((uv_handle_t *)t, NULL);
}

/* A cancel is what lets the engine tell the journal that the attempt's effect is over (the new
 * owner then runs it again): a process of the command's group still running after the shell
 * exited (the drain) is part of that effect and must be gone when the cancel reports. */
static void test_cancel_in_drain_kills_background(void **state)
{
    fixture_t *f = *state;
    result_t r = {0};
    drain_canceler_t c = {.f = f, .r = &r};
    snprintf(c.shellfile, sizeof c.shellfile, "%s/shell", f->dir);
    snprintf(c.daemonfile, sizeof c.daemonfile, "%s/daemon", f->dir);
    snprintf(f->cmd[0], sizeof f->cmd[0],
             "sleep 30 & echo $! >%s.t; mv %s.t %s; echo $$ >%s.t; mv %s.t %s", c.daemonfile,
             c.daemonfile, c.daemonfile, c.shellfile, c.shellfile, c.shellfile);
    open_driver(f);
    uint64_t t0 = uv_hrtime();
    assert_int_equal(f->drv->ops->deploy(f->drv, &ctx_green, on_done, &r, &c.req), 0);
    uv_timer_t t;
    uv_timer_init(&f->loop, &t);
    t.data = &c;
    uv_timer_start(&t, cancel_in_drain, 5, 5);
    assert_int_equal(uv_run(&f->loop, UV_RUN_DEFAULT), 0);
    int daemon = read_pid(c.daemonfile);
    assert_true(daemon > 0);
    /* A killed process closes its files (the pipes' EOF) a moment before it turns zombie. */
    for (int i = 0; i < 50 && !process_gone(daemon); i++)
        usleep(20 * 1000);
    bool gone = process_gone(daemon);
    if (!gone)
        kill(daemon, SIGKILL);
    assert_true(gone);
    assert_int_equal(r.calls, 1);
    assert_int_equal(r.status, ROTOR_ECANCELED);
    assert_true((uv_hrtime() - t0) / 1000000 < 10000);
}

static void test_bad_workdir_fails_with_reason(void **state)
{
    fixture_t *f = *state;
    snprintf(f->workdir, sizeof f->workdir, "%s/missing", f->dir);
    f->cfg.deploy.exec.workdir = f->workdir;
    open_driver(f);
    result_t r = {0};
    assert_int_equal(f->drv->ops->deploy(f->drv, &ctx_green, on_done, &r, NULL), 0);
    assert_int_equal(r.calls, 0);
    assert_int_equal(uv_run(&f->loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(r.calls, 1);
    assert_int_equal(r.status, ROTOR_EFAIL);
    assert_string_equal(r.reason, "hook deploy could not start: no such file or directory");
}

static void test_open_dispatch(void **state)
{
    fixture_t *f = *state;
    char err[256] = "";
    deploy_t *d = (deploy_t *)&err; /* must be overwritten */
    f->cfg.deploy.kind_id = DEPLOY_NONE;
    assert_int_equal(deploy_open(&f->loop, &f->cfg, NULL, &d, err, sizeof err), 0);
    assert_null(d);
    d = (deploy_t *)&err;
    f->cfg.deploy.kind_id = DEPLOY_EXTERNAL;
    assert_int_equal(deploy_open(&f->loop, &f->cfg, NULL, &d, err, sizeof err), 0);
    assert_null(d);
    f->cfg.deploy.kind_id = DEPLOY_EXEC;
    f->cfg.deploy.exec.swap = NULL;
    assert_int_equal(deploy_open(&f->loop, &f->cfg, NULL, &d, err, sizeof err), ROTOR_ECONFIG);
    assert_string_equal(err,
                        "secret orders-db: deploy.exec.swap: a command is required for deploy kind "
                        "exec");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_success_env_and_output, setup, teardown),
        cmocka_unit_test_setup_teardown(test_failure_output_only_in_log, setup, teardown),
        cmocka_unit_test_setup_teardown(test_failure_without_output, setup, teardown),
        cmocka_unit_test_setup_teardown(test_killed_by_signal, setup, teardown),
        cmocka_unit_test_setup_teardown(test_timeout_kills_group, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cancel_kills_group, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cancel_in_drain_kills_background, setup, teardown),
        cmocka_unit_test_setup_teardown(test_optional_actions_absent, setup, teardown),
        cmocka_unit_test_setup_teardown(test_concurrent_actions, setup, teardown),
        cmocka_unit_test_setup_teardown(test_background_holder_does_not_block, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_workdir_fails_with_reason, setup, teardown),
        cmocka_unit_test_setup_teardown(test_open_dispatch, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
