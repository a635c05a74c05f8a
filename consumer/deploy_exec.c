/* deploy_exec.c: the exec deploy driver: each action runs the operator's command (a hook) with
 * sh -c in its own process group, with a minimal environment that never holds a secret or rotor's
 * own environment (which holds DSNs), bounded by a timeout. Its output goes to the log only, the
 * last EXEC_LOG_MAX bytes of it, line by line: a hook run with `set -x` prints what it handles,
 * and the journal and the events are read by more people than the log. */
#include "deploy.h"

#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "rotor.h"
#include "secret.h"
#include "util.h"

#define EXEC_LINE_MAX 1000 /* one runaway line must not flood the log */
#define EXEC_LOG_MAX 4096  /* the last bytes of output (both streams) kept for the log */
/* A command that exits 0 may leave a background process holding its stdout (a daemon started
 * without redirection); the action must not wait on that process forever. */
#define EXEC_DRAIN_MS 2000
#define EXEC_DEFAULT_TIMEOUT_MS (5 * 60 * 1000)
#define EXEC_ENV_MAX 11

/* One captured output stream of the child. */
typedef struct {
    uv_pipe_t pipe;
    deploy_req_t *req;
    const char *name; /* "stdout" or "stderr" */
    char line[EXEC_LINE_MAX + 1];
    size_t len;
    bool done; /* EOF, read error, or given up on after the drain time */
    char rbuf[4096];
} exec_stream_t;

struct deploy_req_s {
    const char *action; /* static */
    char *rotation_id;  /* owned copy, for log lines */
    deploy_cb cb;
    deploy_observe_cb observe_cb; /* set instead of cb for observe */
    void *arg;
    uint64_t timeout_ms;

    uv_timer_t timer; /* the timeout, then the drain time; the whole wait of a no-op */
    uv_process_t proc;
    exec_stream_t out[2]; /* stdout, stderr */
    int nhandles;         /* initialised handles whose close callback has not run */

    int pid; /* 0 when nothing was spawned */
    int spawn_err;
    bool exited; /* the child exited, or there is no child */
    bool closing;
    bool timed_out;
    bool canceled;
    int64_t exit_status;
    int term_signal;

    /* The last lines of output, logged when the command ends: records of a stream byte ('0'
     * stdout, '1' stderr), the line and a NUL, the oldest dropped first. */
    char kept[EXEC_LOG_MAX];
    size_t kept_len;
    size_t dropped_lines, dropped_bytes;
    bool any_output;
};

static void exec_check_done(deploy_req_t *req);

/* Keeps one line for the log, dropping the oldest kept lines to make room. */
static void exec_keep(deploy_req_t *req, int stream, const char *line, size_t len)
{
    len = strnlen(line, len); /* a NUL in the output ends the line, as the log would */
    size_t need = len + 2;
    req->any_output = true;
    while (req->kept_len + need > EXEC_LOG_MAX && req->kept_len > 0) {
        size_t first = strlen(req->kept + 1) + 2;
        req->dropped_lines++;
        req->dropped_bytes += first - 2;
        memmove(req->kept, req->kept + first, req->kept_len - first);
        req->kept_len -= first;
    }
    req->kept[req->kept_len] = (char)('0' + stream);
    memcpy(req->kept + req->kept_len + 1, line, len);
    req->kept[req->kept_len + 1 + len] = '\0';
    req->kept_len += need;
}

/* Logs the kept lines in the order they came, after a note of what was dropped before them. */
static void exec_log_output(deploy_req_t *req)
{
    if (req->dropped_lines > 0) {
        char lines[24], bytes[24], cap[24];
        snprintf(lines, sizeof lines, "%zu", req->dropped_lines);
        snprintf(bytes, sizeof bytes, "%zu", req->dropped_bytes);
        snprintf(cap, sizeof cap, "%d", EXEC_LOG_MAX);
        log_info("deploy.exec.output_dropped", "action", req->action, "rotation_id",
                 req->rotation_id, "lines", lines, "bytes", bytes, "kept_bytes", cap);
    }
    for (size_t o = 0; o < req->kept_len;) {
        const char *line = req->kept + o + 1;
        log_info("deploy.exec.output", "action", req->action, "rotation_id", req->rotation_id,
                 "stream", req->out[req->kept[o] - '0'].name, "line", line);
        o += strlen(line) + 2;
    }
}

