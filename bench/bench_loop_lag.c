/* bench_loop_lag.c: why set-db hashes on the threadpool. A 1 ms repeating timer measures how late
 * the loop gets while N SCRAM-SHA-256 verifiers (PQencryptPasswordConn) are computed (a) inline on
 * the loop thread and (b) with uv_queue_work; an idle loop gives the noise floor. */
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "bench_common.h"
#include "util.h"

#define TICK_MS 1
#define TICKS_AFTER 20 /* ticks measured after the work ends, to see the loop recover */

typedef enum { MODE_IDLE, MODE_INLINE, MODE_POOL } lag_mode_t;

typedef struct {
    uv_loop_t *loop;
    uv_timer_t tick, start;
    lag_mode_t mode;
    long n, done;
    PGconn **conns;
    uv_work_t *work;
    uint64_t last_ns, worst_ns;
    int ticks_after;
} lag_run_t;

/* A PGconn that never connected (no server at that socket path) is still a valid object, and
 * PQencryptPasswordConn with an explicit algorithm does no I/O, only the hash. */
static PGconn *dead_conn(void)
{
    PGconn *c = PQconnectStart("host=/nonexistent/rotor-bench port=1 connect_timeout=1");
    if (!c) {
        fprintf(stderr, "bench_loop_lag: PQconnectStart: out of memory\n");
        exit(1);
    }
    return c;
}

static void hash_one(PGconn *c)
{
    char *v =
        PQencryptPasswordConn(c, "correct horse battery staple", "app_green", "scram-sha-256");
    if (!v || strncmp(v, "SCRAM-SHA-256$", 14) != 0) {
        fprintf(stderr, "bench_loop_lag: PQencryptPasswordConn: %s\n", PQerrorMessage(c));
        exit(1);
    }
    PQfreemem(v);
}

static void on_close(uv_handle_t *h)
{
    (void)h;
}

static void on_tick(uv_timer_t *t)
{
    lag_run_t *r = t->data;
    uint64_t now = uv_hrtime();
    if (r->last_ns) {
        uint64_t interval = now - r->last_ns;
        uint64_t late = interval > TICK_MS * 1000000u ? interval - TICK_MS * 1000000u : 0;
        if (late > r->worst_ns)
            r->worst_ns = late;
    }
    r->last_ns = now;
    if (r->done == r->n && ++r->ticks_after >= TICKS_AFTER) {
        uv_close((uv_handle_t *)&r->tick, on_close);
        uv_close((uv_handle_t *)&r->start, on_close);
    }
}

static void work_cb(uv_work_t *w)
{
    hash_one(w->data);
}

static void after_work_cb(uv_work_t *w, int status)
{
    lag_run_t *r = w->loop->data;
    if (status != 0)
        exit(1);
    r->done++;
}

/* Starts the work a few ticks in, so the timer is already measuring. */
static void on_start(uv_timer_t *t)
{
    lag_run_t *r = t->data;
    if (r->mode == MODE_INLINE) {
        for (long i = 0; i < r->n; i++)
            hash_one(r->conns[i]);
        r->done = r->n;
    } else if (r->mode == MODE_POOL) {
        for (long i = 0; i < r->n; i++) {
            r->work[i].data = r->conns[i];
            if (uv_queue_work(r->loop, &r->work[i], work_cb, after_work_cb) != 0)
                exit(1);
        }
    } else {
        r->done = r->n;
    }
}

/* Returns the worst lateness of the 1 ms timer in nanoseconds. */
static uint64_t run_mode(lag_mode_t mode, long n, PGconn **conns)
{
    uv_loop_t loop;
    if (uv_loop_init(&loop) != 0)
        exit(1);
    lag_run_t r = {.loop = &loop, .mode = mode, .n = n, .conns = conns};
    r.work = util_calloc((size_t)n, sizeof *r.work);
    loop.data = &r;
    uv_timer_init(&loop, &r.tick);
    uv_timer_init(&loop, &r.start);
    r.tick.data = r.start.data = &r;
    uv_timer_start(&r.tick, on_tick, TICK_MS, TICK_MS);
    uv_timer_start(&r.start, on_start, 5 * TICK_MS, 0);
    uv_run(&loop, UV_RUN_DEFAULT);
    if (uv_loop_close(&loop) != 0) {
        fprintf(stderr, "bench_loop_lag: loop not closed cleanly\n");
        exit(1);
    }
    free(r.work);
    return r.worst_ns;
}

int main(int argc, char **argv)
{
    bench_opts_t o;
    bench_parse_args(argc, argv, 50, &o);
    PGconn **conns = util_calloc((size_t)o.iterations, sizeof *conns);
    for (long i = 0; i < o.iterations; i++)
        conns[i] = dead_conn();

    uint64_t t0 = bench_now_ns();
    hash_one(conns[0]);
    uint64_t one_hash = bench_now_ns() - t0;

    uint64_t idle = run_mode(MODE_IDLE, o.iterations, conns);
    uint64_t inl = run_mode(MODE_INLINE, o.iterations, conns);
    uint64_t pool = run_mode(MODE_POOL, o.iterations, conns);

    char subject[96], other[96];
    snprintf(subject, sizeof subject, "worst lag, %ld hashes inline", o.iterations);
    snprintf(other, sizeof other, "worst lag, %ld hashes on threadpool", o.iterations);
    bench_report("loop_lag", subject, other, 1, inl, pool);
    bench_report("loop_lag", other, "worst lag, idle loop", 1, pool, idle);
    printf("INFO\tone SCRAM-SHA-256 hash: %.2f ms\n", (double)one_hash / 1e6);
    for (long i = 0; i < o.iterations; i++)
        PQfinish(conns[i]);
    free(conns);
    return 0;
}
