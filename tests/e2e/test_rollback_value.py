"""Issue 8: a rollback writes the store's `current` entry from the old slot's value as the store
holds it, which may be anything an operator put there. A value of over about 10 KB made stage.c
dereference NULL (secret_new refused its worst-case size): the daemon crashed, restarted into the
same rollback and crashed again. Now a value whose entry would pass the limit fails the stage
with a reason naming the secret and the limit, and one that fits (sized exactly) rolls back."""
import json
import os

from rotorlab import wait_for

STAGES = "{ timeout: 30s, max_attempts: 2, backoff: { initial: 100ms, max: 200ms } }"


def write_mount(lab, name, value):
    path = os.path.join(lab.secrets_dir, name)
    with open(path, "w") as f:
        f.write(value)
    os.chmod(path, 0o600)


def set_password(lab, role, value):
    lab.pg.query(f"ALTER ROLE {role} PASSWORD %s", (value,))


def wait_end(lab, d, rid):
    """The rollback's outcome, or a failure as soon as the daemon dies."""
    def ended():
        assert d.alive(), "rotor died:\n" + d.text()[-3000:]
        rows = [r for r in lab.rotations() if r["id"] == rid]
        return rows[0] if rows and rows[0]["status"] in ("rolled-back", "failed") else None
    return wait_for(ended, 60, what=f"rotation {rid} to end its rollback")


def test_oversized_old_value_fails_the_rollback_then_a_fitting_one_rolls_back(make_lab):
    lab = make_lab(approval="{ mode: manual, gate: retire }", stages=STAGES)
    d = lab.start()
    rid = lab.rotation_for(lab.request())["id"]
    lab.wait_status(rid, "waiting", 60)
    # swapped: production uses green; the old slot's store entry is replaced by a value whose
    # JSON escape (6 bytes a tab) is over 64 KiB, though the value itself is only 12 000 bytes
    write_mount(lab, "pg-blue", "\t" * 12000)
    set_password(lab, "app_blue", "\t" * 12000)  # the operator's new value, and it logs in
    lab.command("rotation.rejected", rid, by="bob", reason="canary errors")
    row = wait_end(lab, d, rid)
    assert row["status"] == "failed" and row["stage"] == "rollback", row
    for part in ("secret app-db", "pg-blue (12000 bytes)", "pg-current", "65536 bytes"):
        assert part in row["error"], row["error"]
    assert d.alive(), d.text()[-3000:]
    events = lab.wait_event(rid, "rotation.failed")
    assert [e["data"]["final"] for e in events if e["type"] == "stage.failed"] == [False, True]
    # 12 KB of text fits once sized exactly: the operator's retry rolls back
    value = "p" * 12000
    write_mount(lab, "pg-blue", value)
    set_password(lab, "app_blue", value)
    lab.cli("retry", rid, "--by", "ops")
    wait_for(lambda: ("rollback", "retry") in [(s, o) for s, o, _, _ in lab.history(rid)], 30,
             what="the retry to be applied")
    row = wait_end(lab, d, rid)
    assert row["status"] == "rolled-back", (row, lab.history(rid))
    assert json.loads(lab.stored("pg-current")) == {"role": "app_blue", "password": value}
    assert lab.active_slot() == "blue"
    assert d.alive()


def test_rollback_to_an_old_value_that_does_not_log_in_keeps_production(make_lab):
    """Review of issue 8: the rollback pointed production back at the old slot and closed the new
    role without proving the old slot's entry (replaced since prepare proved it) logs in: the
    application was left on a password that does not work, its working one disabled. Now the
    rollback fails before it changes anything, and succeeds once the entry logs in."""
    lab = make_lab(approval="{ mode: manual, gate: retire }", stages=STAGES)
    d = lab.start()
    rid = lab.rotation_for(lab.request())["id"]
    lab.wait_status(rid, "waiting", 60)
    assert json.loads(lab.stored("pg-current"))["role"] == "app_green"  # swapped
    write_mount(lab, "pg-blue", "not-app-blues-password")
    lab.command("rotation.rejected", rid, by="bob", reason="canary errors")
    row = wait_end(lab, d, rid)
    # (before the fix: rolled-back, production on blue with a password that does not log in,
    # app_green NOLOGIN)
    assert row["status"] == "failed" and row["stage"] == "rollback", row
    assert "store entry pg-blue does not log in as role app_blue" in row["error"], row["error"]
    assert "not-app-blues-password" not in row["error"]
    assert lab.rolcanlogin("app_green"), "the working role was closed"
    assert lab.can_login("app_green", lab.stored("pg-green"))
    assert json.loads(lab.stored("pg-current"))["role"] == "app_green"  # production stays
    # the operator puts blue's real password back: the retry rolls back
    write_mount(lab, "pg-blue", lab.initial_password)
    lab.cli("retry", rid, "--by", "ops")
    wait_for(lambda: ("rollback", "retry") in [(s, o) for s, o, _, _ in lab.history(rid)], 30,
             what="the retry to be applied")
    row = wait_end(lab, d, rid)
    assert row["status"] == "rolled-back", (row, lab.history(rid))
    assert json.loads(lab.stored("pg-current")) == {"role": "app_blue",
                                                    "password": lab.initial_password}
    assert not lab.rolcanlogin("app_green")
    assert d.alive()