/* Length of s without a UTF-8 sequence cut at its end, so that a line cut at the limit still
 * logs as it was (the logger writes U+FFFD for each byte of a cut sequence). */
static size_t exec_utf8_whole(const char *s, size_t len)
{
    size_t i = len, k = 0;
    while (i > 0 && k < 3 && ((unsigned char)s[i - 1] & 0xC0) == 0x80) {
        i--;
        k++;
    }
    if (i == 0)
        return len;
    unsigned char c = (unsigned char)s[i - 1];
    size_t need = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
    return need == 1 || need == k + 1 ? len : i - 1;
}

static void exec_line_flush(exec_stream_t *s)
{
    if (s->len > 0 && s->line[s->len - 1] == '\r')
        s->len--;
    s->len = exec_utf8_whole(s->line, s->len);
    exec_keep(s->req, s == &s->req->out[1], s->line, s->len);
    s->len = 0;
}

/* Lines longer than EXEC_LINE_MAX are logged cut at the limit, and the rest of them dropped. */
static void exec_lines_feed(exec_stream_t *s, const char *buf, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (buf[i] == '\n') {
            exec_line_flush(s);
        } else if (s->len < EXEC_LINE_MAX) {
            s->line[s->len++] = buf[i];
        }
    }
}

static void exec_stream_finish(exec_stream_t *s)
{
    if (s->done)
        return;
    if (s->len > 0)
        exec_line_flush(s);
    s->done = true;
}

static void exec_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    exec_stream_t *s = h->data;
    (void)suggested;
    *buf = uv_buf_init(s->rbuf, sizeof s->rbuf);
}

static void exec_read(uv_stream_t *h, ssize_t nread, const uv_buf_t *buf)
{
    exec_stream_t *s = h->data;
    if (nread > 0) {
        exec_lines_feed(s, buf->base, (size_t)nread);
        return;
    }
    if (nread == 0)
        return;
    if (nread != UV_EOF)
        log_warn("deploy.exec.read_failed", "action", s->req->action, "rotation_id",
                 s->req->rotation_id, "stream", s->name, "error", uv_strerror((int)nread));
    uv_read_stop(h);
    exec_stream_finish(s);
    exec_check_done(s->req);
}

/* SIGKILL to the whole group: a hook's own children (a `sleep &`, a kubectl it waits on) would
 * otherwise outlive it and keep the output pipes open. */
static void exec_kill(deploy_req_t *req)
{
    if (req->pid <= 0 || req->exited)
        return;
    if (kill(-req->pid, SIGKILL) != 0)
        uv_process_kill(&req->proc, SIGKILL);
}

static void exec_on_close(uv_handle_t *h);

static void exec_check_done(deploy_req_t *req)
{
    if (req->closing || !req->exited || !req->out[0].done || !req->out[1].done)
        return;
    req->closing = true;
    uv_timer_stop(&req->timer);
    uv_close((uv_handle_t *)&req->timer, exec_on_close);
    if (req->pid != 0 || req->spawn_err != 0) {
        uv_close((uv_handle_t *)&req->proc, exec_on_close);
        for (int i = 0; i < 2; i++)
            uv_close((uv_handle_t *)&req->out[i].pipe, exec_on_close);
    }
}

static void exec_drain_end(deploy_req_t *req)
{
    for (int i = 0; i < 2; i++) {
        if (!req->out[i].done) {
            log_warn("deploy.exec.output_held", "action", req->action, "rotation_id",
                     req->rotation_id, "stream", req->out[i].name, "detail",
                     "a background process of the command still holds its output");
            exec_stream_finish(&req->out[i]);
        }
    }
    exec_check_done(req);
}

