"""Key Vault's own events as triggers, published with kcat as Event Grid delivers them through
Event Hubs: near-expiry or expiry of the version production uses starts a rotation (in the Event
Grid schema and in the CloudEvents schema); events about the standby slot or an old version are
ignored; a version written by someone else is reported out of band; malformed events are
dead-lettered. The store is Azure Key Vault (the emulator, over TLS, with a client secret)."""
import json
import os
import re
import secrets
import time
import urllib.request

import pytest

from kvemu import KeyVaultEmulator, node_available
from rotorlab import wait_for

pytestmark = pytest.mark.skipif(not node_available(), reason="node is needed for the emulator")

TOPIC = "keyvault.events"


@pytest.fixture
def kv_lab(make_lab, tmp_path):
    yield from kv_lab_with(make_lab, tmp_path)


@pytest.fixture
def kv_lab_manual(make_lab, tmp_path):
    yield from kv_lab_with(make_lab, tmp_path, approval="{ mode: manual, gate: retire }")


@pytest.fixture
def kv_lab_short_timeout(make_lab, tmp_path):
    yield from kv_lab_with(make_lab, tmp_path, store_extra=", timeout: 1s")


def kv_lab_with(make_lab, tmp_path, store_extra="", **opts):
    kv = KeyVaultEmulator(str(tmp_path))
    kv.start()
    store = (f'{{ kind: azure-keyvault, vault_url: "{kv.vault_url}", resolve: "{kv.resolve}", '
             f'ca_file: {kv.ca_file}, names: {{ blue: pg-blue, green: pg-green, '
             f'current: pg-current }}{store_extra} }}')
    azure = (f'{{ tenant_id: "{kv.tenant}", client_id: "{kv.client_id}", '
             f'authority_host: "{kv.authority_host}", ca_file: {kv.ca_file} }}')
    env = {k: v for k, v in kv.env("secret").items() if k == "AZURE_CLIENT_SECRET"}
    lab = make_lab(store=store, azure=azure, keyvault_topic=TOPIC, env_extra=env, **opts)
    # the operator's bootstrap: the active slot's password is a version in the vault
    token = kv.token()
    r = kv.vault("PUT", "/secrets/pg-blue", {"value": lab.initial_password}, token=token)
    assert r.status == 200, r.body
    lab.kv = kv
    lab.kv_token = token
    lab.blue_version = r.json()["id"].rsplit("/", 1)[1]
    yield lab
    kv.stop()


def event_grid(lab, event_type, name, version, exp=None):
    return [{"id": secrets.token_hex(8),
             "topic": "/subscriptions/0000/resourceGroups/rg/providers/Microsoft.KeyVault/"
                      "vaults/rotor-test",
             "subject": name, "eventType": event_type,
             "data": {"Id": f"https://rotor-test.vault.azure.net/secrets/{name}/{version}",
                      "VaultName": "rotor-test", "ObjectType": "Secret", "ObjectName": name,
                      "Version": version, "NBF": None,
                      "EXP": str(exp or int(time.time()) + 3600)},
             "dataVersion": "1", "metadataVersion": "1",
             "eventTime": time.strftime("%Y-%m-%dT%H:%M:%S.0000000Z", time.gmtime())}]


def cloud_event(lab, event_type, name, version, exp=None):
    return {"id": secrets.token_hex(8), "specversion": "1.0",
            "source": "/subscriptions/0000/resourceGroups/rg/providers/Microsoft.KeyVault/"
                      "vaults/rotor-test",
            "type": event_type, "subject": name,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "data": {"id": f"https://rotor-test.vault.azure.net/secrets/{name}/{version}",
                     "vaultName": "rotor-test", "objectType": "Secret", "objectName": name,
                     "version": version, "nbf": None, "exp": exp or int(time.time()) + 3600}}


def publish(lab, doc):
    lab.produce(json.dumps(doc), key=None, topic=TOPIC,
                headers=[("aeg-event-type", "Notification")])


