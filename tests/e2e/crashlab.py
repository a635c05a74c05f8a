"""crashlab: kill -9 between each pair of stages and inside set-db, then restart: the rotation resumes and
completes, no stage effect is lost or doubled (one store version per rotation), no event is lost.

The broker runs as its own process (`rotor broker`) so that it outlives the daemon. The daemon is
killed with SIGKILL at a precise point by ROTOR_CRASH_POINT (see consumer/rotation.c); each
restart moves the same rotation on to the next point, so one rotation walks through them all."""
import glob
import json
import os

from rotorlab import wait_for
from schemas import validate_event

STAGES = ["prepare", "generate", "set-db", "deploy", "verify", "swap", "approve", "retire"]
EFFECT_STAGES = [s for s in STAGES if s != "approve"]

# begin: attempt journaled, effect not started; effect: effect done, not journaled;
# done: journaled (in the same statement as the next stage's first attempt, which has not begun);
# set-db:inside: password read back, ALTER ROLE not sent. A stage with nothing to do is journaled
# in the write of the stage before it (deploy none in set-db's; approve with mode auto and soak 0
# in swap's), so its done is the same instant as that stage's: approve:done, which follows
# swap:done at once, is reached only with a real decision (test_approval.py's manual approvals).
CHAINS = {
    # Every point between two stages (done), inside set-db, and the effect points where a
    # repeated effect could do harm: a second store version, a second verifier, a half swap.
    "early": ["prepare:begin", "prepare:done", "generate:effect", "generate:done",
              "set-db:inside", "set-db:effect", "set-db:done"],
    "late": ["deploy:done", "verify:done", "swap:effect", "swap:done", "retire:begin",
             "retire:effect", "retire:done"],
}


def crash_lab(make_lab):
    # A killed member holds its partitions until its session times out: keep that short here
    # (4 s is the least librdkafka 2.0.2's mock broker accepts: it waits 3 s on a first join).
    return make_lab(separate_broker=True,
                    kafka_props='{ session.timeout.ms: "4000", heartbeat.interval.ms: "500" }',
                    stages="{ timeout: 30s, max_attempts: 10, backoff: { initial: 100ms, "
                           "max: 1s } }")


def run_to_crash(lab, point):
    d = lab.start(extra_env={"ROTOR_CRASH_POINT": point}, wait_ready=False)
    rc = d.p.wait(timeout=90)
    d.out.close()
    assert rc == -9, f"expected SIGKILL at {point}, got exit {rc}:\n{d.text()[-3000:]}"
    assert f'"point":"{point}"' in d.text()


def crash_chain_then_complete(make_lab, chain):
    lab = crash_lab(make_lab)
    old_blue = lab.stored("pg-blue")
    points = CHAINS[chain]
    request_id = lab.request(reason=f"crash chain {chain}")
    for point in points:
        run_to_crash(lab, point)
    # the last restart runs to the end
    d = lab.start()
    rot = lab.rotation_for(request_id)
    done = lab.wait_status(rot["id"], ("completed", "failed"), timeout=90)
    assert done["status"] == "completed", lab.history(rot["id"])
    rid = rot["id"]

    # effects: the new password works, the old role is retired, production points at green
    green = lab.stored("pg-green")
    assert lab.can_login("app_green", green)
    assert not lab.rolcanlogin("app_blue")
    assert not lab.can_login("app_blue", old_blue)
    assert json.loads(lab.stored("pg-current")) == {"role": "app_green", "password": green}
    assert lab.active_slot() == "green"
    # generate never wrote a second version, however often it was interrupted
    versions = []
    for path in glob.glob(os.path.join(lab.secrets_dir, ".versions", "pg-green", "*.json")):
        with open(path) as f:
            versions.append(json.load(f)["tags"]["rotation"])
    assert versions.count(rid) == 1, versions

    # no event lost, none made twice: each stage completed once, in order. Delivery is at least
    # once: a relay killed after publishing a batch but before marking it sent publishes it again
    # on restart, so a run of events can repeat; a repeat is the same event (id and content).
    events = lab.wait_event(rid, "rotation.completed", timeout=60)
    first = {}
    for e in events:
        validate_event(e)
        assert first.setdefault(e["id"], e) == e, (e, first[e["id"]])
    completed = [e["data"]["stage"] for e in first.values() if e["type"] == "stage.completed"]
    assert completed == STAGES, completed
    # every interrupted attempt is in the audit trail
    outcomes = [(s, o) for s, o, _, _ in lab.history(rid)]
    assert sum(1 for s, o in outcomes if o == "started") >= len(STAGES)
    assert d.alive()
