"""benchlab: the set-up shared by bench/ingest.sh and bench/idle.sh (bench/keyvault.sh uses
tests/e2e/kvlab.py as it is).

A BenchLab is a temporary directory with a private PostgreSQL (rotorlab.Postgres), N secrets
db-000.. on role pairs app_blue_i/app_green_i with a file store, a `rotor broker` in its own
process (so that the broker's threads and its copy of every message are not counted in rotor's
memory or wake-ups) and one `rotor run`. Every child is started in its own session and its pid is
written to $BENCH_PIDFILE (when set), so the calling shell script's trap can kill them even if
this Python process is killed first.
"""

import os
import re
import secrets as pysecrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(SOURCE, "tests", "e2e"))
os.environ.setdefault("ROTOR_SOURCE_DIR", SOURCE)

from rotorlab import KCAT, Postgres, Proc, wait_for  # noqa: E402

ROTOR = os.environ.get("ROTOR_BIN") or os.path.join(SOURCE, "build", "rotor")
KV_TOPIC = "keyvault.events"

# timeout(1) and the shell's trap send SIGTERM: unwind through every finally (and close()).
signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def note_pid(pid):
    path = os.environ.get("BENCH_PIDFILE")
    if path:
        with open(path, "a") as f:
            f.write(f"{pid}\n")


def start(argv, log, env=None):
    p = Proc(argv, log, env=env)
    note_pid(p.p.pid)
    return p


def proc_status(pid, tid=None):
    """The fields of /proc/PID/status (or of one thread, /proc/PID/task/TID/status) as ints
    (kB for the Vm* fields) where they are numbers."""
    path = f"/proc/{pid}/task/{tid}/status" if tid else f"/proc/{pid}/status"
    out = {}
    with open(path) as f:
        for line in f:
            k, _, v = line.partition(":")
            v = v.strip().split()
            if v and v[0].isdigit():
                out[k] = int(v[0])
    return out


def switches(pid):
    """{tid: (voluntary, involuntary, thread name)} for every thread of pid now."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            st = proc_status(pid, tid)
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                name = f.read().strip()
        except OSError:
            continue  # the thread ended meanwhile
        out[int(tid)] = (st["voluntary_ctxt_switches"], st["nonvoluntary_ctxt_switches"], name)
    return out


def mib(kb):
    return kb / 1024.0


class BenchLab:
    def __init__(self, secrets=1, approval="{ mode: auto, soak: 0s }", keyvault_topic=False,
                 log_level="info", schedule=None, pg_settings=(), partitions=3):
        self.root = tempfile.mkdtemp(prefix="rotor-bench-")
        os.chmod(self.root, 0o755)
        self.n = secrets
        self.partitions = partitions
        self.broker = None
        self.rotor = None
        self.pg = None
        try:
            self.pg = Postgres(self.root, pg_settings)
            note_pid(self._pg_pid())
            self.secrets_dir = os.path.join(self.root, "secrets")
            self._seed()
            self.bootstrap_file = os.path.join(self.root, "rotor.bootstrap")
            self.config = os.path.join(self.root, "rotor.yaml")
            self.broker_config = os.path.join(self.root, "broker.yaml")
            self._write(self.broker_config, "embedded", approval, keyvault_topic, log_level,
                        schedule)
            self.broker = start([ROTOR, "-c", self.broker_config, "broker", "--bootstrap-file",
                                 self.bootstrap_file], os.path.join(self.root, "broker.log"),
                                env=self.env)
            wait_for(lambda: os.path.exists(self.bootstrap_file) or not self.broker.alive(), 30,
                     what="rotor broker")
            assert self.broker.alive(), self.broker.text()[-2000:]
            with open(self.bootstrap_file) as f:
                self.bootstrap = f.read().strip()
            self._write(self.config, self.bootstrap, approval, keyvault_topic, log_level, schedule)
        except BaseException:
            self.close()
            raise

    def _pg_pid(self):
        with open(os.path.join(self.pg.dir, "data", "postmaster.pid")) as f:
            return int(f.readline())

    def _seed(self):
        os.makedirs(self.secrets_dir, mode=0o700)
        stmts = ["CREATE ROLE app_rw NOLOGIN", "CREATE SCHEMA app",
                 "CREATE TABLE app.users (id serial PRIMARY KEY, name text NOT NULL)",
                 "GRANT USAGE ON SCHEMA app TO app_rw", "GRANT SELECT ON app.users TO app_rw"]
        for i in range(self.n):
            pw = pysecrets.token_urlsafe(24)
            stmts.append(f"CREATE ROLE app_blue_{i} LOGIN PASSWORD '{pw}' IN ROLE app_rw")
            stmts.append(f"CREATE ROLE app_green_{i} NOLOGIN IN ROLE app_rw")
            path = os.path.join(self.secrets_dir, f"pg-blue-{i}")
            with open(path, "w") as f:
                f.write(pw)
            os.chmod(path, 0o600)
        self.pg.query(";\n".join(stmts))

    def names(self):
        return [f"db-{i:03d}" for i in range(self.n)]

    def _write(self, path, brokers, approval, keyvault_topic, log_level, schedule):
        kv = f", keyvault: {KV_TOPIC}" if keyvault_topic else ""
        sched = f"\n    schedule: {schedule}" if schedule else ""
        text = f"""# written by bench/benchlab.py
