"""Three replicas in one consumer group rotate a fleet (file store, deploy none, approval auto with
soak 0); mid-fleet one is killed with SIGKILL and a fourth is started. Every rotation completes
exactly once, none fails (on compare-and-set conflicts or anything else), and no effect ever runs
in two processes at once: from the logs (each attempt's stage.started to its end, per process)
and from the journal (while a process runs an effect, rotor.rotations never names another
process as the attempt's runner).

50 secrets under scripts/reliability.sh (ROTOR_RELIABILITY=1); a sample of 12 otherwise (8
under the sanitizers), which exercises the same kill and join."""
import calendar
import json
import os
import re
import secrets as pysecrets
import signal
import subprocess
import threading
import time

from rotorlab import KCAT, wait_for

FULL = os.environ.get("ROTOR_RELIABILITY") == "1"
SANITIZE = os.environ.get("ROTOR_SANITIZE", "").upper() in ("ON", "1", "TRUE", "YES")
N = 50 if FULL else 8 if SANITIZE else 12


def fleet_config(lab, n):
    """lab.config rewritten for n secrets app-<i> with roles app_<i>_blue / app_<i>_green."""
    lines = [f"""# written by tests/e2e/test_replicas.py
kafka:
  brokers: {lab.brokers}
  bootstrap_file: {lab.bootstrap_file}
  group: rotor
  topics: {{ commands: rotor.commands, events: rotor.events, deadletter: rotor.deadletter }}
  properties: {{ session.timeout.ms: "4000", heartbeat.interval.ms: "500" }}
journal: {{ dsn_env: ROTOR_JOURNAL_DSN }}
http: {{ listen: "127.0.0.1:0" }}
log: {{ level: debug }}
daemon: {{ shutdown_timeout: 10s }}
stages: {{ timeout: 60s, max_attempts: 10, backoff: {{ initial: 200ms, max: 2s }} }}
secrets:"""]
    for i in range(n):
        lab.pg.query(f"CREATE ROLE app_{i}_blue LOGIN PASSWORD %s IN ROLE app_rw",
                     (lab.initial_password,))
        lab.pg.query(f"CREATE ROLE app_{i}_green NOLOGIN IN ROLE app_rw")
        path = os.path.join(lab.secrets_dir, f"pg-{i}-blue")
        with open(path, "w") as f:
            f.write(lab.initial_password)
        os.chmod(path, 0o600)
        lines.append(f"""  - name: app-{i}
    active: blue
    database: {{ dsn_env: APP_DB_ADMIN_DSN, roles: {{ blue: app_{i}_blue, green: app_{i}_green }},
                probe: "select 1", drain: 0s }}
    store: {{ kind: file, dir: {lab.secrets_dir}, names: {{ blue: pg-{i}-blue, green: pg-{i}-green }} }}
    validity: 90d
    deploy: {{ kind: none }}
    approval: {{ mode: auto, soak: 0s }}""")
    with open(lab.config, "w") as f:
        f.write("\n".join(lines) + "\n")


def request_all(lab, n):
    """n rotation.requested at once, in one kcat call; returns {secret: request id}."""
    path = os.path.join(lab.root, "requests")
    ids = {}
    with open(path, "w") as f:
        for i in range(n):
            ids[f"app-{i}"] = pysecrets.token_hex(16)
            ev = {"specversion": "1.0", "id": ids[f"app-{i}"], "source": "/tests/e2e",
                  "type": "rotation.requested", "subject": f"app-{i}",
                  "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  "datacontenttype": "application/json",
                  "data": {"secret": f"app-{i}", "reason": "replicas", "requested_by": "pytest",
                           "trigger": "pipeline"}}
            f.write(f"app-{i}\t{json.dumps(ev)}\n")
    subprocess.run([KCAT, "-b", lab.bootstrap, "-P", "-t", "rotor.commands", "-K", "\t", "-l",
                    path], check=True, timeout=60)
    return ids


def parse_ts(ts):
    """The log's ts (RFC 3339 UTC with milliseconds) as epoch seconds."""
    m = re.match(r"(\d+)-(\d+)-(\d+)T(\d+):(\d+):(\d+)(?:\.(\d+))?Z", ts)
    y, mo, d, h, mi, s, frac = m.groups()
    t = calendar.timegm((int(y), int(mo), int(d), int(h), int(mi), int(s), 0, 0, 0))
    return t + (float("0." + frac) if frac else 0.0)


