"""Ownership and fencing (docs/architecture.md, "Ownership and fencing"): every rotation write
carries the claim (partition, epoch) of its writer and counts only while rotor.owners still holds
it; a process that lost a secret starts and completes no effect; a new owner waits for the
attempt a previous owner may still be running; an open rotation nobody runs is picked up when its
request is delivered again."""
import json
import os
import signal
import time

from rotorlab import wait_for

HOOK_TIMEOUT = "60s"


def slow_deploy(log, seconds):
    """An exec deploy hook that records when each run starts and ends, which process ran it ($PPID:
    the daemon) and its own pid ($$, to pair a start with its end). A run that is killed (its
    process group, on a cancel) writes no end: a watcher outside the group reads a fifo that the
    hook and its sleep hold open, and records when the last of them is gone, so a killed run's
    end is known too."""
    hook = (f"f={log}.$$; mkfifo $f; "
            f"setsid sh -c 'cat $0 >/dev/null; echo gone $(date +%s.%N) $1 >> {log}; rm -f $0' "
            f"$f $$ </dev/null >/dev/null 2>&1 & exec 3>$f; "
            f"echo start $(date +%s.%N) $$ $PPID >> {log}; sleep {seconds}; "
            f"echo end $(date +%s.%N) $$ >> {log}")
    return (f"{{ kind: exec, exec: {{ deploy: {json.dumps(hook)}, swap: \"true\", "
            f"timeout: {HOOK_TIMEOUT} }} }}")


def hook_runs(log):
    """[{start, end, gone, ppid}] of the hook's runs, in order of start: end is None while the
    run goes on or when it was killed; gone is when nothing of it was left (None while it runs)."""
    runs, by_pid = [], {}
    if not os.path.exists(log):
        return runs
    for line in open(log).read().splitlines():
        f = line.split()
        if len(f) < 3:
            continue  # a line being written
        if f[0] == "start":
            by_pid[f[2]] = {"start": float(f[1]), "end": None, "gone": None, "pid": f[2],
                            "ppid": f[3] if len(f) > 3 else None}
            runs.append(by_pid[f[2]])
        elif f[2] in by_pid:
            by_pid[f[2]][f[0]] = float(f[1])
    return runs


def ended(run):
    return run["end"] is not None


def assert_no_overlap(runs, names=None):
    """The invariant of fencing: no run starts before the one before it is gone."""
    names = names or {}

    def show(r):
        who = names.get(r["ppid"], f"pid {r['ppid']}")
        end = f"end {r['end']:.2f}" if ended(r) else "killed" if r["gone"] else "running"
        gone = f"{r['gone']:.2f}" if r["gone"] else "-"
        return f"{who}: start {r['start']:.2f} {end} gone {gone}"
    for a, b in zip(runs, runs[1:]):
        assert a["gone"] is not None and a["gone"] <= b["start"], (
            "hook runs overlap: " + "; ".join(show(r) for r in runs))


def distinct_events(lab, rid):
    seen = {}
    for e in lab.events():
        if e["data"].get("rotation_id") == rid:
            seen.setdefault(e["id"], e)
    return list(seen.values())


def test_redelivered_request_runs_an_open_rotation_nobody_runs(make_lab):
    # The rotation was created (its request applied) but no process runs it: the commit of the
    # request's offset was lost, or a rebalance came between its creation and a load. When the
    # request comes again it is recognised as applied, and its rotation must be run, not left
    # holding the secret's one-open-rotation lock.
    lab = make_lab()
    d = lab.start()
    wait_for(lambda: lab.pg.query("SELECT 1 FROM rotor.secrets WHERE name = 'app-db'"), 30,
             what="the secret to be registered")
    time.sleep(2)  # past the load of open rotations that follows the assignment
    request_id = "stranded-" + os.urandom(8).hex()
    lab.pg.query("INSERT INTO rotor.rotations (id, secret, stage, status, from_slot, to_slot,"
                 " trigger, request_id, expires_at)"
                 " VALUES (gen_random_uuid(), 'app-db', 'prepare', 'pending', 'blue', 'green',"
                 " 'pipeline', %s, now() + interval '90 days')", (request_id,))
    rid = lab.rotation_for(request_id)["id"]
    ev = {"specversion": "1.0", "id": request_id, "source": "/tests/e2e",
          "type": "rotation.requested", "subject": "app-db",
          "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
          "data": {"secret": "app-db", "reason": "redelivered", "requested_by": "pytest",
                   "trigger": "pipeline"}}
    lab.produce(json.dumps(ev))
    row = lab.wait_status(rid, ("completed", "failed"), 60)
    assert row["status"] == "completed", lab.history(rid)
    assert '"open and not running here: resumed"' in d.text()
    assert len(lab.rotations()) == 1  # the redelivery started no second rotation


