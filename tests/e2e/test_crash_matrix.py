"""kill -9 at every begin, effect and done point of every stage, rollback and abort included (see
crashlab.py's MATRIX): every rotation ends as it would have without the crashes, with one store
version, one ALTER ROLE ... PASSWORD in PostgreSQL's log and every stage event.

A chain costs 20-60 s (a daemon start and a session timeout per point). scripts/reliability.sh
runs every chain (ROTOR_RELIABILITY=1); otherwise a sample runs: the rollback chain (a decision's
write and every rollback point) in the normal build, the abort chain under the sanitizers
(test_crash_early.py and test_crash_late.py run the early and late chains in both)."""
import os

import pytest

from crashlab import MATRIX, crash_matrix_chain

FULL = os.environ.get("ROTOR_RELIABILITY") == "1"
SANITIZE = os.environ.get("ROTOR_SANITIZE", "").upper() in ("ON", "1", "TRUE", "YES")
if FULL:
    CHAINS = [c for c in MATRIX if c not in ("early", "late")]
elif SANITIZE:
    CHAINS = ["abort"]
else:
    CHAINS = ["rollback"]


@pytest.mark.parametrize("chain", CHAINS)
def test_kill_9_at_every_point_of_the_chain(make_lab, chain):
    figures = crash_matrix_chain(make_lab, chain)
    print("crashmatrix", figures)