def keyvault_log(lab, d):
    return [json.loads(line) for line in d.text().splitlines()
            if '"msg":"keyvault.event"' in line]


def test_near_expiry_in_event_grid_schema_rotates(kv_lab):
    lab = kv_lab
    lab.start()
    publish(lab, event_grid(lab, "Microsoft.KeyVault.SecretNearExpiry", "pg-blue",
                            lab.blue_version))
    rows = wait_for(lambda: lab.rotations(), 60, 0.3, what="a rotation from the event")
    assert lab.pg.query("SELECT trigger FROM rotor.rotations")[0][0] == "keyvault"
    done = lab.wait_status(rows[0]["id"], ("completed", "failed"), 90)
    assert done["status"] == "completed", lab.history(rows[0]["id"])
    # the new password is a vault version that logs in; blue is retired
    token = lab.kv.token()
    green = lab.kv.vault("GET", "/secrets/pg-green", token=token).json()
    assert green["tags"]["rotation"] == rows[0]["id"]
    assert lab.can_login("app_green", green["value"])
    assert not lab.rolcanlogin("app_blue")
    old = lab.kv.vault("GET", f"/secrets/pg-blue/{lab.blue_version}", token=token)
    assert old.status == 403, "retire disables the old version"


def test_expiry_in_cloudevents_schema_rotates_with_a_warning(kv_lab):
    lab = kv_lab
    d = lab.start()
    publish(lab, cloud_event(lab, "Microsoft.KeyVault.SecretExpired", "pg-blue", lab.blue_version,
                             exp=int(time.time()) - 60))
    rows = wait_for(lambda: lab.rotations(), 60, 0.3, what="a rotation from the event")
    reason = lab.pg.query("SELECT reason FROM rotor.rotations")[0][0]
    assert "WARNING" in reason and "EXPIRED" in reason
    assert lab.wait_status(rows[0]["id"], ("completed", "failed"), 90)["status"] == "completed"
    assert '"keyvault.secret_expired"' in d.text()


def test_standby_old_and_foreign_events_are_recorded_and_ignored(kv_lab):
    lab = kv_lab
    d = lab.start()
    token = lab.kv_token
    r = lab.kv.vault("PUT", "/secrets/pg-green", {"value": "standby-placeholder"}, token=token)
    green_version = r.json()["id"].rsplit("/", 1)[1]
    publish(lab, event_grid(lab, "Microsoft.KeyVault.SecretNearExpiry", "pg-green",
                            green_version))
    publish(lab, event_grid(lab, "Microsoft.KeyVault.SecretNearExpiry", "pg-blue",
                            "0" * 32))
    publish(lab, event_grid(lab, "Microsoft.KeyVault.SecretNearExpiry", "unrelated",
                            "1" * 32))
    publish(lab, event_grid(lab, "Microsoft.KeyVault.CertificateNearExpiry", "some-cert",
                            "2" * 32))
    logs = wait_for(lambda: (lambda l: l if len(l) >= 4 else None)(keyvault_log(lab, d)), 30,
                    0.3, what="four recorded Key Vault events")
    whys = sorted(x["why"] for x in logs)
    assert all(x["outcome"] == "ignored" for x in logs), logs
    assert "about the standby slot" in whys
    assert "about an old version of the active slot" in whys
    assert "not a secret rotor manages" in whys
    assert "not an event rotor acts on" in whys
    assert lab.rotations() == []


def test_new_version_by_someone_else_is_reported(kv_lab):
    lab = kv_lab
    lab.start()
    r = lab.kv.vault("PUT", "/secrets/pg-blue", {"value": "typed-in-the-portal"},
                     token=lab.kv_token)
    version = r.json()["id"].rsplit("/", 1)[1]
    publish(lab, event_grid(lab, "Microsoft.KeyVault.SecretNewVersionCreated", "pg-blue",
                            version))

    def reported():
        evs = [e for e in lab.events() if e["type"] == "secret.changed-out-of-band"]
        return evs or None
    ev = wait_for(reported, 30, 0.3, what="secret.changed-out-of-band")[0]
    assert ev["data"] == {"secret": "app-db", "slot": "blue", "store_name": "pg-blue",
                          "version": version, "vault": "rotor-test",
                          "event_id": ev["data"]["event_id"]}
    assert "typed-in-the-portal" not in json.dumps(ev)
    assert lab.rotations() == []


