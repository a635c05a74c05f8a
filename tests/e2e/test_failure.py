"""A stage that fails is retried with backoff up to its maximum of attempts, then the rotation
fails with its reason and stays visible until `rotor retry` or `rotor abort`; a stage that hangs
is cut by its timeout. A failure before the swap changes nothing production uses."""
import json


def test_failed_prepare_then_retry_completes(make_lab):
    lab = make_lab(stages="{ timeout: 30s, max_attempts: 3, backoff: { initial: 100ms, "
                          "max: 400ms } }")
    # the standby role lacks the active role's membership: prepare must refuse
    lab.pg.query("REVOKE app_rw FROM app_green")
    lab.start()
    rid = lab.rotation_for(lab.request())["id"]
    row = lab.wait_status(rid, "failed", timeout=60)
    assert row["stage"] == "prepare"
    assert "app_rw" in row["error"], row["error"]
    hist = lab.history(rid)
    assert [o for s, o, a, e in hist if s == "prepare"].count("retrying") == 2
    assert [a for s, o, a, e in hist if o == "failed"] == [3]
    events = lab.wait_event(rid, "rotation.failed")
    finals = [e["data"]["final"] for e in events if e["type"] == "stage.failed"]
    assert finals == [False, False, True]
    retry_in = [e["data"]["retry_in_ms"] for e in events
                if e["type"] == "stage.failed" and not e["data"]["final"]]
    assert all(50 <= ms <= 400 for ms in retry_in), retry_in
    # nothing changed: blue still logs in, green still cannot
    assert lab.rolcanlogin("app_blue") and not lab.rolcanlogin("app_green")
    assert lab.active_slot() == "blue"
    # the secret is not blocked silently: a new request is absorbed into the failed rotation
    lab.request(reason="while failed")
    lab.wait_event(rid, "rotation.absorbed")
    # the operator fixes the cause and retries
    lab.pg.query("GRANT app_rw TO app_green")
    r = lab.cli("retry", rid, "--by", "ops")
    assert r.returncode == 0
    lab.wait_status(rid, "completed", 60)
    assert lab.active_slot() == "green"
    assert ("prepare", "retry") in [(s, o) for s, o, _, _ in lab.history(rid)]


def test_hanging_stage_times_out_then_abort(make_lab):
    # the probe takes longer than verify's timeout
    lab = make_lab(stages="{ timeout: 30s, max_attempts: 2, backoff: { initial: 100ms, "
                          "max: 200ms }, verify: { timeout: 1s } }",
                   probe="select pg_sleep(5)")
    d = lab.start()
    rid = lab.rotation_for(lab.request())["id"]
    row = lab.wait_status(rid, "failed", timeout=60)
    assert row["stage"] == "verify"
    assert "timed out after 1s" in row["error"], row["error"]
    # before the swap: production untouched
    assert lab.active_slot() == "blue"
    import os
    assert not os.path.exists(f"{lab.secrets_dir}/pg-current"), "no current entry before swap"
    r = lab.cli("abort", rid, "--reason", "probe too slow")
    assert r.returncode == 0
    lab.wait_status(rid, "aborted")
    ev = lab.wait_event(rid, "rotation.aborted")[-1]
    assert ev["data"]["reason"] == "probe too slow"
    assert d.alive()
    # the lock is released: a new rotation can start
    rid2 = lab.rotation_for(lab.request(reason="after abort"))["id"]
    assert rid2 != rid
    assert lab.wait_status(rid2, ("failed", "completed"), 60)["status"] == "failed"
