"""Issue 8: a reason that is not valid UTF-8 (a hook's Latin-1 stderr, a server message in a
LATIN1 client encoding) is journaled and published as valid UTF-8, with U+FFFD in place of each
bad byte. Before, PostgreSQL refused the journal write (the attempt re-ran every second, ignoring
its backoff) and jansson refused the string (the stage.failed event was dropped)."""
import json

BACKOFF = "{ timeout: 30s, max_attempts: 2, backoff: { initial: 4s, max: 4s } }"


def attempt_gap_ms(lab, rid, stage):
    """Milliseconds from the journaled end of attempt 1 ('retrying') to the start of attempt 2."""
    rows = lab.pg.query("SELECT outcome, attempt, extract(epoch FROM at) * 1000 FROM rotor.history"
                        " WHERE rotation_id = %s AND stage = %s ORDER BY id", (rid, stage))
    retrying = [at for o, a, at in rows if o == "retrying" and a == 1]
    second = [at for o, a, at in rows if o in ("started", "failed", "retrying") and a == 2]
    assert retrying and second, rows
    return float(second[0] - retrying[0])


def check_failed_rotation(lab, rid, stage, want_in_error):
    row = lab.wait_status(rid, "failed", 90)
    assert row["stage"] == stage, row
    assert want_in_error in row["error"], row["error"]
    events = lab.wait_event(rid, "rotation.failed", 30)
    failed = [e["data"] for e in events if e["type"] == "stage.failed"]
    assert [d["final"] for d in failed] == [False, True], failed
    assert all(want_in_error in d["error"] for d in failed), failed
    hist = lab.history(rid)
    assert [(o, a) for s, o, a, e in hist if s == stage and o in ("retrying", "failed")] == \
        [("retrying", 1), ("failed", 2)], hist
    # the retry waited for its backoff (2 to 4 s with initial 4s), not one second
    retry_in = failed[0]["retry_in_ms"]
    assert 2000 <= retry_in <= 4000, retry_in
    assert attempt_gap_ms(lab, rid, stage) >= retry_in - 100, (retry_in, hist)
    return row, failed


def test_latin1_server_message_is_journaled_and_published(make_lab):
    # the verify probe fails on a value the server quotes in the admin DSN's LATIN1 encoding
    lab = make_lab(stages=BACKOFF, probe="select name::int from app.users where id = 4")
    lab.pg.query("INSERT INTO app.users (id, name) VALUES (4, 'caf\u00e9 cr\u00e8me')")
    lab.opts["env_extra"] = {"APP_DB_ADMIN_DSN": lab.pg.admin_dsn + " client_encoding=LATIN1"}
    d = lab.start()
    rid = lab.rotation_for(lab.request())["id"]
    row, failed = check_failed_rotation(lab, rid, "verify", "caf\ufffd cr\ufffdme")
    assert "invalid input syntax for type integer" in row["error"], row["error"]
    assert d.alive()


def test_latin1_hook_output_fails_the_stage_with_its_backoff(make_lab):
    hook = "printf 'helm: \\351chec de la mise \\340 jour\\n' >&2; exit 3"
    lab = make_lab(stages=BACKOFF, deploy="{ kind: exec, exec: { deploy: %s, swap: \"true\", "
                   "timeout: 10s } }" % json.dumps(hook))
    d = lab.start()
    rid = lab.rotation_for(lab.request())["id"]
    check_failed_rotation(lab, rid, "deploy", "exited")
    # the hook's line reaches the log, each bad byte as U+FFFD
    assert "helm: \ufffdchec de la mise \ufffd jour" in d.text()
    assert lab.active_slot() == "blue"


def test_latin1_reason_from_the_cli_is_published(make_lab):
    """`rotor abort --reason` typed in a Latin-1 terminal: before, json_string refused the argv
    and the decision went out without its reason."""
    lab = make_lab(approval="{ mode: manual, gate: retire }")
    lab.start()
    rid = lab.rotation_for(lab.request())["id"]
    lab.wait_status(rid, "waiting", timeout=60)
    lab.cli("abort", rid, "--by", b"Ren\xe9", "--reason", b"caf\xe9 closed")
    lab.wait_status(rid, "aborted", timeout=60)
    aborted = [e["data"] for e in lab.wait_event(rid, "rotation.aborted", 30)
               if e["type"] == "rotation.aborted"]
    assert aborted and aborted[-1]["reason"] == "caf\ufffd closed", aborted
    assert aborted[-1]["by"] == "Ren\ufffd", aborted
