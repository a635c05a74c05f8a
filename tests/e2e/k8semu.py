"""k8semu: starts and stops the Kubernetes API emulator (tests/emulators/kubernetes/server.py) for
the tests, and reads and changes its state through its control port.

    with KubernetesEmulator(root) as k8s:      # root: a directory the test owns (files go in root/k8s)
        k8s.url, k8s.ca_file, k8s.token_file, k8s.kubeconfig, k8s.namespace
        k8s.deployment("app-green")["status"]
        k8s.service("app"), k8s.endpoints("app"), k8s.pods(labels={"slot": "green"})
        k8s.faults(429, count=2, retry_after=1)  # the next 2 API requests get 429 Retry-After: 1
        k8s.stall("app-green", deadline_s=3)     # its pods never get ready; deadline 3 s
        k8s.kubectl("get", "deploy", "-n", "shop", "-o", "json")   # CompletedProcess
"""

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.environ.get("ROTOR_SOURCE_DIR", os.path.join(HERE, "..", ".."))
SERVER = os.path.join(SOURCE, "tests", "emulators", "kubernetes", "server.py")
MAKE_CA = os.path.join(SOURCE, "tests", "support", "make-ca.sh")
PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable


def kubectl_path():
    """The kubectl the tests use: $ROTOR_KUBECTL, else the one on PATH (Debian's
    kubernetes-client installs /usr/bin/kubectl), else None."""
    return os.environ.get("ROTOR_KUBECTL") or shutil.which("kubectl")


