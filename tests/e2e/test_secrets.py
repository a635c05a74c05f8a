"""The plaintext password appears in no PostgreSQL server log (log_statement=all), no rotor log,
no event, no dead letter, no journal row, and no argv or environment of a rotor process."""
import glob
import os
import subprocess

from rotorlab import wait_for


def all_journal_text(lab):
    dump = subprocess.run(["pg_dump", "-h", lab.pg.dir, "-p", str(lab.pg.port), "-U", "postgres",
                           "--data-only", "--schema=rotor", "postgres"],
                          capture_output=True, text=True, check=True)
    # outbox key and value are bytea (dumped as hex): read them decoded, so a leak would show
    rows = lab.pg.query("SELECT encode(coalesce(key, ''), 'escape'), encode(value, 'escape'), "
                        "coalesce(headers::text, '') FROM rotor.outbox")
    return dump.stdout + "\n".join(" ".join(r) for r in rows)


def test_password_never_leaks(make_lab):
    lab = make_lab(pg_settings=["log_statement=all", "log_min_messages=debug1",
                                "log_connections=on"])
    d = lab.start()
    initial = lab.stored("pg-blue")
    passwords = [initial]
    for i in range(2):
        rid = lab.rotation_for(lab.request(reason=f"leak check {i}"))["id"]
        assert lab.wait_status(rid, ("completed", "failed"))["status"] == "completed"
        lab.wait_event(rid, "rotation.completed")
        slot = "pg-green" if i == 0 else "pg-blue"
        passwords.append(lab.stored(slot))
    # proc: no password in the daemon's argv or environment (read while it runs)
    with open(f"/proc/{d.p.pid}/cmdline", "rb") as f:
        cmdline = f.read().decode("utf-8", "replace")
    with open(f"/proc/{d.p.pid}/environ", "rb") as f:
        environ = f.read().decode("utf-8", "replace")
    # the statements really were logged: the check below could see a leak if there were one
    with open(lab.pg.log, errors="replace") as f:
        server_log = f.read()
    assert "ALTER ROLE" in server_log and "SCRAM-SHA-256$" in server_log

    rotor_logs = "".join(open(p, errors="replace").read()
                         for p in glob.glob(os.path.join(lab.root, "rotor*.log")))
    events = "\n".join(m["payload"] or "" for m in lab.consume("rotor.events"))
    dead = "\n".join(m["payload"] or "" for m in lab.consume("rotor.deadletter"))
    journal = all_journal_text(lab)
    assert journal.count("rotation.completed") >= 2  # outbox rows are in the dump
    places = {"server log": server_log, "rotor log": rotor_logs, "events": events,
              "dead letters": dead, "journal": journal, "argv": cmdline, "environment": environ}
    for pw in passwords[1:]:
        assert len(pw) == 32
        for where, text in places.items():
            assert pw not in text, f"a rotated password appears in the {where}"
    # the seed password was written by this test into the store by hand; rotor never prints it
    for where in ("rotor log", "events", "journal"):
        assert initial not in places[where]
