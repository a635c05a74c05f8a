"""Manual approval: approve completes; reject after the swap rolls back to the old slot; a gate
before the swap holds production untouched until approved."""
import json

from schemas import validate_event


def wait_waiting(lab, rid):
    return lab.wait_status(rid, "waiting", timeout=60)


def test_manual_approval_completes(make_lab):
    lab = make_lab(approval="{ mode: manual, gate: retire }")
    lab.start()
    rid = lab.rotation_for(lab.request())["id"]
    row = wait_waiting(lab, rid)
    assert row["stage"] == "approve"
    # swapped already (gate: retire): production uses green, blue still can log in
    assert json.loads(lab.stored("pg-current"))["role"] == "app_green"
    assert lab.rolcanlogin("app_blue") and lab.rolcanlogin("app_green")
    lab.wait_event(rid, "rotation.awaiting-approval")
    r = lab.cli("approve", rid, "--by", "alice")
    assert r.returncode == 0
    assert lab.wait_status(rid, ("completed", "failed"))["status"] == "completed"
    assert not lab.rolcanlogin("app_blue")
    hist = lab.pg.query("SELECT outcome, actor FROM rotor.history WHERE rotation_id = %s "
                        "AND outcome = 'approved'", (rid,))
    assert hist == [("approved", "alice")]


def test_reject_after_swap_rolls_back(make_lab):
    lab = make_lab(approval="{ mode: manual, gate: retire }")
    lab.start()
    old = lab.stored("pg-blue")
    rid = lab.rotation_for(lab.request())["id"]
    wait_waiting(lab, rid)
    lab.command("rotation.rejected", rid, by="bob", reason="canary errors")
    row = lab.wait_status(rid, ("rolled-back", "failed"))
    assert row["status"] == "rolled-back", lab.history(rid)
    # the old slot is production again and still works; the standby is closed again
    assert json.loads(lab.stored("pg-current")) == {"role": "app_blue", "password": old}
    assert lab.can_login("app_blue", old)
    assert not lab.rolcanlogin("app_green")
    assert lab.active_slot() == "blue"
    events = lab.wait_event(rid, "rotation.rolled-back")
    for e in events:
        validate_event(e)
    last = events[-1]
    assert last["type"] == "rotation.rolled-back"
    assert last["data"]["active_slot"] == "blue"
    assert "canary errors" in last["data"]["reason"]


def test_gate_before_swap_keeps_production(make_lab):
    lab = make_lab(approval="{ mode: manual, gate: swap }")
    lab.start()
    old = lab.stored("pg-blue")
    with open(f"{lab.secrets_dir}/pg-current", "w") as f:
        f.write(json.dumps({"role": "app_blue", "password": old}))
    rid = lab.rotation_for(lab.request())["id"]
    wait_waiting(lab, rid)
    # nothing production uses has changed before the swap
    assert json.loads(lab.stored("pg-current"))["role"] == "app_blue"
    assert lab.rotations()[0]["stage"] == "approve"
    lab.cli("reject", rid, "--reason", "not today")
    assert lab.wait_status(rid, ("rolled-back", "failed"))["status"] == "rolled-back"
    assert json.loads(lab.stored("pg-current"))["role"] == "app_blue"
    assert not lab.rolcanlogin("app_green")
    assert lab.can_login("app_blue", old)


def test_approve_out_of_place_is_dead_lettered(make_lab):
    lab = make_lab(approval="{ mode: manual, gate: retire }")
    lab.start()
    rid = lab.rotation_for(lab.request())["id"]
    wait_waiting(lab, rid)
    lab.cli("approve", rid)
    lab.wait_status(rid, "completed")
    # a second approval of a completed rotation is out of place: dead-lettered, not applied
    lab.command("rotation.approved", rid, by="late")
    from rotorlab import wait_for
    dlq = wait_for(lambda: lab.consume("rotor.deadletter"), 30, what="dead letter")
    reasons = [dict(zip(m["headers"][::2], m["headers"][1::2]))["rotor-dlq-reason"] for m in dlq]
    assert any("out of place" in r for r in reasons), reasons


def test_pipeline_step_blocks_until_a_given_state(make_lab):
    import re
    lab = make_lab(approval="{ mode: manual, gate: retire }")
    lab.start()
    r = lab.cli("request", "app-db", "--reason", "pipeline", "--until", "awaiting-approval")
    assert "reached awaiting-approval" in r.stdout, r.stdout
    rid = re.search(r"^rotation (\S+)$", r.stdout, re.M).group(1)
    assert lab.rotations()[0]["status"] == "waiting"
    r = lab.cli("approve", rid, "--until", "retire")
    assert "reached retire" in r.stdout
    assert lab.rotations()[0]["status"] == "completed"
    # a state not reached in time: the timeout's exit code, and no "reached" line
    r = lab.cli("request", "app-db", "--until", "rollback", "--timeout", "3s", check=False)
    assert r.returncode == 5 and "reached" not in r.stdout, (r.returncode, r.stdout)
