"""Starts and stops the Azure Key Vault emulator (tests/emulators/keyvault/server.mjs) for a test,
and exposes its URLs, CA, credentials and fault switches. See docs/keyvault-emulator.md."""
import http.client
import json
import os
import secrets
import shutil
import socket
import ssl
import subprocess
import time
import urllib.parse

SOURCE_DIR = os.environ.get(
    "ROTOR_SOURCE_DIR", os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
)
EMULATOR_DIR = os.path.join(SOURCE_DIR, "tests", "emulators", "keyvault")
MAKE_CA = os.path.join(SOURCE_DIR, "tests", "support", "make-ca.sh")
VAULT_HOST = "rotor-test.vault.azure.net"
KV_SCOPE = "https://vault.azure.net/.default"


def node_available():
    """True when node and the emulator's npm packages are installed (scripts/setup.sh)."""
    return shutil.which("node") is not None and os.path.isdir(
        os.path.join(EMULATOR_DIR, "node_modules", "@azure", "keyvault-secrets")
    )


class Response:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers  # lower-cased names
        self.body = body

    def json(self):
        return json.loads(self.body) if self.body else None


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """Connects to 127.0.0.1 whatever the host name, but verifies the certificate against the
    name (as curl's CURLOPT_RESOLVE does), so the vault URL can be a real *.vault.azure.net one."""

    def connect(self):
        sock = socket.create_connection(("127.0.0.1", self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


class KeyVaultEmulator:
    def __init__(self, root_dir, tenant=None, client_id=None, assertion=None, cert_dir=None):
        """cert_dir: made with tests/support/make-ca.sh when missing; share one between
        emulators to save the key generation."""
        self.root = os.path.abspath(root_dir)
        self.tenant = tenant or "72f988bf-0000-4000-8000-00000000f00d"
        self.client_id = client_id or "00000000-0000-4000-8000-0000000c11e7"
        self.cert_dir = cert_dir or os.path.join(self.root, "certs")
        self.ca_file = os.path.join(self.cert_dir, "ca.pem")
        self.client_secret = secrets.token_urlsafe(24)
        self.client_secret_file = os.path.join(self.root, "client-secret")
        # When set, the token endpoint accepts only this client assertion (a workload identity's
        # federated token); rewrite the file to rotate it. Else any non-empty one is accepted.
        self.assertion_file = os.path.join(self.root, "expected-assertion") if assertion else None
        self._assertion = assertion
        self.port = None
        self.imds_port = None
        self.proc = None
        self.log_path = os.path.join(self.root, "kvemu.log")
        self._ctx = None

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self, timeout=20):
        os.makedirs(self.root, exist_ok=True)
        if not os.path.exists(os.path.join(self.cert_dir, "server.pem")):
            subprocess.run([MAKE_CA, self.cert_dir, VAULT_HOST], check=True)
        self._write_private(self.client_secret_file, self.client_secret)
        if self.assertion_file:
            self._write_private(self.assertion_file, self._assertion)
        port_file = os.path.join(self.root, "ports.json")
        if os.path.exists(port_file):
            os.unlink(port_file)
        args = ["node", os.path.join(EMULATOR_DIR, "server.mjs"), "--port-file", port_file,
                "--cert", self.cert_dir, "--tenant", self.tenant, "--client-id", self.client_id,
                "--client-secret-file", self.client_secret_file]
        if self.assertion_file:
            args += ["--assertion-file", self.assertion_file]
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not os.path.exists(port_file):
            if self.proc.poll() is not None:
                raise RuntimeError(f"kvemu exited with {self.proc.returncode}; see {self.log_path}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("kvemu did not start in time")
            time.sleep(0.05)
        with open(port_file) as f:
            ports = json.load(f)
        self.port, self.imds_port = ports["https"], ports["imds"]
        self._ctx = ssl.create_default_context(cafile=self.ca_file)
        return self

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if getattr(self, "_log", None):
            self._log.close()
            self._log = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    @staticmethod
    def _write_private(path, text):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)

    def set_expected_assertion(self, assertion):
        """Rotates the federated token the token endpoint expects (needs assertion= at init)."""
        self._write_private(self.assertion_file, assertion)

    # --- addresses ----------------------------------------------------------------------------

    @property
    def vault_url(self):
        """https://rotor-test.vault.azure.net:PORT; resolve the name to 127.0.0.1 (see .resolve)."""
        return f"https://{VAULT_HOST}:{self.port}"

    @property
    def resolve(self):
        """curl's CURLOPT_RESOLVE / --resolve entry pinning the vault's name to the emulator."""
        return f"{VAULT_HOST}:{self.port}:127.0.0.1"

    @property
    def authority_host(self):
        return f"https://localhost:{self.port}"

    @property
    def imds_endpoint(self):
        """Plain HTTP, as the real http://169.254.169.254 (AZURE_IMDS_ENDPOINT for rotor,
        AZURE_POD_IDENTITY_AUTHORITY_HOST for the Azure SDK)."""
        return f"http://127.0.0.1:{self.imds_port}"

    @property
    def control_url(self):
        return f"https://127.0.0.1:{self.port}/_control"

    def env(self, kind="secret"):
        """Environment variables that point a DefaultAzureCredential-like client here."""
        e = {"AZURE_TENANT_ID": self.tenant, "AZURE_CLIENT_ID": self.client_id,
             "AZURE_AUTHORITY_HOST": self.authority_host, "AZURE_IMDS_ENDPOINT": self.imds_endpoint}
        if kind == "secret":
            with open(self.client_secret_file) as f:
                e["AZURE_CLIENT_SECRET"] = f.read()
        return e

    # --- raw HTTP -----------------------------------------------------------------------------

    def request(self, method, url, body=None, headers=None, timeout=10):
        """One HTTPS or HTTP request; vault host names are pinned to 127.0.0.1. body: dict (JSON),
        str or bytes. Returns a Response whatever the status."""
        u = urllib.parse.urlsplit(url)
        hdrs = dict(headers or {})
        if isinstance(body, (dict, list)):
            body = json.dumps(body)
            hdrs.setdefault("Content-Type", "application/json")
        if isinstance(body, str):
            body = body.encode()
        if u.scheme == "https":
            conn = _PinnedHTTPSConnection(u.hostname, u.port, context=self._ctx, timeout=timeout)
        else:
            conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
        try:
            path = u.path + (f"?{u.query}" if u.query else "")
            conn.request(method, path, body=body, headers=hdrs)
            r = conn.getresponse()
            return Response(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
        finally:
            conn.close()

    def token(self, scope=KV_SCOPE):
        """An access token from the emulator's token endpoint with the client secret."""
        with open(self.client_secret_file) as f:
            secret = f.read()
        form = urllib.parse.urlencode({"grant_type": "client_credentials", "client_id": self.client_id,
                                       "client_secret": secret, "scope": scope})
        r = self.request("POST", f"{self.authority_host}/{self.tenant}/oauth2/v2.0/token", form,
                         {"Content-Type": "application/x-www-form-urlencoded"})
        if r.status != 200:
            raise RuntimeError(f"token endpoint said {r.status}: {r.body[:200]!r}")
        return r.json()["access_token"]

    def vault(self, method, path, body=None, token=None, api_version="7.5", query=None):
        """A Key Vault request: path like /secrets/NAME; token None = no Authorization header."""
        q = {"api-version": api_version, **(query or {})}
        url = f"{self.vault_url}{path}?{urllib.parse.urlencode(q)}"
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return self.request(method, url, body, headers)

    # --- control ------------------------------------------------------------------------------

    def _control(self, method, what, body=None):
        r = self.request(method, f"{self.control_url}/{what}", body)
        if r.status != 200:
            raise RuntimeError(f"kvemu control {what}: {r.status} {r.body[:200]!r}")
        return r.json()

    def faults(self, **kw):
        """Switches faults: unavailable=N, drop=N, delay_ms=MS, throttle_writes=N,
        throttle_requests=N, retry_after=S, retry_after_header=NAME, write_limit_per_10s=N,
        token_lifetime_s=S, target='vault'|'token'|'imds'|'all', expire_tokens=True, reset=True.
        Returns the faults now in force."""
        return self._control("POST", "faults", kw)

    def requests(self):
        """Every request served so far: seq, time, method, path, query, kind, auth, status,
        fault, grant."""
        return self._control("GET", "requests")

    def state(self):
        """Secrets with every version (values included: test data), assertions received,
        writes_peak_10s, faults."""
        return self._control("GET", "state")

    def reset(self):
        return self._control("POST", "reset", {})
