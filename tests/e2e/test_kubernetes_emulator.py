"""The Kubernetes API emulator (tests/emulators/kubernetes) checked with the real kubectl: get,
patch, scale, replace and `rollout status` must behave as against a cluster, so that what
rotor's kubernetes driver is tested against is what a cluster does. Raw HTTP covers what kubectl
hides (401, 429 Retry-After, the scale subresource's conflicts, watches)."""

import json
import ssl
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from k8semu import MAKE_CA, KubernetesEmulator, kubectl_path, rolled_out

needs_kubectl = pytest.mark.skipif(kubectl_path() is None,
                                   reason="kubectl not installed (scripts/setup.sh installs it)")

ANNOTATE = '{"spec":{"template":{"metadata":{"annotations":{"rotor.io/secret-version":"%s"}}}}}'


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    """One CA for the module: each test still gets its own emulator."""
    d = str(tmp_path_factory.mktemp("k8s-certs"))
    subprocess.run(["bash", MAKE_CA, d], check=True, stdout=subprocess.DEVNULL)
    return d


@pytest.fixture
def k8s(tmp_path, certs):
    with KubernetesEmulator(str(tmp_path), pod_ready_seconds=0.3, cert_dir=certs) as emu:
        yield emu


def kc(k8s, *args, ok=True, **kw):
    r = k8s.kubectl(*args, **kw)
    if ok:
        assert r.returncode == 0, "kubectl %s: %s" % (" ".join(args), r.stderr)
    else:
        assert r.returncode != 0, "kubectl %s succeeded: %s" % (" ".join(args), r.stdout)
    return r


def api(k8s, method, path, body=None, token=True, ctype="application/json"):
    """(status, headers, decoded body) of one request to the emulator's API."""
    ctx = ssl.create_default_context(cafile=k8s.ca_file)
    req = urllib.request.Request(k8s.url + path, method=method,
                                 data=None if body is None else json.dumps(body).encode())
    if token:
        req.add_header("Authorization", "Bearer " + (k8s.token if token is True else token))
    if body is not None:
        req.add_header("Content-Type", ctype)
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
            return r.status, r.headers, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, e.headers, json.loads(e.read())


DEPLOY = "/apis/apps/v1/namespaces/shop/deployments/"


# -- kubectl ---------------------------------------------------------------------------------


@needs_kubectl
def test_get_lists_the_seed(k8s):
    items = json.loads(kc(k8s, "get", "deploy,svc", "-n", "shop", "-o", "json").stdout)["items"]
    got = {(i["kind"], i["metadata"]["name"]): i for i in items}
    assert set(got) == {("Deployment", "app-blue"), ("Deployment", "app-green"),
                        ("Service", "app"), ("Service", "app-stage")}
    blue, green = got[("Deployment", "app-blue")], got[("Deployment", "app-green")]
    assert blue["spec"]["replicas"] == 2 and blue["status"]["availableReplicas"] == 2
    assert green["spec"]["replicas"] == 0 and "availableReplicas" not in green["status"]
    assert got[("Service", "app")]["spec"]["selector"] == {"app": "shop", "slot": "blue"}
    assert got[("Service", "app-stage")]["spec"]["selector"] == {"app": "shop", "slot": "green"}
    # The default (table) output, as an operator reads it.
    table = kc(k8s, "get", "deploy", "-n", "shop").stdout
    assert any(line.split()[:2] == ["app-blue", "2/2"] for line in table.splitlines())


@needs_kubectl
@pytest.mark.parametrize("patch_type", [None, "merge"])
def test_patch_annotation_bumps_generation(k8s, patch_type):
    before = k8s.deployment("app-green")
    args = ["patch", "deploy", "app-green", "-n", "shop", "-p", ANNOTATE % "v2"]
    if patch_type:
        args += ["--type", patch_type]
    assert "patched" in kc(k8s, *args).stdout
    after = k8s.deployment("app-green")
    assert after["spec"]["template"]["metadata"]["annotations"]["rotor.io/secret-version"] == "v2"
    assert after["spec"]["template"]["metadata"]["labels"] == {"app": "shop", "slot": "green"}
    assert after["metadata"]["generation"] == before["metadata"]["generation"] + 1
    assert int(after["metadata"]["resourceVersion"]) > int(before["metadata"]["resourceVersion"])
    # The same patch again changes nothing, as on a cluster.
    k8s.wait_rolled_out("app-green")
    rv = k8s.deployment("app-green")["metadata"]["resourceVersion"]
    assert "no change" in kc(k8s, *args).stdout
    assert k8s.deployment("app-green")["metadata"]["resourceVersion"] == rv


