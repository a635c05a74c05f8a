"""kvlab: rotorlab's Lab with the `azure-keyvault` store, against the Key Vault emulator.

A KvLab is a Lab (PostgreSQL, role pairs, embedded broker, rotor processes) whose secrets live in
the emulator (tests/e2e/kvemu.py) instead of a file store: the operator's bootstrap is a version of
the active slot's secret in the vault, written over the REST API or, with sdk_seed, by the Azure
SDK (tests/emulators/keyvault/sdk_set.mjs). rotor authenticates with one credential kind:
"secret" (AZURE_CLIENT_SECRET), "workload" (a federated token file) or "managed-identity" (IMDS).
The config is rotorlab's own, with the store and azure sections rewritten, so the lab options
(stages, approval, deploy...) keep their meaning; with secrets=N it holds N secrets db-00.. on
role pairs app_blue_i/app_green_i and vault names pg-blue-i/pg-green-i.
"""

import json
import os
import re
import secrets as pysecrets
import shutil
import subprocess
import time

import pytest

from kvemu import EMULATOR_DIR, KeyVaultEmulator
from rotorlab import KCAT, Lab, check_clean_exit
from schemas import validate_event

CRED_KINDS = ("secret", "workload", "managed-identity")
ROTOR_TAG = {"managed-by": "rotor"}

_STORE_RE = re.compile(r"    store: \{ kind: file, dir: [^\n]*,\n\s+names: \{ blue: pg-blue, "
                       r"green: pg-green(?:, current: (?P<current>[\w-]+))? \} \}\n")