class KubernetesEmulator:
    """One emulator process; see the module docstring."""

    def __init__(self, root, seed="shop", pod_ready_seconds=0.5, cert_dir=None, start=True):
        """cert_dir: a make-ca.sh directory to reuse (making a CA takes a second or two);
        by default one is made in root/k8s."""
        self.dir = os.path.join(root, "k8s")
        os.makedirs(self.dir, exist_ok=True)
        self.seed, self.pod_ready_seconds = seed, pod_ready_seconds
        self.namespace = "shop"
        self.cert_dir = cert_dir or self.dir
        self.ca_file = os.path.join(self.cert_dir, "ca.pem")
        self.token_file = os.path.join(self.dir, "token")         # what a client presents
        self.server_tokens = os.path.join(self.dir, "tokens")     # what the server accepts
        self.kubeconfig = os.path.join(self.dir, "kubeconfig")
        self.log_path = os.path.join(self.dir, "emulator.log")
        self.proc = None
        if start:
            self.start()

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self):
        if not os.path.exists(self.ca_file):
            subprocess.run(["bash", MAKE_CA, self.cert_dir], check=True, stdout=subprocess.DEVNULL)
        self.token = secrets.token_urlsafe(32)
        self._write(self.token_file, self.token + "\n")
        self._write(self.server_tokens, self.token + "\n")
        ready = os.path.join(self.dir, "ready.json")
        if os.path.exists(ready):
            os.unlink(ready)
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [PYTHON, SERVER, "--cert-dir", self.cert_dir, "--token-file", self.server_tokens,
             "--ready-file", ready, "--seed", self.seed,
             "--pod-ready-seconds", str(self.pod_ready_seconds)],
            stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.time() + 20
        while not os.path.exists(ready):
            if self.proc.poll() is not None or time.time() > deadline:
                self.stop()
                raise RuntimeError("kubernetes emulator did not start; see " + self.log_path)
            time.sleep(0.05)
        with open(ready) as f:
            info = json.load(f)
        self.port, self.control_port = info["port"], info["control_port"]
        self.url = "https://127.0.0.1:%d" % self.port
        self.control_url = "http://127.0.0.1:%d" % self.control_port
        self._write(self.kubeconfig, self._kubeconfig())
        return self

    def stop(self):
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            self.proc = None
            self._log.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    @staticmethod
    def _write(path, text):
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, 0o600)

    def _kubeconfig(self):
        # JSON is YAML: kubectl reads it as a kubeconfig.
        return json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "emulator",
            "clusters": [{"name": "emulator", "cluster": {"server": self.url,
                                                          "certificate-authority": self.ca_file}}],
            "users": [{"name": "rotor", "user": {"tokenFile": self.token_file}}],
            "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "rotor",
                                                          "namespace": self.namespace}}]}, indent=1)

    def rotate_token(self, keep_old=False):
        """A new token in token_file (as the kubelet rotates a projected service-account token);
        the old one stops working unless keep_old."""
        old, self.token = self.token, secrets.token_urlsafe(32)
        self._write(self.token_file, self.token + "\n")
        self._write(self.server_tokens, self.token + "\n" + (old + "\n" if keep_old else ""))
        return self.token

    # -- the control port --------------------------------------------------------------------

    def control(self, method, path, body=None):
        data = None
        if body is not None:
            data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        req = urllib.request.Request(self.control_url + path, data=data, method=method)
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read() or b"null")

    def state(self):
        """Everything: deployments, services, endpoints, endpointslices, pods, faults, stalled."""
        return self.control("GET", "/state")

    def object(self, plural, name, namespace=None):
        return self.control("GET", "/objects/%s/%s/%s" % (plural, namespace or self.namespace, name))

    def deployment(self, name, namespace=None):
        return self.object("deployments", name, namespace)

    def service(self, name, namespace=None):
        return self.object("services", name, namespace)

    def endpoints(self, name, namespace=None):
        return self.object("endpoints", name, namespace)

    def pods(self, labels=None, namespace=None):
        ns = namespace or self.namespace
        return [p for p in self.state()["pods"] if p["metadata"]["namespace"] == ns and
                all(p["metadata"]["labels"].get(k) == v for k, v in (labels or {}).items())]

    def endpoint_pods(self, name, namespace=None):
        """Names of the ready pods behind Service name."""
        ep = self.endpoints(name, namespace)
        return sorted(a["targetRef"]["name"] for s in ep.get("subsets", [])
                      for a in s.get("addresses", []))

    def load(self, manifest):
        """Creates or replaces objects: a dict, a list of dicts, or YAML/JSON text."""
        return self.control("POST", "/load", manifest if isinstance(manifest, str)
                            else json.dumps(manifest))["items"]

    def faults(self, status=None, count=1, retry_after=1, methods=None, path_contains=None):
        """Switches a fault on for the next count API requests to resources (status 409, 429, 500
        or 503; methods like ["PATCH"], path_contains like "/deployments/app-green"), or with no
        status clears them all. Returns the faults now pending."""
        if status is None:
            return self.control("DELETE", "/faults")
        f = {"status": status, "count": count, "retry_after": retry_after}
        if methods:
            f["methods"] = list(methods)
        if path_contains:
            f["path_contains"] = path_contains
        return self.control("POST", "/faults", f)

    def stall(self, name, deadline_s=None, stalled=True, namespace=None):
        """Pods of name stop getting ready (until stall(name, stalled=False)); deadline_s, when
        given, sets spec.progressDeadlineSeconds as a spec change."""
        req = {"namespace": namespace or self.namespace, "name": name, "stalled": stalled}
        if deadline_s is not None:
            req["progress_deadline_seconds"] = int(deadline_s)
        return self.control("POST", "/stall", req)

    def settings(self, **kw):
        return self.control("POST", "/settings", kw)

    def requests(self, clear=False):
        """The API requests seen so far (method, path, query, content_type, status)."""
        return self.control("DELETE" if clear else "GET", "/requests")

    def wait_rolled_out(self, name, timeout=30, namespace=None):
        """Waits until name is rolled out as `kubectl rollout status` judges it; returns it."""
        deadline = time.time() + timeout
        while True:
            d = self.deployment(name, namespace)
            if rolled_out(d):
                return d
            if time.time() > deadline:
                raise AssertionError("%s not rolled out: %s" % (name, json.dumps(d["status"])))
            time.sleep(0.1)

    # -- kubectl ---------------------------------------------------------------------------

    def kubectl(self, *args, input=None, timeout=60):
        """Runs kubectl against the emulator (its own HOME, so no discovery cache is shared)."""
        exe = kubectl_path()
        if exe is None:
            raise RuntimeError("kubectl not found (scripts/setup.sh installs kubernetes-client)")
        home = os.path.join(self.dir, "home")
        os.makedirs(home, exist_ok=True)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": home,
               "KUBECONFIG": self.kubeconfig}
        return subprocess.run([exe] + list(args), input=input, capture_output=True, text=True,
                              env=env, timeout=timeout)


def rolled_out(d):
    """kubectl's DeploymentStatusViewer, as a predicate."""
    st, spec = d.get("status") or {}, d.get("spec") or {}
    if d["metadata"].get("generation", 0) > st.get("observedGeneration", 0):
        return False
    want = spec.get("replicas", 1)
    return (st.get("updatedReplicas", 0) >= want and st.get("replicas", 0) <= st.get(
        "updatedReplicas", 0) and st.get("availableReplicas", 0) >= st.get("updatedReplicas", 0))
