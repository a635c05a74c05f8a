"""The Key Vault emulator checked by the official Azure SDK for JavaScript (sdk_check.mjs) and by
raw REST requests: challenge, error bodies, paging, disabled versions, faults, IMDS."""
import json
import os
import subprocess
import time
import urllib.parse

import pytest

from kvemu import EMULATOR_DIR, KeyVaultEmulator, node_available

pytestmark = pytest.mark.skipif(
    not node_available(), reason="node or the emulator's npm packages are missing (scripts/setup.sh)"
)

ROTOR_TAGS = {"rotation": "rot-0001", "slot": "blue", "role": "app_blue", "managed-by": "rotor"}


@pytest.fixture(scope="module")
def cert_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("kvcerts"))


@pytest.fixture
def kv(tmp_path, cert_dir):
    with KeyVaultEmulator(str(tmp_path / "kv"), assertion="federated-token-1", cert_dir=cert_dir) as emu:
        yield emu


@pytest.fixture
def token(kv):
    return kv.token()


def rotor_style_put(kv, token, name, value):
    """A version written in the shape rotor's store writes: contentType, tags, exp."""
    body = {"value": value, "contentType": "text/plain", "tags": ROTOR_TAGS,
            "attributes": {"enabled": True, "exp": int(time.time()) + 3600}}
    r = kv.vault("PUT", f"/secrets/{name}", body, token=token)
    assert r.status == 200, r.body
    return r.json()


def test_sdk_checks(kv, token, tmp_path):
    written = rotor_style_put(kv, token, "app-db-blue", "rotor-wrote-this-0123")
    version = written["id"].rsplit("/", 1)[1]
    token_file = tmp_path / "federated-token"
    token_file.write_text("federated-token-1")
    config = {
        "vault_url": kv.vault_url, "authority_host": kv.authority_host,
        "imds_endpoint": kv.imds_endpoint, "control_url": kv.control_url, "ca_file": kv.ca_file,
        "tenant": kv.tenant, "client_id": kv.client_id, "client_secret_file": kv.client_secret_file,
        "federated_token_file": str(token_file),
        "rotor_written": {"name": "app-db-blue", "version": version, "value": "rotor-wrote-this-0123",
                          "tags": ROTOR_TAGS, "contentType": "text/plain"},
    }
    cfg_path, out_path = tmp_path / "sdk-config.json", tmp_path / "sdk-written.json"
    cfg_path.write_text(json.dumps(config))
    env = {k: v for k, v in os.environ.items() if not k.startswith("AZURE_")}
    p = subprocess.run(["node", os.path.join(EMULATOR_DIR, "sdk_check.mjs"), str(cfg_path), str(out_path)],
                       capture_output=True, text=True, timeout=180, env=env, cwd=EMULATOR_DIR)
    print(p.stdout, p.stderr)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "FAIL" not in p.stdout
    assert p.stdout.count("ok   ") == 11

    # What the SDK wrote is in the emulator exactly as the SDK reported it: rotor reads this later.
    out = json.loads(out_path.read_text())
    w = out["sdk_written"]
    versions = kv.state()["secrets"][w["name"]]
    stored = next(v for v in versions if v["version"] == w["version"])
    assert stored["value"] == w["value"]
    assert stored["tags"] == w["tags"]
    # SDK 4.11 drops setSecret's contentType (Azure/azure-sdk-for-js#38300): compare, not assume.
    assert stored.get("contentType") == w["contentType"]
    assert stored["attributes"]["exp"] == w["exp"]
    assert w["id"] == f"{kv.vault_url}/secrets/{w['name']}/{w['version']}"
    assert out["sdk_read"]["version"] == version
    # The SDK never had to be told to skip the challenge's resource check: the vault URL is a real
    # *.vault.azure.net name, and every token it used came from the emulator.
    assert not any(r["kind"] == "vault" and r["status"] == 401 and r["auth"] for r in kv.requests())


def test_challenge_shape(kv):
    r = kv.vault("GET", "/secrets/anything")
    assert r.status == 401
    www = r.headers["www-authenticate"]
    assert www == (f'Bearer authorization="{kv.authority_host}/{kv.tenant}", '
                   'resource="https://vault.azure.net"')
    assert r.json()["error"]["code"] == "Unauthorized"


