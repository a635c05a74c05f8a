/* deploy_tool.c: test helper: opens a secret's deploy driver from a rotor configuration and runs
 * one action, so the end-to-end tests can drive a driver against an emulator.
 *
 *   deploy_tool CONFIG SECRET ACTION [SLOT [VERSION]] [--cancel-after MS]
 *       ACTION: deploy, swap, retire, rollback or observe; SLOT: blue or green.
 *       Prints one line on stdout: "ok", "ok observed=SLOT|unknown", or "error CODE REASON";
 *       exits 0 (ok), 1 (the action failed), 2 (usage or configuration), 3 (the callback ran
 *       other than once, or the loop did not close cleanly). Logs (JSON lines) go to stderr. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "config.h"
#include "deploy.h"
#include "http.h"
#include "log.h"
#include "rotor.h"

typedef struct {
    int calls;
    int status;
    int observed;
    char reason[1024];
    deploy_req_t *req;
    uv_timer_t cancel_timer;
} tool_t;

static void tool_record(tool_t *t, int status, int observed, const char *reason)
{
    t->calls++;
    t->status = status;
    t->observed = observed;
    snprintf(t->reason, sizeof t->reason, "%s", reason ? reason : "");
    t->req = NULL;
    uv_timer_stop(&t->cancel_timer);
}

static void on_done(void *arg, int status, const char *reason)
{
    tool_record(arg, status, -1, reason);
}

static void on_observed(void *arg, int status, int observed, const char *reason)
{
    tool_record(arg, status, observed, reason);
}

static void on_cancel_timer(uv_timer_t *h)
{
    tool_t *t = h->data;
    deploy_t *d = t->cancel_timer.loop->data;
    if (t->req)
        d->ops->cancel(t->req);
}

static int tool_start(deploy_t *d, const char *action, const deploy_ctx_t *ctx, tool_t *t)
{
    if (strcmp(action, "observe") == 0)
        return d->ops->observe(d, ctx, on_observed, t, &t->req);
    int (*op)(deploy_t *, const deploy_ctx_t *, deploy_cb, void *, deploy_req_t **) =
        strcmp(action, "deploy") == 0     ? d->ops->deploy
        : strcmp(action, "swap") == 0     ? d->ops->swap
        : strcmp(action, "retire") == 0   ? d->ops->retire
        : strcmp(action, "rollback") == 0 ? d->ops->rollback
                                          : NULL;
    if (!op)
        return ROTOR_EINVALID;
    return op(d, ctx, on_done, t, &t->req);
}

static void on_walk_close(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

static int tool_report(const tool_t *t, const char *action)
{
    if (t->calls != 1) {
        printf("error callback-ran-%d-times\n", t->calls);
        return 3;
    }
    if (t->status < 0) {
        printf("error %s %s\n", rotor_strerror(t->status), t->reason);
        return 1;
    }
    if (strcmp(action, "observe") == 0)
        printf("ok observed=%s\n",
               t->observed < 0 ? "unknown" : rotor_slot_name((rotor_slot_t)t->observed));
    else
        printf("ok\n");
    return 0;
}

int main(int argc, char **argv)
{
    long cancel_after = -1;
    if (argc >= 3 && strcmp(argv[argc - 2], "--cancel-after") == 0) {
        cancel_after = atol(argv[argc - 1]);
        argc -= 2;
    }
    if (argc < 4 || argc > 6) {
        fprintf(stderr, "usage: deploy_tool CONFIG SECRET ACTION [SLOT [VERSION]] "
                        "[--cancel-after MS]\n");
        return 2;
    }
    log_init(LOG_DEBUG, stderr);
    char err[512];
    rotor_config_t *cfg = NULL;
    if (config_load(argv[1], &cfg, err, sizeof err) < 0) {
        fprintf(stderr, "deploy_tool: %s\n", err);
        return 2;
    }
    const cfg_secret_t *sec = config_secret(cfg, argv[2]);
    rotor_slot_t slot = SLOT_BLUE;
    if (!sec || (argc > 4 && rotor_slot_parse(argv[4], &slot) < 0)) {
        fprintf(stderr, "deploy_tool: no secret %s, or a bad slot\n", argv[2]);
        config_free(cfg);
        return 2;
    }
    uv_loop_t loop;
    uv_loop_init(&loop);
    http_t *http = NULL;
    deploy_t *d = NULL;
    int rc = http_init(&loop, &http);
    if (rc == 0)
        rc = deploy_open(&loop, sec, http, &d, err, sizeof err);
    if (rc == 0 && !d) {
        snprintf(err, sizeof err, "secret %s has no deploy driver", argv[2]);
        rc = ROTOR_ECONFIG;
    }
    tool_t t = {.observed = -1};
    uv_timer_init(&loop, &t.cancel_timer);
    t.cancel_timer.data = &t;
    loop.data = d;
    deploy_ctx_t ctx = {.rotation_id = "00000000-0000-4000-8000-000000000001",
                        .secret = sec->name,
                        .slot = slot,
                        .role = sec->database.roles[slot],
                        .store_name = sec->store.names[slot],
                        .version = argc > 5 ? argv[5] : ""};
    if (rc == 0) {
        rc = tool_start(d, argv[3], &ctx, &t);
        if (rc < 0)
            snprintf(err, sizeof err, "the action did not start: %s", rotor_strerror(rc));
    }
    int code = 2;
    if (rc == 0) {
        if (cancel_after >= 0)
            uv_timer_start(&t.cancel_timer, on_cancel_timer, (uint64_t)cancel_after, 0);
        uv_run(&loop, UV_RUN_DEFAULT);
        code = tool_report(&t, argv[3]);
    } else {
        fprintf(stderr, "deploy_tool: %s\n", err);
    }
    fflush(stdout);
    if (d)
        d->ops->close(d);
    uv_close((uv_handle_t *)&t.cancel_timer, NULL);
    if (http)
        http_close(http);
    uv_run(&loop, UV_RUN_DEFAULT);
    if (uv_loop_close(&loop) != 0) {
        fprintf(stderr, "deploy_tool: the loop did not close cleanly\n");
        uv_walk(&loop, on_walk_close, NULL);
        uv_run(&loop, UV_RUN_DEFAULT);
        uv_loop_close(&loop);
        code = 3;
    }
    config_free(cfg);
    return code;
}
