"""rotor-sample-app, the blue/green sample application: serves app.users as its slot's role with
the password from its slot's file, reports readiness from the database, follows a password change
written to its file, never shows the password, and stops gracefully on SIGTERM."""
import http.client
import json
import os
import re
import secrets as pysecrets
import signal
import socket
import threading
import time

import pytest

from rotorlab import Proc, check_clean_exit, wait_for

BUILD = os.environ.get("ROTOR_BUILD_DIR",
                       os.path.join(os.path.dirname(__file__), "..", "..", "build"))
APP = os.path.join(BUILD, "rotor-sample-app")


class Apps:
    """The sample application instances of one test, and every password they were ever given."""

    def __init__(self, lab):
        self.lab = lab
        self.procs = []
        self.secrets = [lab.initial_password]

    def dsn(self):
        return f"host=127.0.0.1 port={self.lab.pg.port} dbname=postgres"

    def write_password(self, name, value, newline=False):
        """Replaces the file the way rotor's file store (and the CSI driver) does: rename."""
        self.secrets.append(value)
        path = os.path.join(self.lab.secrets_dir, name)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(value + ("\n" if newline else ""))
        os.chmod(tmp, 0o600)
        os.rename(tmp, path)
        return path

    def start(self, slot, dsn_in_env=False, extra=()):
        assert os.access(APP, os.X_OK), f"{APP} is not built (target rotor-sample-app)"
        argv = [APP, "--listen", "127.0.0.1:0", "--slot", slot, "--role", f"app_{slot}",
                "--password-file", os.path.join(self.lab.secrets_dir, f"pg-{slot}"), *extra]
        env = dict(os.environ)
        env.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=1")
        if dsn_in_env:
            env["SAMPLE_DB_DSN"] = self.dsn()
        else:
            argv += ["--db", self.dsn()]
        p = Proc(argv, os.path.join(self.lab.root, f"sample-{slot}-{len(self.procs)}.log"), env)
        self.procs.append(p)
        line = wait_for(lambda: self._listening(p), 20, what="sample app to listen")
        p.port = int(line["port"])
        return p

    @staticmethod
    def _listening(p):
        assert p.alive() or "app.listening" in p.text(), p.text()
        for line in p.text().splitlines():
            if '"app.listening"' in line:
                return json.loads(line)
        return None

    def get(self, p, path, method="GET"):
        conn = http.client.HTTPConnection("127.0.0.1", p.port, timeout=30)
        try:
            conn.request(method, path)
            r = conn.getresponse()
            body = r.read().decode()
        finally:
            conn.close()
        for s in self.secrets:
            assert s not in body, f"a password appeared in the response to {path}"
        return r.status, {k.lower(): v for k, v in r.getheaders()}, body

    def close(self):
        for p in self.procs:
            if p.alive():
                p.signal(signal.SIGTERM)
                assert p.wait(20) == 0, p.text()[-3000:]
            text = p.text()
            check_clean_exit(p)
            for s in self.secrets:
                assert s not in text, "a password appeared in the sample app's output"
            for line in text.splitlines():
                if line.startswith("{"):
                    json.loads(line)  # every log line is one JSON object


@pytest.fixture
def apps(lab):
    a = Apps(lab)
    yield a
    a.close()


def users_in_db(lab):
    return [{"id": i, "name": n} for i, n in lab.pg.query("SELECT id, name FROM app.users "
                                                          "ORDER BY id")]


def sessions(lab, role):
    return lab.pg.query("SELECT pid FROM pg_stat_activity WHERE usename = %s", (role,))


def test_users_health_and_ready(lab, apps):
    p = apps.start("blue", dsn_in_env=True)
    assert apps.get(p, "/healthz")[0::2] == (200, "ok\n")
    assert apps.get(p, "/readyz")[0::2] == (200, "ok\n")
    status, headers, body = apps.get(p, "/users")
    assert status == 200, body
    assert headers["x-slot"] == "blue" and headers["content-type"] == "application/json"
    assert json.loads(body) == {"slot": "blue", "role": "app_blue", "users": users_in_db(lab)}
    # rows come from the database on each request
    lab.pg.query("INSERT INTO app.users (name) VALUES ('margaret')")
    names = [u["name"] for u in json.loads(apps.get(p, "/users")[2])["users"]]
    assert names == ["ada", "grace", "linus", "margaret"]
    # the rows are read as app_blue, whose sessions the server sees
    assert sessions(lab, "app_blue")
    assert apps.get(p, "/nope")[0] == 404
    assert apps.get(p, "/users", method="POST")[0] == 405
    text = p.text()
    assert re.search(r'"msg":"http.request","slot":"blue","method":"GET","path":"/users",'
                     r'"status":200', text), text


