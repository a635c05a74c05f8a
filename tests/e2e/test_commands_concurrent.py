"""Commands of different keys are handled concurrently (one lane per key): decisions about two
rotations in one poll, and several decisions that meet one rotation's journal write, are each
applied (or dead-lettered) once, and the daemon stays up."""
import json
import os
import secrets as pysecrets
import subprocess
import time

from rotorlab import KCAT, add_second_secret, wait_for


def decision(type_, rotation_id, subject=None, **data):
    ev = {"specversion": "1.0", "id": pysecrets.token_hex(16), "source": "/tests/e2e",
          "type": type_, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
          "data": dict({"rotation_id": rotation_id}, **data)}
    if subject:
        ev["subject"] = subject
    return ev


def produce_batch(lab, keyed):
    """Produces (key, event) pairs in one kcat run, so that the consumer gets them in one poll."""
    path = os.path.join(lab.root, f"batch-{pysecrets.token_hex(4)}")
    with open(path, "w") as f:
        for key, ev in keyed:
            f.write(key + "\t" + json.dumps(ev) + "\n")
    subprocess.run([KCAT, "-b", lab.bootstrap, "-P", "-t", "rotor.commands", "-K", "\t", "-l",
                    path], check=True, timeout=30)


def wait_ended(lab, d, rid, timeout=90):
    """Waits for rotation rid to end; fails at once if the daemon died meanwhile."""
    def ended():
        assert d.alive(), d.text()[-4000:]
        return [r for r in lab.rotations() if r["id"] == rid and r["status"] in
                ("completed", "failed", "aborted", "rolled-back")]
    return wait_for(ended, timeout, what=f"rotation {rid} to end")[0]


def test_two_approvals_in_one_poll(make_lab):
    lab = make_lab(approval="{ mode: manual, gate: swap }")
    add_second_secret(lab, "app-db2")
    d = lab.start()
    r1 = lab.rotation_for(lab.request(secret="app-db"))["id"]
    r2 = lab.rotation_for(lab.request(secret="app-db2"))["id"]
    lab.wait_status(r1, "waiting", 60)
    lab.wait_status(r2, "waiting", 60)
    produce_batch(lab, [("app-db", decision("rotation.approved", r1, "app-db")),
                        ("app-db2", decision("rotation.approved", r2, "app-db2"))])
    for rid in (r1, r2):
        row = wait_ended(lab, d, rid)
        assert row["status"] == "completed", lab.history(rid)
        outcomes = [h[0] for h in lab.pg.query(
            "SELECT outcome FROM rotor.history WHERE rotation_id = %s", (rid,))]
        assert outcomes.count("approved") == 1, outcomes
    assert d.alive(), d.text()[-4000:]
    assert not lab.consume("rotor.deadletter")


def test_decisions_queued_behind_writes(make_lab):
    """Two rotations are each writing (their approval timed out; the journal rows are locked, so
    the writes wait) when decisions about both arrive in one poll. Both decisions wait for their
    rotation's write and are then handled: out of place (the rotations failed), so both are
    dead-lettered. Neither is lost (its lane and partition offset stuck)."""
    lab = make_lab(approval="{ mode: manual, gate: swap }",
                   stages="{ timeout: 30s, max_attempts: 3, backoff: { initial: 200ms, max: 2s },"
                          " approve: { timeout: 4s, max_attempts: 1 } }")
    add_second_secret(lab, "app-db2")
    d = lab.start()
    r1 = lab.rotation_for(lab.request(secret="app-db"))["id"]
    r2 = lab.rotation_for(lab.request(secret="app-db2"))["id"]
    lab.wait_status(r1, "waiting", 60)
    lab.wait_status(r2, "waiting", 60)
    lock = lab.pg.connect()
    try:
        with lock.cursor() as cur:
            cur.execute("SELECT 1 FROM rotor.rotations WHERE id IN (%s, %s) FOR UPDATE", (r1, r2))
        time.sleep(6)  # both approvals time out: their writes wait for the lock
        approvals = [decision("rotation.approved", r1, "app-db"),
                     decision("rotation.approved", r2, "app-db2")]
        produce_batch(lab, [("app-db", approvals[0]), ("app-db2", approvals[1])])
        time.sleep(2)
    finally:
        lock.rollback()
        lock.close()
    for rid in (r1, r2):
        assert wait_ended(lab, d, rid)["status"] == "failed", lab.history(rid)

    def both_dead_lettered():
        dead = {json.loads(m["payload"]).get("id") for m in lab.consume("rotor.deadletter")}
        return all(a["id"] in dead for a in approvals)

    wait_for(both_dead_lettered, 30, what="both approvals in the dead-letter topic")
    assert d.alive(), d.text()[-4000:]
