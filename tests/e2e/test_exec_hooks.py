"""deploy kind exec inside a rotation: hooks run with the rotation's context and never a
password; a hook that fails fails the stage, its output in the log only; a hook that hangs is
killed with its process group at the timeout; production is untouched before the swap."""
import json
import os
import secrets
import subprocess

from rotorlab import wait_for

ONE_TRY = "{ timeout: 30s, max_attempts: 1, backoff: { initial: 100ms, max: 200ms } }"


def exec_deploy(deploy, swap="true", timeout="5s"):
    return (f"{{ kind: exec, exec: {{ deploy: {json.dumps(deploy)}, swap: {json.dumps(swap)}, "
            f"timeout: {timeout} }} }}")


def test_hooks_get_the_context_and_no_secret(make_lab, tmp_path):
    out = tmp_path / "hook-env"
    lab = make_lab(deploy=exec_deploy(f"env > {out}.$ROTOR_ACTION",
                                      swap=f"env > {out}.$ROTOR_ACTION"))
    lab.start()
    rid = lab.rotation_for(lab.request())["id"]
    assert lab.wait_status(rid, ("completed", "failed"), 60)["status"] == "completed"
    env = dict(line.split("=", 1) for line in
               (tmp_path / "hook-env.deploy").read_text().splitlines() if "=" in line)
    assert env["ROTOR_ACTION"] == "deploy" and env["ROTOR_SLOT"] == "green"
    assert env["ROTOR_ROLE"] == "app_green" and env["ROTOR_STORE_NAME"] == "pg-green"
    assert env["ROTOR_ROTATION_ID"] == rid and len(env["ROTOR_VERSION"]) == 32
    text = (tmp_path / "hook-env.deploy").read_text() + (tmp_path / "hook-env.swap").read_text()
    assert "ROTOR_JOURNAL_DSN" not in text and "APP_DB_ADMIN_DSN" not in text
    assert lab.stored("pg-green") not in text


def journal_text(lab):
    """Every row of the journal (rotations, history, outbox, dead letters) as text."""
    dump = subprocess.run(["pg_dump", "-h", lab.pg.dir, "-p", str(lab.pg.port), "-U", "postgres",
                           "--data-only", "--schema=rotor", "postgres"],
                          capture_output=True, text=True, check=True)
    # outbox values are bytea (dumped as hex): read them decoded, so a leak would show
    rows = lab.pg.query("SELECT encode(value, 'escape') FROM rotor.outbox")
    return dump.stdout + "\n".join(r[0] for r in rows)


def test_failing_hook_output_stays_in_the_log(make_lab):
    # a hook run with `set -x`, or one that prints what it handles: its output is the log's only
    marker = "MARKER-" + secrets.token_hex(8)
    lab = make_lab(deploy=exec_deploy(f"set -x; echo 'helm: release app-green failed' >&2; "
                                      f"echo '{marker} on stdout'; echo '{marker} on stderr' >&2;"
                                      f" exit 3"),
                   stages=ONE_TRY)
    d = lab.start()
    rid = lab.rotation_for(lab.request())["id"]
    row = lab.wait_status(rid, ("failed", "completed"), 60)
    assert row["status"] == "failed" and row["stage"] == "deploy"
    assert row["error"] == "hook deploy exited with status 3 (output in the log)", row["error"]
    events = lab.wait_event(rid, "rotation.failed")
    failed = [e for e in events if e["type"] == "stage.failed"]
    assert failed and failed[-1]["data"]["error"] == row["error"]
    # in the log, line by line with the hook's name...
    lines = [json.loads(line) for line in d.text().splitlines() if line.startswith("{")]
    out = [o for o in lines if o.get("msg") == "deploy.exec.output"]
    assert {(o["action"], o["stream"], o["line"]) for o in out} >= {
        ("deploy", "stdout", f"{marker} on stdout"), ("deploy", "stderr", f"{marker} on stderr"),
        ("deploy", "stderr", "helm: release app-green failed")}, out
    # ...and nowhere else: not in the journal (rotations, history, outbox), not in any event
    assert marker not in journal_text(lab)
    assert marker not in "\n".join(m["payload"] or "" for m in lab.consume("rotor.events"))
    assert "release app-green failed" not in journal_text(lab)
    assert not os.path.exists(os.path.join(lab.secrets_dir, "pg-current"))
    assert lab.active_slot() == "blue"


def test_hanging_hook_is_killed_at_its_timeout(make_lab, tmp_path):
    pidfile = tmp_path / "child.pid"
    lab = make_lab(deploy=exec_deploy(f"sleep 300 & echo $! > {pidfile}; wait", timeout="1s"),
                   stages=ONE_TRY)
    lab.start()
    rid = lab.rotation_for(lab.request())["id"]
    row = lab.wait_status(rid, ("failed", "completed"), 60)
    assert row["status"] == "failed" and "timed out after 1s" in row["error"], row
    pid = int(pidfile.read_text())
    # the whole process group was killed, the background child too
    wait_for(lambda: not os.path.exists(f"/proc/{pid}") or
             open(f"/proc/{pid}/stat").read().split()[2] == "Z", 10, 0.2,
             what="the hook's child to be killed")
