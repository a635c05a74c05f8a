"""Fixtures of the end-to-end suite: a Lab per test, closed (and its daemons checked for
sanitizer reports) afterwards."""
import pytest

from rotorlab import Lab, check_clean_exit


@pytest.fixture
def make_lab():
    labs = []

    def make(**kwargs):
        lab = Lab(**kwargs)
        labs.append(lab)
        return lab

    yield make
    for lab in labs:
        lab.close(check=check_clean_exit)


@pytest.fixture
def lab(make_lab):
    return make_lab()