static void exec_on_timer(uv_timer_t *t)
{
    deploy_req_t *req = t->data;
    if (req->exited) {
        exec_drain_end(req);
        return;
    }
    req->timed_out = true;
    exec_kill(req);
}

static void exec_on_exit(uv_process_t *p, int64_t exit_status, int term_signal)
{
    deploy_req_t *req = p->data;
    req->exited = true;
    req->exit_status = exit_status;
    req->term_signal = term_signal;
    char pid[24], st[24], sig[16];
    snprintf(pid, sizeof pid, "%d", req->pid);
    snprintf(st, sizeof st, "%lld", (long long)exit_status);
    snprintf(sig, sizeof sig, "%d", term_signal);
    log_debug("deploy.exec.exited", "action", req->action, "rotation_id", req->rotation_id, "pid",
              pid, "status", st, "signal", sig);
    if (!req->out[0].done || !req->out[1].done)
        uv_timer_start(&req->timer, exec_on_timer, EXEC_DRAIN_MS, 0);
    exec_check_done(req);
}

/* The reason says what happened and where the output is, never what the output says: a hook's
 * output may hold what it handles, and the reason is journaled and published. */
static int exec_outcome(const deploy_req_t *req, char *reason, size_t len)
{
    char what[64];
    const char *where = req->any_output ? " (output in the log)" : " (no output)";
    if (req->canceled) {
        snprintf(reason, len, "hook %s canceled", req->action);
        return ROTOR_ECANCELED;
    }
    if (req->spawn_err) {
        snprintf(reason, len, "hook %s could not start: %s", req->action,
                 uv_strerror(req->spawn_err));
        return ROTOR_EFAIL;
    }
    if (req->timed_out) {
        util_format_duration(req->timeout_ms, what, sizeof what);
        snprintf(reason, len, "hook %s timed out after %s%s", req->action, what, where);
        return ROTOR_ETIMEOUT;
    }
    if (req->term_signal) {
        const char *abbrev = sigabbrev_np(req->term_signal);
        if (abbrev)
            snprintf(what, sizeof what, "was killed by SIG%s", abbrev);
        else
            snprintf(what, sizeof what, "was killed by signal %d", req->term_signal);
    } else if (req->exit_status != 0) {
        snprintf(what, sizeof what, "exited with status %lld", (long long)req->exit_status);
    } else {
        return 0;
    }
    snprintf(reason, len, "hook %s %s%s", req->action, what, where);
    return ROTOR_EFAIL;
}

static void exec_report(deploy_req_t *req)
{
    char reason[256];
    int status = exec_outcome(req, reason, sizeof reason);
    const char *why = status < 0 ? reason : NULL;
    exec_log_output(req);
    if (req->observe_cb)
        req->observe_cb(req->arg, status, -1, why);
    else
        req->cb(req->arg, status, why);
    free(req->rotation_id);
    secret_wipe(req, sizeof *req); /* the output it kept */
    free(req);
}

static void exec_on_close(uv_handle_t *h)
{
    deploy_req_t *req = h->data;
    if (h->type == UV_NAMED_PIPE)
        req = ((exec_stream_t *)h->data)->req;
    if (--req->nhandles == 0)
        exec_report(req);
}

static deploy_req_t *exec_req_new(deploy_t *d, const char *action, const deploy_ctx_t *ctx)
{
    deploy_req_t *req = util_calloc(1, sizeof *req);
    req->action = action;
    req->rotation_id = util_strdup(ctx && ctx->rotation_id ? ctx->rotation_id : "");
    req->timeout_ms =
        d->cfg->deploy.exec.timeout_ms ? d->cfg->deploy.exec.timeout_ms : EXEC_DEFAULT_TIMEOUT_MS;
    uv_timer_init(d->loop, &req->timer);
    req->timer.data = req;
    req->nhandles = 1;
    static const char *const names[2] = {"stdout", "stderr"};
    for (int i = 0; i < 2; i++) {
        req->out[i].req = req;
        req->out[i].name = names[i];
    }
    return req;
}