class KvLab(Lab):
    def __init__(self, cred="secret", secrets=1, sdk_seed=False, writes_per_10s=None, **options):
        if cred not in CRED_KINDS:
            raise ValueError(f"unknown credential kind {cred}")
        self.cred = cred
        self.count = secrets
        self.sdk_seed = sdk_seed
        self.writes_per_10s = writes_per_10s
        self.kv = None
        self.seed_versions = {}  # vault name -> version id of the operator's bootstrap
        self.passwords = {}  # role -> the bootstrap password (blue roles)
        try:
            super().__init__(**options)
        except BaseException:
            self._teardown_partial()
            raise

    def _teardown_partial(self):
        if self.kv:
            self.kv.stop()
        if getattr(self, "pg", None):
            self.pg.stop()

    # -- names ---------------------------------------------------------------------------------

    def secret_names(self):
        return ["app-db"] if self.count == 1 else [f"db-{i:02d}" for i in range(self.count)]

    def roles(self, i=None):
        """(blue role, green role) of secret i (None: the single secret)."""
        if i is None or self.count == 1:
            return "app_blue", "app_green"
        return f"app_blue_{i}", f"app_green_{i}"

    def vault_names(self, i=None):
        """(blue, green) secret names in the vault of secret i."""
        if i is None or self.count == 1:
            return "pg-blue", "pg-green"
        return f"pg-blue-{i}", f"pg-green-{i}"

    # -- set-up --------------------------------------------------------------------------------

    def _seed_database(self):
        super()._seed_database()
        self.passwords["app_blue"] = self.initial_password
        if self.count > 1:
            for i in range(self.count):
                blue, green = self.roles(i)
                pw = pysecrets.token_urlsafe(24)
                self.pg.query(f"CREATE ROLE {blue} LOGIN PASSWORD %s IN ROLE app_rw", (pw,))
                self.pg.query(f"CREATE ROLE {green} NOLOGIN IN ROLE app_rw")
                self.passwords[blue] = pw
        kw = {"assertion": pysecrets.token_urlsafe(32)} if self.cred == "workload" else {}
        self.kv = KeyVaultEmulator(os.path.join(self.root, "kv"), **kw).start()
        if self.cred == "workload":
            self.federated_token_file = os.path.join(self.root, "federated-token")
            with open(self.federated_token_file, "w") as f:
                f.write(self.kv._assertion)
        for i in range(self.count) if self.count > 1 else [None]:
            blue_role = self.roles(i)[0]
            name = self.vault_names(i)[0]
            pw = self.passwords[blue_role]
            self.seed_versions[name] = (self._sdk_put(name, pw) if self.sdk_seed
                                        else self._rest_put(name, pw))
        # Everything rotor does comes after this point in the emulator's request log.
        self.seed_seq = self.last_seq()

    def _rest_put(self, name, value):
        """The operator's bootstrap over the REST API: a bare version, no rotor tags."""
        if not hasattr(self, "_admin_token"):
            self._admin_token = self.kv.token()
        r = self.kv.vault("PUT", f"/secrets/{name}", {"value": value}, token=self._admin_token)
        assert r.status == 200, r.body
        return r.json()["id"].rsplit("/", 1)[1]

    def _sdk_put(self, name, value):
        """The bootstrap written by the Azure SDK for JavaScript (sdk_set.mjs)."""
        d = os.path.join(self.root, "sdk")
        os.makedirs(d, mode=0o700, exist_ok=True)
        value_file = os.path.join(d, "value")
        fd = os.open(value_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(value)
        cfg = {"vault_url": self.kv.vault_url, "authority_host": self.kv.authority_host,
               "ca_file": self.kv.ca_file, "tenant": self.kv.tenant,
               "client_id": self.kv.client_id, "client_secret_file": self.kv.client_secret_file,
               "name": name, "value_file": value_file, "tags": {"written-by": "azure-sdk"},
               "expires_in_s": 86400}
        cfg_path = os.path.join(d, "config.json")
        with open(cfg_path, "w") as f:
            json.dump(cfg, f)
        env = {k: v for k, v in os.environ.items() if not k.startswith("AZURE_")}
        p = subprocess.run(["node", os.path.join(EMULATOR_DIR, "sdk_set.mjs"), cfg_path],
                           capture_output=True, text=True, timeout=60, env=env, cwd=EMULATOR_DIR)
        os.unlink(value_file)
        assert p.returncode == 0, p.stdout + p.stderr
        self.sdk_written = json.loads(p.stdout)
        return self.sdk_written["version"]

    def write_config(self, **overrides):
        super().write_config(**overrides)
        with open(self.config) as f:
            text = f.read()
        m = _STORE_RE.search(text)
        assert m, "rotorlab's store block changed: update kvlab._STORE_RE"
        current = m.group("current")
        limit = f"writes_per_10s: {self.writes_per_10s}, " if self.writes_per_10s else ""
        store = (f'    store: {{ kind: azure-keyvault, vault_url: "{self.kv.vault_url}",\n'
                 f'             resolve: "{self.kv.resolve}", ca_file: {self.kv.ca_file},\n'
                 f'             {limit}names: {{ blue: BLUE, green: GREEN'
                 f'{", current: " + current if current else ""} }} }}\n')
        text = text[:m.start()] + store + text[m.end():]
        head, sep, entry = text.partition("  - name: app-db\n")
        assert sep and "\n  - name:" not in entry, "rotorlab's secrets list changed"
        entries = []
        for i in range(self.count) if self.count > 1 else [None]:
            blue, green = self.vault_names(i)
            role_b, role_g = self.roles(i)
            name = self.secret_names()[i or 0]
            e = (sep + entry).replace("  - name: app-db\n", f"  - name: {name}\n")
            e = e.replace("blue: app_blue, green: app_green", f"blue: {role_b}, green: {role_g}")
            e = e.replace("blue: BLUE, green: GREEN", f"blue: {blue}, green: {green}")
            if i is not None and current:
                e = e.replace(f"current: {current}", f"current: {current}-{i}")
            entries.append(e)
        azure = [f"ca_file: {self.kv.ca_file}"]
        if self.cred == "managed-identity":
            azure.append(f'imds_endpoint: "{self.kv.imds_endpoint}"')
        text = head + "".join(entries) + "azure: { " + ", ".join(azure) + " }\n"
        with open(self.config, "w") as f:
            f.write(text)

    @property
    def env(self):
        """Lab's environment without any AZURE_* variable of the caller's, plus exactly the
        variables of the credential kind under test."""
        env = {k: v for k, v in super().env.items() if not k.startswith("AZURE_")}
        if self.kv is None:
            return env
        if self.cred == "secret":
            env.update(AZURE_TENANT_ID=self.kv.tenant, AZURE_CLIENT_ID=self.kv.client_id,
                       AZURE_CLIENT_SECRET=self.kv.client_secret,
                       AZURE_AUTHORITY_HOST=self.kv.authority_host)
        elif self.cred == "workload":
            env.update(AZURE_TENANT_ID=self.kv.tenant, AZURE_CLIENT_ID=self.kv.client_id,
                       AZURE_FEDERATED_TOKEN_FILE=self.federated_token_file,
                       AZURE_AUTHORITY_HOST=self.kv.authority_host)
        return env

    # -- Kafka ---------------------------------------------------------------------------------

    def request_many(self, names, reason="test", props=()):
        """One rotation.requested per secret, all produced by one kcat call; returns
        {secret: request id}. props: kcat -X properties, e.g. (("partitioner",
        "murmur2_random"),) to put each on its owner's partition (bench/keyvault.py)."""
        ids, lines = {}, []
        for name in names:
            ev = {"specversion": "1.0", "id": pysecrets.token_hex(16), "source": "/tests/e2e",
                  "type": "rotation.requested", "subject": name,
                  "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  "datacontenttype": "application/json",
                  "data": {"secret": name, "reason": reason, "requested_by": "pytest",
                           "trigger": "pipeline"}}
            ids[name] = ev["id"]
            lines.append(f"{name}\t{json.dumps(ev)}")
        path = os.path.join(self.root, "requests.txt")
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        argv = [KCAT, "-b", self.bootstrap, "-P", "-t", "rotor.commands", "-K", "\t"]
        for name, val in props:
            argv += ["-X", f"{name}={val}"]
        subprocess.run(argv + ["-l", path], check=True, timeout=60)
        return ids

    # -- the vault -----------------------------------------------------------------------------

    def versions(self, name):
        """Every version of a vault secret, oldest first, values included (emulator state)."""
        return self.kv.state()["secrets"].get(name, [])

    def stored(self, name):
        """The value of the newest version of a vault secret (as Lab.stored for the file store)."""
        vs = self.versions(name)
        assert vs, f"no version of {name} in the vault"
        return vs[-1]["value"]

    def vault_requests(self, since=None):
        """The emulator's log after seq `since` (default: after the bootstrap)."""
        since = self.seed_seq if since is None else since
        return [r for r in self.kv.requests() if r["seq"] > since]

    def last_seq(self):
        return max((r["seq"] for r in self.kv.requests()), default=0)

    def journal_row(self, rotation_id):
        rows = self.pg.query("SELECT coalesce(version, ''), coalesce(old_version, ''), "
                             "expires_at FROM rotor.rotations WHERE id = %s", (rotation_id,))
        return dict(zip(("version", "old_version", "expires_at"), rows[0]))

    def journal_text(self):
        """Every row of rotor's journal tables as JSON text (for leak checks)."""
        out = []
        for t in ("secrets", "rotations", "history", "outbox"):
            rows = self.pg.query(f"SELECT row_to_json(t)::text FROM rotor.{t} t") or []
            out += [r[0] for r in rows]
        return "\n".join(out)

    def assert_no_secret_leaked(self, passwords):
        """No password (nor the client secret or federated token) in rotor's logs, the events on
        Kafka (raw payloads and headers) or the journal."""
        leaks = [p for p in passwords if p]
        leaks.append(self.kv.client_secret)
        if self.cred == "workload":
            leaks.append(self.kv._assertion)
        raw = json.dumps(self.consume("rotor.events"))
        places = {"events": raw, "journal": self.journal_text()}
        for n, d in enumerate(self.daemons):
            places[f"rotor{n}.log"] = d.text()
        for where, text in places.items():
            for p in leaks:
                assert p not in text, f"a secret value appears in {where}"

    def validate_events(self):
        for m in self.consume("rotor.events"):
            validate_event(json.loads(m["payload"]))

    def close(self, check=None):
        try:
            super().close(check)
        finally:
            if self.kv:
                self.kv.stop()


def close_kvlab(lab):
    """What conftest's make_lab does for a Lab: every event rotor emitted is valid under its
    schema, and the daemons exit clean under the sanitizers."""
    try:
        if any(d.alive() for d in lab.daemons) or lab.broker:
            lab.validate_events()
    finally:
        lab.close(check=check_clean_exit)


@pytest.fixture
def make_kvlab():
    if not shutil.which("node"):
        pytest.skip("node is missing: the Key Vault emulator needs it (scripts/setup.sh)")
    labs = []

    def make(**kwargs):
        lab = KvLab(**kwargs)
        labs.append(lab)
        return lab

    yield make
    for lab in labs:
        close_kvlab(lab)


def rotate(lab, expect_from, expect_to, secret="app-db", timeout=60):
    """Requests a rotation of secret and waits for it to complete; returns its id."""
    request_id = lab.request(secret=secret, reason=f"{expect_from} to {expect_to}")
    rot = lab.rotation_for(request_id)
    assert (rot["from"], rot["to"]) == (expect_from, expect_to)
    done = lab.wait_status(rot["id"], ("completed", "failed"), timeout=timeout)
    assert done["status"] == "completed", (done, lab.history(rot["id"]))
    return rot["id"]


def credential_kind_logged(proc):
    """The credential kind rotor reports choosing (log line azure.credential)."""
    m = re.search(r'"msg":"azure.credential".*?"kind":"([\w-]+)"', proc.text())
    return m.group(1) if m else None
