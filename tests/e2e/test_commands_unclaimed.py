"""A decision for a secret whose partition is assigned to this process but not claimed in the
journal yet (the claim fails while rotor.owners refuses writes) waits for the claim: it is
neither dead-lettered nor lost, and the rotation goes on once the claim is made."""
import signal
import time


def test_decision_waits_for_the_claim(make_lab):
    lab = make_lab(separate_broker=True, approval="{ mode: manual, gate: swap }")
    d = lab.start()
    rid = lab.rotation_for(lab.request())["id"]
    lab.wait_status(rid, "waiting", 60)
    d.signal(signal.SIGTERM)
    d.wait(30)
    # Claims fail from here on, as on a journal blip at the moment of the claim.
    lab.pg.query("CREATE FUNCTION deny() RETURNS trigger AS $$BEGIN RAISE EXCEPTION "
                 "'claims down'; END$$ LANGUAGE plpgsql")
    lab.pg.query("CREATE TRIGGER deny BEFORE INSERT OR UPDATE ON rotor.owners "
                 "FOR EACH ROW EXECUTE FUNCTION deny()")
    approval = lab.command("rotation.approved", rid)
    d2 = lab.start()
    time.sleep(4)  # the approval arrives and is retried meanwhile
    lab.pg.query("DROP TRIGGER deny ON rotor.owners")
    row = lab.wait_status(rid, ("completed", "failed", "aborted", "rolled-back"), 60)
    assert row["status"] == "completed", lab.history(rid)
    assert not lab.consume("rotor.deadletter")
    assert d2.text().count('"command.not_owner"') == 1, "logged once per message"
