"""rotorlab: the end-to-end test bench.

A Lab is a temporary directory holding a real PostgreSQL server (started here, private port and
socket directory), the role pair and a sample table, a file secret store seeded with the active
slot's password, a rotor.yaml, and the rotor processes under test. Kafka is the librdkafka mock
broker: embedded in `rotor run`, or a separate `rotor broker` process when a test must kill -9 the
daemon without losing the broker. Tests talk to it with kcat, as an operator would.
"""

import json
import os
import secrets as pysecrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

import psycopg2

ROTOR = os.environ.get("ROTOR_BIN", "rotor")
SOURCE = os.environ.get("ROTOR_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "..", ".."))
KCAT = shutil.which("kcat") or "/usr/bin/kcat"
PG_INITDB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "support", "pg-initdb")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def pg_bindir():
    base = "/usr/lib/postgresql"
    versions = sorted(os.listdir(base), key=lambda v: int(v.split(".")[0]))
    return os.path.join(base, versions[-1], "bin")


def add_second_secret(lab, name):
    """A second managed secret `name` beside app-db, with its own roles (app2_blue, app2_green)
    and store names (pg2-*), appended to the lab's configuration before a daemon starts."""
    lab.pg.query("CREATE ROLE app2_blue LOGIN PASSWORD %s IN ROLE app_rw", (lab.initial_password,))
    lab.pg.query("CREATE ROLE app2_green NOLOGIN IN ROLE app_rw")
    path = os.path.join(lab.secrets_dir, "pg2-blue")
    with open(path, "w") as f:
        f.write(lab.initial_password)
    os.chmod(path, 0o600)
    with open(lab.config) as f:
        text = f.read()
    block = text[text.index("  - name: app-db"):]
    for a, b in (("name: app-db", "name: " + name), ("app_blue", "app2_blue"),
                 ("app_green", "app2_green"), ("pg-blue", "pg2-blue"), ("pg-green", "pg2-green"),
                 ("pg-current", "pg2-current")):
        block = block.replace(a, b)
    with open(lab.config, "w") as f:
        f.write(text + block)