def test_a_fenced_process_completes_no_effect_and_its_successor_runs_it_once(make_lab, tmp_path):
    # A runs a slow deploy hook; meanwhile another process claims the secret's partition (here
    # the claim is made directly in rotor.owners, as a process B assigned the partition would).
    # A's completion write is refused (fenced): A lets go and releases its attempt. The next
    # owner runs the stage again, after A's run, and the rotation completes once.
    # One attempt a stage: the released attempt is given back, so its re-run is not a second.
    log = str(tmp_path / "hook.log")
    lab = make_lab(separate_broker=True, deploy=slow_deploy(log, 4),
                   kafka_props='{ session.timeout.ms: "4000", heartbeat.interval.ms: "500" }',
                   stages="{ timeout: 30s, max_attempts: 1, backoff: { initial: 200ms, max: 2s } }")
    a = lab.start(extra_env={"ROTOR_INSTANCE": "a"})
    wait_for(lambda: '"owner.claimed"' in a.text(), 30, what="A's claim")
    rid = lab.rotation_for(lab.request(reason="fenced"))["id"]
    wait_for(lambda: hook_runs(log), 60, 0.1, what="the deploy hook to start in A")
    lab.pg.query("UPDATE rotor.owners SET instance = 'rotor/b', epoch = epoch + 1")
    wait_for(lambda: '"rotation.fenced"' in a.text(), 30, what="A's completion to be fenced")
    assert '"owner.lost"' in a.text()
    assert ended(hook_runs(log)[0])  # A's effect ran to its end before the write
    wait_for(lambda: '"stage.released"' in a.text(), 30, what="A to release its attempt")
    row = lab.pg.query("SELECT stage, status, run_until, attempt FROM rotor.rotations"
                       " WHERE id = %s", (rid,))[0]
    assert row[:2] == ("deploy", "running") and row[2] is None, row
    assert row[3] == 0, row  # the released attempt is given back
    # nothing of A's completion reached the journal or the events
    assert not [e for e in distinct_events(lab, rid)
                if e["type"] == "stage.completed" and e["data"]["stage"] == "deploy"]

    # The partition is assigned again (a second member joins the group): its owner claims it
    # and runs the released attempt.
    b = lab.start(extra_env={"ROTOR_INSTANCE": "b"}, wait_ready=False)
    done = lab.wait_status(rid, ("completed", "failed"), 90)
    assert done["status"] == "completed", lab.history(rid)
    runs = hook_runs(log)
    assert_no_overlap(runs, {str(a.p.pid): "A", str(b.p.pid): "B"})
    # A's run went to its end (its completion fenced) and so did the one that completed the
    # stage; a run in between can only have been killed by a later rebalance (a loaded machine
    # misses heartbeats), never have overlapped another.
    assert [r for r in runs if ended(r)] == [runs[0], runs[-1]], runs
    completed = [e["data"]["stage"] for e in distinct_events(lab, rid)
                 if e["type"] == "stage.completed"]
    assert completed.count("deploy") == 1, completed
    assert [e["type"] for e in distinct_events(lab, rid)].count("rotation.completed") == 1
    assert a.alive() and b.alive()


