"""A secret's own schedule turns into rotation requests, claimed once in the journal, so that
several replicas never start the same scheduled rotation twice."""
import json

from rotorlab import wait_for


def test_every_schedule_rotates_by_itself(make_lab):
    lab = make_lab(schedule="{ every: 3s }")
    lab.start()
    # first_seen + 3s: a scheduled rotation starts without any request
    rows = wait_for(lambda: (lambda r: r if r and r[0]["status"] == "completed" else None)(
        lab.rotations()), 60, 0.3, what="a scheduled rotation to complete")
    first = rows[0]
    trig = lab.pg.query("SELECT trigger FROM rotor.rotations WHERE id = %s", (first["id"],))
    assert trig[0][0] == "schedule"
    # the next one is due 3s after the first completed; it rotates back to blue
    rows = wait_for(lambda: (lambda r: r if len(r) >= 2 and r[1]["status"] == "completed"
                             else None)(lab.rotations()), 60, 0.3, what="a second one")
    assert (rows[1]["from"], rows[1]["to"]) == ("green", "blue")
    claims = lab.pg.query("SELECT secret, count(*) FROM rotor.schedule_claims GROUP BY secret")
    assert claims[0][1] >= 2


def test_two_replicas_claim_each_due_slot_once(make_lab):
    lab = make_lab(schedule="{ every: 2s }", separate_broker=True,
                   kafka_props='{ session.timeout.ms: "4000", heartbeat.interval.ms: "500" }')
    lab.start(extra_env={"ROTOR_INSTANCE": "replica-a"})
    lab.start(extra_env={"ROTOR_INSTANCE": "replica-b"}, wait_ready=False)
    wait_for(lambda: len([r for r in lab.rotations() if r["status"] == "completed"]) >= 3, 90,
             0.5, what="three scheduled rotations")
    # one claim per due time, and one request (one rotation) per claim
    dups = lab.pg.query("SELECT due, count(*) FROM rotor.schedule_claims GROUP BY secret, due "
                        "HAVING count(*) > 1")
    assert dups == []
    # a claim and its request's outbox row are one statement; the relay publishes the request
    # after it, so read the claims first and wait for their requests. A later claim may have
    # come meanwhile (every 2s): each request is then one claim's, never two for one due time.
    claims = lab.pg.query("SELECT count(*) FROM rotor.schedule_claims")[0][0]
    requests = wait_for(lambda: (lambda r: r if len(r) >= claims else None)(
        lab.consume("rotor.commands")), 30, 0.3, what="a request for each claim")
    # by event id: delivery is at least once, and a re-sent request is the same event
    dues = {e["id"]: e["data"]["due"] for e in (json.loads(m["payload"]) for m in requests)}
    assert len(set(dues.values())) == len(dues), dues
    claims = lab.pg.query("SELECT count(*) FROM rotor.schedule_claims")[0][0]
    assert len(dues) <= claims
    rows = lab.rotations()
    assert len(rows) <= claims
    assert all(r["status"] in ("completed", "pending", "running", "waiting") for r in rows)
