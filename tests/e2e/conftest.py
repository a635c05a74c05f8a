"""Fixtures of the end-to-end suite: a Lab per test, closed (and its daemons checked for
sanitizer reports) afterwards."""
import pytest

import json

from rotorlab import Lab, check_clean_exit
from schemas import validate_event

pytest_plugins = ["ci_skips"]


@pytest.fixture
def make_lab():
    labs = []

    def make(**kwargs):
        lab = Lab(**kwargs)
        labs.append(lab)
        return lab

    yield make
    for lab in labs:
        try:
            # Every event rotor emitted during the test is valid under its schema.
            if any(d.alive() for d in lab.daemons) or lab.broker:
                for m in lab.consume("rotor.events"):
                    validate_event(json.loads(m["payload"]))
        finally:
            lab.close(check=check_clean_exit)


@pytest.fixture
def lab(make_lab):
    return make_lab()
