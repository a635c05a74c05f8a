"""Every kind of bad input ends in the dead-letter topic with its original bytes and a reason;
its offset is committed (a restart does not see it again) and the daemon keeps running."""
import json
import secrets
import time

from rotorlab import wait_for


def envelope(type_="rotation.requested", data=None, subject="app-db", **extra):
    ev = {"specversion": "1.0", "id": secrets.token_hex(8), "source": "/tests/e2e",
          "type": type_, "subject": subject, "time": "2026-11-28T20:00:00Z",
          "data": data if data is not None else {"secret": subject}}
    ev.update(extra)
    return json.dumps(ev)


BAD = [
    ("not json", b"{this is not json", "not valid JSON"),
    ("binary garbage", b"\xff\xfe\x00\x01rotor", "not valid JSON"),
    ("unknown type", envelope("rotation.explode"), "unknown event type"),
    ("schema: missing data.secret", envelope(data={"reason": "x"}), "secret"),
    ("schema: bad specversion", envelope(specversion="0.3"), "specversion"),
    ("unknown secret", envelope(data={"secret": "billing-db"}, subject="billing-db"),
     "unknown secret"),
    ("over the size limit",
     envelope(data={"secret": "app-db", "reason": "x" * 70000}), "exceeds"),
    ("unknown rotation", envelope("rotation.approved",
                                  {"rotation_id": "00000000-0000-4000-8000-000000000000"}),
     "unknown rotation"),
]


def dlq_messages(lab):
    out = []
    for m in lab.consume("rotor.deadletter"):
        h = m.get("headers") or []
        out.append((m["payload"], dict(zip(h[::2], h[1::2])), m["key"]))
    return out


def test_bad_inputs_are_dead_lettered_and_committed(make_lab):
    lab = make_lab(separate_broker=True)
    d = lab.start()
    keys = []
    for name, value, _ in BAD:
        key = "billing-db" if b"billing-db" in (value if isinstance(value, bytes)
                                                 else value.encode()) else "app-db"
        keys.append(key)
        lab.produce(value, key=key)
    got = wait_for(lambda: (lambda m: m if len(m) >= len(BAD) else None)(dlq_messages(lab)),
                   60, 0.5, what="all bad inputs in the dead-letter topic")
    assert len(got) == len(BAD)
    # in order (one partition per key; app-db's in order), each with its reason
    by_reason = {}
    for payload, headers, key in got:
        assert headers["rotor-dlq-topic"] == "rotor.commands"
        assert int(headers["rotor-dlq-offset"]) >= 0
        # A dead letter is cut to the producer's limit (the lab's kafka.max_message_bytes, 64 KiB)
        # and says so; only the input over that limit is.
        if "rotor-truncated" in headers:
            assert "exceeds" in headers["rotor-dlq-reason"], headers
            assert int(headers["rotor-truncated"]) > len(payload) > 60000
        by_reason.setdefault(headers["rotor-dlq-reason"], []).append(
            (payload, key, int(headers.get("rotor-truncated", len(payload)))))
    for name, value, expect in BAD:
        original = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
        hits = [r for r, items in by_reason.items() if expect in r and
                any(original.startswith(p) and n == len(original) for p, _, n in items)]
        assert hits, f"{name}: no dead letter with reason containing {expect!r}: {list(by_reason)}"
    assert d.alive(), "the daemon keeps running"

    # offsets were committed: a restart does not dead-letter them again
    d.signal(15)
    assert d.wait(30) == 0
    d2 = lab.start()
    rid = lab.rotation_for(lab.request())["id"]
    assert lab.wait_status(rid, ("completed", "failed"))["status"] == "completed"
    time.sleep(1)
    assert len(dlq_messages(lab)) == len(BAD), "bad inputs were handled again after restart"
    assert d2.alive()


def test_key_must_match_subject(lab):
    lab.start()
    lab.produce(envelope(), key="other-key")
    got = wait_for(lambda: dlq_messages(lab), 30, 0.5, what="dead letter")
    assert "does not match" in got[0][1]["rotor-dlq-reason"]


def test_binary_mode_and_traceparent(lab):
    lab.start()
    trace = "00-" + secrets.token_hex(16) + "-" + secrets.token_hex(8) + "-01"
    eid = secrets.token_hex(8)
    lab.produce(json.dumps({"secret": "app-db", "reason": "binary mode"}), key="app-db",
                headers=[("ce_specversion", "1.0"), ("ce_id", eid), ("ce_source", "/tests"),
                         ("ce_type", "rotation.requested"), ("ce_subject", "app-db"),
                         ("content-type", "application/json"), ("traceparent", trace)])
    rot = lab.rotation_for(eid)
    assert lab.wait_status(rot["id"], ("completed", "failed"))["status"] == "completed"
    events = lab.wait_event(rot["id"], "rotation.completed")
    assert events and all(e.get("traceparent") == trace for e in events)


def test_dead_letter_keeps_its_reason_and_fits_whatever_the_input(lab):
    """An input with more short-named headers than the relay sends (jsonb orders them first) and
    one whose key and headers alone pass the producer's limit: both dead letters are delivered,
    rotor's headers first, the key replaced by its SHA-256, input headers dropped from the end."""
    import hashlib
    lab.start()
    lab.produce("not json", key="app-db", headers=[("h%02d" % i, "v") for i in range(70)])
    big_key = "k" * 40000
    lab.produce("not json either " + "x" * 30000, key=big_key,
                headers=[("big%02d" % i, "y" * 1000) for i in range(70)])
    got = wait_for(lambda: (lambda m: m if len(m) >= 2 else None)(dlq_messages(lab)),
                   30, 0.5, what="both dead letters")
    by_key = {key: (payload, headers) for payload, headers, key in got}
    payload, headers = by_key["app-db"]
    assert payload == "not json"
    assert "not valid JSON" in headers["rotor-dlq-reason"]
    assert headers["rotor-dlq-topic"] == "rotor.commands"
    assert "rotor-dlq-partition" in headers and "rotor-dlq-offset" in headers
    assert int(headers["rotor-headers-dropped"]) == 70 - 64
    payload, headers = by_key[hashlib.sha256(big_key.encode()).hexdigest()]
    assert "not valid JSON" in headers["rotor-dlq-reason"]
    assert headers["rotor-key-truncated"] == "40000"
    assert int(headers["rotor-headers-dropped"]) > 70 - 64
    assert int(headers["rotor-truncated"]) == len("not json either ") + 30000
    assert payload.startswith("not json either ")
    assert lab.pg.query("SELECT count(*) FROM rotor.outbox WHERE parked_at IS NOT NULL") == [(0,)]
