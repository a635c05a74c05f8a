"""Full rotations blue -> green -> blue with the azure-keyvault store against the Key Vault
emulator, once per Entra credential kind; and a bootstrap version written by the Azure SDK that
rotor takes as the active slot's current version and disables at retire."""
import json
import time

import pytest

from kvemu import node_available
from kvlab import credential_kind_logged, make_kvlab, rotate  # noqa: F401 (fixture)

VALIDITY_S = 90 * 86400
STAGES = ["prepare", "generate", "set-db", "deploy", "verify", "swap", "approve", "retire"]
LOGGED_KIND = {"secret": "environment", "workload": "workload-identity",
               "managed-identity": "managed-identity"}


def check_new_version(lab, rid, name, slot, role, t0, t1):
    """The one version rotation rid wrote to name: rotor's tags, contentType, exp, and it logs in
    to PostgreSQL as role. Returns its password."""
    mine = [v for v in lab.versions(name) if v["tags"].get("rotation") == rid]
    assert len(mine) == 1, f"{len(mine)} versions of {name} tagged {rid}"
    v = mine[0]
    assert v == lab.versions(name)[-1], "not the latest version"
    assert v["tags"] == {"rotation": rid, "slot": slot, "role": role, "managed-by": "rotor"}
    assert v["contentType"] == "text/plain"
    assert v["attributes"]["enabled"] is True
    exp = v["attributes"]["exp"]
    assert t0 + VALIDITY_S - 5 <= exp <= t1 + VALIDITY_S + 5, (exp - t0, VALIDITY_S)
    assert lab.journal_row(rid)["version"] == v["version"]
    pw = v["value"]
    assert len(pw) == 32
    assert lab.can_login(role, pw)
    return pw


def check_current(lab, role, password, rotations):
    vs = lab.versions("pg-current")
    assert len(vs) == rotations, "swap writes `current` once per rotation"
    assert vs[-1]["contentType"] == "application/json"
    assert vs[-1]["tags"] == {"managed-by": "rotor"}
    assert json.loads(vs[-1]["value"]) == {"role": role, "password": password}


def check_token_source(lab):
    """The credential kind rotor chose, seen from the emulator's side."""
    log = lab.vault_requests()
    kinds = {r["kind"] for r in log if r["status"] == 200}
    if lab.cred == "managed-identity":
        assert "imds" in kinds and "token" not in kinds, kinds
    else:
        grant = "client_secret" if lab.cred == "secret" else "client_assertion"
        tokens = [r for r in log if r["kind"] == "token" and r["status"] == 200]
        assert tokens and all(r["grant"] == grant for r in tokens), tokens
        assert "imds" not in kinds
    if lab.cred == "workload":
        got = lab.kv.state()["assertions"]
        assert got and all(a["accepted"] and a["assertion"] == lab.kv._assertion for a in got)
    # one challenge, one token for both rotations (cached per scope), and no token refused
    vault = [r for r in log if r["kind"] == "vault"]
    assert [(r["auth"], r["status"]) for r in vault if not r["auth"]] == [(False, 401)]
    assert not vault[0]["auth"]
    assert all(r["status"] != 401 for r in vault if r["auth"]), vault
    fetches = [r for r in log if r["kind"] in ("token", "imds")]
    assert len(fetches) == 1, fetches


@pytest.mark.parametrize("cred", ["secret", "workload", "managed-identity"])
def test_two_rotations_blue_green_blue(make_kvlab, cred):
    lab = make_kvlab(cred=cred)
    d = lab.start()
    assert credential_kind_logged(d) == LOGGED_KIND[cred]
    seed = lab.seed_versions["pg-blue"]
    initial = lab.initial_password
    assert lab.can_login("app_blue", initial) and not lab.rolcanlogin("app_green")

    t0 = int(time.time())
    first = rotate(lab, "blue", "green")
    t1 = int(time.time()) + 1
    assert lab.journal_row(first)["old_version"] == seed, "prepare reads the vault's current"
    green_pw = check_new_version(lab, first, "pg-green", "green", "app_green", t0, t1)
    assert [v["version"] for v in lab.versions("pg-green")] == [lab.journal_row(first)["version"]]
    blue = lab.versions("pg-blue")
    assert [v["version"] for v in blue] == [seed], "generate wrote only the standby slot"
    assert blue[0]["attributes"]["enabled"] is False, "retire disables the old version"
    assert not lab.rolcanlogin("app_blue") and not lab.can_login("app_blue", initial)
    assert lab.active_slot() == "green"
    check_current(lab, "app_green", green_pw, 1)

    t0 = int(time.time())
    second = rotate(lab, "green", "blue")
    t1 = int(time.time()) + 1
    assert lab.journal_row(second)["old_version"] == lab.journal_row(first)["version"]
    blue_pw = check_new_version(lab, second, "pg-blue", "blue", "app_blue", t0, t1)
    assert blue_pw not in (initial, green_pw)
    blue = lab.versions("pg-blue")
    assert [v["version"] for v in blue][0] == seed and len(blue) == 2
    assert blue[0]["attributes"]["enabled"] is False
    green = lab.versions("pg-green")
    assert len(green) == 1 and green[0]["attributes"]["enabled"] is False
    assert not lab.can_login("app_green", green_pw) and not lab.rolcanlogin("app_green")
    assert lab.active_slot() == "blue"
    check_current(lab, "app_blue", blue_pw, 2)

    lab.wait_event(second, "rotation.completed")
    events = lab.events()
    for rid in (first, second):
        mine = [e for e in events if e["data"].get("rotation_id") == rid]
        assert [e["data"]["stage"] for e in mine if e["type"] == "stage.completed"] == STAGES
        assert mine[-1]["type"] == "rotation.completed"
    lab.validate_events()
    check_token_source(lab)
    lab.assert_no_secret_leaked([initial, green_pw, blue_pw])


@pytest.mark.skipif(not node_available(), reason="node or the emulator's npm packages are missing")
def test_version_written_by_the_sdk_is_read_and_retired(make_kvlab):
    lab = make_kvlab(cred="secret", sdk_seed=True)
    sdk = lab.sdk_written
    assert sdk["tags"] == {"written-by": "azure-sdk"} and sdk["exp"]
    [seed] = lab.versions("pg-blue")
    assert seed["version"] == sdk["version"] and seed["value"] == lab.initial_password
    assert seed["attributes"]["exp"] == sdk["exp"]
    lab.start()
    assert lab.can_login("app_blue", lab.initial_password)

    rid = rotate(lab, "blue", "green")
    assert lab.journal_row(rid)["old_version"] == sdk["version"]
    # the SDK's version, untouched but for being disabled at retire
    [after] = lab.versions("pg-blue")
    assert after["version"] == sdk["version"] and after["attributes"]["enabled"] is False
    assert after["tags"] == sdk["tags"] and after["value"] == lab.initial_password
    disables = [r for r in lab.vault_requests() if r["method"] == "PATCH"]
    assert [(r["path"], r["status"]) for r in disables] == [
        (f"/secrets/pg-blue/{sdk['version']}", 200)]
    green_pw = lab.stored("pg-green")
    assert lab.can_login("app_green", green_pw)
    assert not lab.can_login("app_blue", lab.initial_password)
    lab.wait_event(rid, "rotation.completed")
    lab.assert_no_secret_leaked([lab.initial_password, green_pw])
