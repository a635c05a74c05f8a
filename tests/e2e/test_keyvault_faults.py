"""Key Vault faults during a rotation: throttling (429 + Retry-After) and outage (503) in the middle
of generate and of retire, and a token that expires mid-rotation. Every rotation completes, and
none writes a second version. (The per-vault write limiter: test_keyvault_limiter.py.)"""
import time

import pytest

from kvlab import make_kvlab  # noqa: F401 (fixture)
from rotorlab import wait_for

MANUAL = "{ mode: manual, gate: retire }"
FAULT = {"throttle": (429, "throttled"), "down": (503, "unavailable")}
RETRY_AFTER_S = 2


def inject_in_generate(lab, fault):
    """Starts a rotation with the fault landing on generate's requests; returns the rotation id
    and the emulator seq from which the fault can be seen."""
    seq = lab.last_seq()
    if fault == "throttle":
        # prepare only reads, so the first writes are generate's PUT of the standby version
        lab.kv.faults(throttle_writes=2, retry_after=RETRY_AFTER_S)
        return lab.rotation_for(lab.request())["id"], seq
    # 503 matches any vault request: hold them back until generate's version listing arrives,
    # then switch the outage on, so it answers that listing and the retry after it. The hold is
    # long enough for this test to see the listing and switch on a loaded machine.
    lab.kv.faults(delay_ms=4000, retry_after=RETRY_AFTER_S)
    rid = lab.rotation_for(lab.request())["id"]

    def listing():
        return any(r["path"] == "/secrets/pg-green/versions" for r in lab.vault_requests(seq))
    wait_for(listing, 20, 0.02, what="generate's version listing")
    lab.kv.faults(unavailable=2, delay_ms=0)
    return rid, seq


def inject_in_retire(lab, fault):
    """Holds the rotation at approval (after swap), switches the fault on, approves: retire's
    disable of the old version is the next vault request."""
    rid = lab.rotation_for(lab.request())["id"]
    assert lab.wait_status(rid, "waiting", timeout=60)["stage"] == "approve"
    seq = lab.last_seq()
    if fault == "throttle":
        lab.kv.faults(throttle_writes=2, retry_after=RETRY_AFTER_S)
    else:
        lab.kv.faults(unavailable=2, retry_after=RETRY_AFTER_S)
    lab.cli("approve", rid, "--by", "pytest")
    return rid, seq


def check_one_version_each(lab, rid):
    [green] = lab.versions("pg-green")
    assert green["tags"]["rotation"] == rid and green["attributes"]["enabled"]
    assert lab.can_login("app_green", green["value"])
    [blue] = lab.versions("pg-blue")
    assert blue["version"] == lab.seed_versions["pg-blue"] and not blue["attributes"]["enabled"]
    assert len(lab.versions("pg-current")) == 1
    return green["value"]


@pytest.mark.parametrize("stage", ["generate", "retire"])
@pytest.mark.parametrize("fault", ["throttle", "down"])
def test_fault_mid_stage_then_recovery(make_kvlab, fault, stage):
    lab = make_kvlab(approval=MANUAL if stage == "retire" else "{ mode: auto, soak: 0s }")
    lab.start()
    inject = inject_in_generate if stage == "generate" else inject_in_retire
    rid, seq = inject(lab, fault)
    done = lab.wait_status(rid, ("completed", "failed"), timeout=60)
    assert done["status"] == "completed", (done, lab.history(rid))

    status, label = FAULT[fault]
    log = [r for r in lab.vault_requests(seq) if r["kind"] == "vault"]
    hit = [r for r in log if r["status"] == status]
    assert len(hit) == 2 and all(r.get("fault") == label for r in hit), log
    if stage == "generate":
        paths = {"/secrets/pg-green"} if fault == "throttle" else {"/secrets/pg-green/versions"}
        assert {r["path"] for r in hit} == paths
    else:
        old = lab.seed_versions["pg-blue"]
        assert all((r["method"], r["path"]) == ("PATCH", f"/secrets/pg-blue/{old}") for r in hit)
    # each retry waited the announced Retry-After
    after = [r for r in log if r["seq"] > hit[0]["seq"]]
    for r in hit:
        nxt = next(x for x in after if x["seq"] > r["seq"] and x["path"] == r["path"])
        assert nxt["time"] - r["time"] >= RETRY_AFTER_S * 1000 - 50, (r, nxt)
    # recovered with exactly one new version: rotor retried, it did not write again
    puts = [r for r in lab.vault_requests()
            if (r["method"], r["path"]) == ("PUT", "/secrets/pg-green")]
    assert [r["status"] for r in puts if r["status"] == 200] == [200]
    pw = check_one_version_each(lab, rid)
    lab.wait_event(rid, "rotation.completed")
    lab.assert_no_secret_leaked([lab.initial_password, pw])


