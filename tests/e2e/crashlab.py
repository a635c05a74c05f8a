"""crashlab: kill -9 at every begin, effect and done point of every stage, rollback and abort
included, then restart: the rotation resumes and ends as it would have without the crash (completed,
rolled back or aborted), no stage effect is lost or doubled (one store version per rotation, one
ALTER ROLE ... PASSWORD in PostgreSQL's log), no stage event is lost.

The broker runs as its own process (`rotor broker`) so that it outlives the daemon. The daemon is
killed with SIGKILL at a precise point by ROTOR_CRASH_POINT (see consumer/rotation.c); each
restart moves the same rotation on to the next point, so one rotation walks through them all."""
import glob
import json
import os
import re

import psycopg2

from rotorlab import wait_for
from schemas import validate_event

STAGES = ["prepare", "generate", "set-db", "deploy", "verify", "swap", "approve", "retire"]
EFFECT_STAGES = [s for s in STAGES if s != "approve"]

# begin: attempt journaled, effect not started; effect: effect done, not journaled;
# done: journaled (in the same statement as the next stage's first attempt, which has not begun);
# set-db:inside: password read back, ALTER ROLE not sent. A stage with nothing to do is journaled
# in the write of the stage before it (deploy none in set-db's; approve with mode auto and soak 0
# in swap's), so its done is the same instant as that stage's: approve:done, which follows
# swap:done at once, is reached only with a real decision (a manual approval: the decision's write).
# rollback:inside: production back on the old slot (`current` written), NOLOGIN not sent.
# abort:begin: an abort received, its write not sent; abort:done: journaled, not acknowledged.
CHAINS = {
    # Every point between two stages (done), inside set-db, and the effect points where a
    # repeated effect could do harm: a second store version, a second verifier, a half swap.
    "early": ["prepare:begin", "prepare:done", "generate:effect", "generate:done",
              "set-db:inside", "set-db:effect", "set-db:done"],
    "late": ["deploy:done", "verify:done", "swap:effect", "swap:done", "retire:begin",
             "retire:effect", "retire:done"],
}

# The chains of the full matrix (test_crash_matrix.py; scripts/reliability.sh runs them all).
# Each is (lab options, expected end, stage order, [(point, action)]): action(lab, request_id, daemon)
# runs once the daemon has started and makes the point reachable (a decision sent once the
# rotation waits for one).


def decide(kind, status="waiting", stage=None):
    """An action: once the rotation is in status (at stage), send the command `kind`."""
    def act(lab, request_id, d):
        def ready():
            if not d.alive():
                return "gone"  # crashed already (a command of an earlier run came again)
            try:
                row = [r for r in lab.rotations() if r["request_id"] == request_id]
            except psycopg2.Error:
                return None  # the journal's tables are not made yet
            ok = row and row[0]["status"] == status and (stage is None or row[0]["stage"] == stage)
            return "ready" if ok else None
        if wait_for(ready, 90, 0.2, what=f"request {request_id} {status} {stage or ''}") == "ready":
            rid = lab.rotation_for(request_id)["id"]
            extra = {} if kind == "rotation.approved" else {"reason": f"crashlab {kind}"}
            lab.command(kind, rid, by="crashlab", **extra)
    return act


EXEC_DEPLOY = '{ kind: exec, exec: { deploy: "true", swap: "true", timeout: 10s } }'
SLOW_DEPLOY = '{ kind: exec, exec: { deploy: "sleep 30", swap: "true", timeout: 60s } }'
MANUAL_SWAP = "{ mode: manual, gate: swap }"
MANUAL_RETIRE = "{ mode: manual, gate: retire }"
ORDER_GATE_SWAP = ["prepare", "generate", "set-db", "deploy", "verify", "approve", "swap", "retire"]
ORDER_ROLLBACK = ["prepare", "generate", "set-db", "deploy", "verify", "swap", "rollback"]