def wait_for(predicate, timeout=30.0, interval=0.1, what="condition"):
    deadline = time.time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class Postgres:
    """A private PostgreSQL server. The superuser `postgres` is trusted over the socket and on
    127.0.0.1 (the admin identity of the tests); every other role must log in with SCRAM."""

    def __init__(self, root, settings=()):
        self.dir = os.path.join(root, "pg")
        os.makedirs(self.dir)
        self.port = free_port()
        self.log = os.path.join(self.dir, "server.log")
        self._conn, self._lock = None, threading.Lock()
        as_root = os.geteuid() == 0
        self.prefix = ["runuser", "-u", "postgres", "--"] if as_root else []
        if as_root:
            shutil.chown(self.dir, "postgres")
            os.chmod(root, 0o755)
        subprocess.run([PG_INITDB, self.dir + "/data"], check=True, stdout=subprocess.DEVNULL)
        with open(self.dir + "/data/pg_hba.conf", "w") as f:
            f.write("local all postgres trust\nhost all postgres 127.0.0.1/32 trust\n"
                    "local all all scram-sha-256\nhost all all 127.0.0.1/32 scram-sha-256\n")
        opts = [f"-p {self.port}", f"-k {self.dir}", "-c listen_addresses=127.0.0.1",
                "-c fsync=off", "-c password_encryption=scram-sha-256"]
        opts += [f"-c {s}" for s in settings]
        self._run([os.path.join(pg_bindir(), "pg_ctl"), "-D", self.dir + "/data", "-l",
                   self.log, "-w", "-t", "60", "-o", " ".join(opts), "start"])

    def _run(self, argv):
        subprocess.run(self.prefix + argv, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE)

    @property
    def admin_dsn(self):
        return f"host={self.dir} port={self.port} user=postgres dbname=postgres"

    def connect(self, user="postgres", password=None, host=None):
        return psycopg2.connect(host=host or self.dir, port=self.port, user=user,
                                password=password, dbname="postgres", connect_timeout=5)

    def query(self, sql, args=()):
        """Runs one statement as postgres, in autocommit, over one kept connection: the tests
        poll every 0.1 s, and a connection per poll costs the server a backend each time. A
        kept connection the server has since closed (a restart) is replaced, once."""
        with self._lock:
            for fresh in (self._conn is None, True):
                if self._conn is None:
                    self._conn = self.connect()
                    self._conn.autocommit = True
                try:
                    with self._conn.cursor() as cur:
                        cur.execute(sql, args)
                        return cur.fetchall() if cur.description else None
                except (psycopg2.OperationalError, psycopg2.InterfaceError):
                    self._drop()
                    if fresh:
                        raise

    def _drop(self):
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg2.Error:
                pass
            self._conn = None

    def can_login(self, role, password):
        """Logs in over TCP with SCRAM, as an application would."""
        try:
            conn = self.connect(user=role, password=password, host="127.0.0.1")
        except psycopg2.OperationalError:
            return False
        conn.close()
        return True

    def restart(self):
        """A fast restart, as a failover or maintenance would do: every session is cut."""
        self._run([os.path.join(pg_bindir(), "pg_ctl"), "-D", self.dir + "/data", "-m", "fast",
                   "-w", "-t", "60", "restart"])

    def stop(self):
        with self._lock:
            self._drop()
        subprocess.run(self.prefix + [os.path.join(pg_bindir(), "pg_ctl"), "-D",
                                      self.dir + "/data", "-m", "immediate", "stop"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


class Proc:
    """A background process whose output goes to a file."""

    def __init__(self, argv, log, env=None):
        self.log = log
        self.out = open(log, "ab")
        self.p = subprocess.Popen(argv, stdout=self.out, stderr=subprocess.STDOUT, env=env,
                                  start_new_session=True)

    def alive(self):
        return self.p.poll() is None

    def signal(self, sig):
        if self.alive():
            self.p.send_signal(sig)

    def wait(self, timeout=30):
        try:
            return self.p.wait(timeout=timeout)
        finally:
            self.out.close()

    def kill(self):
        if self.alive():
            self.p.kill()
        return self.wait()

    def text(self):
        with open(self.log, "rb") as f:
            return f.read().decode("utf-8", "replace")


DEFAULTS = {
    "approval": "{ mode: auto, soak: 0s }",
    "drain": "0s",
    "stages": "{ timeout: 30s, max_attempts: 3, backoff: { initial: 200ms, max: 2s } }",
    "schedule": None,
    "current": "pg-current",
    "deploy": "{ kind: none }",
    "store": None,          # YAML of secrets[0].store; None = the file store in the lab
    "azure": None,          # YAML of the azure section, or None
    "keyvault_topic": None,  # kafka.topics.keyvault, or None
    "env_extra": None,
    "db_extra": "",
    "probes": None,         # YAML of secrets[0].probes, or None         # more keys of secrets[0].database, e.g. ", entra_token: true"      # more environment for rotor (credentials of the kind under test)
    "probe": "select count(*) from app.users",
    "kafka_props": '{ session.timeout.ms: "6000", heartbeat.interval.ms: "500" }',
}


class Lab:
    def __init__(self, pg_settings=(), separate_broker=False, **options):
        self.root = tempfile.mkdtemp(prefix="rotor-e2e-")
        os.chmod(self.root, 0o755)
        self.opts = dict(DEFAULTS, **options)
        self.pg = Postgres(self.root, pg_settings)
        self.secrets_dir = os.path.join(self.root, "secrets")
        self.bootstrap_file = os.path.join(self.root, "rotor.bootstrap")
        self.config = os.path.join(self.root, "rotor.yaml")
        self.daemons = []
        self.broker = None
        self.brokers = "embedded"
        self._seed_database()
        if separate_broker:
            self.start_broker()
        self.write_config()

    # -- set-up ----------------------------------------------------------------------------

    def _seed_database(self):
        self.initial_password = pysecrets.token_urlsafe(24)
        self.pg.query("CREATE ROLE app_rw NOLOGIN")
        self.pg.query("CREATE ROLE app_blue LOGIN PASSWORD %s IN ROLE app_rw",
                      (self.initial_password,))
        self.pg.query("CREATE ROLE app_green NOLOGIN IN ROLE app_rw")
        self.pg.query("CREATE SCHEMA app")
        self.pg.query("CREATE TABLE app.users (id serial PRIMARY KEY, name text NOT NULL)")
        self.pg.query("INSERT INTO app.users (name) VALUES ('ada'), ('grace'), ('linus')")
        self.pg.query("GRANT USAGE ON SCHEMA app TO app_rw")
        self.pg.query("GRANT SELECT ON app.users TO app_rw")
        # The operator's bootstrap: the active slot's secret exists in the store.
        os.makedirs(self.secrets_dir, mode=0o700)
        with open(os.path.join(self.secrets_dir, "pg-blue"), "w") as f:
            f.write(self.initial_password)
        os.chmod(os.path.join(self.secrets_dir, "pg-blue"), 0o600)

    def write_config(self, **overrides):
        self.opts.update(overrides)
        o = self.opts
        schedule = f"\n    schedule: {o['schedule']}" if o["schedule"] else ""
        schedule += f"\n    probes: {o['probes']}" if o["probes"] else ""
        current = f", current: {o['current']}" if o["current"] else ""
        store = o["store"] or (f"{{ kind: file, dir: {self.secrets_dir},\n"
                               f"             names: {{ blue: pg-blue, green: pg-green{current} }} }}")
        azure = f"azure: {o['azure']}\n" if o["azure"] else ""
        kv_topic = f", keyvault: {o['keyvault_topic']}" if o["keyvault_topic"] else ""
        text = f"""# written by tests/e2e/rotorlab.py
kafka:
  brokers: {self.brokers}
  bootstrap_file: {self.bootstrap_file}
  group: rotor
  topics: {{ commands: rotor.commands, events: rotor.events, deadletter: rotor.deadletter{kv_topic} }}
  max_message_bytes: 65536
  properties: {o['kafka_props']}
journal: {{ dsn_env: ROTOR_JOURNAL_DSN }}
{azure}http: {{ listen: "127.0.0.1:0" }}
log: {{ level: debug }}
daemon: {{ shutdown_timeout: 10s, schedule_interval: 500ms }}
stages: {o['stages']}
secrets:
  - name: app-db
    active: blue
    database: {{ dsn_env: APP_DB_ADMIN_DSN, roles: {{ blue: app_blue, green: app_green }},
                probe: "{o['probe']}", drain: {o['drain']}{o['db_extra']} }}
    store: {store}
    password: {{ length: 32, classes: [upper, lower, digit], exclude: "\\"'\\\\@:/ " }}
    validity: 90d
    deploy: {o['deploy']}
    approval: {o['approval']}{schedule}
"""
        with open(self.config, "w") as f:
            f.write(text)

    @property
    def env(self):
        env = dict(os.environ)
        env["ROTOR_JOURNAL_DSN"] = self.pg.admin_dsn
        env["APP_DB_ADMIN_DSN"] = self.pg.admin_dsn
        env.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=1")
        env.update(self.opts.get("env_extra") or {})
        return env

    # -- processes ---------------------------------------------------------------------------

    def start_broker(self):
        self.broker = Proc([ROTOR, "broker", "--bootstrap-file", self.bootstrap_file],
                           os.path.join(self.root, "broker.log"), env=self.env)
        wait_for(lambda: os.path.exists(self.bootstrap_file), 20, what="rotor broker")
        with open(self.bootstrap_file) as f:
            self.brokers = f.read().strip()

    def start(self, extra_env=None, wait_ready=True):
        env = self.env
        env.update(extra_env or {})
        n = len(self.daemons)
        d = Proc([ROTOR, "run", "-c", self.config], os.path.join(self.root, f"rotor{n}.log"),
                 env=env)
        self.daemons.append(d)
        if wait_ready:
            wait_for(lambda: '"kafka.assigned"' in d.text() or not d.alive(), 60,
                     what="rotor to join its consumer group")
            assert d.alive(), d.text()[-4000:]
        return d

    @property
    def bootstrap(self):
        if self.brokers != "embedded":
            return self.brokers
        wait_for(lambda: os.path.exists(self.bootstrap_file), 20, what="bootstrap file")
        with open(self.bootstrap_file) as f:
            return f.read().strip()

    def cli(self, *args, check=True, timeout=120):
        r = subprocess.run([ROTOR, "-c", self.config, *args], env=self.env, capture_output=True,
                           text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise AssertionError(f"rotor {' '.join(args)} exited {r.returncode}:\n"
                                 f"{r.stdout}\n{r.stderr}")
        return r

    # -- Kafka through kcat --------------------------------------------------------------------

    def produce(self, value, key="app-db", topic="rotor.commands", headers=(), props=()):
        """props: librdkafka properties of kcat's producer, e.g. (("message.max.bytes", "2000000"),)
        to send a message larger than librdkafka's default limit."""
        path = os.path.join(self.root, f"msg-{pysecrets.token_hex(4)}")
        with open(path, "wb") as f:
            f.write(value if isinstance(value, bytes) else value.encode())
        argv = [KCAT, "-b", self.bootstrap, "-P", "-t", topic]
        for name, val in props:
            argv += ["-X", f"{name}={val}"]
        if key is not None:
            argv += ["-k", key]
        for name, val in headers:
            argv += ["-H", f"{name}={val}"]
        subprocess.run(argv + [path], check=True, timeout=30)

    def consume(self, topic="rotor.events"):
        """Every message of topic, from the beginning, as dicts (kcat -J)."""
        r = subprocess.run([KCAT, "-b", self.bootstrap, "-C", "-t", topic, "-o", "beginning",
                            "-e", "-J", "-q"], capture_output=True, timeout=30)
        out = []
        for line in r.stdout.decode("utf-8", "replace").splitlines():
            if line.strip():
                out.append(json.loads(line))
        return out

    def events(self):
        return [json.loads(m["payload"]) for m in self.consume("rotor.events")]

    def wait_event(self, rotation_id, type_, timeout=30):
        """Waits until rotor has published an event of type_ about rotation_id; returns them all."""
        def seen():
            evs = [e for e in self.events() if e["data"].get("rotation_id") == rotation_id]
            return evs if any(e["type"] == type_ for e in evs) else None
        return wait_for(seen, timeout, 0.3, what=f"{type_} of {rotation_id}")

    def request(self, secret="app-db", reason="test", **data):
        ev = {"specversion": "1.0", "id": pysecrets.token_hex(16), "source": "/tests/e2e",
              "type": "rotation.requested", "subject": secret,
              "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "datacontenttype": "application/json",
              "data": dict({"secret": secret, "reason": reason, "requested_by": "pytest",
                            "trigger": "pipeline"}, **data)}
        self.produce(json.dumps(ev), key=secret)
        return ev["id"]

    def command(self, type_, rotation_id, secret="app-db", **data):
        ev = {"specversion": "1.0", "id": pysecrets.token_hex(16), "source": "/tests/e2e",
              "type": type_, "subject": secret,
              "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "data": dict({"rotation_id": rotation_id}, **data)}
        self.produce(json.dumps(ev), key=secret)
        return ev["id"]

    # -- journal and store ---------------------------------------------------------------------

    def rotations(self):
        rows = self.pg.query("SELECT id::text, secret, stage, status, from_slot, to_slot, "
                             "request_id, coalesce(error, '') FROM rotor.rotations "
                             "ORDER BY created_at")
        keys = ["id", "secret", "stage", "status", "from", "to", "request_id", "error"]
        return [dict(zip(keys, r)) for r in rows or []]

    def rotation_for(self, request_id, timeout=30):
        def find():
            try:
                for r in self.rotations():
                    if r["request_id"] == request_id:
                        return r
            except psycopg2.Error:
                return None
            return None
        return wait_for(find, timeout, what=f"rotation for request {request_id}")

    def wait_status(self, rotation_id, statuses, timeout=60):
        statuses = (statuses,) if isinstance(statuses, str) else statuses

        def done():
            for r in self.rotations():
                if r["id"] == rotation_id and r["status"] in statuses:
                    return r
            return None
        return wait_for(done, timeout, what=f"rotation {rotation_id} to be {statuses}")

    def history(self, rotation_id):
        return self.pg.query("SELECT stage, outcome, attempt, coalesce(error, '') FROM "
                             "rotor.history WHERE rotation_id = %s ORDER BY id", (rotation_id,))

    def active_slot(self):
        return self.pg.query("SELECT active_slot FROM rotor.secrets WHERE name = 'app-db'")[0][0]

    def stored(self, name):
        with open(os.path.join(self.secrets_dir, name)) as f:
            return f.read()

    def can_login(self, role, password):
        return self.pg.can_login(role, password)

    def rolcanlogin(self, role):
        return self.pg.query("SELECT rolcanlogin FROM pg_roles WHERE rolname = %s", (role,))[0][0]

    def close(self, check=None):
        """Stops everything; check(proc) runs on each daemon before the directory goes."""
        for d in self.daemons:
            if d.alive():
                d.signal(signal.SIGTERM)
                try:
                    d.wait(20)
                except subprocess.TimeoutExpired:
                    d.kill()
        if self.broker:
            self.broker.kill()
        self.pg.stop()
        try:
            for d in self.daemons:
                if check:
                    check(d)
        finally:
            if not os.environ.get("ROTOR_KEEP_LAB"):
                shutil.rmtree(self.root, ignore_errors=True)


def check_clean_exit(proc):
    """A daemon that stopped on SIGTERM exits 0, and under the sanitizers reports nothing."""
    text = proc.text()
    assert "ERROR: AddressSanitizer" not in text, text[-6000:]
    assert "runtime error:" not in text, text[-6000:]
    assert "LeakSanitizer" not in text, text[-6000:]
