"""PostgreSQL restarts under a running daemon (a failover, a maintenance restart): rotor
reconnects to the journal by itself and the next rotation completes; a rotation in flight when
the connection drops completes too."""
from rotorlab import wait_for


def test_journal_reconnects_after_a_postgres_restart(make_lab):
    lab = make_lab(drain="2s")
    d = lab.start()
    first = lab.rotation_for(lab.request(reason="before the restart"))["id"]
    # cut the connection while the rotation is in flight (retire drains for 2s)
    wait_for(lambda: any(r["id"] == first and r["stage"] == "retire" for r in lab.rotations()),
             60, 0.1, what="retire")
    lab.pg.restart()
    assert lab.wait_status(first, ("completed", "failed"), 90)["status"] == "completed"
    wait_for(lambda: '"journal.reconnected"' in d.text(), 30, what="the reconnect log line")
    second = lab.rotation_for(lab.request(reason="after the restart"), timeout=60)["id"]
    assert lab.wait_status(second, ("completed", "failed"), 90)["status"] == "completed"
    assert lab.active_slot() == "blue"
    assert d.alive()
