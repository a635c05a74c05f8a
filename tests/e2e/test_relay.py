"""The outbox relay never stops on one row: a dead letter larger than the producer takes is cut to
fit (header rotor-truncated), a row Kafka refuses for good is parked and counted and the rows
behind it are published, parked rows stay with their owner; delivered rows are marked sent in
batches, not one statement per row."""
import json
import os
import re
import secrets
import time
import urllib.request

import psycopg2

from rotorlab import wait_for

INSTANCE = "relay-test"
OWNER = "rotor/" + INSTANCE  # the journal's application_name, owner of the rows it writes


def metrics(d):
    port = re.search(r'"msg":"http.listening".*?"port":"(\d+)"', d.text()).group(1)
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()


def metric(d, name):
    m = re.search(rf"^{name} (\S+)$", metrics(d), re.M)
    return float(m.group(1)) if m else None


def dead_letters(lab):
    out = []
    for m in lab.consume("rotor.deadletter"):
        h = m.get("headers") or []
        out.append((m["payload"], dict(zip(h[::2], h[1::2]))))
    return out


def event_row(type_="rotation.aborted", pad=0):
    ev = {"specversion": "1.0", "id": secrets.token_hex(8), "source": "/rotor/tests",
          "type": type_, "subject": "app-db", "time": "2026-12-03T15:00:00Z",
          "datacontenttype": "application/json",
          "data": {"rotation_id": "3f0c9a52-7d1e-4b8a-9c61-2e5f8d4b7a10", "secret": "app-db",
                   "stage": "deploy", "by": "ops" + "x" * pad}}
    return ev


def insert_row(lab, ev, owner=OWNER, extra="", age="0 minutes"):
    lab.pg.query("INSERT INTO rotor.outbox (topic, key, value, headers, owner, created_at" +
                 (", parked_at, park_reason" if extra else "") + ") "
                 "VALUES ('rotor.events', 'app-db', convert_to(%s, 'UTF8'), '{}', %s, "
                 "now() - %s::interval" + extra + ")", (json.dumps(ev), owner, age))


def rotation_events_arrive(lab):
    rid = lab.rotation_for(lab.request())["id"]
    assert lab.wait_status(rid, ("completed", "failed"))["status"] == "completed"
    lab.wait_event(rid, "rotation.completed", timeout=40)


def test_oversized_dead_letter_is_cut_and_the_relay_goes_on(lab):
    # The lab's kafka.max_message_bytes is 64 KiB: the producer takes no more. A ~1 MB input is
    # dead-lettered whole into the outbox; before, every tick tried to produce it, was refused
    # (MSG_SIZE_TOO_LARGE) and stopped there: no event of any rotation was published again.
    d = lab.start(extra_env={"ROTOR_INSTANCE": INSTANCE})
    big = b'{"not": "an event", "pad": "' + b"y" * 1_000_000 + b'"}'
    lab.produce(big, props=(("message.max.bytes", "2000000"),))
    wait_for(lambda: lab.pg.query("SELECT count(*) FROM rotor.outbox WHERE topic = "
                                  "'rotor.deadletter'")[0][0] == 1, 30, what="the dead letter")
    rotation_events_arrive(lab)
    got = wait_for(lambda: dead_letters(lab), 30, 0.5, what="the dead letter in its topic")
    payload, headers = got[0]
    assert headers["rotor-truncated"] == str(len(big)), headers
    assert "not valid JSON" in headers["rotor-dlq-reason"] or "exceeds" in \
        headers["rotor-dlq-reason"], headers
    assert 60000 < len(payload) <= 65536 and big.decode().startswith(payload)
    # the journal keeps every original byte
    assert lab.pg.query("SELECT length(value) FROM rotor.outbox WHERE topic = "
                        "'rotor.deadletter'")[0][0] == len(big)
    assert metric(d, "rotor_outbox_parked_total") == 0
    assert d.alive()


def test_unpublishable_row_is_parked_counted_and_replayable(lab):
    d = lab.start(extra_env={"ROTOR_INSTANCE": INSTANCE})
    # An event row (never cut: a truncated CloudEvent is no event) over the producer's limit.
    big = event_row(pad=70000)
    insert_row(lab, big)
    rotation_events_arrive(lab)  # the rows behind it are published
    row = wait_for(lambda: lab.pg.query("SELECT parked_at IS NOT NULL, park_reason, sent_at "
                                        "FROM rotor.outbox WHERE convert_from(value, 'UTF8')"
                                        "::jsonb->>'id' = %s AND parked_at IS NOT NULL",
                                        (big["id"],)), 20, what="the row parked")
    assert row[0][0] is True and row[0][2] is None
    assert "message.max.bytes" in row[0][1], row
    wait_for(lambda: metric(d, "rotor_outbox_parked_total") == 1, 20, 0.5,
             what="the parked counter")
    wait_for(lambda: metric(d, "rotor_outbox_parked") == 1, 20, 0.5, what="the parked gauge")
    assert metric(d, "rotor_outbox_backlog") is not None
    assert d.text().count('"relay.parked"') == 1, "logged once, not on every tick"

    # A parked row of a vanished instance is not adopted (no back and forth between replicas).
    gone = event_row()
    insert_row(lab, gone, owner="rotor/gone-pod", age="2 minutes",
               extra=", now(), 'parked by a test'")
    # The documented replay (docs/operations.md): a row parked for a reason since mended.
    replay = event_row()
    insert_row(lab, replay, extra=", now(), 'parked by a test'")
    lab.pg.query("UPDATE rotor.outbox SET parked_at = NULL, park_reason = NULL "
                 "WHERE convert_from(value, 'UTF8')::jsonb->>'id' = %s", (replay["id"],))
    wait_for(lambda: any(e["id"] == replay["id"] for e in lab.events()), 40, 0.5,
             what="the unparked row to be published")
    owner = lab.pg.query("SELECT owner, sent_at FROM rotor.outbox WHERE convert_from(value, "
                         "'UTF8')::jsonb->>'id' = %s", (gone["id"],))[0]
    assert owner == ("rotor/gone-pod", None)
    assert not any(e["id"] in (big["id"], gone["id"]) for e in lab.events())
    assert d.text().count('"relay.parked"') == 1