/* Nothing to run: succeed on a later loop iteration, never inside the call. */
static void exec_start_noop(deploy_req_t *req)
{
    req->exited = true;
    req->out[0].done = req->out[1].done = true;
    uv_timer_start(&req->timer, exec_on_timer, 0, 0);
}

static char *exec_env_var(const char *name, const char *value)
{
    size_t n = strlen(name) + strlen(value ? value : "") + 2;
    char *s = util_malloc(n);
    snprintf(s, n, "%s=%s", name, value ? value : "");
    return s;
}

/* The child's whole environment, built from nothing: never inherited, never a secret value. */
static size_t exec_env_build(char **env, const char *action, const deploy_ctx_t *ctx)
{
    size_t n = 0;
    env[n++] = util_strdup("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    const char *home = getenv("HOME");
    if (home)
        env[n++] = exec_env_var("HOME", home);
    env[n++] = util_strdup("LANG=C.UTF-8");
    env[n++] = exec_env_var("ROTOR_ACTION", action);
    env[n++] = exec_env_var("ROTOR_ROTATION_ID", ctx->rotation_id);
    env[n++] = exec_env_var("ROTOR_SECRET", ctx->secret);
    env[n++] = exec_env_var("ROTOR_SLOT", rotor_slot_name(ctx->slot));
    env[n++] = exec_env_var("ROTOR_ROLE", ctx->role);
    env[n++] = exec_env_var("ROTOR_STORE_NAME", ctx->store_name);
    env[n++] = exec_env_var("ROTOR_VERSION", ctx->version);
    env[n] = NULL;
    return n;
}

static void exec_spawn(deploy_t *d, deploy_req_t *req, const char *command, const deploy_ctx_t *ctx)
{
    for (int i = 0; i < 2; i++) {
        uv_pipe_init(d->loop, &req->out[i].pipe, 0);
        req->out[i].pipe.data = &req->out[i];
    }
    req->proc.data = req;
    req->nhandles += 3;

    char *env[EXEC_ENV_MAX];
    size_t nenv = exec_env_build(env, req->action, ctx);
    char *args[] = {"/bin/sh", "-c", (char *)command, NULL};
    uv_stdio_container_t stdio[3] = {
        {.flags = UV_IGNORE}, /* libuv points an ignored stdin at /dev/null */
        {.flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE,
         .data.stream = (uv_stream_t *)&req->out[0].pipe},
        {.flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE,
         .data.stream = (uv_stream_t *)&req->out[1].pipe},
    };
    const char *workdir = d->cfg->deploy.exec.workdir;
    uv_process_options_t opts = {
        .exit_cb = exec_on_exit,
        .file = args[0],
        .args = args,
        .env = env,
        .cwd = workdir && workdir[0] ? workdir : NULL,
        /* A new session, so the command and everything it starts share one process group. */
        .flags = UV_PROCESS_DETACHED,
        .stdio_count = 3,
        .stdio = stdio,
    };
    int rc = uv_spawn(d->loop, &req->proc, &opts);
    for (size_t i = 0; i < nenv; i++)
        free(env[i]);
    if (rc != 0) {
        /* Reported through the callback, so the reason (a bad workdir) reaches the journal. */
        req->spawn_err = rc;
        exec_start_noop(req);
        return;
    }
    req->pid = req->proc.pid;
    char pid[24];
    snprintf(pid, sizeof pid, "%d", req->pid);
    log_info("deploy.exec.started", "action", req->action, "rotation_id", req->rotation_id, "pid",
             pid);
    for (int i = 0; i < 2; i++)
        uv_read_start((uv_stream_t *)&req->out[i].pipe, exec_alloc, exec_read);
    uv_timer_start(&req->timer, exec_on_timer, req->timeout_ms, 0);
}

static int exec_action(deploy_t *d, const char *action, const char *command, bool optional,
                       const deploy_ctx_t *ctx, deploy_cb cb, void *arg, deploy_req_t **out)
{
    bool have = command && command[0];
    if (!have && !optional)
        return ROTOR_ECONFIG;
    deploy_req_t *req = exec_req_new(d, action, ctx);
    req->cb = cb;
    req->arg = arg;
    if (have)
        exec_spawn(d, req, command, ctx);
    else
        exec_start_noop(req);
    if (out)
        *out = req;
    return 0;
}

static int exec_deploy(deploy_t *d, const deploy_ctx_t *ctx, deploy_cb cb, void *arg,
                       deploy_req_t **out)
{
    return exec_action(d, "deploy", d->cfg->deploy.exec.deploy, false, ctx, cb, arg, out);
}

static int exec_swap(deploy_t *d, const deploy_ctx_t *ctx, deploy_cb cb, void *arg,
                     deploy_req_t **out)
{
    return exec_action(d, "swap", d->cfg->deploy.exec.swap, false, ctx, cb, arg, out);
}

static int exec_retire(deploy_t *d, const deploy_ctx_t *ctx, deploy_cb cb, void *arg,
                       deploy_req_t **out)
{
    return exec_action(d, "retire", d->cfg->deploy.exec.retire, true, ctx, cb, arg, out);
}

static int exec_rollback(deploy_t *d, const deploy_ctx_t *ctx, deploy_cb cb, void *arg,
                         deploy_req_t **out)
{
    return exec_action(d, "rollback", d->cfg->deploy.exec.rollback, true, ctx, cb, arg, out);
}

/* Commands cannot say where production points: observe always answers -1 (cannot tell). */
static int exec_observe(deploy_t *d, const deploy_ctx_t *ctx, deploy_observe_cb cb, void *arg,
                        deploy_req_t **out)
{
    deploy_req_t *req = exec_req_new(d, "observe", ctx);
    req->observe_cb = cb;
    req->arg = arg;
    exec_start_noop(req);
    if (out)
        *out = req;
    return 0;
}

/* The request ends (and its caller may tell the journal that nothing of the attempt runs any
 * more) only once the command's whole process group is gone or given up on: the kill reaches the
 * group, the exit and the pipes' EOF finish the request. */
static void exec_cancel(deploy_req_t *req)
{
    req->canceled = true;
    if (req->closing)
        return;
    if (!req->exited) {
        exec_kill(req);
        return;
    }
    /* The command exited but a background process of its group still holds its output (the
     * drain): it is part of the effect being cancelled, so it is killed too, not left running
     * past the release. The group outlives its leader while a member is left. */
    if (req->pid > 0 && (!req->out[0].done || !req->out[1].done) && kill(-req->pid, SIGKILL) == 0)
        return; /* its death closes the pipes; the drain timer bounds the wait */
    exec_drain_end(req);
}

static void exec_close(deploy_t *d)
{
    free(d);
}

static const deploy_ops_t exec_ops = {
    .deploy = exec_deploy,
    .swap = exec_swap,
    .retire = exec_retire,
    .rollback = exec_rollback,
    .observe = exec_observe,
    .cancel = exec_cancel,
    .close = exec_close,
};

int deploy_exec_open(uv_loop_t *loop, const cfg_secret_t *sec, http_t *http, deploy_t **out,
                     char *err, size_t errlen)
{
    (void)http; /* commands need no HTTP client */
    const char *missing = NULL;
    if (!sec->deploy.exec.deploy || !sec->deploy.exec.deploy[0])
        missing = "deploy";
    else if (!sec->deploy.exec.swap || !sec->deploy.exec.swap[0])
        missing = "swap";
    if (missing) {
        snprintf(err, errlen,
                 "secret %s: deploy.exec.%s: a command is required for deploy kind exec",
                 sec->name ? sec->name : "?", missing);
        return ROTOR_ECONFIG;
    }
    deploy_t *d = util_calloc(1, sizeof *d);
    d->ops = &exec_ops;
    d->loop = loop;
    d->cfg = sec;
    *out = d;
    return 0;
}
