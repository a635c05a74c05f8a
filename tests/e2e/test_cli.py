"""test_cli: the rotor command line without a running daemon: help and usage errors, exit codes,
`rotor check` against a private PostgreSQL and the embedded broker, config errors that name the
key, and the commands that read the journal (rows written here by hand, as the daemon would)."""

import json
import os
import re
import signal
import subprocess
import tempfile
import time
import uuid

import pytest

from pgtmp import pgtmp
from schemas import validate_event

ROTOR = os.environ.get("ROTOR_BIN", "rotor")
SOURCE = os.environ.get("ROTOR_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "..", ".."))

# Every subcommand and words its --help must mention (its arguments and options).
HELP = {
    "run": ["rotor run"],
    "request": ["SECRET", "--reason", "--wait", "--timeout", "5 timed out"],
    "approve": ["ID", "--by", "--comment", "--wait", "3 rolled back"],
    "reject": ["ID", "--by", "--reason", "--wait"],
    "retry": ["ID", "--by", "--wait"],
    "abort": ["ID", "--by", "--reason", "--wait", "4 aborted"],
    "status": ["SECRET", "ID", "--json"],
    "watch": ["ID", "--timeout", "2 failed"],
    "check": ["ok", "FAIL"],
    "broker": ["--bootstrap-file"],
    "version": ["rotor version"],
    "help": ["COMMAND"],
}


def rotor(*args, env=None, timeout=60):
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([ROTOR, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, env=e, timeout=timeout)


# ---- journal schema: the daemon's own migrations, read from journal.c ----

def _c_array(source, name):
    """The string elements of `const char *const NAME[] = {...};` (adjacent literals joined)."""
    m = re.search(r"\b%s\[\]\s*=\s*\{(.*?)\n\};" % re.escape(name), source, re.S)
    assert m, "no %s in journal.c" % name
    body = re.sub(r"/\*.*?\*/", "", m.group(1), flags=re.S)
    items, cur = [], None
    for tok in re.finditer(r'"((?:[^"\\]|\\.)*)"|,', body):
        if tok.group(0) == ",":
            if cur is not None:
                items.append(cur)
            cur = None
        else:
            text = tok.group(1).encode().decode("unicode_escape")
            cur = (cur or "") + text
    if cur is not None:
        items.append(cur)
    return items


def create_journal_schema(pg):
    """Applies the journal's bootstrap and migrations as `rotor run` would (the CLI never does)."""
    with open(os.path.join(SOURCE, "consumer", "journal.c")) as f:
        src = f.read()
    conn = pg.connect(autocommit=False)
    with conn.cursor() as cur:
        for stmt in _c_array(src, "bootstrap_sql"):
            if stmt.strip() != "BEGIN":
                cur.execute(stmt)
        for i, body in enumerate(_c_array(src, "journal_migrations"), 1):
            cur.execute("SELECT rotor.apply_migration(%s, %s)", (body, i))
    conn.commit()
    conn.close()


# ---- fixtures ----

@pytest.fixture(scope="module")
def pg():
    with pgtmp() as server:
        server.execute("CREATE ROLE app_blue LOGIN PASSWORD 'blue-pw'")
        server.execute("CREATE ROLE app_green NOLOGIN")
        server.execute("CREATE DATABASE journal")
        server.execute("CREATE DATABASE nojournal")
        create_journal_schema(Journal(server))
        yield server


class Journal:
    """The `journal` database of the server (the CLI's journal in these tests)."""

    def __init__(self, pg):
        self.pg = pg
        self.dsn = pg.dsn_for("postgres", dbname="journal")

    def connect(self, autocommit=True):
        return self.pg.connect(self.dsn, autocommit)

    def execute(self, sql, params=None):
        conn = self.connect()
        with conn.cursor() as cur:
            cur.execute(sql, params)
            rows = cur.fetchall() if cur.description else None
        conn.close()
        return rows


@pytest.fixture
def journal(pg):
    j = Journal(pg)
    yield j
    # Each test starts from an empty journal; history is append-only by trigger, so bypass it.
    conn = j.connect()
    with conn.cursor() as cur:
        cur.execute("SET session_replication_role = replica")
        cur.execute("DELETE FROM rotor.history; DELETE FROM rotor.rotations; DELETE FROM rotor.secrets")
    conn.close()


@pytest.fixture
def workdir():
    with tempfile.TemporaryDirectory(prefix="rotor-cli.") as d:
        os.makedirs(os.path.join(d, "secrets"))
        yield d


def write_config(workdir, extra_secret="", name="rotor.yaml", brokers="embedded"):
    path = os.path.join(workdir, name)
    with open(path, "w") as f:
        f.write(f"""\
kafka:
  brokers: {brokers}
  bootstrap_file: {workdir}/var/rotor.bootstrap
journal:
  dsn_env: ROTOR_TEST_JOURNAL_DSN
secrets:
  - name: app-db
    database:
      dsn_env: ROTOR_TEST_ADMIN_DSN
      roles: {{ blue: app_blue, green: app_green }}
    store:
      dir: {workdir}/secrets
      names: {{ blue: pg-blue, green: pg-green }}
{extra_secret}""")
    return path


def env_for(pg, journal_db="journal"):
    return {"ROTOR_TEST_JOURNAL_DSN": pg.dsn_for("postgres", dbname=journal_db),
            "ROTOR_TEST_ADMIN_DSN": pg.dsn}


@pytest.fixture
def broker(workdir):
    """`rotor broker` in the background; yields the bootstrap address."""
    bootstrap_file = os.path.join(workdir, "var", "rotor.bootstrap")
    proc = subprocess.Popen([ROTOR, "-c", os.path.join(workdir, "absent.yaml"), "broker",
                             "--bootstrap-file", bootstrap_file],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 30
    while not os.path.exists(bootstrap_file):
        assert proc.poll() is None, "rotor broker exited: " + proc.stderr.read()
        assert time.time() < deadline, "rotor broker wrote no bootstrap file"
        time.sleep(0.05)
    with open(bootstrap_file) as f:
        address = f.read().strip()
    yield address
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert not os.path.exists(bootstrap_file), "the broker left its bootstrap file behind"
    assert address in out, "the bootstrap address was not logged"


def consume(bootstrap, topic="rotor.commands"):
    """Every message of topic, as kcat -J reports them."""
    r = subprocess.run(["kcat", "-C", "-b", bootstrap, "-t", topic, "-o", "beginning", "-e", "-J",
                        "-q"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines() if line.strip()]


def insert_rotation(journal, status="waiting", stage="approve", history=()):
    rid = str(uuid.uuid4())
    journal.execute("INSERT INTO rotor.secrets (name, active_slot) VALUES ('app-db', 'blue')"
                    " ON CONFLICT DO NOTHING")
    journal.execute("INSERT INTO rotor.rotations (id, secret, stage, status, from_slot, to_slot,"
                    " trigger, request_id) VALUES (%s, 'app-db', %s, %s, 'blue', 'green', 'manual',"
                    " 'req-1')", (rid, stage, status))
    for stage_name, outcome, attempt, duration, error in history:
        add_history(journal, rid, stage_name, outcome, attempt, duration, error)
    return rid


def add_history(journal, rid, stage, outcome, attempt=1, duration=None, error=None):
    journal.execute("INSERT INTO rotor.history (rotation_id, stage, outcome, attempt, duration_ms,"
                    " error) VALUES (%s, %s, %s, %s, %s, %s)",
                    (rid, stage, outcome, attempt, duration, error))


# ---- help and usage ----

@pytest.mark.parametrize("cmd", sorted(HELP))
def test_every_command_has_help(cmd):
    r = rotor(cmd, "--help")
    assert r.returncode == 0, r.stderr
    for word in HELP[cmd]:
        assert word in r.stdout, f"`rotor {cmd} --help` does not mention {word}"
    assert rotor("help", cmd).stdout == r.stdout


def test_top_level_help_lists_every_command():
    for argv in (["--help"], ["help"], ["-h"]):
        r = rotor(*argv)
        assert r.returncode == 0
        for cmd in HELP:
            assert re.search(r"^\s+%s\s" % cmd, r.stdout, re.M), f"{cmd} missing from {argv}"


def test_unknown_command_exits_1():
    r = rotor("frobnicate")
    assert r.returncode == 1
    assert 'unknown command "frobnicate"' in r.stderr
    assert "Usage: rotor" in r.stderr and r.stdout == ""
    assert rotor().returncode == 1
    assert rotor("help", "frobnicate").returncode == 1


@pytest.mark.parametrize("argv, message", [
    (["request"], "expected exactly one SECRET"),
    (["request", "a", "b"], "expected exactly one SECRET"),
    (["request", "app-db", "--timeout", "soon"], "--timeout"),
    (["request", "app-db", "--until", "lunch"], "--until expects a stage"),
    (["approve", "x", "--timeout", "soon"], "--timeout"),
    (["abort", "x", "--until", "lunch"], "--until expects a stage"),
    (["approve"], "expected exactly one rotation ID"),
    (["retry", "x", "--comment", "c"], "unrecognized option"),
    (["status", "--bogus"], "unrecognized option"),
    (["status", "a", "b"], "at most one"),
    (["watch"], "expected exactly one rotation ID"),
    (["check", "extra"], "takes no arguments"),
    (["version", "extra"], "Usage: rotor version"),
    (["-c"], "needs a FILE"),
])
def test_bad_arguments_exit_1_with_usage(argv, message):
    r = rotor(*argv)
    assert r.returncode == 1
    assert message in r.stderr
    assert "Usage: rotor" in r.stderr


def test_version():
    r = rotor("version")
    assert r.returncode == 0
    assert re.fullmatch(r"rotor \d+\.\d+\.\d+\n", r.stdout)


# ---- configuration errors ----

def test_config_option_before_or_after_the_command(workdir):
    missing = os.path.join(workdir, "nope.yaml")
    for argv in (["-c", missing, "status"], ["status", "--config", missing],
                 ["status", f"--config={missing}"]):
        r = rotor(*argv)
        assert r.returncode == 1
        assert missing in r.stderr, argv


def test_default_config_is_rotor_yaml_in_the_working_directory(workdir):
    r = subprocess.run([ROTOR, "status"], cwd=workdir, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True)
    assert r.returncode == 1
    assert "rotor.yaml" in r.stderr


@pytest.mark.parametrize("extra, key", [
    ("    password: { length: x }\n", "secrets[0].password.length"),
    ("    validity: soon\n", "secrets[0].validity"),
    ("    colour: blue\n", "secrets[0].colour"),
])
def test_config_errors_name_the_key(workdir, extra, key):
    path = write_config(workdir, extra)
    r = rotor("-c", path, "check")
    assert r.returncode == 1
    assert re.search(r"^FAIL\s+config: .*%s" % re.escape(key), r.stdout, re.M), r.stdout
    r = rotor("-c", path, "status")
    assert r.returncode == 1
    assert key in r.stderr


# ---- check ----

def test_check_all_ok(pg, journal, workdir, broker):
    path = write_config(workdir)
    r = rotor("-c", path, "check", env=env_for(pg))
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert re.search(r"^ok\s+journal: connected, schema version [1-9]", out, re.M), out
    assert re.search(r"^ok\s+secret app-db: database: connected", out, re.M), out
    assert re.search(r"^ok\s+secret app-db: blue role app_blue exists", out, re.M), out
    assert re.search(r"^ok\s+secret app-db: green role app_green exists", out, re.M), out
    assert re.search(r"^ok\s+secret app-db: store dir .* is writable", out, re.M), out
    assert re.search(r"^ok\s+kafka: 1 broker\(s\) at " + re.escape(broker), out, re.M), out
    for topic in ("rotor.commands", "rotor.events", "rotor.deadletter"):
        assert re.search(r"^ok\s+kafka: topic %s exists" % re.escape(topic), out, re.M), out
    assert "FAIL" not in out


def test_check_reports_each_failure(pg, journal, workdir):
    """No broker, a missing role, a missing store dir, an unset DSN variable: one FAIL each."""
    extra = ("  - name: other-db\n    database:\n      dsn_env: ROTOR_TEST_ADMIN_DSN\n"
             "      roles: { blue: other_blue, green: app_green }\n"
             f"    store:\n      dir: {workdir}/missing\n"
             "      names: { blue: o-blue, green: o-green }\n")
    path = write_config(workdir, extra)
    r = rotor("-c", path, "check", env=env_for(pg))
    assert r.returncode == 1
    out = r.stdout
    assert re.search(r"^ok\s+journal", out, re.M), out
    assert re.search(r"^FAIL\s+secret other-db: blue role other_blue does not exist", out, re.M), out
    assert re.search(r"^FAIL\s+secret other-db: store\.dir .*/missing: the directory does not "
                     r"exist", out, re.M), out
    assert re.search(r"^FAIL\s+kafka: the embedded broker is not running \(no .*rotor.bootstrap\);"
                     r" start `rotor run` first", out, re.M), out
    assert re.search(r"^ok\s+secret app-db: blue role app_blue exists", out, re.M), out

    env = env_for(pg)
    del env["ROTOR_TEST_JOURNAL_DSN"]
    r = rotor("-c", path, "check", env=env)
    assert r.returncode == 1
    assert re.search(r"^FAIL\s+journal: .*ROTOR_TEST_JOURNAL_DSN.*not set", r.stdout, re.M), r.stdout


def test_check_before_the_first_run(pg, workdir, broker):
    path = write_config(workdir)
    r = rotor("-c", path, "check", env=env_for(pg, "nojournal"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.search(r"^ok\s+journal: connected, no rotor schema yet", r.stdout, re.M)


def test_check_kafka_with_a_dead_broker_list(pg, journal, workdir):
    path = write_config(workdir, brokers=f"127.0.0.1:{_closed_port()}")
    start = time.time()
    r = rotor("-c", path, "check", env=env_for(pg), timeout=30)
    assert r.returncode == 1
    assert re.search(r"^FAIL\s+kafka: no metadata from 127\.0\.0\.1:\d+ within 5s", r.stdout, re.M)
    assert time.time() - start < 20


def _closed_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- commands that need the journal ----

def test_commands_say_the_journal_has_no_schema(pg, workdir):
    path = write_config(workdir)
    for argv in (["approve", str(uuid.uuid4())], ["status"], ["watch", str(uuid.uuid4())]):
        r = rotor("-c", path, *argv, env=env_for(pg, "nojournal"))
        assert r.returncode == 1, argv
        assert "the journal has no rotor schema yet: start `rotor run` once" in r.stderr, argv


def test_journal_connection_error(pg, workdir):
    path = write_config(workdir)
    r = rotor("-c", path, "status", env=env_for(pg, "no_such_db"))
    assert r.returncode == 1
    assert "cannot connect to the journal" in r.stderr and "no_such_db" in r.stderr


def test_unknown_rotation(pg, journal, workdir):
    path = write_config(workdir)
    for cmd in ("approve", "reject", "retry", "abort", "watch", "status"):
        rid = str(uuid.uuid4())
        r = rotor("-c", path, cmd, rid, env=env_for(pg))
        assert r.returncode == 1, cmd
        assert f"unknown rotation {rid}" in r.stderr, cmd
    r = rotor("-c", path, "approve", "not-a-uuid", env=env_for(pg))
    assert r.returncode == 1 and "not a rotation id" in r.stderr


def test_request_unknown_secret(workdir):
    path = write_config(workdir)
    r = rotor("-c", path, "request", "no-such-secret")
    assert r.returncode == 1
    assert '"no-such-secret" is not a secret configured in' in r.stderr


def test_request_without_broker(workdir):
    path = write_config(workdir)
    r = rotor("-c", path, "request", "app-db")
    assert r.returncode == 1
    assert "the embedded broker is not running" in r.stderr


def test_status_on_an_empty_journal(pg, journal, workdir):
    path = write_config(workdir)
    r = rotor("-c", path, "status", env=env_for(pg))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split()[:3] == ["SECRET", "ACTIVE", "ROLE"]
    assert lines[1].split() == ["app-db", "blue", "app_blue", "-", "-", "-", "never"]
    r = rotor("-c", path, "status", "--json", env=env_for(pg))
    doc = json.loads(r.stdout)
    assert doc["secrets"] == [{"name": "app-db", "known": False, "active_slot": "blue",
                               "active_role": "app_blue", "rotation": None, "last_rotated": None}]
    r = rotor("-c", path, "status", "app-db", env=env_for(pg))
    assert r.returncode == 0 and "app-db has no rotation yet" in r.stdout
    r = rotor("-c", path, "status", "nobody", env=env_for(pg))
    assert r.returncode == 1 and "neither a configured secret nor a rotation id" in r.stderr


def test_status_reads_the_journal(pg, journal, workdir):
    path = write_config(workdir)
    journal.execute("INSERT INTO rotor.secrets (name, active_slot, last_rotated)"
                    " VALUES ('app-db', 'green', '2026-01-02T03:04:05Z')")
    rid = insert_rotation(journal, "running", "set-db",
                          [("prepare", "started", 1, None, None),
                           ("prepare", "completed", 1, 12, None),
                           ("set-db", "failed", 1, 40, "connection refused")])
    r = rotor("-c", path, "status", env=env_for(pg))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[1].split() == [
        "app-db", "green", "app_green", rid, "set-db", "running", "2026-01-02T03:04:05.000Z"]

    doc = json.loads(rotor("-c", path, "status", rid, "--json", env=env_for(pg)).stdout)
    assert doc["rotation"]["id"] == rid and doc["rotation"]["status"] == "running"
    assert [(h["stage"], h["outcome"], h["duration_ms"]) for h in doc["history"]] == [
        ("prepare", "started", None), ("prepare", "completed", 12), ("set-db", "failed", 40)]
    assert doc["history"][2]["error"] == "connection refused"

    by_secret = json.loads(rotor("-c", path, "status", "app-db", "--json", env=env_for(pg)).stdout)
    assert by_secret == doc

    text = rotor("-c", path, "status", rid, env=env_for(pg)).stdout
    assert re.search(r"^status\s+running$", text, re.M)
    assert re.search(r"set-db\s+failed\s+#1\s+40ms\s+error: connection refused", text)


def test_decisions_are_checked_against_the_state(pg, journal, workdir):
    path = write_config(workdir)
    running = insert_rotation(journal, "running", "deploy")
    for cmd, why in (("approve", "it is not waiting for approval"),
                     ("reject", "it is not waiting for approval"),
                     ("retry", "only a failed rotation can be retried")):
        r = rotor("-c", path, cmd, running, env=env_for(pg))
        assert r.returncode == 1, cmd
        assert f"rotation {running} is running at stage deploy: {why}" in r.stderr
    journal.execute("UPDATE rotor.rotations SET status = 'completed', stage = 'retire'")
    r = rotor("-c", path, "abort", running, env=env_for(pg))
    assert r.returncode == 1 and "it has already ended" in r.stderr
    # --gate names the gate meant: refused when the rotation waits at the other one
    swapped = insert_rotation(journal, "waiting", "approve")
    journal.execute("UPDATE rotor.rotations SET swapped = true WHERE id = %s", (swapped,))
    for cmd in ("approve", "reject"):
        r = rotor("-c", path, cmd, swapped, "--gate", "swap", env=env_for(pg))
        assert r.returncode == 1, cmd
        assert f"rotation {swapped} is waiting at stage approve: it waits at gate retire, " \
               "not swap" in r.stderr, r.stderr
    r = rotor("-c", path, "approve", swapped, "--gate", "sideways", env=env_for(pg))
    assert r.returncode != 0 and "--gate must be swap or retire" in r.stderr, r.stderr
    r = rotor("-c", path, "retry", swapped, "--gate", "swap", env=env_for(pg))
    assert r.returncode != 0, "retry takes no --gate"


def test_request_and_decisions_publish_valid_commands(pg, journal, workdir, broker):
    path = write_config(workdir)
    r = rotor("-c", path, "request", "app-db", "--reason", "quarterly", env=env_for(pg))
    assert r.returncode == 0, r.stderr
    request_id = r.stdout.strip()
    waiting = insert_rotation(journal, "waiting", "approve")
    r = rotor("-c", path, "approve", waiting, "--by", "alice", "--comment", "looks good",
              env=env_for(pg))
    assert r.returncode == 0, r.stderr
    journal.execute("UPDATE rotor.rotations SET status = 'failed', stage = 'verify'")
    r = rotor("retry", waiting, "-c", path, env=env_for(pg))
    assert r.returncode == 0, r.stderr
    r = rotor("-c", path, "abort", waiting, "--reason", "enough", env=env_for(pg))
    assert r.returncode == 0, r.stderr

    msgs = consume(broker)
    events = [json.loads(m["payload"]) for m in msgs]
    for ev in events:
        validate_event(ev)
    assert [m["key"] for m in msgs] == ["app-db"] * 4
    assert [e["type"] for e in events] == ["rotation.requested", "rotation.approved",
                                           "rotation.retry", "rotation.abort"]
    req = events[0]
    assert req["id"] == request_id and req["subject"] == "app-db"
    assert req["data"]["secret"] == "app-db" and req["data"]["trigger"] == "manual"
    assert req["data"]["reason"] == "quarterly" and req["data"]["requested_by"]
    # the approval names the gate the rotation waits at (not swapped yet: swap)
    assert events[1]["data"] == {"rotation_id": waiting, "gate": "swap", "by": "alice",
                                 "comment": "looks good"}
    assert events[2]["data"]["rotation_id"] == waiting
    assert events[3]["data"]["reason"] == "enough"


def test_request_wait_times_out_when_no_daemon_answers(pg, journal, workdir, broker):
    path = write_config(workdir)
    start = time.time()
    r = rotor("-c", path, "request", "app-db", "--wait", "--timeout", "1s", env=env_for(pg))
    assert r.returncode == 5, r.stderr
    assert "timed out waiting for request" in r.stderr
    assert time.time() - start < 15


@pytest.mark.parametrize("final, code", [("completed", 0), ("failed", 2), ("rolled-back", 3),
                                         ("aborted", 4)])
def test_watch_follows_until_the_end(pg, journal, workdir, final, code):
    path = write_config(workdir)
    rid = insert_rotation(journal, "running", "prepare", [("prepare", "started", 1, None, None)])
    proc = subprocess.Popen([ROTOR, "-c", path, "watch", rid, "--timeout", "30s"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **env_for(pg)})
    time.sleep(0.5)
    assert proc.poll() is None, "watch ended while the rotation was running"
    add_history(journal, rid, "prepare", "completed", 1, 25)
    journal.execute("UPDATE rotor.rotations SET status = %s, seq = seq + 1", (final,))
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == code, err
    lines = out.splitlines()
    assert len(lines) == 2, out
    assert re.search(r"prepare\s+started\s+#1", lines[0])
    assert re.search(r"prepare\s+completed\s+#1\s+25ms", lines[1])


def test_watch_timeout_and_retry_wait(pg, journal, workdir, broker):
    path = write_config(workdir)
    rid = insert_rotation(journal, "failed", "verify")
    r = rotor("-c", path, "watch", rid, env=env_for(pg))
    assert r.returncode == 2, "watching a failed rotation reports the failure"
    # retry --wait must not stop at the failure it was sent for.
    r = rotor("-c", path, "retry", rid, "--wait", "--timeout", "1s", env=env_for(pg))
    assert r.returncode == 5, r.stdout + r.stderr
    journal.execute("UPDATE rotor.rotations SET status = 'running'")
    r = rotor("-c", path, "watch", rid, "--timeout", "500ms", env=env_for(pg))
    assert r.returncode == 5 and "timed out waiting for rotation" in r.stderr


def test_watch_live_view_on_a_terminal(pg, journal, workdir):
    import pty

    path = write_config(workdir)
    rid = insert_rotation(journal, "running", "prepare", [("prepare", "started", 1, None, None)])
    master, slave = pty.openpty()
    proc = subprocess.Popen([ROTOR, "-c", path, "watch", rid, "--timeout", "30s"], stdout=slave,
                            stderr=subprocess.PIPE, env={**os.environ, **env_for(pg)})
    os.close(slave)
    out = b""
    deadline = time.time() + 30
    while b"retire" not in out:  # the first full drawing, before anything changes
        assert time.time() < deadline, out
        out += os.read(master, 4096)
    add_history(journal, rid, "prepare", "completed", 1, 25)
    add_history(journal, rid, "generate", "failed", 1, 10, "store unreachable")
    journal.execute("UPDATE rotor.rotations SET status = 'failed', stage = 'generate', seq = 2")
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    assert proc.wait(timeout=30) == 2
    screen = out.decode()
    assert "\x1b[9A" in screen, "the view was not redrawn in place"
    last = screen.rsplit("\x1b[9A", 1)[1]
    assert re.search(r"prepare\s+\+ done in 25ms", last)
    assert re.search(r"generate\s+x failed: store unreachable", last)
    assert re.search(r"retire\s+pending", last)
    assert "failed at generate" in last
