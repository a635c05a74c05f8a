"""kill -9 at every point of prepare, generate and set-db (see crashlab.py)."""
from crashlab import crash_chain_then_complete


def test_kill_9_early_stages_then_complete(make_lab):
    crash_chain_then_complete(make_lab, "early")