kafka:
  brokers: {brokers}
  group: rotor-bench
  partitions: {self.partitions}
  topics: {{ commands: rotor.commands, events: rotor.events, deadletter: rotor.deadletter{kv} }}
  max_message_bytes: 65536
journal: {{ dsn_env: ROTOR_JOURNAL_DSN }}
http: {{ listen: "127.0.0.1:0" }}
log: {{ level: {log_level} }}
daemon: {{ shutdown_timeout: 10s }}
stages: {{ timeout: 60s, max_attempts: 3, backoff: {{ initial: 200ms, max: 2s }} }}
secrets:
"""
        for i, name in enumerate(self.names()):
            text += f"""  - name: {name}
    active: blue
    database: {{ dsn_env: APP_DB_ADMIN_DSN, roles: {{ blue: app_blue_{i}, green: app_green_{i} }},
                probe: "select count(*) from app.users", drain: 0s }}
    store: {{ kind: file, dir: {self.secrets_dir}, names: {{ blue: pg-blue-{i}, green: pg-green-{i} }} }}
    password: {{ length: 32, classes: [upper, lower, digit] }}
    validity: 90d
    deploy: {{ kind: none }}
    approval: {approval}{sched}
"""
        with open(path, "w") as f:
            f.write(text)

    @property
    def env(self):
        env = dict(os.environ)
        env["ROTOR_JOURNAL_DSN"] = self.pg.admin_dsn
        env["APP_DB_ADMIN_DSN"] = self.pg.admin_dsn
        return env

    def start_rotor(self, timeout=90):
        self.rotor = start([ROTOR, "run", "-c", self.config], os.path.join(self.root, "rotor.log"),
                           env=self.env)
        wait_for(lambda: '"kafka.assigned"' in self.rotor.text() or not self.rotor.alive(),
                 timeout, what="rotor to join its consumer group")
        assert self.rotor.alive(), self.rotor.text()[-4000:]
        m = re.search(r'"msg":"http.listening".*?"port":"?(\d+)', self.rotor.text())
        assert m, "no http.listening line in rotor's log"
        self.http_port = int(m.group(1))
        return self.rotor

    @property
    def pid(self):
        return self.rotor.p.pid

    def metrics(self):
        """rotor's /metrics as {'name{labels}': value}."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/metrics",
                                    timeout=10) as r:
            text = r.read().decode()
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                k, _, v = line.rpartition(" ")
                try:
                    out[k] = float(v)
                except ValueError:
                    pass
        return out

    def counter(self, prefix):
        """The sum of every series of the family `prefix` (all label sets)."""
        return sum(v for k, v in self.metrics().items()
                   if k == prefix or k.startswith(prefix + "{"))

    @staticmethod
    def partitioner_args():
        """Keyed messages go where rotor's producer and the Java client put them (murmur2), so that a
        command lands on its secret's owner. kcat's own default (consistent_random, CRC32) puts most
        commands elsewhere, and rotor forwards each through its outbox to the owner's partition:
        twice the messages, each with a journal write (docs/architecture.md, "Who owns a secret").
        BENCH_PARTITIONER=consistent_random measures that path."""
        return ["-X", "partitioner=" + os.environ.get("BENCH_PARTITIONER", "murmur2_random")]

    def kcat_produce(self, path, topic, keyed):
        """Produces every line of path (key<TAB>value when keyed); returns seconds taken."""
        # kcat's defaults: with linger.ms=50 and a larger queue, kcat 1.7 lost a sixth of 10 000
        # messages to the mock broker without a word or an exit status (the consumer count below
        # is how that was seen, and why every run checks the topic's size).
        argv = [KCAT, "-b", self.bootstrap, "-P", "-t", topic, "-l"]
        if keyed:
            argv += ["-K", "\t"] + self.partitioner_args()
        t0 = time.monotonic()
        subprocess.run(argv + [path], check=True, timeout=600)
        return time.monotonic() - t0

    def kcat_producer(self, topic, keyed):
        """A kcat -P that produces every line written to its stdin (key<TAB>value when keyed)."""
        argv = [KCAT, "-b", self.bootstrap, "-P", "-t", topic]
        if keyed:
            argv += ["-K", "\t"] + self.partitioner_args()
        p = subprocess.Popen(argv, stdin=subprocess.PIPE, start_new_session=True)
        note_pid(p.pid)
        return p

    def kcat_consume_count(self, topic, timeout=600):
        """The baseline: kcat's raw consume of the whole topic; (messages, seconds)."""
        t0 = time.monotonic()
        r = subprocess.run(f"{KCAT} -b {self.bootstrap} -C -t {topic} -e -o beginning -q | wc -l",
                           shell=True, check=True, capture_output=True, text=True, timeout=timeout)
        return int(r.stdout.strip()), time.monotonic() - t0

    def stop_rotor(self):
        if self.rotor and self.rotor.alive():
            self.rotor.signal(signal.SIGTERM)
            try:
                self.rotor.wait(30)
            except subprocess.TimeoutExpired:
                self.rotor.kill()

    def close(self):
        try:
            self.stop_rotor()
        finally:
            if self.broker and self.broker.alive():
                self.broker.kill()
            if self.pg:
                self.pg.stop()
            if os.environ.get("ROTOR_KEEP_BENCH"):
                print(f"# kept {self.root}", file=sys.stderr)
            else:
                shutil.rmtree(self.root, ignore_errors=True)


