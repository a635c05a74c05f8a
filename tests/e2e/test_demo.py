"""scripts/demo.sh, run as a newcomer would (minus package set-up and build): two rotations under
load through nginx that end on blue with no failed request, the retired roles refused, everything
it started stopped and removed (also when interrupted), and no password in its output."""
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time

import pytest

SOURCE = os.path.abspath(os.environ.get("ROTOR_SOURCE_DIR",
                                        os.path.join(os.path.dirname(__file__), "..", "..")))
DEMO = os.path.join(SOURCE, "scripts", "demo.sh")
ROTOR = os.path.abspath(os.environ.get("ROTOR_BIN", os.path.join(SOURCE, "build", "rotor")))


@pytest.fixture
def parent():
    # Searchable by the postgres user, which runs the server when the tests run as root.
    root = tempfile.mkdtemp(prefix="rotor-demo-")
    os.chmod(root, 0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def run_demo(work, *args, timeout=600):
    env = dict(os.environ, ROTOR_BIN=ROTOR, ROTOR_DEMO_DIR=work,
               PATH=os.path.dirname(ROTOR) + os.pathsep + os.environ.get("PATH", ""))
    r = subprocess.run(["bash", DEMO, "--no-setup", *args], env=env, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, timeout=timeout)  # 2 rotations: about 45 s on an idle machine
    return r.returncode, r.stdout.decode("utf-8", "replace")


def processes_mentioning(text):
    """Pids of live processes whose command line contains text (the demo's work dir)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        if text in cmdline:
            found.append((int(pid), cmdline))
    return found


def summary_value(out, label):
    m = re.search(r"^" + re.escape(label) + r"\s+(.*)$", out, re.M)
    assert m, f"no '{label}' line in the summary:\n{out[-3000:]}"
    return m.group(1)


def passwords_in(store, private):
    """Every password the run made: current files, every version, pg-current, and the copies the
    demo kept of retired passwords."""
    found = set()
    for base, _, files in os.walk(store):
        for name in files:
            with open(os.path.join(base, name)) as f:
                text = f.read()
            if name == "pg-current":
                found.add(json.loads(text)["password"])
            elif name.endswith(".json"):
                found.add(json.loads(text)["value"])
            else:
                found.add(text)
    for name in os.listdir(private):
        with open(os.path.join(private, name)) as f:
            found.add(f.read())
    return {p for p in found if p}


def test_demo_rotates_twice_and_cleans_up(parent):
    work = os.path.join(parent, "work")
    rc, out = run_demo(work)
    assert rc == 0, out[-6000:]

    rows = re.findall(r"^\s*(\d)\s*\|\s*[0-9a-f-]{36}\s*\|\s*(\w+) -> (\w+)\s*\|\s*(\S+)\s*\|", out,
                      re.M)
    assert rows == [("1", "blue", "green", "completed"), ("2", "green", "blue", "completed")], out
    # every stage of both rotations has a duration
    for stage in ("prepare", "generate", "set-db", "deploy", "verify", "swap", "approve", "retire"):
        assert re.search(r"^\s*" + stage + r"\s*\|\s*\d+\s*\|\s*\d+\s*$", out, re.M), (stage, out)
    assert summary_value(out, "final active slot / role:") == "blue / app_blue"
    assert "app_blue reads 3 rows" in summary_value(out, "store password logs in:")
    assert summary_value(out, "nginx production serves:").startswith("blue ")
    sent = re.fullmatch(r"(\d+) sent, \1 ok, 0 failed in \d+ s",
                        summary_value(out, "requests through nginx:"))
    assert sent and int(sent.group(1)) > 0, out
    assert summary_value(out, "failed requests by cause:") == "none"
    slots = summary_value(out, "slots that answered:")
    assert slots.startswith("blue (") and "green (" in slots and slots.endswith(")"), slots
    assert 'role "app_blue" is not permitted to log in' in summary_value(
        out, "retired app_blue (after 1):")
    assert 'role "app_green" is not permitted to log in' in summary_value(
        out, "retired app_green (after 2):")
    events = re.fullmatch(r"(\d+) \(journal outbox: (\d+)\)",
                          summary_value(out, "events on rotor.events:"))
    assert events and int(events.group(1)) > 0 and events.group(1) == events.group(2), out
    assert summary_value(out, "dead letters:") == "0"

    assert not os.path.exists(work), os.listdir(work)
    assert processes_mentioning(work) == []


def test_demo_keeps_its_dir_on_request_and_never_prints_a_password(parent):
    work = os.path.join(parent, "work")
    rc, out = run_demo(work, "--keep", "--soak", "1s", "--settle", "1")
    assert rc == 0, out[-6000:]
    # --keep keeps the files, not the servers
    assert processes_mentioning(work) == []
    store = os.path.join(work, "secrets")
    assert f"store dir: {store}" in out
    passwords = passwords_in(store, os.path.join(work, "private"))
    # the first blue, the green of rotation 1 and the blue of rotation 2
    assert len(passwords) >= 3, len(passwords)
    with open(os.path.join(work, "rotor.log")) as f:
        log = f.read()
    # the apps read the passwords, and must not print them either
    for slot in ("blue", "green"):
        with open(os.path.join(work, "apps", f"{slot}.log")) as f:
            log += f.read()
    # Indices only: an assertion message must not print the password it found.
    in_output = [i for i, pw in enumerate(passwords) if pw in out]
    in_log = [i for i, pw in enumerate(passwords) if pw in log]
    assert not in_output, "a password appears in the demo's output"
    assert not in_log, "a password appears in rotor's log"


def test_demo_refuses_a_non_empty_work_dir(parent):
    work = os.path.join(parent, "work")
    os.makedirs(work)
    with open(os.path.join(work, "precious"), "w") as f:
        f.write("operator's file")
    rc, out = run_demo(work)
    assert rc != 0
    assert "not empty" in out
    assert os.listdir(work) == ["precious"]


def test_demo_interrupted_mid_rotation_stops_everything(parent):
    work = os.path.join(parent, "work")
    env = dict(os.environ, ROTOR_BIN=ROTOR, ROTOR_DEMO_DIR=work)
    with open(os.path.join(parent, "out"), "wb") as out:
        p = subprocess.Popen(["bash", DEMO, "--no-setup"], env=env, stdout=out,
                             stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + 120
            # Interrupted during the first rotation: nginx, an app, rotor and the load all run.
            while time.time() < deadline and p.poll() is None:
                with open(os.path.join(parent, "out")) as f:
                    if re.search(r"^\S+\s+deploy\s+completed", f.read(), re.M):
                        break
                time.sleep(0.1)
            assert p.poll() is None, "the demo ended before it could be interrupted"
            running = processes_mentioning(work)
            assert any("nginx" in cmd for _, cmd in running), running
            p.send_signal(signal.SIGINT)
            rc = p.wait(timeout=60)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
    with open(os.path.join(parent, "out")) as f:
        text = f.read()
    assert rc == 130, text[-3000:]
    assert "interrupted; everything it started is stopped" in text
    assert processes_mentioning(work) == []
    assert not os.path.exists(work)