@pytest.mark.parametrize("cred", ["secret", "managed-identity"])
def test_token_expires_mid_rotation(make_kvlab, cred):
    lab = make_kvlab(cred=cred, approval=MANUAL)
    lab.start()
    rid = lab.rotation_for(lab.request())["id"]
    lab.wait_status(rid, "waiting", timeout=60)
    seq = lab.last_seq()
    lab.kv.faults(expire_tokens=True)
    lab.cli("approve", rid, "--by", "pytest")
    done = lab.wait_status(rid, ("completed", "failed"), timeout=60)
    assert done["status"] == "completed", (done, lab.history(rid))

    log = lab.vault_requests(seq)
    steps = [(r["kind"], r["method"], r["auth"], r["status"]) for r in log]
    fetch = "imds" if cred == "managed-identity" else "token"
    # the cached token is refused, rotor re-reads the challenge, fetches a new token, retries
    i = steps.index(("vault", "PATCH", True, 401))
    j = next(n for n, s in enumerate(steps) if s[0] == fetch and s[3] == 200)
    k = steps.index(("vault", "PATCH", True, 200))
    assert i < j < k, steps
    assert steps.count(("vault", "PATCH", True, 401)) == 1, steps
    check_one_version_each(lab, rid)


def test_throttled_put_never_lands_after_its_attempt(make_kvlab):
    """Issue 8: generate's PUT is throttled past the stage timeout. Attempt 1 ends (it gives up
    rather than start a retry past its deadline, or it is canceled at the deadline), attempt 2
    writes its version; no PUT of attempt 1 may land afterwards, or the vault's latest value
    would be a password the database never received. Before store requests could be canceled,
    attempt 1's PUT was retried after the Retry-After and landed as a second version."""
    retry_after = 3
    lab = make_kvlab(approval="{ mode: auto, soak: 0s }",
                     stages="{ timeout: 4s, max_attempts: 3, backoff: { initial: 200ms, "
                            "max: 1s } }")
    lab.start()
    seq = lab.last_seq()
    lab.kv.faults(throttle_writes=2, retry_after=retry_after)
    rid = lab.rotation_for(lab.request())["id"]
    done = lab.wait_status(rid, ("completed", "failed"), timeout=60)
    assert done["status"] == "completed", (done, lab.history(rid))
    hist = lab.history(rid)
    failed = [h for h in hist if h[0] == "generate" and h[1] in ("retrying", "failed")]
    assert failed and all("deadline" in h[3] or "timed out" in h[3] for h in failed), hist

    # Long enough for any retry attempt 1 might still have scheduled to reach the vault.
    time.sleep(retry_after + 2)
    puts = [r for r in lab.vault_requests(seq)
            if (r["method"], r["path"]) == ("PUT", "/secrets/pg-green")]
    assert [r["status"] for r in puts] == [429, 429, 200], puts
    tagged = [v for v in lab.versions("pg-green") if v.get("tags", {}).get("rotation") == rid]
    assert len(tagged) == 1, tagged
    pw = check_one_version_each(lab, rid)
    assert lab.can_login("app_green", pw)
