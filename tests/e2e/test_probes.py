"""Probes: verify probes the standby endpoint, production probes run after the swap and through
the auto approval's soak; a failing verify probe fails the rotation before anything production
uses changes, a failing production probe rolls back. The endpoints are a scriptable HTTP server."""
import json
import os
import subprocess
import time
import urllib.request

import pytest

from rotorlab import SOURCE, wait_for

SERVER = os.path.join(SOURCE, "tests", "support", "probe_server.py")


@pytest.fixture
def web(tmp_path):
    port_file = tmp_path / "port"
    p = subprocess.Popen(["/usr/bin/python3", SERVER, "--port-file", str(port_file),
                          "--watch-stdin"], stdin=subprocess.PIPE)
    wait_for(lambda: port_file.exists() and port_file.read_text().strip(), 10,
             what="probe server")
    base = f"http://127.0.0.1:{port_file.read_text().strip()}"

    class Web:
        url = base

        def script(self, path, responses):
            req = urllib.request.Request(base + "/_script", json.dumps(
                {"path": path, "responses": responses}).encode(), method="POST")
            urllib.request.urlopen(req, timeout=5).read()

        def hits(self, path):
            recs = json.loads(urllib.request.urlopen(base + "/_requests", timeout=5).read())
            return [r for r in recs if r.get("path", "").split("?")[0] == path]
    yield Web()
    p.stdin.close()
    p.wait(10)


def probes(web, interval="100ms"):
    return (f'{{ verify: [{{ url: "{web.url}/echo/standby", interval: {interval}, '
            f'timeout: 1s }}], production: [{{ url: "{web.url}/echo/prod", successes: 2, '
            f'interval: {interval}, timeout: 1s }}] }}')


def test_probes_pass_and_are_used(make_lab, web):
    lab = make_lab(probes=probes(web))
    lab.start()
    rid = lab.rotation_for(lab.request())["id"]
    assert lab.wait_status(rid, ("completed", "failed", "rolled-back"))["status"] == "completed"
    assert len(web.hits("/echo/standby")) >= 1
    assert len(web.hits("/echo/prod")) >= 2


def test_failing_verify_probe_changes_nothing(make_lab, web):
    web.script("/echo/standby", [{"status": 503, "body": "starting"}] * 50)
    lab = make_lab(probes=probes(web), stages="{ timeout: 30s, max_attempts: 1, "
                                              "backoff: { initial: 100ms, max: 200ms } }")
    lab.start()
    rid = lab.rotation_for(lab.request())["id"]
    row = lab.wait_status(rid, ("failed", "completed"), 60)
    assert row["status"] == "failed" and row["stage"] == "verify"
    assert "got 503" in row["error"], row["error"]
    assert not os.path.exists(os.path.join(lab.secrets_dir, "pg-current"))
    assert lab.active_slot() == "blue" and lab.rolcanlogin("app_blue")
    assert web.hits("/echo/prod") == []


def test_failing_production_probe_after_swap_rolls_back(make_lab, web):
    web.script("/echo/prod", [{"status": 502, "body": "bad gateway"}] * 50)
    lab = make_lab(probes=probes(web))
    old = lab.stored("pg-blue")
    lab.start()
    rid = lab.rotation_for(lab.request())["id"]
    row = lab.wait_status(rid, ("rolled-back", "failed", "completed"), 60)
    assert row["status"] == "rolled-back", lab.history(rid)
    assert "after the swap" in row["error"] and "got 502" in row["error"]
    assert json.loads(lab.stored("pg-current")) == {"role": "app_blue", "password": old}
    assert not lab.rolcanlogin("app_green") and lab.can_login("app_blue", old)
    events = lab.wait_event(rid, "rotation.rolled-back")
    assert any(e["type"] == "stage.failed" and e["data"]["stage"] == "swap" and
               e["data"]["final"] for e in events)
    hist = [(s, o) for s, o, _, _ in lab.history(rid)]
    assert ("swap", "probe-failed") in hist and ("rollback", "completed") in hist


def test_failing_production_probe_during_soak_rolls_back(make_lab, web):
    # the soak must outlast noticing it, scripting the failure and six failing tries
    lab = make_lab(probes=probes(web), approval="{ mode: auto, soak: 15s }")
    lab.start()
    rid = lab.rotation_for(lab.request())["id"]
    wait_for(lambda: any(r["id"] == rid and r["status"] == "waiting" for r in lab.rotations()),
             60, 0.1, what="the soak")
    time.sleep(0.5)
    web.script("/echo/prod", [{"status": 500, "body": "boom"}] * 100)
    row = lab.wait_status(rid, ("rolled-back", "completed", "failed"), 60)
    assert row["status"] == "rolled-back", lab.history(rid)
    assert "during the soak" in row["error"]
    assert lab.active_slot() == "blue"
    assert json.loads(lab.stored("pg-current"))["role"] == "app_blue"
    hist = [(s, o) for s, o, _, _ in lab.history(rid)]
    assert ("approve", "probe-failed") in hist
