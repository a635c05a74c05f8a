"""Every command is applied at most once per CloudEvents id: a redelivered copy (a rebalance, a
crash before the offset commit, a pipeline that publishes twice) is "already applied": logged,
committed, not dead-lettered, and it changes nothing, even when the rotation is back in the state
the original found (the second gate of approval.gate both, a second failure, the next attempt
of a stage a pipeline answered). An approval names the gate it approves."""
import json
import time

from rotorlab import wait_for


def _event(type_, rotation_id, **data):
    return {"specversion": "1.0", "id": f"{type_}-{time.time_ns()}", "source": "/tests/e2e",
            "type": type_, "subject": "app-db",
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "data": dict({"rotation_id": rotation_id}, **data)}


def _already_applied(d, event_id):
    return [line for line in d.text().splitlines()
            if '"command.already_applied"' in line and event_id in line]


def _dead_letters(lab):
    out = []
    for m in lab.consume("rotor.deadletter"):
        h = dict(zip(m["headers"][::2], m["headers"][1::2]))
        out.append((h.get("rotor-dlq-reason", ""), m.get("payload") or ""))
    return out


def _gate_state(lab, rid):
    return lab.pg.query("SELECT stage, status, swapped FROM rotor.rotations WHERE id = %s",
                        (rid,))[0]


def test_gate_both_redelivered_approval_passes_only_the_swap_gate(make_lab):
    lab = make_lab(approval="{ mode: manual, gate: both }")
    d = lab.start()
    rid = lab.rotation_for(lab.request())["id"]
    lab.wait_status(rid, "waiting")
    assert _gate_state(lab, rid) == ("approve", "waiting", False)
    ev = _event("rotation.approved", rid, gate="swap", by="alice")
    value = json.dumps(ev)
    # published twice at once: the copy meets the original in flight
    lab.produce(value)
    lab.produce(value)

    def at_retire_gate():
        row = _gate_state(lab, rid)
        return row if row == ("approve", "waiting", True) else None
    wait_for(at_retire_gate, 60, 0.2, what="the retire gate")
    wait_for(lambda: _already_applied(d, ev["id"]), 30, 0.2, what="the copy said applied")
    # and redelivered once the rotation waits at the second gate (after a rebalance, say)
    lab.produce(value)
    wait_for(lambda: len(_already_applied(d, ev["id"])) >= 2, 30, 0.2,
             what="the late copy said applied")
    time.sleep(1.0)
    # retire still waits for a second person
    assert _gate_state(lab, rid) == ("approve", "waiting", True), lab.history(rid)
    approved = lab.pg.query("SELECT actor, request_id FROM rotor.history WHERE rotation_id = %s "
                            "AND outcome = 'approved'", (rid,))
    assert approved == [("alice", ev["id"])], approved
    assert not [r for r, p in _dead_letters(lab) if ev["id"] in p], _dead_letters(lab)
    assert len(_already_applied(d, ev["id"])) == 2, _already_applied(d, ev["id"])
    # the second approval: the CLI names the gate the rotation waits at
    lab.cli("approve", rid, "--by", "bob")
    assert lab.wait_status(rid, ("completed", "failed"))["status"] == "completed"
    approved = lab.pg.query("SELECT actor FROM rotor.history WHERE rotation_id = %s "
                            "AND outcome = 'approved' ORDER BY id", (rid,))
    assert approved == [("alice",), ("bob",)]
    gates = [e["data"]["gate"] for e in lab.events() if e["type"] == "rotation.awaiting-approval"]
    assert gates == ["swap", "retire"]


def test_redelivered_retry_does_not_rerun_a_failed_rotation(make_lab):
    lab = make_lab(stages="{ timeout: 30s, max_attempts: 1, backoff: { initial: 100ms, "
                          "max: 200ms } }")
    # prepare refuses: the standby role lacks the active role's membership
    lab.pg.query("REVOKE app_rw FROM app_green")
    d = lab.start()
    rid = lab.rotation_for(lab.request())["id"]
    lab.wait_status(rid, "failed")

    def failures():
        return [h for h in lab.history(rid) if h[1] == "failed"]
    assert len(failures()) == 1
    ev = _event("rotation.retry", rid, by="ops")
    value = json.dumps(ev)
    lab.produce(value)
    wait_for(lambda: len(failures()) == 2, 60, 0.2, what="the retried rotation to fail again")
    assert lab.rotations()[0]["status"] == "failed"
    # the same retry again: it was applied, the rotation is not run a third time
    lab.produce(value)
    # (before the fix, the copy re-ran the rotation: a third failure)
    wait_for(lambda: _already_applied(d, ev["id"]) or len(failures()) > 2, 30, 0.2,
             what="the copy said applied")
    time.sleep(1.5)
    assert len(failures()) == 2, lab.history(rid)
    assert lab.rotations()[0]["status"] == "failed"
    retries = lab.pg.query("SELECT request_id FROM rotor.history WHERE rotation_id = %s "
                           "AND outcome = 'retry'", (rid,))
    assert retries == [(ev["id"],)], retries
    assert lab.pg.query("SELECT event_id, type FROM rotor.commands WHERE rotation_id = %s",
                        (rid,)) == [(ev["id"], "rotation.retry")]
    assert not [r for r, p in _dead_letters(lab) if ev["id"] in p], _dead_letters(lab)
    assert len(_already_applied(d, ev["id"])) == 1
    # a new retry (another id) is a new decision
    lab.pg.query("GRANT app_rw TO app_green")
    lab.cli("retry", rid)
    assert lab.wait_status(rid, ("completed",), 60)["status"] == "completed"


