"""The runner of an attempt is its journal session, pid and backend_start: a new owner does not
wait for a crashed runner whose pid another backend reuses."""
import signal

from rotorlab import wait_for
from test_fence import ended, hook_runs, slow_deploy


def test_a_reused_pid_is_not_the_previous_runner(make_lab, tmp_path):
    log = str(tmp_path / "hook.log")
    lab = make_lab(separate_broker=True, deploy=slow_deploy(log, 3))
    a = lab.start(extra_env={"ROTOR_INSTANCE": "a"})
    rid = lab.rotation_for(lab.request(reason="reused pid"))["id"]
    wait_for(lambda: hook_runs(log), 60, 0.1, what="the deploy hook to start in A")
    a.signal(signal.SIGKILL)
    a.wait(30)
    wait_for(lambda: ended(hook_runs(log)[0]), 30, 0.2, what="A's hook to end")
    # Another backend now has the pid A's journal session had (as after a pid wrap-around): here
    # the row is pointed at a live session of the test, which is not A's.
    other = lab.pg.connect()
    try:
        with other.cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")
            pid = cur.fetchone()[0]
        lab.pg.query("UPDATE rotor.rotations SET run_pid = %s WHERE id = %s", (pid, rid))
        row = lab.pg.query("SELECT status, run_until > now() FROM rotor.rotations "
                           "WHERE id = %s", (rid,))[0]
        assert row == ("running", True), row
        b = lab.start(extra_env={"ROTOR_INSTANCE": "b"})
        # B runs the stage again at once: it does not wait for A's deadline (60 s away).
        wait_for(lambda: len(hook_runs(log)) == 2, 20, 0.2, what="B to run the stage")
        assert '"stage.awaiting_previous_owner"' not in b.text()
    finally:
        other.close()
    done = lab.wait_status(rid, ("completed", "failed"), 60)
    assert done["status"] == "completed", lab.history(rid)