END_MSGS = ("stage.completed", "stage.failed", "stage.probe_failed", "rotation.fenced",
            "rotation.let_go", "stage.released", "rotation.conflict")


def effect_runs(name, text, killed_at=None):
    """[(rotation, stage, attempt, start, end, name)] of the effects a process ran, from its log:
    an attempt runs from its stage.started to the first line after it that ends it or hands it
    on; a run still open at the end of the log ends when the process was killed (or now)."""
    runs, open_ = [], {}
    for line in text.splitlines():
        if not line.startswith("{"):
            continue
        try:
            o = json.loads(line)
        except ValueError:
            continue
        rid = o.get("rotation")
        if not rid:
            continue
        msg = o.get("msg")
        if msg == "stage.started":
            open_[rid] = (rid, o.get("stage"), o.get("attempt"), parse_ts(o["ts"]))
        elif (msg in END_MSGS or msg.startswith("rotation.let")) and rid in open_:
            r = open_.pop(rid)
            runs.append(r + (parse_ts(o["ts"]), name))
    end = killed_at or time.time()
    runs += [r + (end, name) for r in open_.values()]
    return runs


def alter_password_counts(lab):
    """{role: ALTER ROLE ... PASSWORD statements} from the server's log; each password there must
    be a SCRAM verifier (the statements are counted, never shown)."""
    counts, plain = {}, 0
    with open(lab.pg.log, encoding="utf-8", errors="replace") as f:
        for line in f:
            m = re.search(r'(?:statement|execute [^:]*): ALTER ROLE "?(\w+)"? .*PASSWORD ', line)
            if m:
                counts[m.group(1)] = counts.get(m.group(1), 0) + 1
                plain += "'SCRAM-SHA-256$" not in line
    assert plain == 0, f"{plain} ALTER ROLE statement(s) with a password that is not a verifier"
    return counts


class JournalWatch:
    """Samples rotor.rotations every 0.2 s: which instance the journal says runs each running
    attempt (run_by), as (time before the query, time after, rotation, instance)."""

    def __init__(self, lab):
        self.lab, self.samples, self.stop_ = lab, [], threading.Event()
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        import psycopg2
        conn = self.lab.pg.connect()
        conn.autocommit = True
        try:
            while not self.stop_.is_set():
                with conn.cursor() as cur:
                    t0 = time.time()
                    cur.execute("SELECT id::text, run_by FROM rotor.rotations "
                                "WHERE status = 'running' AND run_by IS NOT NULL")
                    rows = cur.fetchall()
                    t1 = time.time()
                    self.samples += [(t0, t1, rid, run_by.split("/", 1)[-1])
                                     for rid, run_by in rows]
                time.sleep(0.2)
        except psycopg2.Error:
            pass
        finally:
            conn.close()

    def stop(self):
        self.stop_.set()
        self.t.join(10)