def test_approval_for_another_gate_is_dead_lettered(make_lab):
    lab = make_lab(approval="{ mode: manual, gate: both }")
    lab.start()
    rid = lab.rotation_for(lab.request())["id"]
    lab.wait_status(rid, "waiting")
    wrong = lab.command("rotation.approved", rid, gate="retire", by="mallory")
    # one that names no gate cannot say which of the two it approves
    vague = lab.command("rotation.approved", rid, by="mallory")

    def refused():
        got = {i: r for r, p in _dead_letters(lab) for i in (wrong, vague) if i in p}
        return got if len(got) == 2 else None
    got = wait_for(refused, 30, 0.3, what="two dead letters")
    assert f"rotation {rid} waits for approval at gate swap: a decision for gate retire is out " \
           "of place" in got[wrong], got
    assert "must name its gate" in got[vague], got
    assert _gate_state(lab, rid) == ("approve", "waiting", False)
    # the CLI refuses the other gate before sending anything
    r = lab.cli("approve", rid, "--gate", "retire", check=False)
    assert r.returncode != 0 and "it waits at gate swap, not retire" in r.stderr, r.stderr
    lab.cli("approve", rid, "--gate", "swap")
    wait_for(lambda: _gate_state(lab, rid) == ("approve", "waiting", True), 60, 0.2,
             what="the retire gate")


def test_approval_without_gate_is_taken_for_the_only_gate(make_lab):
    lab = make_lab(approval="{ mode: manual, gate: retire }")
    d = lab.start()
    rid = lab.rotation_for(lab.request())["id"]
    lab.wait_status(rid, "waiting")
    ev = _event("rotation.approved", rid, by="alice")
    lab.produce(json.dumps(ev))
    assert lab.wait_status(rid, ("completed", "failed"))["status"] == "completed"
    # redelivered after the rotation ended: applied before, so not out of place
    lab.produce(json.dumps(ev))
    # (before the fix, the copy was dead-lettered as out of place)
    wait_for(lambda: _already_applied(d, ev["id"]) or
             [r for r, p in _dead_letters(lab) if ev["id"] in p], 30, 0.3,
             what="the copy said applied")
    late = lab.command("rotation.approved", rid, by="late")
    wait_for(lambda: any(late in p for _, p in _dead_letters(lab)), 30, 0.3,
             what="the new late approval dead-lettered")
    assert not [r for r, p in _dead_letters(lab) if ev["id"] in p], _dead_letters(lab)


def test_approval_redelivered_after_a_crash_passes_only_the_swap_gate(make_lab):
    # the broker outlives the daemon, which is killed right after the swap gate's approval is
    # in the journal (swap's attempt journaled, not begun): its offset commit may be lost
    lab = make_lab(approval="{ mode: manual, gate: both }", separate_broker=True,
                   kafka_props='{ session.timeout.ms: "4000", heartbeat.interval.ms: "500" }')
    d = lab.start(extra_env={"ROTOR_CRASH_POINT": "swap:begin"})
    rid = lab.rotation_for(lab.request())["id"]
    lab.wait_status(rid, "waiting")
    ev = _event("rotation.approved", rid, gate="swap", by="alice")
    lab.produce(json.dumps(ev))
    assert d.p.wait(timeout=90) == -9, d.text()[-3000:]
    d.out.close()
    # a new process knows only the journal: the rotation goes on to the retire gate, and the
    # approval, delivered again (by Kafka, or here by hand), passes nothing more
    d = lab.start()
    wait_for(lambda: _gate_state(lab, rid) == ("approve", "waiting", True), 90, 0.2,
             what="the retire gate")
    lab.produce(json.dumps(ev))
    wait_for(lambda: _already_applied(d, ev["id"]), 30, 0.2, what="the copy said applied")
    time.sleep(1.0)
    assert _gate_state(lab, rid) == ("approve", "waiting", True), lab.history(rid)
    approved = lab.pg.query("SELECT actor FROM rotor.history WHERE rotation_id = %s "
                            "AND outcome = 'approved'", (rid,))
    assert approved == [("alice",)], approved
    assert not [r for r, p in _dead_letters(lab) if ev["id"] in p], _dead_letters(lab)


def test_pipeline_answer_redelivered_does_not_end_the_next_attempt(make_lab):
    lab = make_lab(deploy="{ kind: external, external: { timeout: 30s } }")
    d = lab.start()
    rid = lab.rotation_for(lab.request())["id"]

    def requested(attempt):
        return [e for e in lab.events() if e["type"] == "stage.requested" and
                e["data"]["rotation_id"] == rid and e["data"]["stage"] == "deploy" and
                e["data"]["attempt"] == attempt]
    wait_for(lambda: requested(1), 60, 0.3, what="deploy's first request")
    # the pipeline fails attempt 1 with an answer that does not name its attempt
    ev = _event("stage.failed", rid, stage="deploy", error="cluster busy", by="pipeline-42")
    lab.produce(json.dumps(ev))
    wait_for(lambda: requested(2), 60, 0.3, what="deploy's second request")
    # the same answer again (the pipeline's retry of its publish): attempt 2 is not failed by it
    lab.produce(json.dumps(ev))
    wait_for(lambda: _already_applied(d, ev["id"]) or requested(3), 30, 0.2,
             what="the copy said applied")
    time.sleep(1.0)
    assert not requested(3), lab.history(rid)
    row = lab.rotations()[0]
    assert (row["stage"], row["status"]) == ("deploy", "running"), row
    failed = [h for h in lab.history(rid) if h[0] == "deploy" and h[1] == "pipeline-failed"]
    assert len(failed) == 1, lab.history(rid)
    assert not [r for r, p in _dead_letters(lab) if ev["id"] in p], _dead_letters(lab)
    lab.cli("complete", rid, "deploy")
    wait_for(lambda: lab.rotations()[0]["stage"] != "deploy", 60, 0.2, what="deploy to end")
