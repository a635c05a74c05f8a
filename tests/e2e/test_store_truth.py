"""Issue 8, items 9 and 3: the store must hold what the database has.

- A store.dir that does not exist (mistyped) stops `rotor run` before anything starts, naming
  store.dir; rotor never creates it.
- prepare proves, before anything changes, that the active slot's entry in the store logs in as
  the active role: a wrong or missing entry fails prepare, and nothing is written anywhere.
- swap refuses when the standby slot's current version in the store is not the one set-db gave
  the database (a late write of another attempt or writer): production stays on the old slot.
"""
import json
import os
import secrets as pysecrets
import subprocess
import time

from kvlab import make_kvlab  # noqa: F401 (fixture)
from rotorlab import ROTOR

FAST = "{ timeout: 30s, max_attempts: 2, backoff: { initial: 100ms, max: 200ms } }"


def everything_said(lab):
    """rotor's logs, every event on Kafka and every journal row, as one text (leak checks)."""
    out = [d.text() for d in lab.daemons]
    out.append(json.dumps(lab.consume("rotor.events")))
    for t in ("secrets", "rotations", "history", "outbox"):
        rows = lab.pg.query(f"SELECT row_to_json(t)::text FROM rotor.{t} t") or []
        out += [r[0] for r in rows]
    return "\n".join(out)


