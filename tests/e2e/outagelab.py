"""outagelab: what the outage tests share: how long an outage lasts, and the check that a rotation
that went through one lost nothing."""
import glob
import json
import os

from crashlab import STAGES
from rotorlab import wait_for
from schemas import validate_event


def outage_seconds():
    """ROTOR_OUTAGE_SECONDS, else 30 s (issue 8's matrix); 10 s in the sanitizer build, whose CI
    run is the sample (the normal build runs the whole 30 s)."""
    if os.environ.get("ROTOR_OUTAGE_SECONDS"):
        return float(os.environ["ROTOR_OUTAGE_SECONDS"])
    sanitize = os.environ.get("ROTOR_SANITIZE", "").upper() in ("ON", "1", "TRUE")
    return 10.0 if sanitize else 30.0


def outbox_events(lab, rotation_id):
    """The events the journal queued about rotation_id: {id: event}."""
    out = {}
    for (value,) in lab.pg.query("SELECT value FROM rotor.outbox WHERE topic = 'rotor.events'"):
        e = json.loads(bytes(value))
        if e["data"].get("rotation_id") == rotation_id:
            out[e["id"]] = e
    return out


def assert_every_event_arrived(lab, rotation_id):
    """Every event the journal queued about the rotation is on the topic, the same (delivery is at
    least once: a repeat has the same id and content); each stage started and completed once, and
    the rotation completed once. Returns {id: event}."""
    wait_for(lambda: lab.pg.query("SELECT count(*) FROM rotor.outbox WHERE sent_at IS NULL AND "
                                  "parked_at IS NULL")[0][0] == 0, 90, 0.5,
             what="the outbox to be published")
    assert lab.pg.query("SELECT count(*) FROM rotor.outbox WHERE parked_at IS NOT NULL")[0][0] == 0
    queued = outbox_events(lab, rotation_id)
    seen = {}
    for e in lab.events():
        if e["data"].get("rotation_id") == rotation_id:
            validate_event(e)
            assert seen.setdefault(e["id"], e) == e, (e, seen[e["id"]])
    missing = sorted(set(queued) - set(seen))
    assert not missing, [(queued[i]["type"], queued[i]["data"].get("stage")) for i in missing]
    assert set(seen) == set(queued)
    # every stage completed once; each attempt started once (an attempt cut by the outage
    # failed or timed out, and the next one has its own stage.started)
    by_time = sorted(seen.values(), key=lambda e: e["time"])
    completed = [e["data"]["stage"] for e in by_time if e["type"] == "stage.completed"]
    assert sorted(completed) == sorted(STAGES), completed
    started = [(e["data"]["stage"], e["data"]["attempt"]) for e in by_time
               if e["type"] == "stage.started"]
    assert len(set(started)) == len(started) and {s for s, _ in started} == set(STAGES), started
    types = [e["type"] for e in seen.values()]
    assert types.count("rotation.completed") == 1, types
    return seen


def assert_nothing_lost(lab, rotation_id, to="green"):
    """The rotation completed whole: its effects (one store version, the new role logs in with
    the store's password, the old one is retired), its journal (each stage completed once, in
    order) and its events."""
    row = [r for r in lab.rotations() if r["id"] == rotation_id][0]
    assert row["status"] == "completed", (row, lab.history(rotation_id))
    old = "blue" if to == "green" else "green"
    new_password = lab.stored(f"pg-{to}")
    assert lab.can_login(f"app_{to}", new_password)
    assert not lab.rolcanlogin(f"app_{old}")
    assert json.loads(lab.stored("pg-current")) == {"role": f"app_{to}", "password": new_password}
    assert lab.active_slot() == to
    versions = []
    for path in glob.glob(os.path.join(lab.secrets_dir, ".versions", f"pg-{to}", "*.json")):
        with open(path) as f:
            versions.append(json.load(f)["tags"]["rotation"])
    assert versions.count(rotation_id) == 1, versions
    # each stage completed once, in order (a manual approval's is its decision, "approved")
    done = [s for s, o, _, _ in lab.history(rotation_id) if o in ("completed", "approved")]
    assert done == STAGES, lab.history(rotation_id)
    assert_every_event_arrived(lab, rotation_id)