def test_a_new_owner_waits_for_the_previous_owners_running_effect(make_lab, tmp_path):
    # Two members; the one owning the secret runs a slow hook and is frozen (SIGSTOP) in the
    # middle of it, so the group gives its partition to the other, which claims it. The new
    # owner finds the attempt running under the old claim, its process still connected to the
    # journal: it starts nothing until that attempt is released. The frozen process, resumed
    # after its hook ended, is fenced (or revoked first) and releases; only then does the new
    # owner run the stage. No two runs of the hook overlap.
    log = str(tmp_path / "hook.log")
    # The resumed process rejoins the group: each rebalance that follows revokes the partition
    # from its owner, which kills its run of the hook (that attempt is spent) and releases it.
    # Under load there can be a few of them: attempts enough that they do not fail the rotation.
    lab = make_lab(separate_broker=True, deploy=slow_deploy(log, 6),
                   kafka_props='{ session.timeout.ms: "4000", heartbeat.interval.ms: "500" }',
                   stages="{ timeout: 30s, max_attempts: 10, backoff: { initial: 200ms, max: 2s } }")
    procs = {"rotor/a": lab.start(extra_env={"ROTOR_INSTANCE": "a"})}
    procs["rotor/b"] = lab.start(extra_env={"ROTOR_INSTANCE": "b"})

    def owner():
        rows = lab.pg.query("SELECT instance FROM rotor.owners WHERE part = 0")
        return rows[0][0] if rows else None
    # settle: both members joined, partition 0 claimed after the last rebalance
    time.sleep(2)
    wait_for(owner, 30, what="a claim of partition 0")
    rid = lab.rotation_for(lab.request(reason="frozen owner"))["id"]
    wait_for(lambda: hook_runs(log), 60, 0.1, what="the deploy hook to start")
    old = owner()
    new = "rotor/b" if old == "rotor/a" else "rotor/a"
    frozen, successor = procs[old], procs[new]
    frozen.signal(signal.SIGSTOP)
    try:
        wait_for(lambda: '"stage.awaiting_previous_owner"' in successor.text(), 30, 0.2,
                 what="the new owner to wait for the running attempt")
        assert owner() == new
        wait_for(lambda: ended(hook_runs(log)[0]), 30, 0.2, what="the hook to end")
        assert len(hook_runs(log)) == 1  # the new owner started nothing meanwhile
    finally:
        frozen.signal(signal.SIGCONT)
    done = lab.wait_status(rid, ("completed", "failed"), 90)
    assert done["status"] == "completed", lab.history(rid)
    runs = hook_runs(log)
    assert_no_overlap(runs, {str(p.p.pid): name for name, p in procs.items()})
    # Two runs went to their end: the frozen owner's (its completion fenced or never written) and
    # the one that completed the stage. Any other run was killed when its owner lost the
    # partition in a later rebalance (and did not overlap another one).
    assert [r for r in runs if ended(r)] == [runs[0], runs[-1]], runs
    text = frozen.text()
    assert '"rotation.fenced"' in text or '"rotation.let_go"' in text
    completed = [e["data"]["stage"] for e in distinct_events(lab, rid)
                 if e["type"] == "stage.completed"]
    assert completed.count("deploy") == 1, completed


def test_a_process_with_a_stale_partition_count_writes_nothing(make_lab):
    # The commands topic grew and another process claimed a partition under the larger count:
    # this process, which still maps secrets with the old count, may no longer write (its
    # secrets may now belong to the other one). librdkafka's mock broker cannot add partitions
    # to a topic, so the other process's claim is made directly in rotor.owners.
    lab = make_lab()
    d = lab.start()
    wait_for(lambda: '"owner.claimed"' in d.text(), 30, what="the claim")
    lab.pg.query("INSERT INTO rotor.owners (part, instance, epoch, nparts)"
                 " VALUES (5, 'rotor/other', 1, 8)")
    request_id = lab.request(reason="stale count")
    wait_for(lambda: "not created: another process owns the secret now" in d.text(), 30,
             what="the creation to be fenced")
    assert not lab.rotations()
    # the other process's claim goes away (say the count seen here catches up and this process
    # claims again): the request, retried all along, creates its rotation
    lab.pg.query("DELETE FROM rotor.owners WHERE part = 5")
    rid = lab.rotation_for(request_id, timeout=30)["id"]
    assert lab.wait_status(rid, ("completed", "failed"), 60)["status"] == "completed"