def uptime_load():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def append_result(name, row):
    """Appends one tab-separated row to bench/results/<name>.tsv. A row with columns the file
    does not have yet rewrites it with the union of the columns (old rows get empty cells), so
    that every row of the file stays under its header."""
    d = os.environ.get("BENCH_RESULTS_DIR") or os.path.join(HERE, "results")
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, f"{name}.tsv")
    rows, cols = [], []
    if os.path.exists(path):
        with open(path) as f:
            lines = f.read().splitlines()
        if lines:
            cols = lines[0].split("\t")
            rows = [dict(zip(cols, line.split("\t"))) for line in lines[1:] if line]
    cols += [k for k in row if k not in cols]
    rows.append({k: str(v) for k, v in row.items()})
    with open(path + ".tmp", "w") as f:
        f.write("\t".join(cols) + "\n")
        for r in rows:
            f.write("\t".join(r.get(k, "") for k in cols) + "\n")
    os.replace(path + ".tmp", path)
    return path


def common_fields():
    """Date, host, commit and load: the context every result row carries."""
    if os.environ.get("BENCH_COMMIT"):
        # the binary measured, when it is not the tree's (ROTOR_BIN of another build)
        return {"date": time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime()),
                "commit": os.environ["BENCH_COMMIT"], "cpus": os.cpu_count(),
                "load": uptime_load()}
    try:
        commit = subprocess.run(["git", "-C", SOURCE, "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", SOURCE, "status", "--porcelain", "--",
                                "consumer"], capture_output=True, text=True).stdout.strip()
        commit += "+dirty" if dirty else ""
    except OSError:
        commit = "?"
    return {"date": time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime()), "commit": commit,
            "cpus": os.cpu_count(), "load": uptime_load()}