def test_malformed_keyvault_events_are_dead_lettered(kv_lab):
    lab = kv_lab
    lab.start()
    bad = event_grid(lab, "Microsoft.KeyVault.SecretNearExpiry", "pg-blue", lab.blue_version)
    bad[0]["data"]["EXP"] = {"not": "a time"}
    publish(lab, bad)
    lab.produce(b"\x00not json", key=None, topic=TOPIC)
    got = wait_for(lambda: (lambda m: m if len(m) >= 2 else None)(
        lab.consume("rotor.deadletter")), 30, 0.3, what="two dead letters")
    reasons = [dict(zip(m["headers"][::2], m["headers"][1::2]))["rotor-dlq-reason"] for m in got]
    assert any("EXP" in r for r in reasons), reasons
    assert any("JSON" in r for r in reasons), reasons
    assert all(dict(zip(m["headers"][::2], m["headers"][1::2]))["rotor-dlq-topic"] == TOPIC
               for m in got)
    assert lab.rotations() == []


def test_keyvault_outage_does_not_delay_an_approval(kv_lab_manual):
    """Key Vault events for a managed secret whose vault is down take seconds each (the store's
    retries, then rotor's): an approval published after them is applied at once, because only
    the events' own lanes wait for the vault."""
    lab = kv_lab_manual
    d = lab.start()
    rid = lab.rotation_for(lab.request())["id"]
    assert lab.wait_status(rid, "waiting", timeout=90)["stage"] == "approve"
    lab.kv.stop()  # connections to the vault are refused from now on
    for _ in range(6):
        publish(lab, event_grid(lab, "Microsoft.KeyVault.SecretNearExpiry", "pg-blue",
                                lab.blue_version))
    wait_for(lambda: '"store.keyvault.retry"' in d.text(), 30, 0.1,
             what="rotor asking the vault that is down")
    start = time.monotonic()
    lab.command("rotation.approved", rid, by="alice")

    def approved():
        return lab.pg.query("SELECT actor FROM rotor.history WHERE rotation_id = %s "
                            "AND outcome = 'approved'", (rid,))
    assert wait_for(approved, 60, 0.1, what="the approval") == [("alice",)]
    took = time.monotonic() - start
    # One event costs the store's retries (about 4-7 s with the vault down); six of them one
    # after the other held the approval back for half a minute.
    assert took < 3.0, f"the approval took {took:.1f} s behind the Key Vault events"


def test_keyvault_event_given_up_after_three_attempts(kv_lab_short_timeout):
    """A vault that does not answer in time: the event is tried three times, then dead-lettered
    with the reason, counted, and its offset goes on."""
    lab = kv_lab_short_timeout
    d = lab.start()
    lab.kv.faults(delay_ms=3000)
    publish(lab, event_grid(lab, "Microsoft.KeyVault.SecretNearExpiry", "pg-blue",
                            lab.blue_version))
    got = wait_for(lambda: lab.consume("rotor.deadletter"), 150, 0.5, what="a dead letter")
    headers = dict(zip(got[0]["headers"][::2], got[0]["headers"][1::2]))
    assert headers["rotor-dlq-topic"] == TOPIC
    assert "vault unreachable" in headers["rotor-dlq-reason"], headers
    assert "after 3 attempts" in headers["rotor-dlq-reason"], headers
    port = re.search(r'"http.listening".*?"port":"(\d+)"', d.text()).group(1)
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert re.search(r"^rotor_keyvault_events_skipped_total 1$", text, re.M), text
    assert re.search(r'^rotor_input_messages_total\{outcome="skipped"\} 1$', text, re.M), text
    assert lab.rotations() == []
