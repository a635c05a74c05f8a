/* test_owner.c: partition claims (owner.c) against a real journal. A claim makes the fence that
 * rotation writes carry; a new partition count of the commands topic (librdkafka's mock broker
 * cannot add partitions, so the count is handed over here as kafka.c's refresh would) ends the
 * old claims and claims again under the new count; a write under a claim another instance took
 * over, or under a stale count, is refused as ROTOR_EFENCED; a lost or revoked partition is not
 * owned again before it is assigned again. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "journal.h"
#include "owner.h"
#include "util.h"

typedef struct {
    uv_loop_t loop;
    uv_timer_t guard; /* wakes uv_run so run_until can give up */
    journal_t *a, *b;
    owner_t *owner;
    int changed;
    bool done;
    int status;
    int64_t epoch;
} ctx_t;

static void on_guard(uv_timer_t *t)
{
    (void)t;
}

static void run_until(ctx_t *x, bool *flag)
{
    uint64_t end = uv_now(&x->loop) + 20000;
    while (!*flag && uv_now(&x->loop) < end)
        uv_run(&x->loop, UV_RUN_ONCE);
    assert_true(*flag);
}

static void on_open(journal_t *j, int status, const char *reason, void *arg)
{
    (void)j;
    ctx_t *x = arg;
    if (status != 0)
        fail_msg("journal_open: %s", reason ? reason : "?");
    x->done = true;
}

static void on_secret(void *arg, int status, rotor_slot_t active, int64_t first, int64_t last)
{
    (void)active, (void)first, (void)last;
    ctx_t *x = arg;
    x->status = status;
    x->done = true;
}

static void on_done(void *arg, int status)
{
    ctx_t *x = arg;
    x->status = status;
    x->done = true;
}

static void on_claimed(void *arg, int status, int64_t epoch)
{
    ctx_t *x = arg;
    x->status = status;
    x->epoch = epoch;
    x->done = true;
}

static void on_changed(void *arg)
{
    ctx_t *x = arg;
    x->changed++;
}

/* Runs until ownership changed `want` times in all. */
static void wait_changed(ctx_t *x, int want)
{
    uint64_t end = uv_now(&x->loop) + 20000;
    while (x->changed < want && uv_now(&x->loop) < end)
        uv_run(&x->loop, UV_RUN_ONCE);
    assert_int_equal(x->changed, want);
}

static int write_row(ctx_t *x, journal_rot_t *r, const journal_fence_t *f)
{
    r->fence = *f;
    x->done = false;
    assert_int_equal(journal_update(x->a, r, NULL, NULL, on_done, x), 0);
    run_until(x, &x->done);
    if (x->status == 0)
        r->seq++;
    return x->status;
}

static void test_claims_follow_the_partition_count_and_fence_writes(void **state)
{
    (void)state;
    ctx_t x;
    memset(&x, 0, sizeof x);
    uv_loop_init(&x.loop);
    uv_timer_init(&x.loop, &x.guard);
    uv_timer_start(&x.guard, on_guard, 50, 50);
    assert_int_equal(journal_open(&x.loop, "", "owner-a", on_open, &x, &x.a), 0);
    run_until(&x, &x.done);
    x.done = false;
    assert_int_equal(journal_open(&x.loop, "", "owner-b", on_open, &x, &x.b), 0);
    run_until(&x, &x.done);

    /* assigned before the count is known: owned only once claimed under a count */
    x.owner = owner_new(&x.loop, x.a, on_changed, &x);
    int32_t part = 0;
    journal_fence_t f, f2;
    owner_assign(x.owner, &part, 1, true);
    assert_false(owner_fence(x.owner, 0, &f));
    owner_set_count(x.owner, 1);
    wait_changed(&x, 1);
    assert_true(owner_fence(x.owner, 0, &f));
    assert_int_equal(f.nparts, 1);
    assert_false(owner_fence(x.owner, 1, &f2)); /* not assigned here */

    /* a rotation created and moved under the claim */
    journal_rot_t r;
    memset(&r, 0, sizeof r);
    util_uuid4(r.id);
    snprintf(r.secret, sizeof r.secret, "owner-%s", r.id);
    r.stage = STAGE_PREPARE;
    r.status = RS_PENDING;
    r.seq = 1;
    r.to_slot = SLOT_GREEN;
    util_strlcpy(r.trigger, "manual", sizeof r.trigger);
    r.next_at_ms = util_now_ms();
    x.done = false;
    assert_int_equal(journal_secret(x.a, r.secret, SLOT_BLUE, on_secret, &x), 0);
    run_until(&x, &x.done);
    r.fence = f;
    x.done = false;
    assert_int_equal(journal_create(x.a, &r, NULL, NULL, on_done, &x), 0);
    run_until(&x, &x.done);
    assert_int_equal(x.status, 0);
    r.status = RS_RUNNING;
    r.attempt = 1;
    r.run_until_ms = util_now_ms() + 30000;
    assert_int_equal(write_row(&x, &r, &f), 0);

    /* the topic grows: the old claim writes no more; the partition is claimed again under the
     * new count, keeping its epoch (nobody took it over meanwhile) */
    owner_set_count(x.owner, 2);
    assert_false(owner_fence(x.owner, 0, &f2));
    wait_changed(&x, 3); /* the old claims ended (at once), the new one is made */
    assert_true(owner_fence(x.owner, 0, &f2));
    assert_int_equal(f2.nparts, 2);
    assert_int_equal(f2.epoch, f.epoch);
    assert_int_equal(write_row(&x, &r, &f), ROTOR_EFENCED); /* stale count */
    assert_int_equal(write_row(&x, &r, &f2), 0);

    /* another instance claims the partition: this one's writes are refused, not conflicts */
    x.done = false;
    assert_int_equal(journal_claim(x.b, 0, 2, 0, on_claimed, &x), 0);
    run_until(&x, &x.done);
    assert_int_equal(x.status, 0);
    assert_true(x.epoch > f2.epoch);
    assert_int_equal(write_row(&x, &r, &f2), ROTOR_EFENCED);
    /* a stale seq under a valid claim is a conflict, as before */
    journal_rot_t stale = r;
    stale.seq--;
    journal_fence_t fb = {.part = 0, .nparts = 2, .epoch = x.epoch};
    x.done = false;
    stale.fence = fb;
    assert_int_equal(journal_update(x.b, &stale, NULL, NULL, on_done, &x), 0);
    run_until(&x, &x.done);
    assert_int_equal(x.status, ROTOR_ECONFLICT);

    /* this process learns it lost the partition: not owned, and not claimed back, until the
     * group assigns it again */
    owner_lost(x.owner, &f2);
    assert_false(owner_fence(x.owner, 0, &f2));
    int before = x.changed;
    owner_set_count(x.owner, 2); /* no change: nothing to claim */
    for (int i = 0; i < 5; i++)
        uv_run(&x.loop, UV_RUN_ONCE);
    assert_int_equal(x.changed, before);
    owner_assign(x.owner, &part, 1, false);
    owner_assign(x.owner, &part, 1, true);
    wait_changed(&x, before + 1);
    assert_true(owner_fence(x.owner, 0, &f2));
    assert_true(f2.epoch > x.epoch); /* taken back from the other instance */
    assert_int_equal(write_row(&x, &r, &f2), 0);

    owner_stop(x.owner);
    journal_close(x.a);
    journal_close(x.b);
    uv_close((uv_handle_t *)&x.guard, NULL);
    uv_run(&x.loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&x.loop), 0);
    owner_free(x.owner);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_claims_follow_the_partition_count_and_fence_writes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
