"""kill -9 at every point of deploy, verify, swap, approve and retire (see crashlab.py)."""
from crashlab import crash_chain_then_complete


def test_kill_9_late_stages_then_complete(make_lab):
    crash_chain_then_complete(make_lab, "late")
