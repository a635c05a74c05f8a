"""bench/fleet.py: a fleet of N rotations through rotor against the same database work done by
bare libpq (bench_fleet_baseline), beside one private PostgreSQL (bench/fleet.sh starts it with
tests/support/with-postgres and runs this).

Set-up: database `app` (the admin database: the role pairs live in the cluster, the probe and
the logins use `app`) and database `rotor` (the journal). N role pairs app_<i>_blue (LOGIN) /
app_<i>_green (NOLOGIN), both members of app_rw.

Baseline (before and after rotor): bench_fleet_baseline --procs 2 does, per pair, SCRAM verifier + ALTER ROLE green
PASSWORD ... LOGIN VALID UNTIL, login as green + SELECT 1, ALTER ROLE blue NOLOGIN. Then the
pairs are put back as they were.

rotor: `rotor run` on the embedded broker with N secrets (file store, deploy none, approval
auto with soak 0, drain 0); N rotation.requested published at once with one kcat call; the
clock stops when the journal holds N completed rotations (polled once a second on a kept
connection; the polls are subtracted from the commit count).

Prints rotations/s of each, the ratio, rotor's CPU (utime + stime from /proc over the run, in
cores), and commits per rotation (pg_stat_database.xact_commit deltas / N) of the journal and
the admin database; last, a row for docs/benchmarks.md. The baseline runs before and after rotor;
the ratio uses the mean of the two.
"""
import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time

import psycopg2

HZ = os.sysconf("SC_CLK_TCK")


def pg(dbname="postgres"):
    c = psycopg2.connect(dbname=dbname)
    c.autocommit = True
    return c


def q(conn, sql, args=()):
    with conn.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchall() if cur.description else None


def commits(stats):
    """xact_commit of app and rotor, read from the postgres database (not counted in either).
    The statistics are flushed by each backend about once a second: wait that out first."""
    time.sleep(1.2)
    rows = q(stats, "SELECT datname, xact_commit FROM pg_stat_database"
                    " WHERE datname IN ('app', 'rotor')")
    return {name: int(n) for name, n in rows}


def setup(n):
    admin = pg()
    for db in ("app", "rotor"):
        q(admin, f"DROP DATABASE IF EXISTS {db}")
        q(admin, f"CREATE DATABASE {db}")
    app = pg("app")
    q(app, "DO $$BEGIN CREATE ROLE app_rw NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL;"
           " END$$")
    q(app, "GRANT CONNECT ON DATABASE app TO app_rw")
    password = secrets.token_urlsafe(24)
    for i in range(n):
        q(app, f"DROP ROLE IF EXISTS app_{i}_blue")
        q(app, f"DROP ROLE IF EXISTS app_{i}_green")
        q(app, f"CREATE ROLE app_{i}_blue LOGIN PASSWORD %s IN ROLE app_rw", (password,))
        q(app, f"CREATE ROLE app_{i}_green NOLOGIN IN ROLE app_rw")
    return admin, app, password