def test_three_replicas_one_killed_one_started_mid_fleet(make_lab):
    started = time.time()
    lab = make_lab(separate_broker=True)
    fleet_config(lab, N)
    names = ["r1", "r2", "r3", "r4"]
    procs = {}
    for name in names[:3]:
        procs[name] = lab.start(extra_env={"ROTOR_INSTANCE": name}, wait_ready=False)
    for name in names[:3]:
        d = procs[name]
        wait_for(lambda: '"kafka.assigned"' in d.text() or not d.alive(), 90,
                 what=f"{name} to join the group")
        assert d.alive(), d.text()[-3000:]
    wait_for(lambda: lab.pg.query("SELECT count(*) FROM rotor.owners")[0][0] >= 3, 60, 0.2,
             what="the three partitions to be claimed")
    # every DDL statement from here on is in the server's log (the roles above, made with
    # passwords in plain text, are not): the ALTER ROLE statements the replicas send
    lab.pg.query("ALTER SYSTEM SET log_statement = 'ddl'")
    lab.pg.query("SELECT pg_reload_conf()")
    watch = JournalWatch(lab)
    ids = request_all(lab, N)

    def completed():
        return lab.pg.query("SELECT count(*) FROM rotor.rotations WHERE status = 'completed'")[0][0]
    # mid-fleet: a replica that owns open rotations is killed, and a fourth joins
    wait_for(lambda: completed() >= N // 4, 180, 0.1, what="a quarter of the fleet")
    running = lab.pg.query("SELECT run_by, count(*) FROM rotor.rotations WHERE status IN "
                           "('running', 'pending') AND run_by IS NOT NULL GROUP BY run_by "
                           "ORDER BY 2 DESC")
    victim = running[0][0].split("/", 1)[1] if running else "r1"
    procs[victim].p.send_signal(signal.SIGKILL)
    procs[victim].p.wait(30)
    killed_at = time.time()
    procs["r4"] = lab.start(extra_env={"ROTOR_INSTANCE": "r4"}, wait_ready=False)

    wait_for(lambda: completed() >= N, 300, 0.5, what=f"{N} completed rotations")
    watch.stop()
    rows = lab.pg.query("SELECT secret, status, request_id FROM rotor.rotations")
    # exactly once: one rotation per secret, made by its request, completed; none failed
    assert sorted(r[0] for r in rows) == sorted(ids), rows
    assert all(r[1] == "completed" for r in rows), [r for r in rows if r[1] != "completed"]
    assert {r[0]: r[2] for r in rows} == ids
    hist = lab.pg.query("SELECT outcome, coalesce(error, '') FROM rotor.history")
    assert not [h for h in hist if h[0] == "failed"], hist
    conflicts = [h for h in hist if "conflict" in h[1].lower() or "compare" in h[1].lower()]
    assert not conflicts, conflicts
    # every secret's new password is set once and works: one store version each
    for i in range(N):
        vdir = os.path.join(lab.secrets_dir, ".versions", f"pg-{i}-green")
        assert len(os.listdir(vdir)) == 1, (i, os.listdir(vdir))
        with open(os.path.join(lab.secrets_dir, f"pg-{i}-green")) as f:
            assert lab.can_login(f"app_{i}_green", f.read())

    # no effect in two processes at once: per rotation, the runs of different processes do not
    # overlap (a run of the killed process ends when it was killed)
    runs = []
    for name, d in procs.items():
        runs += effect_runs(name, d.text(), killed_at if name == victim else None)
    by_rot = {}
    for r in runs:
        by_rot.setdefault(r[0], []).append(r)
    overlaps = []
    for rid, rs in by_rot.items():
        rs.sort(key=lambda r: r[3])
        for a, b in zip(rs, rs[1:]):
            if a[5] != b[5] and b[3] < a[4]:
                overlaps.append((a, b))
    assert not overlaps, overlaps
    # from the journal: while a process runs an effect (from its log), the journal never names
    # another process as the runner of that rotation's attempt
    strangers = [(r, smp) for r in runs for smp in watch.samples
                 if smp[2] == r[0] and r[3] < smp[0] and smp[1] < r[4] and smp[3] != r[5]]
    assert not strangers, strangers[:5]
    # and every rotation's end was published once (an event repeated by the relay is the same id)
    def completions():
        seen = {}
        for e in lab.events():
            if e["type"] == "rotation.completed":
                seen.setdefault(e["data"]["rotation_id"], set()).add(e["id"])
        return seen if len(seen) >= N else None
    done_events = wait_for(completions, 60, 1, what="every rotation.completed event")
    assert len(done_events) == N and all(len(v) == 1 for v in done_events.values()), done_events
    taken_over = sorted({r[0] for r in runs if r[5] != victim} &
                        {r[0] for r in runs if r[5] == victim})
    passwords = alter_password_counts(lab)
    assert set(passwords) == {f"app_{i}_green" for i in range(N)}, passwords
    conflicts_logged = sum(d.text().count('"rotation.conflict"') for d in procs.values())
    print("replicas", json.dumps({
        "secrets": N, "completed": len(rows), "failed": 0, "killed": victim,
        "rotations_taken_over": len(taken_over), "effect_runs": len(runs),
        "journal_samples": len(watch.samples),
        "alter_role_password": sum(passwords.values()),
        "roles_set_twice": sum(1 for v in passwords.values() if v > 1), "conflicts_logged": conflicts_logged,
        "seconds": round(time.time() - started, 1)}))
    for name, d in procs.items():
        if name != victim:
            assert d.alive(), d.text()[-3000:]