@needs_kubectl
def test_scale_then_rollout_status_succeeds(k8s):
    assert "scaled" in kc(k8s, "scale", "deploy", "app-green", "--replicas=2", "-n", "shop").stdout
    r = kc(k8s, "rollout", "status", "deploy/app-green", "-n", "shop", "--timeout=30s")
    assert 'deployment "app-green" successfully rolled out' in r.stdout
    d = k8s.deployment("app-green")
    assert rolled_out(d)
    st = d["status"]
    assert (st["observedGeneration"], st["replicas"], st["updatedReplicas"], st["readyReplicas"],
            st["availableReplicas"]) == (d["metadata"]["generation"], 2, 2, 2, 2)
    progressing = [c for c in st["conditions"] if c["type"] == "Progressing"][0]
    assert (progressing["status"], progressing["reason"]) == ("True", "NewReplicaSetAvailable")
    pods = k8s.pods({"slot": "green"})
    assert len(pods) == 2 and all(p["status"]["phase"] == "Running" for p in pods)


@needs_kubectl
def test_rollout_of_a_new_template_replaces_every_pod(k8s):
    old = {p["metadata"]["name"] for p in k8s.pods({"slot": "blue"})}
    # slow pods, so the rollout is still moving when kubectl (slow to start on a loaded
    # machine) first looks
    k8s.settings(pod_ready_seconds=4)
    kc(k8s, "patch", "deploy", "app-blue", "-n", "shop", "-p", ANNOTATE % "v2")
    r = kc(k8s, "rollout", "status", "deploy/app-blue", "-n", "shop", "--timeout=30s")
    # kubectl watched the rollout move, not just its end.
    assert "Waiting for deployment" in r.stdout and "successfully rolled out" in r.stdout
    new = k8s.pods({"slot": "blue"})
    assert len(new) == 2 and not old & {p["metadata"]["name"] for p in new}
    assert all(p["metadata"]["annotations"]["rotor.io/secret-version"] == "v2" for p in new)
    assert k8s.deployment("app-blue")["metadata"]["annotations"][
        "deployment.kubernetes.io/revision"] == "2"


@needs_kubectl
def test_stalled_rollout_exceeds_its_progress_deadline(k8s):
    k8s.stall("app-green", deadline_s=2)
    kc(k8s, "scale", "deploy", "app-green", "--replicas=2", "-n", "shop")
    started = time.time()
    r = kc(k8s, "rollout", "status", "deploy/app-green", "-n", "shop", "--timeout=30s", ok=False)
    assert 'deployment "app-green" exceeded its progress deadline' in r.stderr
    assert time.time() - started < 20
    cond = [c for c in k8s.deployment("app-green")["status"]["conditions"]
            if c["type"] == "Progressing"][0]
    assert (cond["status"], cond["reason"]) == ("False", "ProgressDeadlineExceeded")
    assert k8s.endpoint_pods("app-stage") == []
    # Unstuck, the same rollout completes.
    k8s.stall("app-green", stalled=False)
    kc(k8s, "rollout", "status", "deploy/app-green", "-n", "shop", "--timeout=30s")
    assert len(k8s.endpoint_pods("app-stage")) == 2


@needs_kubectl
def test_service_selector_patch_moves_endpoints(k8s):
    kc(k8s, "scale", "deploy", "app-green", "--replicas=2", "-n", "shop")
    k8s.wait_rolled_out("app-green")
    green = sorted(p["metadata"]["name"] for p in k8s.pods({"slot": "green"}))
    kc(k8s, "patch", "svc", "app", "-n", "shop", "-p", '{"spec":{"selector":{"slot":"green"}}}')
    assert k8s.service("app")["spec"]["selector"] == {"app": "shop", "slot": "green"}
    ep = json.loads(kc(k8s, "get", "endpoints", "app", "-n", "shop", "-o", "json").stdout)
    names = sorted(a["targetRef"]["name"] for s in ep["subsets"] for a in s["addresses"])
    assert names == green
    assert ep["subsets"][0]["ports"][0]["port"] == 8080
    slices = json.loads(kc(k8s, "get", "endpointslices", "-n", "shop", "-l",
                           "kubernetes.io/service-name=app", "-o", "json").stdout)["items"]
    assert sorted(e["targetRef"]["name"] for s in slices for e in s["endpoints"]) == green


@needs_kubectl
def test_replace_with_stale_resource_version_conflicts(k8s):
    stale = kc(k8s, "get", "deploy", "app-green", "-n", "shop", "-o", "json").stdout
    kc(k8s, "scale", "deploy", "app-green", "--replicas=1", "-n", "shop")
    r = kc(k8s, "replace", "-f", "-", input=stale, ok=False)
    assert "Conflict" in r.stderr and "the object has been modified" in r.stderr
    assert k8s.deployment("app-green")["spec"]["replicas"] == 1
    fresh = json.loads(kc(k8s, "get", "deploy", "app-green", "-n", "shop", "-o", "json").stdout)
    fresh["spec"]["replicas"] = 3
    assert "replaced" in kc(k8s, "replace", "-f", "-", input=json.dumps(fresh)).stdout
    assert k8s.deployment("app-green")["spec"]["replicas"] == 3


