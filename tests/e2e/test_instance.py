"""An instance's identity in the journal (application_name "rotor/<instance>") is its own even for
a long pod name: PostgreSQL keeps 63 bytes of it, so two pods of one Deployment whose names
differ only at the end must not become one instance (both relays publishing the same rows,
fencing unable to tell them apart)."""
import re

from rotorlab import wait_for

BASE = "rotor-credential-rotation-controller-prod-westeurope2-7d9f8b6c5d-"


def started_instance(d):
    m = re.search(r'"msg":"rotor.started".*?"instance":"([^"]*)"', d.text())
    return m.group(1) if m else None


def test_long_instance_names_stay_distinct(lab):
    names = [BASE + "x2x9z", BASE + "q8k4m"]
    assert all(len(n) == 70 for n in names)
    daemons = [lab.start(extra_env={"ROTOR_INSTANCE": n}) for n in names]
    instances = [wait_for(lambda d=d: started_instance(d), 30, what="rotor.started")
                 for d in daemons]
    assert instances[0] != instances[1], instances
    sessions = wait_for(lambda: (lambda r: r if len(r) >= 2 else None)(lab.pg.query(
        "SELECT DISTINCT application_name FROM pg_stat_activity "
        "WHERE application_name LIKE 'rotor/%%'")), 20, 0.5, what="two journal sessions")
    assert sorted(a for (a,) in sessions) == sorted("rotor/" + i for i in instances)
    assert all(len(a.encode()) <= 63 for (a,) in sessions)
    assert all(d.alive() for d in daemons)
