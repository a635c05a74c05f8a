"""Duplicate triggers for a secret with a rotation in flight are absorbed, not queued."""
import json

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