def test_readyz_until_the_role_can_log_in(lab, apps):
    password = pysecrets.token_urlsafe(24)
    apps.write_password("pg-green", password, newline=True)
    p = apps.start("green")  # app_green is NOLOGIN with no password, as a standby role can be
    assert apps.get(p, "/healthz")[0] == 200
    status, _, body = apps.get(p, "/readyz")
    assert status == 503 and "password authentication failed" in body, body
    status, headers, body = apps.get(p, "/users")
    assert status == 503 and headers["x-slot"] == "green", body
    assert "password authentication failed" in json.loads(body)["error"]
    # the password in the file (with its trailing newline) becomes right, the role still NOLOGIN
    lab.pg.query(f"ALTER ROLE app_green PASSWORD '{password}'")
    status, _, body = apps.get(p, "/readyz")
    assert status == 503 and "not permitted to log in" in body, body
    # LOGIN: ready, without a restart
    lab.pg.query("ALTER ROLE app_green LOGIN")
    assert apps.get(p, "/readyz")[0::2] == (200, "ok\n")
    status, headers, body = apps.get(p, "/users")
    assert status == 200 and headers["x-slot"] == "green", body
    assert json.loads(body)["role"] == "app_green"
    assert p.alive()


def test_follows_a_password_change(lab, apps):
    p = apps.start("blue", extra=("--pool-size", "3"))
    # open several pooled connections at once
    results = []
    threads = [threading.Thread(target=lambda: results.append(apps.get(p, "/users")[0]))
               for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [200] * 6
    old_pids = {pid for (pid,) in sessions(lab, "app_blue")}
    assert old_pids

    new = pysecrets.token_urlsafe(24)
    lab.pg.query(f"ALTER ROLE app_blue PASSWORD '{new}'")
    apps.write_password("pg-blue", new, newline=True)
    assert not lab.can_login("app_blue", lab.initial_password)
    lab.pg.query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                 ("app_blue",))
    wait_for(lambda: not sessions(lab, "app_blue"), 10, what="old sessions to end")

    # the very next request succeeds: its broken connection is replaced within the request
    status, _, body = apps.get(p, "/users")
    assert status == 200, body
    assert json.loads(body)["users"] == users_in_db(lab)
    results.clear()
    threads = [threading.Thread(target=lambda: results.append(apps.get(p, "/users")[0]))
               for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [200] * 6
    new_pids = {pid for (pid,) in sessions(lab, "app_blue")}
    assert new_pids and not (new_pids & old_pids)
    assert '"db.connection.broken"' in p.text()


def test_sigterm_finishes_in_flight_requests_and_exits_0(lab, apps):
    p = apps.start("blue")
    assert apps.get(p, "/users")[0] == 200
    # hold a lock so that a /users request is in flight when SIGTERM arrives
    locker = lab.pg.connect()
    cur = locker.cursor()
    cur.execute("LOCK TABLE app.users IN ACCESS EXCLUSIVE MODE")
    answer = {}
    t = threading.Thread(target=lambda: answer.update(r=apps.get(p, "/users")))
    t.start()
    wait_for(lambda: lab.pg.query("SELECT 1 FROM pg_stat_activity WHERE usename = 'app_blue' "
                                  "AND wait_event_type = 'Lock'"), 10, what="request to block")
    p.signal(signal.SIGTERM)

    def refused():
        try:
            socket.create_connection(("127.0.0.1", p.port), timeout=1).close()
        except (ConnectionRefusedError, ConnectionResetError):
            return True
        return False
    wait_for(refused, 10, what="new connections to be refused")
    assert p.alive(), "exited with a request in flight"
    locker.commit()
    locker.close()
    t.join(30)
    status, headers, body = answer["r"]
    assert status == 200 and json.loads(body)["users"] == users_in_db(lab), body
    assert headers.get("connection") == "close"
    assert p.wait(20) == 0
    text = p.text()
    assert '"app.stopping"' in text and '"app.stopped"' in text
    assert "app.drain.timeout" not in text


def test_sigint_exits_0(lab, apps):
    p = apps.start("blue")
    assert apps.get(p, "/healthz")[0] == 200
    t0 = time.time()
    p.signal(signal.SIGINT)
    assert p.wait(20) == 0
    assert time.time() - t0 < 8  # idle: no drain to wait for (its default is 10 s)
    assert '"signal":"SIGINT"' in p.text()


def test_chart_templates_use_only_defined_values():
    """No helm in CI: at least every .Values path the sample-app chart's templates read exists in
    its values.yaml, and the chart mounts each slot's secret where the app looks by default."""
    import yaml
    chart = os.path.join(os.path.dirname(__file__), "..", "..", "charts", "sample-app")
    with open(os.path.join(chart, "values.yaml")) as f:
        values = yaml.safe_load(f)
    tdir = os.path.join(chart, "templates")
    used = set()
    for name in os.listdir(tdir):
        with open(os.path.join(tdir, name)) as f:
            used |= set(re.findall(r"\$?\.Values((?:\.\w+)+)", f.read()))
    assert used
    for path in used:
        node = values
        for key in path.strip(".").split("."):
            assert isinstance(node, dict) and key in node, f".Values{path} is not in values.yaml"
            node = node[key]
    assert values["activeSlot"] in ("blue", "green")
    for slot in ("blue", "green"):
        assert values["slots"][slot]["secretName"] == f"pg-{slot}"
        assert values["slots"][slot]["role"] == f"app_{slot}"
    assert values["keyVault"]["mountPath"] == "/mnt/secrets-store"
    assert values["terminationGracePeriodSeconds"] > (
        values["preStopSleepSeconds"] + values["app"]["drainTimeoutMs"] / 1000)
