"""Two consecutive rotations on the embedded default, driven by Kafka commands sent with kcat:
blue -> green -> blue, checked in PostgreSQL, the store, the journal and the events."""
import json
import os

from schemas import validate_event

STAGES = ["prepare", "generate", "set-db", "deploy", "verify", "swap", "approve", "retire"]


def rotate(lab, expect_from, expect_to):
    request_id = lab.request(reason=f"{expect_from} to {expect_to}")
    rot = lab.rotation_for(request_id)
    assert (rot["from"], rot["to"]) == (expect_from, expect_to)
    done = lab.wait_status(rot["id"], ("completed", "failed"), timeout=60)
    assert done["status"] == "completed", (done, lab.history(rot["id"]))
    return rot["id"]


def test_two_rotations_blue_green_blue(lab):
    lab.start()
    old_blue = lab.stored("pg-blue")
    assert lab.can_login("app_blue", old_blue)
    assert not lab.rolcanlogin("app_green")

    first = rotate(lab, "blue", "green")
    green_pw = lab.stored("pg-green")
    assert len(green_pw) == 32
    assert lab.can_login("app_green", green_pw)
    assert lab.rolcanlogin("app_green")
    assert not lab.rolcanlogin("app_blue"), "retire must take LOGIN from the old role"
    assert not lab.can_login("app_blue", old_blue)
    assert lab.active_slot() == "green"
    current = json.loads(lab.stored("pg-current"))
    assert current == {"role": "app_green", "password": green_pw}
    # retire disabled the old version: the operator's hand-made blue file had none tracked, so
    # it stays; generate never touched it.
    assert os.stat(os.path.join(lab.secrets_dir, "pg-green")).st_mode & 0o777 == 0o600

    second = rotate(lab, "green", "blue")
    blue_pw = lab.stored("pg-blue")
    assert blue_pw != old_blue
    assert lab.can_login("app_blue", blue_pw)
    assert not lab.rolcanlogin("app_green")
    assert not lab.can_login("app_green", green_pw)
    assert lab.active_slot() == "blue"
    assert json.loads(lab.stored("pg-current"))["role"] == "app_blue"
    # the green version written by the first rotation was disabled at the second retire
    assert not os.path.exists(os.path.join(lab.secrets_dir, "pg-green"))

    # VALID UNTIL follows the validity (90d)
    days = lab.pg.query("SELECT extract(day from rolvaliduntil - now()) FROM pg_roles "
                        "WHERE rolname = 'app_blue'")[0][0]
    assert 88 <= days <= 90

    # Every stage of both rotations was journaled and announced, in order.
    lab.wait_event(second, "rotation.completed")
    events = lab.events()
    for e in events:
        validate_event(e)
    for rid in (first, second):
        mine = [e for e in events if e["data"].get("rotation_id") == rid]
        completed = [e["data"]["stage"] for e in mine if e["type"] == "stage.completed"]
        assert completed == STAGES, completed
        started = [e["data"]["stage"] for e in mine if e["type"] == "stage.started"]
        assert started == STAGES, started
        assert mine[0]["type"] == "rotation.started"
        assert mine[-1]["type"] == "rotation.completed"
        assert all(e["subject"] == "app-db" for e in mine)
        outcomes = [(s, o) for s, o, _, _ in lab.history(rid)]
        # the audit trail, in order, as if every transition had been a write of its own ...
        assert outcomes == [("prepare", "requested"), ("prepare", "started"),
                            ("prepare", "completed"), ("generate", "started"),
                            ("generate", "completed"), ("set-db", "started"),
                            ("set-db", "completed"), ("deploy", "started"),
                            ("deploy", "completed"), ("verify", "started"),
                            ("verify", "completed"), ("swap", "started"), ("swap", "completed"),
                            ("approve", "approved"), ("retire", "started"),
                            ("retire", "completed")], outcomes
        # ... from one insert and six compare-and-set updates (seq counts them): a stage's end
        # and the next stage's start are one write; deploy none and approve auto with soak 0
        # are journaled in the write before them
        seq = lab.pg.query("SELECT seq FROM rotor.rotations WHERE id = %s", (rid,))[0][0]
        assert seq == 7, (seq, outcomes)
    # Kafka key is the secret for every event
    assert all(m["key"] == "app-db" for m in lab.consume("rotor.events"))


def test_status_shows_the_rotation(lab):
    lab.start()
    rid = rotate(lab, "blue", "green")
    out = lab.cli("status", rid, "--json").stdout
    doc = json.loads(out)
    text = json.dumps(doc)
    assert rid in text and "completed" in text


def test_health_metrics_and_append_only_history(lab):
    import re
    import urllib.error
    import urllib.request

    import psycopg2
    import pytest

    d = lab.start()
    port = re.search(r'"msg":"http.listening".*?"port":"(\d+)"', d.text()).group(1)
    base = f"http://127.0.0.1:{port}"
    assert urllib.request.urlopen(base + "/healthz", timeout=5).status == 200
    assert urllib.request.urlopen(base + "/readyz", timeout=5).status == 200
    rid = rotate(lab, "blue", "green")
    metrics = urllib.request.urlopen(base + "/metrics", timeout=5).read().decode()
    assert 'rotor_stage_attempts_total{outcome="ok",stage="set-db"} 1' in metrics, metrics
    assert 'rotor_rotations_total{status="completed"} 1' in metrics
    assert 'rotor_input_messages_total{outcome="applied"} 1' in metrics
    assert "rotor_loop_lag_seconds" in metrics
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(base + "/nope", timeout=5)
    assert e.value.code == 404
    # the audit trail cannot be rewritten, not even by the journal's owner
    with pytest.raises(psycopg2.Error, match="append-only"):
        lab.pg.query("UPDATE rotor.history SET outcome = 'x' WHERE rotation_id = %s", (rid,))
    with pytest.raises(psycopg2.Error, match="append-only"):
        lab.pg.query("DELETE FROM rotor.history")
