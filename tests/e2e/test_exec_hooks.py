"""deploy kind exec inside a rotation: hooks run with the rotation's context and never a
password; a hook that fails fails the stage with the tail of its stderr; a hook that hangs is
killed with its process group at the timeout; production is untouched before the swap."""
import json
import os

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


def test_failing_hook_fails_the_stage_with_its_stderr(make_lab):
    lab = make_lab(deploy=exec_deploy("echo 'helm: release app-green failed' >&2; exit 3"),
                   stages=ONE_TRY)
    d = lab.start()
    rid = lab.rotation_for(lab.request())["id"]
    row = lab.wait_status(rid, ("failed", "completed"), 60)
    assert row["status"] == "failed" and row["stage"] == "deploy"
    assert "exited 3" in row["error"] and "release app-green failed" in row["error"]
    assert '"deploy.exec.output"' in d.text()
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