MATRIX = {
    # the two chains above, with the PostgreSQL log counted
    "early": ({}, "completed", STAGES, [(p, None) for p in CHAINS["early"]]),
    "late": ({}, "completed", STAGES, [(p, None) for p in CHAINS["late"]]),
    # the begin and effect points the two leave out, deploy none
    "middle": ({}, "completed", STAGES,
               [(p, None) for p in ["prepare:effect", "generate:begin", "set-db:begin",
                                    "verify:begin", "verify:effect", "swap:begin"]]),
    # a deploy with something to do (an exec hook): its own begin, effect and done
    "deploy": ({"deploy": EXEC_DEPLOY}, "completed", STAGES,
               [(p, None) for p in ["deploy:begin", "deploy:effect", "deploy:done"]]),
    # a manual approval before the swap: the decision's write
    "approve": ({"approval": MANUAL_SWAP}, "completed", ORDER_GATE_SWAP,
                [("approve:done", decide("rotation.approved"))]),
    # rejected after the swap (gate retire): the rejection's write, then every rollback point
    # (swap back: `current` names the old slot again; then the standby role NOLOGIN)
    "rollback": ({"approval": MANUAL_RETIRE}, "rolled-back", ORDER_ROLLBACK,
                 [("approve:done", decide("rotation.rejected")), ("rollback:begin", None),
                  ("rollback:inside", None), ("rollback:effect", None),
                  ("rollback:done", None)]),
    # rejected before the swap (gate swap): rollback has nothing to swap back
    "rollback-unswapped": ({"approval": MANUAL_SWAP}, "rolled-back",
                           ["prepare", "generate", "set-db", "deploy", "verify", "rollback"],
                           [("approve:done", decide("rotation.rejected")),
                            ("rollback:begin", None), ("rollback:inside", None),
                            ("rollback:effect", None)]),
    # an abort while the rotation waits, killed before and after its write (the command comes
    # again: the second run sends another, in case the first was acknowledged)
    "abort": ({"approval": MANUAL_SWAP}, "aborted", None,
              [("abort:begin", decide("rotation.abort")),
               ("abort:done", decide("rotation.abort"))]),
    # an abort while an effect runs (a deploy hook), killed once it is journaled
    "abort-mid-effect": ({"deploy": SLOW_DEPLOY}, "aborted", None,
                         [("abort:done", decide("rotation.abort", "running", "deploy"))]),
}


def matrix_points():
    """The distinct crash points the matrix reaches."""
    return sorted({p for _, _, _, chain in MATRIX.values() for p, _ in chain})


def crash_lab(make_lab, **options):
    # A killed member holds its partitions until its session times out: keep that short here
    # (4 s is the least librdkafka 2.0.2's mock broker accepts: it waits 3 s on a first join).
    lab = make_lab(separate_broker=True,
                   kafka_props='{ session.timeout.ms: "4000", heartbeat.interval.ms: "500" }',
                   stages="{ timeout: 30s, max_attempts: 10, backoff: { initial: 100ms, "
                          "max: 1s } }", **options)
    # Every DDL statement from here on is in the server's log: each ALTER ROLE rotor sends. Set
    # after the lab's own roles are made, whose passwords are in plain text; rotor sends a SCRAM
    # verifier only (checked in alter_role_counts). The log goes with the lab's directory.
    lab.pg.query("ALTER SYSTEM SET log_statement = 'ddl'")
    lab.pg.query("SELECT pg_reload_conf()")
    return lab


def alter_role_counts(lab):
    """{"password": n, "nologin": n} of the ALTER ROLE statements in the server's log. A
    password is only ever a SCRAM verifier there; the statements themselves are never shown."""
    with open(lab.pg.log, encoding="utf-8", errors="replace") as f:
        text = f.read()
    password = nologin = plain = 0
    for line in text.splitlines():
        # "statement: ..." (simple protocol) or "execute <unnamed>: ..." (extended)
        if not re.search(r"(statement|execute [^:]*): ALTER ROLE ", line):
            continue
        if " PASSWORD " in line:
            password += 1
            if "'SCRAM-SHA-256$" not in line:
                plain += 1
        elif line.rstrip().endswith("NOLOGIN"):
            nologin += 1
    assert plain == 0, f"{plain} ALTER ROLE statement(s) with a password that is not a verifier"
    return {"password": password, "nologin": nologin}


def run_to_crash(lab, point, action=None, request_id=None):
    d = lab.start(extra_env={"ROTOR_CRASH_POINT": point}, wait_ready=False)
    if action:
        action(lab, request_id, d)
    rc = d.p.wait(timeout=90)
    d.out.close()
    assert rc == -9, f"expected SIGKILL at {point}, got exit {rc}:\n{d.text()[-3000:]}"
    assert f'"point":"{point}"' in d.text()


