"""deploy kind external: rotor publishes stage.requested and waits for the pipeline's
stage.completed or stage.failed; a scripted pipeline answers through kcat and `rotor complete`."""
import json
import secrets
import time

from rotorlab import wait_for

EXTERNAL = "{ kind: external, external: { timeout: 30s } }"


def answer_with_kcat(lab, rotation_id, stage, type_="stage.completed", **extra):
    ev = {"specversion": "1.0", "id": secrets.token_hex(8), "source": "/pipelines/deploy",
          "type": type_, "subject": "app-db",
          "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
          "data": dict({"rotation_id": rotation_id, "stage": stage, "by": "pipeline-42"}, **extra)}
    lab.produce(json.dumps(ev), key="app-db")


def requested(lab, rid, stage, attempt=1):
    def seen():
        return [e for e in lab.events() if e["type"] == "stage.requested" and
                e["data"]["rotation_id"] == rid and e["data"]["stage"] == stage and
                e["data"]["attempt"] == attempt]
    return wait_for(seen, 60, 0.3, what=f"stage.requested for {stage} #{attempt}")[0]


def test_pipeline_completes_each_stage(make_lab):
    # a real drain: retire asks the pipeline at once and drains; the answer may come first.
    # Long enough that seeing retire's request and answering it fits well inside it.
    lab = make_lab(deploy=EXTERNAL, drain="10s")
    lab.start()
    rid = lab.rotation_for(lab.request())["id"]
    ev = requested(lab, rid, "deploy")
    d = ev["data"]
    assert (d["slot"], d["role"], d["store_name"]) == ("green", "app_green", "pg-green")
    assert len(d["version"]) == 32 and d["timeout_ms"] == 30000
    assert "password" not in json.dumps(ev)
    # nothing moves until the pipeline answers
    time.sleep(1)
    assert lab.rotations()[0]["stage"] == "deploy"
    answer_with_kcat(lab, rid, "deploy")
    requested(lab, rid, "swap")
    lab.cli("complete", rid, "swap", "--by", "pipeline-42")
    ev = requested(lab, rid, "retire")
    assert ev["data"]["slot"] == "blue"
    lab.cli("complete", rid, "retire")  # during the drain
    assert lab.rotations()[0]["status"] == "running"
    assert lab.wait_status(rid, ("completed", "failed"))["status"] == "completed"
    assert not lab.rolcanlogin("app_blue")
    assert lab.can_login("app_green", lab.stored("pg-green"))


def test_pipeline_failure_retries_then_out_of_place_answers_are_dead_lettered(make_lab):
    # attempt 2 must outlast the steps below (two dead-letter round trips through kcat)
    lab = make_lab(deploy="{ kind: external, external: { timeout: 120s } }",
                   stages="{ timeout: 30s, max_attempts: 2, backoff: { initial: 100ms, "
                          "max: 200ms } }")
    lab.start()
    rid = lab.rotation_for(lab.request())["id"]
    requested(lab, rid, "deploy")
    r = lab.cli("complete", rid, "deploy", "--failed", "helm upgrade failed: timeout")
    assert r.returncode == 0
    # the failure is recorded with the pipeline's reason and the stage is asked again
    requested(lab, rid, "deploy", attempt=2)
    hist = lab.history(rid)
    assert any(o == "retrying" and "helm upgrade failed" in e for s, o, a, e in hist), hist
    # an answer for a stage nobody waits for goes to the dead-letter topic
    answer_with_kcat(lab, rid, "retire")
    dlq = wait_for(lambda: lab.consume("rotor.deadletter"), 30, 0.3, what="dead letter")
    reason = dict(zip(dlq[0]["headers"][::2], dlq[0]["headers"][1::2]))["rotor-dlq-reason"]
    assert "out of place" in reason
    # an answer for an earlier attempt of the running stage is out of place too
    answer_with_kcat(lab, rid, "deploy", attempt=1)
    wait_for(lambda: len(lab.consume("rotor.deadletter")) >= 2, 30, 0.3,
             what="the stale answer in the dead-letter topic")
    # the CLI refuses it before sending
    r = lab.cli("complete", rid, "retire", check=False)
    assert r.returncode == 1 and "nothing waits" in r.stderr
    answer_with_kcat(lab, rid, "deploy", type_="stage.failed", error="still broken")
    row = lab.wait_status(rid, "failed")
    assert "still broken" in row["error"]
    assert lab.active_slot() == "blue"


def test_pipeline_that_never_answers_times_out(make_lab):
    # only deploy is short: the stages before it must not time out on a loaded machine
    lab = make_lab(deploy="{ kind: external, external: { timeout: 2s } }",
                   stages="{ timeout: 30s, max_attempts: 1, backoff: { initial: 100ms, "
                          "max: 200ms }, deploy: { timeout: 1s } }")
    lab.start()
    rid = lab.rotation_for(lab.request())["id"]
    row = lab.wait_status(rid, "failed", timeout=60)
    assert row["stage"] == "deploy"
    assert "timed out after 2s" in row["error"], row["error"]
