"""Duplicate triggers for a secret with a rotation in flight are absorbed, not queued."""
import json
import os
import signal
import time

from rotorlab import wait_for


def test_duplicate_requests_are_absorbed(make_lab):
    lab = make_lab(approval="{ mode: manual, gate: retire }")
    lab.start()
    first = lab.request(reason="first")
    rid = lab.rotation_for(first)["id"]
    lab.wait_status(rid, "waiting")
    dupes = [lab.request(reason=f"dupe {i}") for i in range(3)]
    # each duplicate is recorded against the rotation in flight and announced
    def absorbed():
        evs = [e for e in lab.events() if e["type"] == "rotation.absorbed"]
        return evs if len(evs) == 3 else None
    evs = wait_for(absorbed, 30, 0.3, what="three rotation.absorbed events")
    assert sorted(e["data"]["request_id"] for e in evs) == sorted(dupes)
    assert all(e["data"]["rotation_id"] == rid for e in evs)
    assert len(lab.rotations()) == 1
    rows = lab.pg.query("SELECT request_id FROM rotor.history WHERE outcome = 'absorbed' "
                        "AND rotation_id = %s", (rid,))
    assert sorted(r[0] for r in rows) == sorted(dupes)
    # `rotor request --wait` on a duplicate follows the rotation in flight
    lab.cli("approve", rid)
    assert lab.wait_status(rid, ("completed", "failed"))["status"] == "completed"
    # nothing was queued: once done, no second rotation starts by itself
    import time
    time.sleep(1.5)
    assert len(lab.rotations()) == 1
    assert json.loads(lab.stored("pg-current"))["role"] == "app_green"


def redelivered_lines(d, request_id):
    """rotor's rotation.request_redelivered log lines about request_id, as dicts."""
    out = []
    for line in d.text().splitlines():
        if '"rotation.request_redelivered"' in line and request_id in line:
            out.append(json.loads(line))
    return out


def test_redeliveries_are_answered_from_memory_and_after_a_restart_by_the_journal(make_lab):
    # The engine remembers the request ids the journal has committed (seen.c): a redelivery of a
    # request whose rotation runs here is answered without a journal round trip. It is only a
    # cache: after a restart (memory empty) the journal still recognises every redelivery, of the
    # request that started the rotation and of one absorbed into it.
    lab = make_lab(separate_broker=True, approval="{ mode: manual, gate: retire }")
    d = lab.start()
    first = {"specversion": "1.0", "id": "first-" + os.urandom(8).hex(), "source": "/tests/e2e",
             "type": "rotation.requested", "subject": "app-db",
             "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
             "data": {"secret": "app-db", "reason": "first", "requested_by": "pytest",
                      "trigger": "pipeline"}}
    lab.produce(json.dumps(first))
    rid = lab.rotation_for(first["id"])["id"]
    lab.wait_status(rid, "waiting")
    dupe = dict(first, id="dupe-" + os.urandom(8).hex(), data=dict(first["data"], reason="dupe"))
    lab.produce(json.dumps(dupe))
    wait_for(lambda: lab.pg.query("SELECT 1 FROM rotor.history WHERE request_id = %s",
                                  (dupe["id"],)), 30, what="the duplicate to be absorbed")

    def absorbed_rows():
        return lab.pg.query("SELECT count(*) FROM rotor.history WHERE request_id = %s",
                            (dupe["id"],))[0][0]

    for ev in (first, dupe, first):
        lab.produce(json.dumps(ev))
    wait_for(lambda: len(redelivered_lines(d, first["id"])) == 2
             and len(redelivered_lines(d, dupe["id"])) == 1, 30, what="three redeliveries")
    lines = redelivered_lines(d, first["id"]) + redelivered_lines(d, dupe["id"])
    assert all(x["note"] == "already applied" and x["via"] == "memo" for x in lines), lines
    assert all(x["rotation"] == rid for x in lines), lines

    # restarted: nothing in memory, the journal answers
    d.signal(signal.SIGTERM)
    assert d.wait(60) == 0
    d2 = lab.start()
    wait_for(lambda: '"rotation.resumed"' in d2.text(), 30,
             what="the open rotation to be loaded")
    for ev in (first, dupe):
        lab.produce(json.dumps(ev))
    wait_for(lambda: len(redelivered_lines(d2, first["id"])) >= 1
             and len(redelivered_lines(d2, dupe["id"])) >= 1, 30,
             what="the redeliveries after the restart")
    lines = redelivered_lines(d2, first["id"]) + redelivered_lines(d2, dupe["id"])
    assert lines[0]["via"] == "journal" and lines[-1]["via"] == "journal", lines
    assert all(x["note"] == "already applied" for x in lines), lines
    assert len(lab.rotations()) == 1
    assert absorbed_rows() == 1  # the absorbed request was not absorbed again
    absorbed_events = [e for e in lab.events() if e["type"] == "rotation.absorbed"]
    assert [e["data"]["request_id"] for e in absorbed_events] == [dupe["id"]]
    # the rotation is still the one waiting, and can go on
    lab.cli("approve", rid)
    assert lab.wait_status(rid, ("completed", "failed"))["status"] == "completed"