def test_rows_of_a_live_instance_are_not_adopted(lab):
    # Before, any unsent row over a minute old was taken by whichever replica swept first, and
    # taken back ten seconds later: two producers publishing one secret's events.
    lab.start(extra_env={"ROTOR_INSTANCE": INSTANCE})
    live = psycopg2.connect(host=lab.pg.dir, port=lab.pg.port, user="postgres", dbname="postgres",
                            application_name="rotor/live-pod")
    try:
        ev = event_row()
        insert_row(lab, ev, owner="rotor/live-pod", age="2 minutes")
        rotation_events_arrive(lab)  # takes a few sweeps (every 10 s)
        wait_for(lambda: lab.pg.query("SELECT count(*) FROM pg_stat_activity WHERE "
                                      "application_name = %s", (OWNER,))[0][0] > 0, 10,
                 what="rotor's own journal session")
        time.sleep(11)  # at least one more sweep
        assert lab.pg.query("SELECT owner FROM rotor.outbox WHERE convert_from(value, 'UTF8')"
                            "::jsonb->>'id' = %s", (ev["id"],))[0][0] == "rotor/live-pod"
    finally:
        live.close()
    # its owner went away: the row is adopted and published
    wait_for(lambda: any(e["id"] == ev["id"] for e in lab.events()), 40, 0.5,
             what="the row of the vanished owner to be published")


def test_delivered_rows_are_marked_in_batches(lab):
    # Counts the statements that mark rows sent: a statement trigger on UPDATE OF sent_at.
    lab.pg.query("CREATE TABLE public.marks (n int NOT NULL)")
    lab.pg.query("INSERT INTO public.marks VALUES (0)")
    d = lab.start(extra_env={"ROTOR_INSTANCE": INSTANCE})
    lab.pg.query("CREATE FUNCTION public.count_marks() RETURNS trigger LANGUAGE plpgsql AS $$"
                 " BEGIN UPDATE public.marks SET n = n + 1; RETURN NULL; END $$")
    lab.pg.query("CREATE TRIGGER count_marks AFTER UPDATE OF sent_at ON rotor.outbox"
                 " FOR EACH STATEMENT EXECUTE FUNCTION public.count_marks()")
    rows = 400
    evs = [event_row() for _ in range(rows)]
    lab.pg.query("INSERT INTO rotor.outbox (topic, key, value, headers, owner) "
                 "SELECT 'rotor.events', 'app-db', convert_to(v, 'UTF8'), '{}', %s "
                 "FROM unnest(%s::text[]) AS v", (OWNER, [json.dumps(e) for e in evs]))
    wait_for(lambda: lab.pg.query("SELECT count(*) FROM rotor.outbox WHERE sent_at IS NULL")
             [0][0] == 0, 60, 0.2, what="every row marked sent")
    marks = lab.pg.query("SELECT n FROM public.marks")[0][0]
    print("mark statements:", marks)
    # The relay reads 100 rows at a time and gets their reports in bursts; one statement
    # per row (or per report) would be hundreds.
    assert marks <= rows // 100, f"{marks} statements marked {rows} rows"
    published = [e["id"] for e in lab.events()]
    assert [e["id"] for e in evs] == [i for i in published if i in {e["id"] for e in evs}], \
        "one key's rows are published in order"
    assert d.alive()


def peak_rss_mib(d):
    with open(f"/proc/{d.p.pid}/status") as f:
        return int(re.search(r"^VmHWM:\s+(\d+) kB", f.read(), re.M).group(1)) / 1024


def test_outbox_reads_are_bounded_in_bytes(lab):
    """150 rows of 1 MiB each (too large to publish: parked): the relay reads them a few MiB at a
    time, not 100 rows (200 MiB hex-escaped) at a time."""
    d = lab.start(extra_env={"ROTOR_INSTANCE": INSTANCE})
    lab.pg.query("INSERT INTO rotor.outbox (topic, key, value, headers, owner) "
                 "SELECT 'rotor.events', convert_to('big-' || g, 'UTF8'), "
                 "decode(repeat('61', 1048576), 'hex'), '{}', %s FROM generate_series(1, 150) g",
                 (OWNER,))
    wait_for(lambda: lab.pg.query("SELECT count(*) FROM rotor.outbox WHERE parked_at IS NOT NULL"
                                  )[0][0] == 150, 90, 0.5, what="every large row parked")
    assert d.alive()
    if os.environ.get("ROTOR_SANITIZE", "").upper() in ("ON", "1", "TRUE"):
        # AddressSanitizer keeps freed memory in quarantine (256 MiB by default) and adds its own
        # shadow: a peak says nothing about the relay there. The normal build's run of this
        # test holds the bound; this one checks that every row was read and parked.
        return
    assert peak_rss_mib(d) < 100, f"peak RSS {peak_rss_mib(d):.0f} MiB"