def test_unknown_expired_and_wrong_audience_tokens_are_challenged(kv, token):
    assert kv.vault("GET", "/secrets", token="made-up").status == 401
    pg_token = kv.token("https://ossrdbms-aad.database.windows.net/.default")
    r = kv.vault("GET", "/secrets", token=pg_token)
    assert r.status == 401 and "audience" in r.json()["error"]["message"]
    assert kv.vault("GET", "/secrets", token=token).status == 200
    kv.faults(expire_tokens=True)
    r = kv.vault("GET", "/secrets", token=token)
    assert r.status == 401 and "www-authenticate" in r.headers


def test_token_lifetime_setting(kv):
    kv.faults(token_lifetime_s=3)
    t = kv.token()
    assert kv.vault("GET", "/secrets", token=t).status == 200
    time.sleep(3.2)
    assert kv.vault("GET", "/secrets", token=t).status == 401


def test_token_endpoint_refuses_wrong_secret_and_assertion(kv):
    url = f"{kv.authority_host}/{kv.tenant}/oauth2/v2.0/token"
    hdr = {"Content-Type": "application/x-www-form-urlencoded"}
    base = {"grant_type": "client_credentials", "client_id": kv.client_id,
            "scope": "https://vault.azure.net/.default"}
    r = kv.request("POST", url, urllib.parse.urlencode({**base, "client_secret": "wrong"}), hdr)
    assert r.status == 401 and r.json()["error"] == "invalid_client"
    jwt = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    form = {**base, "client_assertion_type": jwt, "client_assertion": "federated-token-0"}
    assert kv.request("POST", url, urllib.parse.urlencode(form), hdr).status == 401
    kv.set_expected_assertion("federated-token-0")  # the kubelet rotated the token
    r = kv.request("POST", url, urllib.parse.urlencode(form), hdr)
    assert r.status == 200 and r.json()["token_type"] == "Bearer"
    assert [a["accepted"] for a in kv.state()["assertions"]] == [False, True]


def test_error_bodies(kv, token):
    r = kv.vault("GET", "/secrets/missing", token=token)
    assert r.status == 404 and r.json()["error"]["code"] == "SecretNotFound"
    r = kv.vault("PUT", "/secrets/bad_name", {"value": "x"}, token=token)
    assert r.status == 400 and r.json()["error"]["code"] == "BadParameter"
    r = kv.vault("PUT", "/secrets/" + "a" * 128, {"value": "x"}, token=token)
    assert r.status == 400
    assert kv.vault("PUT", "/secrets/" + "a" * 127, {"value": "x"}, token=token).status == 200
    r = kv.vault("PUT", "/secrets/ok", {"novalue": 1}, token=token)
    assert r.status == 400 and r.json()["error"]["code"] == "BadParameter"
    r = kv.vault("GET", "/secrets", token=token, api_version="1.0")
    assert r.status == 400 and r.json()["error"]["code"] == "BadParameter"


def test_set_get_and_paging(kv, token):
    ids = [rotor_style_put(kv, token, "paged", f"pw-{i}")["id"] for i in range(27)]
    latest = kv.vault("GET", "/secrets/paged", token=token).json()
    assert latest["id"] == ids[-1] and latest["value"] == "pw-26"
    assert latest["tags"] == ROTOR_TAGS and latest["attributes"]["recoveryLevel"]
    first = kv.vault("GET", f"/secrets/paged/{ids[0].rsplit('/', 1)[1]}", token=token).json()
    assert first["value"] == "pw-0"
    seen, pages = [], 0
    r = kv.vault("GET", "/secrets/paged/versions", token=token, query={"maxresults": "10"})
    while True:
        assert r.status == 200
        body = r.json()
        pages += 1
        assert all("value" not in item for item in body["value"])
        seen += [item["id"] for item in body["value"]]
        if not body.get("nextLink"):
            break
        assert body["nextLink"].startswith(kv.vault_url + "/secrets/paged/versions?")
        r = kv.request("GET", body["nextLink"], headers={"Authorization": f"Bearer {token}"})
    assert pages == 3 and sorted(seen) == sorted(ids)


