"""SIGTERM: rotor stops consuming, lets in-flight work reach a journaled point, flushes the
producer, closes the consumer and exits 0 within its bound; the next start resumes."""
import json
import signal
import time


def test_sigterm_mid_rotation_then_resume(make_lab):
    # a long drain keeps retire in flight when SIGTERM arrives
    lab = make_lab(separate_broker=True, drain="3s",
                   kafka_props='{ session.timeout.ms: "4000", heartbeat.interval.ms: "500" }')
    d = lab.start()
    rid = lab.rotation_for(lab.request())["id"]
    # wait until retire is running (its drain is under way)
    from rotorlab import wait_for
    wait_for(lambda: any(r["id"] == rid and r["stage"] == "retire" and r["status"] == "running"
                         for r in lab.rotations()), 60, 0.1, what="retire running")
    t0 = time.time()
    d.signal(signal.SIGTERM)
    rc = d.wait(30)
    took = time.time() - t0
    # the daemon bounds itself: past shutdown_timeout (10s) + 2s it logs rotor.shutdown_timeout
    # and exits 1. The wall-clock bound adds margin for a loaded machine's process exit.
    assert rc == 0, d.text()[-3000:]
    text = d.text()
    assert '"rotor.shutdown_timeout"' not in text
    assert took < 20, f"shutdown took {took:.1f}s"
    assert '"rotor.stopping"' in text and '"rotor.stopped"' in text
    # the rotation is parked or finished, never lost
    row = [r for r in lab.rotations() if r["id"] == rid][0]
    assert row["status"] in ("running", "pending", "completed"), row
    d2 = lab.start()
    assert lab.wait_status(rid, ("completed", "failed"), 60)["status"] == "completed"
    assert not lab.rolcanlogin("app_blue")
    assert json.loads(lab.stored("pg-current"))["role"] == "app_green"
    assert d2.alive()


def test_sigint_when_idle_exits_quickly(lab):
    d = lab.start()
    t0 = time.time()
    d.signal(signal.SIGINT)
    assert d.wait(20) == 0
    assert time.time() - t0 < 12
    assert '"rotor.shutdown_timeout"' not in d.text()
