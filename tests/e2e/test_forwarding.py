"""A command produced on another partition than the one its secret maps to (murmur2, rotor's
producer partitioner) is forwarded to the owner's partition (docs/architecture.md, "Who owns a
secret"). kcat's default partitioner (consistent_random: CRC32) puts app-db-2 on partition 2 of 3,
murmur2 on partition 1: with two replicas the one that receives it does not own the secret, and
before forwarding the command was retried there every second, forever and silently."""
import re
import time
import urllib.request

from rotorlab import add_second_secret, wait_for


def test_command_on_another_partition_is_forwarded(make_lab):
    lab = make_lab(separate_broker=True)
    add_second_secret(lab, "app-db-2")
    a = lab.start(extra_env={"ROTOR_INSTANCE": "a"})
    b = lab.start(extra_env={"ROTOR_INSTANCE": "b"})

    def claimed():
        rows = lab.pg.query("SELECT part, instance FROM rotor.owners") or []
        return len(rows) == 3 and len({r[1] for r in rows}) == 2
    wait_for(claimed, 60, what="both replicas to claim their partitions")
    rid = lab.request(secret="app-db-2", reason="kcat's default partitioner")
    r = lab.rotation_for(rid, timeout=40)
    assert r["secret"] == "app-db-2"
    text = a.text() + b.text()
    fwd = [line for line in text.splitlines() if '"input.forwarded"' in line]
    assert fwd, "no input.forwarded line"
    assert '"from":"2"' in fwd[0].replace(" ", "") and '"to":"1"' in fwd[0].replace(" ", ""), fwd
    # the copy carries where it came from (forwarded once only) and the original headers
    copies = [m for m in lab.consume("rotor.commands") if rid in m["payload"]
              and "rotor-forwarded-from" in (m.get("headers") or [])]
    assert len(copies) == 1, copies
    h = copies[0]["headers"]
    assert dict(zip(h[::2], h[1::2]))["rotor-forwarded-from"] == "2"
    # the forwarded copy is handled once: one rotation for the request
    time.sleep(2)
    assert [x["request_id"] for x in lab.rotations()].count(rid) == 1


def test_retry_is_logged_once_and_aged(make_lab):
    """A command that cannot be handled where it is (here: already forwarded once, so not again)
    is retried every second: its first retry is logged with the reason, not every one, and the
    age of its partition's oldest undone message grows on /metrics."""
    lab = make_lab(separate_broker=True)
    add_second_secret(lab, "app-db-2")
    daemons = [lab.start(extra_env={"ROTOR_INSTANCE": n}) for n in ("a", "b")]

    def claimed():
        rows = lab.pg.query("SELECT part, instance FROM rotor.owners") or []
        return len(rows) == 3 and len({r[1] for r in rows}) == 2
    wait_for(claimed, 60, what="both replicas to claim their partitions")
    ev = ('{"specversion":"1.0","id":"retry-once-1","source":"/tests/e2e",'
          '"type":"rotation.requested","subject":"app-db-2","time":"2026-12-03T16:00:00Z",'
          '"data":{"secret":"app-db-2","reason":"x","requested_by":"pytest","trigger":"pipeline"}}')
    lab.produce(ev, key="app-db-2", headers=(("rotor-forwarded-from", "0"),))

    def retrying():
        for d in daemons:
            lines = [x for x in d.text().splitlines() if '"input.retrying"' in x]
            if lines:
                return d, lines
        return None
    d, lines = wait_for(retrying, 30, what="input.retrying")
    time.sleep(4)  # several retries (every second) later: still one line
    lines = [x for x in d.text().splitlines() if '"input.retrying"' in x]
    assert len(lines) == 1, lines
    assert '"partition":"2"' in lines[0] and '"reason"' in lines[0], lines
    assert not any('"input.forwarded"' in x.text() for x in daemons)
    port = re.search(r'"http.listening".*?"port":"(\d+)"', d.text()).group(1)

    def age():
        # refreshed with the lag gauges: every second while input flows, every 10 s when idle
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics",
                                      timeout=5).read().decode()
        ages = [float(m.group(1)) for m in re.finditer(
            r'^rotor_consumer_oldest_undone_seconds\{[^}]*partition="2"[^}]*\} (\S+)$', text,
            re.M)]
        return ages and ages[0] >= 3
    wait_for(age, 25, 0.5, what="the oldest undone message's age to reach 3 s on /metrics")
