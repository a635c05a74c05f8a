"""Soak: consecutive rotations under the demo's load through a real nginx, where the load keeps
its connections alive as browsers do (scripts/demo.sh --keepalive): no request fails, every
rotation completes, and the requests retried once because nginx closed a reused connection (RFC
9112 9.3.1 allows it; nginx's graceful reload closes idle kept-alive connections) are counted.

ROTOR_SOAK_ROTATIONS sets the number of rotations: 5 by default (CI's sample; 3 in the sanitizer
build), 100 in scripts/reliability-outages.sh, whose figures are in docs/reliability.md."""
import json
import os
import shutil
import tempfile

import pytest

from test_demo import processes_mentioning, run_demo, summary_value

SANITIZE = os.environ.get("ROTOR_SANITIZE", "").upper() in ("ON", "1", "TRUE")
ROTATIONS = int(os.environ.get("ROTOR_SOAK_ROTATIONS", "3" if SANITIZE else "5"))
RATE = 50


@pytest.fixture
def work():
    root = tempfile.mkdtemp(prefix="rotor-soak-")
    os.chmod(root, 0o755)  # searchable by the postgres user when the tests run as root
    yield os.path.join(root, "work")
    shutil.rmtree(root, ignore_errors=True)


def test_rotations_under_kept_alive_load_fail_no_request(work):
    rc, out = run_demo(work, "--keep", "--keepalive", "--rotations", str(ROTATIONS), "--rate",
                       str(RATE), "--soak", "1s", "--drain", "1s", "--settle", "2",
                       timeout=300 + 60 * ROTATIONS)
    assert rc == 0, out[-6000:]
    assert processes_mentioning(work) == []
    with open(os.path.join(work, "load.json")) as f:
        load = json.load(f)
    # The figures, for the soak's record (pytest -s shows them; the script greps this line).
    print(f"SOAK rotations={ROTATIONS} sent={load['sent']} ok={load['ok']} "
          f"failed={load['failed']} retries={load['retries']} "
          f"connections={load['connections']} elapsed={load['elapsed']:.0f}s "
          f"retried_by={json.dumps(load['retried_by'])}")
    assert load["done"], load
    assert load["failed"] == 0, (load["errors"], load["failures"])
    assert load["ok"] == load["sent"] >= ROTATIONS * RATE, load
    # Kept alive: far fewer connections than requests (each worker reopens only when nginx closed
    # its connection, at most a few times per reload).
    assert load["connections"] < load["sent"] / 5, load
    assert summary_value(out, "rotations completed:").startswith(f"{ROTATIONS} of {ROTATIONS}")
    expected = "blue" if ROTATIONS % 2 == 0 else "green"
    assert summary_value(out, "final active slot / role:") == f"{expected} / app_{expected}"