def reset_roles(app, n, password):
    for i in range(n):
        q(app, f"ALTER ROLE app_{i}_blue LOGIN PASSWORD %s", (password,))
        q(app, f"ALTER ROLE app_{i}_green NOLOGIN PASSWORD NULL VALID UNTIL 'infinity'")


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def delay_buckets(port):
    """rotor_loop_delay_seconds's cumulative buckets from /metrics, {le: count}."""
    import urllib.request
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    buckets = []
    for line in text.splitlines():
        if line.startswith("rotor_loop_delay_seconds_bucket{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((float("inf") if le == "+Inf" else float(le), float(line.split()[-1])))
    return dict(buckets)


def loop_delay(b0, b1):
    """The run's loop holds (bucket deltas between two reads of /metrics): (samples, fraction
    within 2 ms, p99 as the upper edge of the bucket holding the 99th percentile, the bound that
    histogram_quantile's interpolation stays under)."""
    if not b1:
        return None
    buckets = sorted((le, c - (b0 or {}).get(le, 0)) for le, c in b1.items())
    total = buckets[-1][1]
    within2 = next((c for le, c in buckets if abs(le - 0.002) < 1e-9), float("nan"))
    p99 = next(le for le, c in buckets if c >= 0.99 * total)
    return int(total), within2 / total if total else float("nan"), p99


def write_config(root, n, password, http_port):
    store = os.path.join(root, "secrets")
    os.makedirs(store, mode=0o700)
    lines = [f"""# written by bench/fleet.py
kafka:
  brokers: embedded
  bootstrap_file: {root}/rotor.bootstrap
  group: rotor
  topics: {{ commands: rotor.commands, events: rotor.events, deadletter: rotor.deadletter }}
journal: {{ dsn_env: ROTOR_JOURNAL_DSN }}
http: {{ listen: "127.0.0.1:{http_port}" }}
log: {{ level: info }}
stages: {{ timeout: 60s, max_attempts: 5, backoff: {{ initial: 200ms, max: 2s }} }}
secrets:"""]
    for i in range(n):
        with open(os.path.join(store, f"pg-{i}-blue"), "w") as f:
            f.write(password)
        os.chmod(os.path.join(store, f"pg-{i}-blue"), 0o600)
        lines.append(f"""  - name: app-{i}
    active: blue
    database: {{ dsn_env: APP_DB_ADMIN_DSN, roles: {{ blue: app_{i}_blue, green: app_{i}_green }},
                probe: "select 1", drain: 0s }}
    store: {{ kind: file, dir: {store}, names: {{ blue: pg-{i}-blue, green: pg-{i}-green }} }}
    validity: 90d
    deploy: {{ kind: none }}
    approval: {{ mode: auto, soak: 0s }}""")
    path = os.path.join(root, "rotor.yaml")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)


def loop_sched(pid):
    """The loop thread's (TID = PID) scheduler figures: (ns on a CPU, ns waiting on a run queue,
    involuntary context switches). Waiting on a run queue is time the thread was ready but another
    thread had the core: the preempted share of a loop hold."""
    with open(f"/proc/{pid}/task/{pid}/schedstat") as f:
        run_ns, wait_ns, _ = (int(x) for x in f.read().split())
    nonvol = 0
    with open(f"/proc/{pid}/task/{pid}/status") as f:
        for line in f:
            if line.startswith("nonvoluntary_ctxt_switches:"):
                nonvol = int(line.split()[1])
    return run_ns, wait_ns, nonvol


def renice_loop(pid, nice):
    """FLEET_NICE: rotor's loop thread (TID = PID) at that nice value (e.g. -20), its other threads
    (the threadpool's SCRAM hashes, librdkafka's) left at 0, and, with autogroup scheduling, the
    process's group too (nice acts only within a group, and rotor runs in a session of its own):
    the loop thread is then preempted neither by its own threads nor by other processes, which
    separates preemption from rotor's own loop hold."""
    subprocess.run(["renice", "-n", str(nice), "-p", str(pid)], check=True,
                   stdout=subprocess.DEVNULL)
    try:
        with open(f"/proc/{pid}/autogroup", "w") as f:
            f.write(str(nice))
    except OSError:
        pass


def wait_for(pred, timeout, what):
    end = time.time() + timeout
    while time.time() < end:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise SystemExit(f"fleet: timed out waiting for {what}")