def test_disabled_version_is_forbidden(kv, token):
    v1 = rotor_style_put(kv, token, "slot", "one")["id"].rsplit("/", 1)[1]
    rotor_style_put(kv, token, "slot", "two")
    r = kv.vault("PATCH", f"/secrets/slot/{v1}", {"attributes": {"enabled": False},
                                                    "tags": {**ROTOR_TAGS, "retired": "1"}}, token=token)
    assert r.status == 200 and "value" not in r.json()
    assert r.json()["attributes"]["enabled"] is False and r.json()["tags"]["retired"] == "1"
    r = kv.vault("GET", f"/secrets/slot/{v1}", token=token)
    assert r.status == 403
    err = r.json()["error"]
    assert err["code"] == "Forbidden" and "disabled" in err["message"]
    assert kv.vault("GET", "/secrets/slot", token=token).json()["value"] == "two"
    kv.vault("PATCH", f"/secrets/slot/{v1}", {"attributes": {"enabled": True}}, token=token)
    assert kv.vault("GET", f"/secrets/slot/{v1}", token=token).json()["value"] == "one"


def test_throttle_writes_with_retry_after(kv, token):
    kv.faults(throttle_writes=2, retry_after=7)
    assert kv.vault("GET", "/secrets", token=token).status == 200  # reads are not writes
    for _ in range(2):
        r = kv.vault("PUT", "/secrets/t", {"value": "x"}, token=token)
        assert r.status == 429 and r.headers["retry-after"] == "7"
        assert r.json()["error"]["code"] == "Throttled"
    assert kv.vault("PUT", "/secrets/t", {"value": "x"}, token=token).status == 200
    assert len(kv.state()["secrets"]["t"]) == 1
    kv.faults(throttle_writes=1, retry_after=2, retry_after_header="x-ms-retry-after-ms")
    r = kv.vault("PUT", "/secrets/t", {"value": "x"}, token=token)
    assert r.status == 429 and r.headers["x-ms-retry-after-ms"] == "2000"


def test_write_limit_and_peak(kv, token):
    kv.faults(write_limit_per_10s=3)
    statuses = [kv.vault("PUT", "/secrets/w", {"value": "x"}, token=token).status for _ in range(5)]
    assert statuses == [200, 200, 200, 429, 429]
    assert kv.state()["writes_peak_10s"] == 3


def test_unavailable_drop_and_delay(kv, token):
    kv.faults(unavailable=1)
    assert kv.vault("GET", "/secrets", token=token).status == 503
    assert kv.vault("GET", "/secrets", token=token).status == 200
    kv.faults(drop=1)
    with pytest.raises((ConnectionError, OSError)):
        kv.vault("GET", "/secrets", token=token)
    assert kv.vault("GET", "/secrets", token=token).status == 200
    kv.faults(delay_ms=600)
    t0 = time.monotonic()
    assert kv.vault("GET", "/secrets", token=token).status == 200
    assert time.monotonic() - t0 >= 0.55
    kv.faults(delay_ms=0, target="token", unavailable=1)
    with pytest.raises(RuntimeError):
        kv.token()
    faults = {r.get("fault") for r in kv.requests()}
    assert {"unavailable", "dropped"} <= faults


def test_imds(kv):
    path = "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fvault.azure.net"
    r = kv.request("GET", kv.imds_endpoint + path)
    assert r.status == 400 and r.json()["error"] == "invalid_request"
    r = kv.request("GET", kv.imds_endpoint + path, headers={"Metadata": "true"})
    assert r.status == 200
    body = r.json()
    assert isinstance(body["expires_on"], str) and int(body["expires_on"]) > time.time()
    assert body["resource"] == "https://vault.azure.net" and body["token_type"] == "Bearer"
    assert kv.vault("GET", "/secrets", token=body["access_token"]).status == 200
    r = kv.request("GET", kv.imds_endpoint + path + "&client_id=someone-else", headers={"Metadata": "true"})
    assert r.status == 400
    log = [e for e in kv.requests() if e["kind"] == "imds"]
    assert [e["status"] for e in log] == [400, 200, 400]


def test_nothing_secret_in_the_emulator_log(kv, token):
    rotor_style_put(kv, token, "quiet", "do-not-print-me-42")
    kv.stop()
    with open(kv.log_path) as f:
        log = f.read()
    assert "do-not-print-me-42" not in log and kv.client_secret not in log and token not in log
