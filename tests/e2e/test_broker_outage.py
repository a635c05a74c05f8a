"""Broker outage: the Kafka broker goes down for 30 s in the middle of a rotation (`rotor broker`
takes its mock broker down on SIGUSR1 and up on SIGUSR2: every connection closed, new ones refused,
topics and offsets kept). The rotation goes on (its state is in PostgreSQL, not Kafka), its events
wait in the journal's outbox, and once the broker is back every one of them arrives; the daemon
neither exits nor wedges: an approval sent after the outage, through Kafka, is applied.

ROTOR_OUTAGE_SECONDS sets the outage (30 s by default, see outagelab.py)."""
import signal
import time

from outagelab import assert_nothing_lost, outage_seconds
from rotorlab import wait_for

OUTAGE = outage_seconds()


def test_rotation_completes_through_a_broker_outage(make_lab):
    # A manual approval: after the outage, the approval is a command that must come through
    # Kafka, which shows that the consumer came back too.
    lab = make_lab(separate_broker=True, approval="{ mode: manual, gate: retire }")
    d = lab.start()
    rid = lab.rotation_for(lab.request(reason="broker outage"))["id"]
    # down as soon as the rotation starts: its stages run and queue their events in the outage
    lab.broker.signal(signal.SIGUSR1)
    wait_for(lambda: '"kafka.broker.down"' in lab.broker.text(), 10, what="the broker down")
    down_at = time.time()
    assert lab.wait_status(rid, "waiting", 60)["stage"] == "approve"  # all the way in the outage
    time.sleep(max(0.0, down_at + OUTAGE - time.time()))
    unsent = lab.pg.query("SELECT count(*) FROM rotor.outbox WHERE sent_at IS NULL")[0][0]
    assert unsent > 0  # the stages' events waited for the broker
    assert d.alive(), d.text()[-4000:]
    lab.broker.signal(signal.SIGUSR2)
    wait_for(lambda: '"kafka.broker.up"' in lab.broker.text(), 10, what="the broker up")
    up_at = time.time()
    lab.wait_event(rid, "rotation.awaiting-approval", timeout=90)
    published = time.time() - up_at
    lab.cli("approve", rid, "--by", "alice")
    assert lab.wait_status(rid, ("completed", "failed"), 120)["status"] == "completed", \
        lab.history(rid)
    assert_nothing_lost(lab, rid)
    # the request, perhaps delivered again after the outage (its offset commit may have failed),
    # started one rotation
    assert len(lab.rotations()) == 1, lab.rotations()
    print(f"OUTAGE broker down {up_at - down_at:.1f}s, queued events on the topic "
          f"{published:.1f}s after it came back, {unsent} events waited in the outbox")
    assert d.alive(), d.text()[-4000:]