def run_rotor(args, root, n, password, stats):
    http_port = free_port()
    config = write_config(root, n, password, http_port)
    host, port = os.environ["PGHOST"], os.environ["PGPORT"]
    env = dict(os.environ,
               ROTOR_JOURNAL_DSN=f"host={host} port={port} user=postgres dbname=rotor",
               APP_DB_ADMIN_DSN=f"host={host} port={port} user=postgres dbname=app")
    log = open(os.path.join(root, "rotor.log"), "wb")
    argv = [args.rotor, "run", "-c", config]
    if args.perf:
        argv = ["perf", "record", "-g", "-o", os.path.join(root, "perf.data"), "--"] + argv
    d = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                         start_new_session=True)
    boot = os.path.join(root, "rotor.bootstrap")
    wait_for(lambda: os.path.exists(boot) or d.poll() is not None, 60, "the embedded broker")
    if d.poll() is not None:
        raise SystemExit("fleet: rotor exited:\n" + open(log.name).read()[-3000:])
    with open(boot) as f:
        brokers = f.read().strip()
    jour = pg("rotor")
    # ready: the journal knows every secret (registered at start-up) and the group is joined
    wait_for(lambda: q(jour, "SELECT count(*) FROM rotor.secrets")[0][0] == n
             if q(jour, "SELECT to_regclass('rotor.secrets') IS NOT NULL")[0][0] else False,
             120, "rotor to register its secrets")
    wait_for(lambda: b'"kafka.assigned"' in open(log.name, "rb").read(), 60,
             "rotor to join its consumer group")
    msgs = os.path.join(root, "requests")
    with open(msgs, "w") as f:
        for i in range(n):
            ev = {"specversion": "1.0", "id": secrets.token_hex(16), "source": "/bench/fleet",
                  "type": "rotation.requested", "subject": f"app-{i}",
                  "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  "datacontenttype": "application/json",
                  "data": {"secret": f"app-{i}", "reason": "fleet", "requested_by": "bench",
                           "trigger": "pipeline"}}
            f.write(f"app-{i}\t{json.dumps(ev)}\n")
    pid = d.pid if not args.perf else int(subprocess.check_output(
        ["pgrep", "-P", str(d.pid), "-f", "rotor run"]).split()[0])
    before = commits(stats)
    polls = 0
    try:
        held0 = delay_buckets(http_port)
    except OSError as e:
        print(f"fleet: /metrics: {e}", file=sys.stderr)
        held0 = None
    if os.environ.get("FLEET_NICE"):
        renice_loop(pid, int(os.environ["FLEET_NICE"]))
    ticks0 = cpu_ticks(pid)
    sched0 = loop_sched(pid)
    t0 = time.monotonic()
    # murmur2, as rotor's producer and the Java client partition: with kcat's default (CRC32) two
    # thirds of the requests land off their owner's partition and are forwarded through the outbox
    subprocess.run(["kcat", "-b", brokers, "-P", "-t", "rotor.commands", "-K", "\t",
                    "-X", "partitioner=" + os.environ.get("BENCH_PARTITIONER", "murmur2_random"),
                    "-l", msgs], check=True, timeout=120)
    done = 0
    while True:
        polls += 1
        done, failed = q(jour, "SELECT count(*) FILTER (WHERE status = 'completed'),"
                               " count(*) FILTER (WHERE status IN ('failed', 'aborted',"
                               " 'rolled-back')) FROM rotor.rotations")[0]
        if done + failed >= n:
            break
        if time.monotonic() - t0 > args.timeout:
            raise SystemExit(f"fleet: only {done} of {n} completed in {args.timeout}s")
        time.sleep(0.05 if n <= 100 else 0.2)
    secs = time.monotonic() - t0
    cores = (cpu_ticks(pid) - ticks0) / HZ / secs
    sched = [b - a for a, b in zip(sched0, loop_sched(pid))]
    jour.close()
    # let the relay mark its last batch sent before counting
    time.sleep(1)
    after = commits(stats)
    try:
        delay = loop_delay(held0, delay_buckets(http_port))
    except OSError as e:
        print(f"fleet: /metrics: {e}", file=sys.stderr)
        delay = None
    os.killpg(d.pid, signal.SIGTERM)
    try:
        d.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(d.pid, signal.SIGKILL)
        d.wait()
    if failed:
        print(f"fleet: {failed} rotations did not complete (see {log.name})", file=sys.stderr)
    return done, secs, cores, {k: after[k] - before[k] for k in after}, polls, delay, sched


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--rotor", required=True)
    ap.add_argument("--baseline", required=True)
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--label", default="")
    ap.add_argument("--perf", action="store_true", help="perf record -g rotor during the run")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()
    n = args.n
    root = tempfile.mkdtemp(prefix="rotor-fleet-")
    os.chmod(root, 0o755)
    admin, app, password = setup(n)
    stats = admin

    def baseline():
        before = commits(stats)
        out = subprocess.run([args.baseline, "--n", str(n), "--procs", "2", "--dbname", "app"],
                             check=True, capture_output=True, text=True).stdout
        after = commits(stats)
        line = [x for x in out.splitlines() if x.startswith("RESULT-FLEET")][0].split("\t")
        reset_roles(app, n, password)
        return float(line[2]), float(line[3]), (after["app"] - before["app"]) / n

    # The baseline runs before and after rotor, and the ratio uses their mean: on a shared
    # machine the load drifts over a run, and a baseline on one side only would carry the drift.
    base1 = baseline()
    done, secs, cores, delta, polls, delay, sched = run_rotor(args, root, n, password, stats)
    base2 = baseline()
    base_rate = (base1[1] + base2[1]) / 2
    base_secs = (base1[0] + base2[0]) / 2
    base_commits = base1[2]
    rate = done / secs
    jcommits = (delta["rotor"] - polls) / n
    acommits = delta["app"] / n
    print(f"N={n}")
    print(f"baseline (2 libpq processes): {base_rate:8.1f} rotations/s ({base_secs:.2f} s),"
          f" {base_commits:.1f} commits/rotation (before rotor {base1[1]:.1f}, after {base2[1]:.1f})")
    print(f"rotor:                        {rate:8.1f} rotations/s ({secs:.2f} s, {done} completed),"
          f" CPU {cores:.2f} cores")
    print(f"ratio rotor / baseline:       {rate / base_rate:8.2f}")
    print(f"commits per rotation: journal {jcommits:.1f}, admin database {acommits:.1f}"
          f" (total {jcommits + acommits:.1f}; baseline {base_commits:.1f})")
    if delay:
        print(f"loop hold (rotor_loop_delay_seconds from the publish to the end): {delay[0]} iterations,"
              f" {100 * delay[1]:.2f} % within 2 ms, p99 <= {delay[2] * 1000:g} ms")
        print(f"DELAY | {args.label} | {n} | {delay[0]} | {100 * delay[1]:.2f} | {delay[2] * 1000:g} |")
    # the loop thread over the run: on a CPU, ready but waiting for one (preempted), switches
    print(f"loop thread: on CPU {sched[0] / 1e9:.2f} s, waiting on a run queue {sched[1] / 1e9:.2f} s"
          f" ({sched[1] / 1e6 / max(delay[0] if delay else 1, 1):.2f} ms per iteration),"
          f" {sched[2]} involuntary switches, over {secs:.2f} s"
          + (f", nice {os.environ['FLEET_NICE']}" if os.environ.get("FLEET_NICE") else ""))
    print(f"SCHED | {args.label} | {n} | {sched[0] / 1e9:.2f} | {sched[1] / 1e9:.2f} | {sched[2]} |"
          f" {secs:.2f} |")
    print(f"ROW | {args.label} | {n} | {base_rate:.1f} | {rate:.1f} | {rate / base_rate:.2f} |"
          f" {cores:.2f} | {jcommits:.1f} | {acommits:.1f} |")
    if os.environ.get("FLEET_STATEMENTS"):
        # with FLEET_PG_OPTS="-c shared_preload_libraries=pg_stat_statements": where the server's
        # time went, both sides together (the baseline's statements are in `app` too)
        q(stats, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        for db, calls, ms, text in q(stats, """
                SELECT d.datname, s.calls, round(s.total_exec_time::numeric, 1),
                       left(regexp_replace(s.query, '\\s+', ' ', 'g'), 90)
                FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid
                WHERE d.datname IN ('app', 'rotor') ORDER BY s.total_exec_time DESC LIMIT 14"""):
            print(f"STATEMENT {db:5} {calls:7} calls {ms:10} ms  {text}")
    if args.keep or args.perf or os.environ.get("FLEET_KEEP"):
        print(f"work directory: {root}")
    else:
        subprocess.run(["rm", "-rf", root])


if __name__ == "__main__":
    main()