@needs_kubectl
def test_invalid_changes_are_refused(k8s):
    r = kc(k8s, "patch", "deploy", "app-green", "-n", "shop", "--type", "merge", "-p",
           '{"spec":{"selector":{"matchLabels":{"slot":"x"}}}}', ok=False)
    assert "field is immutable" in r.stderr
    r = kc(k8s, "get", "deploy", "app-purple", "-n", "shop", ok=False)
    assert 'deployments.apps "app-purple" not found' in r.stderr


@needs_kubectl
def test_kubectl_retries_through_429(k8s):
    k8s.requests(clear=True)
    k8s.faults(429, count=2, retry_after=1, path_contains="/deployments/app-green")
    started = time.time()
    kc(k8s, "get", "deploy", "app-green", "-n", "shop", "-o", "json")
    assert time.time() - started >= 1.5  # client-go honoured Retry-After twice
    statuses = [q["status"] for q in k8s.requests() if q["path"].endswith("/app-green")]
    assert statuses == [429, 429, 200]


# -- raw HTTP --------------------------------------------------------------------------------


def test_requests_without_the_token_get_401_status(k8s):
    status, _, body = api(k8s, "GET", DEPLOY + "app-blue", token=False)
    assert status == 401 and body["kind"] == "Status" and body["reason"] == "Unauthorized"
    old = k8s.token
    k8s.rotate_token()
    assert api(k8s, "GET", DEPLOY + "app-blue", token=old)[0] == 401
    assert api(k8s, "GET", DEPLOY + "app-blue")[0] == 200


def test_faults_return_kubernetes_status(k8s):
    k8s.faults(429, count=1, retry_after=3)
    status, headers, body = api(k8s, "GET", DEPLOY + "app-blue")
    assert status == 429 and headers["Retry-After"] == "3"
    assert body["reason"] == "TooManyRequests" and body["details"]["retryAfterSeconds"] == 3
    assert api(k8s, "GET", DEPLOY + "app-blue")[0] == 200
    k8s.faults(409, count=1, methods=["PATCH"])
    assert api(k8s, "GET", DEPLOY + "app-blue")[0] == 200  # only PATCH is hit
    status, _, body = api(k8s, "PATCH", DEPLOY + "app-blue", {"spec": {"replicas": 3}},
                          ctype="application/merge-patch+json")
    assert status == 409 and body["reason"] == "Conflict"
    assert k8s.deployment("app-blue")["spec"]["replicas"] == 2


def test_scale_subresource_and_preconditions(k8s):
    status, _, scale = api(k8s, "GET", DEPLOY + "app-green/scale")
    assert status == 200 and scale["kind"] == "Scale" and scale["spec"]["replicas"] == 0
    assert scale["status"]["selector"] == "app=shop,slot=green"
    scale["spec"]["replicas"] = 2
    status, _, body = api(k8s, "PUT", DEPLOY + "app-green/scale", scale)
    assert status == 200 and body["spec"]["replicas"] == 2
    # The same body again carries a resourceVersion that is now stale.
    status, _, body = api(k8s, "PUT", DEPLOY + "app-green/scale", scale)
    assert status == 409 and body["reason"] == "Conflict"
    # So does a merge patch that names the old resourceVersion.
    status, _, _ = api(k8s, "PATCH", DEPLOY + "app-green", {
        "metadata": {"resourceVersion": scale["metadata"]["resourceVersion"]},
        "spec": {"replicas": 1}}, ctype="application/merge-patch+json")
    assert status == 409
    status, _, body = api(k8s, "PATCH", DEPLOY + "app-green/scale", {"spec": {"replicas": 1}},
                          ctype="application/merge-patch+json")
    assert status == 200 and k8s.deployment("app-green")["spec"]["replicas"] == 1
    status, _, body = api(k8s, "PATCH", DEPLOY + "app-green", {"spec": {"replicas": -1}},
                          ctype="application/merge-patch+json")
    assert status == 422 and body["reason"] == "Invalid"
    assert body["details"]["causes"][0]["field"] == "spec.replicas"


def test_load_objects_through_the_control_port(k8s):
    k8s.load("""
apiVersion: apps/v1
kind: Deployment
metadata: {name: worker, namespace: jobs}
spec:
  replicas: 1
  selector: {matchLabels: {app: worker}}
  template:
    metadata: {labels: {app: worker}}
    spec: {containers: [{name: w, image: worker:1}]}
""")
    d = k8s.wait_rolled_out("worker", namespace="jobs")
    assert d["metadata"]["generation"] == 1 and d["status"]["availableReplicas"] == 1
    status, _, body = api(k8s, "GET", "/apis/apps/v1/namespaces/jobs/deployments")
    assert status == 200 and [i["metadata"]["name"] for i in body["items"]] == ["worker"]
