"""Zero downtime: scripts/demo.sh with short timings, a steady load through a real nginx during two
rotations (blue -> green -> blue, exec deploy driver): no request fails, production moves from blue
to green and back as the responses show, and the retired roles cannot log in."""
import json
import os
import re
import shutil
import tempfile

import pytest

from test_demo import processes_mentioning, run_demo, summary_value

RATE = 50


@pytest.fixture
def work():
    root = tempfile.mkdtemp(prefix="rotor-zd-")
    os.chmod(root, 0o755)  # searchable by the postgres user when the tests run as root
    yield os.path.join(root, "work")
    shutil.rmtree(root, ignore_errors=True)


def major_slots(runs, least=5):
    """The slots that answered, in order, without the few answers that interleave while nginx's
    old and new workers both accept during a reload."""
    out = []
    for slot, count, _, _ in runs:
        if count >= least and (not out or out[-1] != slot):
            out.append(slot)
    return out


def test_two_rotations_under_load_fail_no_request(work):
    rc, out = run_demo(work, "--keep", "--rate", str(RATE), "--soak", "1s", "--drain", "1s",
                       "--settle", "2")
    assert rc == 0, out[-6000:]
    # --keep keeps the files, not the servers: nginx, both apps, rotor, the load are gone
    assert processes_mentioning(work) == []

    with open(os.path.join(work, "load.json")) as f:
        load = json.load(f)
    assert load["done"], load
    assert load["failed"] == 0, (load["errors"], load["failures"])
    assert load["sent"] >= 400, load  # several hundred requests, all of them 2xx
    assert load["ok"] == load["sent"]
    assert load["elapsed"] * RATE * 0.5 <= load["sent"], load  # the rate held all along

    runs = load["runs"]
    assert major_slots(runs) == ["blue", "green", "blue"], runs
    # the load ran before the first swap and after the second, not only in between
    assert runs[0][0] == "blue" and runs[0][1] >= RATE, runs
    assert runs[-1][0] == "blue" and runs[-1][1] >= RATE, runs
    assert load["by_slot"].get("green", 0) >= RATE, load["by_slot"]

    rows = re.findall(r"^\s*(\d)\s*\|\s*[0-9a-f-]{36}\s*\|\s*(\w+) -> (\w+)\s*\|\s*(\S+)\s*\|", out,
                      re.M)
    assert rows == [("1", "blue", "green", "completed"), ("2", "green", "blue", "completed")], out
    assert summary_value(out, "final active slot / role:") == "blue / app_blue"
    assert summary_value(out, "nginx production serves:").startswith("blue ")
    assert re.fullmatch(r"(\d+) sent, \1 ok, 0 failed in \d+ s",
                        summary_value(out, "requests through nginx:")), out
    assert 'role "app_blue" is not permitted to log in' in summary_value(
        out, "retired app_blue (after 1):")
    assert 'role "app_green" is not permitted to log in' in summary_value(
        out, "retired app_green (after 2):")

    # The exec hooks did the blue/green work: green started by deploy and stopped by retire,
    # blue stopped by retire and started again by the second deploy.
    def app_log(slot):
        with open(os.path.join(work, "apps", f"{slot}.log")) as f:
            return [json.loads(line)["msg"] for line in f if line.startswith("{")]
    assert app_log("blue").count("app.listening") == 2, app_log("blue")
    assert app_log("green").count("app.listening") == 1, app_log("green")
    assert app_log("green").count("app.stopped") == 1, app_log("green")
    with open(os.path.join(work, "rotor.log")) as f:
        actions = [json.loads(line).get("action") for line in f
                   if '"deploy.exec.started"' in line]
    assert actions == ["deploy", "swap", "retire"] * 2, actions
