"""Rows another instance left unsent in the outbox (a pod replaced under a new name) are adopted
after a minute and published: no event and no dead letter is lost with a replaced pod."""
import json
import secrets

from rotorlab import wait_for


def test_rows_of_a_vanished_instance_are_published(lab):
    lab.start()
    ev = {"specversion": "1.0", "id": secrets.token_hex(8), "source": "/rotor/gone-pod",
          "type": "rotation.aborted", "subject": "app-db",
          "time": "2026-11-28T20:00:00Z", "datacontenttype": "application/json",
          "data": {"rotation_id": "3f0c9a52-7d1e-4b8a-9c61-2e5f8d4b7a10", "secret": "app-db",
                   "stage": "deploy", "by": "ops"}}
    lab.pg.query("INSERT INTO rotor.outbox (topic, key, value, headers, owner, created_at) "
                 "VALUES ('rotor.events', 'app-db', convert_to(%s, 'UTF8'), '{}', "
                 "'rotor/gone-pod', now() - interval '2 minutes')", (json.dumps(ev),))
    got = wait_for(lambda: [m for m in lab.consume("rotor.events")
                            if json.loads(m["payload"])["id"] == ev["id"]], 40, 1,
                   what="the abandoned row to be published")
    assert got
    row = lab.pg.query("SELECT owner, sent_at IS NOT NULL FROM rotor.outbox "
                       "WHERE convert_from(value, 'UTF8')::jsonb->>'id' = %s", (ev["id"],))
    assert row[0][1] is True and row[0][0] != "rotor/gone-pod"