def crash_chain_then_complete(make_lab, chain):
    print("crashmatrix", crash_matrix_chain(make_lab, chain))


def store_versions(lab, rid):
    """How many versions of pg-green the rotation rid wrote."""
    versions = []
    for path in glob.glob(os.path.join(lab.secrets_dir, ".versions", "pg-green", "*.json")):
        with open(path) as f:
            versions.append(json.load(f)["tags"]["rotation"])
    return versions.count(rid)


def crash_matrix_chain(make_lab, name):
    """Runs chain name of MATRIX: one rotation, one kill -9 at each of its points, then a last
    run to the end. Returns figures for the summary."""
    options, end, order, chain = MATRIX[name]
    lab = crash_lab(make_lab, **options)
    old_blue = lab.stored("pg-blue")
    if end != "completed":
        # production's entry names the old slot before the rotation (as an operator's bootstrap
        # would): a rollback or an abort before the swap must leave it so
        with open(os.path.join(lab.secrets_dir, "pg-current"), "w") as f:
            f.write(json.dumps({"role": "app_blue", "password": old_blue}))
        os.chmod(os.path.join(lab.secrets_dir, "pg-current"), 0o600)
    request_id = lab.request(reason=f"crash chain {name}")
    for point, action in chain:
        run_to_crash(lab, point, action, request_id)
    # the last restart runs to the end
    d = lab.start()
    rid = lab.rotation_for(request_id)["id"]
    done = lab.wait_status(rid, ("completed", "failed", "rolled-back", "aborted"), timeout=120)
    assert done["status"] == end, (done, lab.history(rid))
    figures = {"chain": name, "points": len(chain), "status": done["status"]}

    if end == "completed":
        # effects: the new password works, the old role is retired, production points at green
        green = lab.stored("pg-green")
        assert lab.can_login("app_green", green)
        assert not lab.rolcanlogin("app_blue")
        assert not lab.can_login("app_blue", old_blue)
        assert json.loads(lab.stored("pg-current")) == {"role": "app_green", "password": green}
        assert lab.active_slot() == "green"
    else:
        # production on the old slot, whose password still logs in; the standby closed again
        # (rolled back) or as the abort left it
        assert lab.active_slot() == "blue"
        assert json.loads(lab.stored("pg-current")) == {"role": "app_blue", "password": old_blue}
        assert lab.can_login("app_blue", old_blue)
        if end == "rolled-back":
            assert not lab.rolcanlogin("app_green")

    # generate never wrote a second version, however often it was interrupted
    if end != "aborted":
        assert store_versions(lab, rid) == 1
    # set-db's ALTER ROLE ... PASSWORD ran once, and retire's or rollback's NOLOGIN once,
    # whichever point cut them
    counts = alter_role_counts(lab)
    figures.update(counts)
    if end != "aborted":
        assert counts == {"password": 1, "nologin": 1}, counts
    else:
        assert counts["password"] <= 1 and counts["nologin"] == 0, counts

    # no event lost, none made twice: each stage started and completed, in order. Delivery is at
    # least once: a relay killed after publishing a batch but before marking it sent publishes
    # it again on restart, so a run of events can repeat; a repeat is the same event (id and
    # content).
    final = {"completed": "rotation.completed", "rolled-back": "rotation.rolled-back",
             "aborted": "rotation.aborted"}[end]
    events = lab.wait_event(rid, final, timeout=60)
    first = {}
    for e in events:
        validate_event(e)
        assert first.setdefault(e["id"], e) == e, (e, first[e["id"]])
    if order:
        completed = [e["data"]["stage"] for e in first.values() if e["type"] == "stage.completed"]
        assert completed == order, completed
        started = {e["data"]["stage"] for e in first.values() if e["type"] == "stage.started"}
        assert started >= set(order), (order, started)
    assert sum(1 for e in first.values() if e["type"] == final) == 1
    # every interrupted attempt is in the audit trail
    outcomes = [(s, o) for s, o, _, _ in lab.history(rid)]
    if order:
        assert sum(1 for s, o in outcomes if o == "started") >= len(order) - ("approve" in order)
    assert d.alive()
    return figures