def test_mistyped_store_dir_refused_at_start(make_lab):
    lab = make_lab()
    typo = lab.secrets_dir + "s"
    lab.write_config(store=f"{{ kind: file, dir: {typo}, names: {{ blue: pg-blue, "
                           f"green: pg-green }} }}")
    d = lab.start(wait_ready=False)
    code = d.wait(30)
    text = d.text()
    want = (f"rotor: secret app-db: store.dir {typo}: the directory does not exist (rotor does "
            "not create it")
    assert code != 0, text
    assert want in text, text
    assert not os.path.exists(typo), "rotor run created the mistyped store.dir"
    # nothing started: no journal schema, no rotation
    assert lab.pg.query("SELECT count(*) FROM pg_namespace WHERE nspname = 'rotor'")[0][0] == 0
    # `rotor check` fails it in the same words
    r = subprocess.run([ROTOR, "-c", lab.config, "check"], env=lab.env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode != 0
    assert f"FAIL secret app-db: store.dir {typo}: the directory does not exist" in r.stdout, \
        r.stdout
    assert not os.path.exists(typo)


def nothing_changed(lab, rid, wrong=None):
    """prepare failed: no store version, the standby role untouched, production as it was, and no
    password anywhere rotor speaks."""
    assert not os.path.exists(os.path.join(lab.secrets_dir, "pg-green"))
    assert not os.path.exists(os.path.join(lab.secrets_dir, ".versions")), "a version was written"
    assert not os.path.exists(os.path.join(lab.secrets_dir, "pg-current"))
    assert not lab.rolcanlogin("app_green")
    assert lab.rolcanlogin("app_blue") and lab.can_login("app_blue", lab.initial_password)
    assert lab.active_slot() == "blue"
    assert [s for s, o, a, e in lab.history(rid) if o in ("completed", "failed", "retrying")] \
        == ["prepare", "prepare"]
    said = everything_said(lab)
    assert lab.initial_password not in said
    if wrong:
        assert wrong not in said


def test_store_entry_that_does_not_log_in_fails_prepare(make_lab):
    lab = make_lab(stages=FAST)
    wrong = pysecrets.token_urlsafe(24)
    with open(os.path.join(lab.secrets_dir, "pg-blue"), "w") as f:
        f.write(wrong)  # a value typed wrong: not the password app_blue logs in with
    lab.start()
    rid = lab.rotation_for(lab.request())["id"]
    row = lab.wait_status(rid, "failed", timeout=60)
    assert row["stage"] == "prepare", row
    assert row["error"].startswith("store entry pg-blue does not log in as role app_blue: "), \
        row["error"]
    assert "password authentication failed" in row["error"], row["error"]
    nothing_changed(lab, rid, wrong)
    failed = [e for e in lab.wait_event(rid, "rotation.failed") if e["type"] == "rotation.failed"]
    assert "does not log in as role app_blue" in failed[-1]["data"]["error"]
    # the operator puts the right password in the store and retries: it completes
    with open(os.path.join(lab.secrets_dir, "pg-blue"), "w") as f:
        f.write(lab.initial_password)
    assert lab.cli("retry", rid, "--by", "ops").returncode == 0
    lab.wait_status(rid, "completed", 60)
    assert lab.active_slot() == "green"


def test_missing_active_entry_fails_prepare(make_lab):
    lab = make_lab(stages=FAST)
    os.unlink(os.path.join(lab.secrets_dir, "pg-blue"))
    lab.start()
    rid = lab.rotation_for(lab.request())["id"]
    row = lab.wait_status(rid, "failed", timeout=60)
    assert row["stage"] == "prepare", row
    assert row["error"].startswith("store entry pg-blue (the active slot blue, role app_blue) "
                                   "has no current value"), row["error"]
    nothing_changed(lab, rid)


def late_file_version(lab, name, value):
    """Another version of name written into the file store as rotor's own put writes one (the
    version record, then the mount file), as a late write of an earlier attempt would land.
    Returns its id."""
    vid = pysecrets.token_hex(16)
    vdir = os.path.join(lab.secrets_dir, ".versions", name)
    now = int(time.time() * 1000)
    doc = {"id": vid, "value": value, "created": now, "exp": now + 86400000, "enabled": True,
           "tags": {"rotation": "an-earlier-attempt", "managed-by": "rotor"}}
    for path, text in ((os.path.join(vdir, vid + ".json"), json.dumps(doc)),
                       (os.path.join(lab.secrets_dir, name), value)):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
    return vid


def check_swap_refused(lab, rid, version, late):
    lab.cli("approve", rid)
    row = lab.wait_status(rid, ("failed", "completed"), timeout=60)
    assert row["status"] == "failed" and row["stage"] == "swap", (row, lab.history(rid))
    assert f"store entry pg-green: its current version is {late}, not {version}, the version " \
           "set-db gave role app_green" in row["error"], row["error"]
    # production stays on the old slot
    assert lab.active_slot() == "blue"
    assert lab.rolcanlogin("app_blue") and lab.can_login("app_blue", lab.initial_password)


def test_swap_refuses_a_version_set_db_did_not_use(make_lab):
    lab = make_lab(stages=FAST, approval="{ mode: manual, gate: swap }")
    lab.start()
    rid = lab.rotation_for(lab.request())["id"]
    assert lab.wait_status(rid, "waiting", timeout=60)["stage"] == "approve"
    version = lab.pg.query("SELECT version FROM rotor.rotations WHERE id = %s", (rid,))[0][0]
    assert version and os.path.exists(
        os.path.join(lab.secrets_dir, ".versions", "pg-green", version + ".json"))
    late_value = pysecrets.token_urlsafe(24)
    late = late_file_version(lab, "pg-green", late_value)
    check_swap_refused(lab, rid, version, late)
    assert not os.path.exists(os.path.join(lab.secrets_dir, "pg-current"))
    assert late_value not in everything_said(lab)


def test_swap_refuses_a_late_key_vault_version(make_kvlab):
    lab = make_kvlab(stages=FAST, approval="{ mode: manual, gate: swap }")
    lab.start()
    rid = lab.rotation_for(lab.request())["id"]
    assert lab.wait_status(rid, "waiting", timeout=60)["stage"] == "approve"
    version = lab.journal_row(rid)["version"]
    assert [v["version"] for v in lab.versions("pg-green")] == [version]
    late_value = pysecrets.token_urlsafe(24)
    late = lab._rest_put("pg-green", late_value)  # lands after set-db, as a late PUT would
    check_swap_refused(lab, rid, version, late)
    assert not lab.versions("pg-current"), "swap wrote `current`"
    lab.assert_no_secret_leaked([lab.initial_password, late_value])


def trust_role(lab, role):
    """pg_hba lets role in without asking for a password (as in a development set-up)."""
    hba = lab.pg.dir + "/data/pg_hba.conf"
    with open(hba) as f:
        rest = f.read()
    with open(hba, "w") as f:
        f.write(f"local all {role} trust\nhost all {role} 127.0.0.1/32 trust\n" + rest)
    lab.pg.query("SELECT pg_reload_conf()")


def test_trusted_login_proves_nothing_and_says_so(make_lab):
    """prepare's login through a pg_hba trust line proved nothing about the store's entry: a
    warning, once per rotation, not a failure; none when the server asked for the password."""
    lab = make_lab(stages=FAST)
    trust_role(lab, "app_blue")
    lab.start()
    rid = lab.rotation_for(lab.request())["id"]
    lab.wait_status(rid, "completed", timeout=60)
    warned = [line for line in lab.daemons[0].text().splitlines()
              if '"prepare.login_not_proved"' in line]
    assert len(warned) == 1, warned
    w = json.loads(warned[0])
    assert w["level"] == "warn" and w["secret"] == "app-db" and w["role"] == "app_blue", w
    assert w["rotation"] == rid, w
    assert "did not ask for a password" in w["note"] and "not checked" in w["note"], w
    # the next rotation's prepare logs in as app_green, with SCRAM: no warning
    rid2 = lab.rotation_for(lab.request())["id"]
    lab.wait_status(rid2, "completed", timeout=60)
    text = lab.daemons[0].text()
    assert text.count('"prepare.login_not_proved"') == 1, text
    assert lab.active_slot() == "blue"
    assert lab.initial_password not in everything_said(lab)
