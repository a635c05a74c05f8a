"""The kubernetes deploy driver (consumer/deploy_kubernetes.c) against the Kubernetes API emulator,
one action at a time through tests/support/deploy_tool: deploy, swap, retire, rollback, observe,
the rollout judged as `kubectl rollout status` judges it, and the API's failures (409, 429, 5xx,
401, Status reasons) handled as a cluster needs them handled."""

import json
import os
import shutil
import subprocess
import time

import pytest

from k8semu import MAKE_CA, KubernetesEmulator, rolled_out


def tool_path():
    build = os.environ.get("ROTOR_BUILD_DIR")
    if build and os.path.exists(os.path.join(build, "deploy_tool")):
        return os.path.join(build, "deploy_tool")
    rotor = shutil.which(os.environ.get("ROTOR_BIN", "rotor"))
    if rotor and os.path.exists(os.path.join(os.path.dirname(rotor), "deploy_tool")):
        return os.path.join(os.path.dirname(rotor), "deploy_tool")
    return None


TOOL = tool_path()
pytestmark = pytest.mark.skipif(TOOL is None, reason="deploy_tool not built (ROTOR_BUILD_DIR)")


def driver_config(k8s, **over):
    """The deploy section of a secret for the emulator's seed, as rotor.yaml flow YAML."""
    kube = {"api_url": k8s.url, "token_file": k8s.token_file, "ca_file": k8s.ca_file,
            "namespace": "shop", "deployments": {"blue": "app-blue", "green": "app-green"},
            "services": {"production": "app", "stage": "app-stage"}, "poll": "100ms"}
    kube.update(over)
    return json.dumps({"kind": "kubernetes", "kubernetes": kube})  # JSON is YAML


class Tool:
    def __init__(self, root, k8s, **over):
        self.path = os.path.join(root, "rotor.yaml")
        with open(self.path, "w") as f:
            f.write("kafka: { brokers: embedded }\njournal: { dsn_env: UNUSED }\nsecrets:\n"
                    "  - name: app-db\n    active: blue\n"
                    "    database: { dsn_env: UNUSED, roles: { blue: app_blue, green: app_green } }\n"
                    "    store: { kind: file, dir: %s, names: { blue: pg-blue, green: pg-green } }\n"
                    "    deploy: %s\n" % (root, driver_config(k8s, **over)))

    def run(self, *args, timeout=60):
        """(exit code, the result line, stderr) of one action."""
        r = subprocess.run([TOOL, self.path, "app-db", *args], capture_output=True, text=True,
                           timeout=timeout)
        assert "ERROR: AddressSanitizer" not in r.stderr and "LeakSanitizer" not in r.stderr, \
            r.stderr[-4000:]
        assert "runtime error:" not in r.stderr, r.stderr[-4000:]
        return r.returncode, r.stdout.strip(), r.stderr

    def ok(self, *args, **kw):
        code, out, err = self.run(*args, **kw)
        assert code == 0 and out.startswith("ok"), "%s: %s\n%s" % (args, out, err[-3000:])
        return out


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("k8s-certs"))
    subprocess.run(["bash", MAKE_CA, d], check=True, stdout=subprocess.DEVNULL)
    return d


@pytest.fixture
def k8s(tmp_path, certs):
    with KubernetesEmulator(str(tmp_path), pod_ready_seconds=0.3, cert_dir=certs) as emu:
        yield emu


@pytest.fixture
def tool(tmp_path, k8s):
    return Tool(str(tmp_path), k8s)


def selector_slot(k8s, service):
    return k8s.service(service)["spec"]["selector"].get("slot")


def api_requests(k8s, method=None, contains=""):
    """The API requests seen (the log also holds the control port's)."""
    return [r for r in k8s.requests() if r["path"].startswith("/api")
            and (method is None or r["method"] == method) and contains in r["path"]]


# -- the actions ------------------------------------------------------------------------------


def test_deploy_stamps_the_version_scales_up_and_waits_for_the_rollout(k8s, tool):
    k8s.requests(clear=True)
    tool.ok("deploy", "green", "v7")
    d = k8s.deployment("app-green")
    assert d["spec"]["replicas"] == 2
    assert d["spec"]["template"]["metadata"]["annotations"]["rotor.io/secret-version"] == "v7"
    # Returned only once rolled out, as kubectl judges it.
    assert rolled_out(d), d["status"]
    pods = k8s.pods({"slot": "green"})
    assert len(pods) == 2
    assert all(p["metadata"]["annotations"]["rotor.io/secret-version"] == "v7" for p in pods)
    patches = api_requests(k8s, "PATCH")
    assert [p["path"] for p in patches] == ["/apis/apps/v1/namespaces/shop/deployments/app-green"]
    assert patches[0]["content_type"].startswith("application/strategic-merge-patch+json")
    assert all(r["user_agent"].startswith("rotor/") for r in api_requests(k8s))
    # Production is untouched by deploy.
    assert selector_slot(k8s, "app") == "blue"
    assert all(n.startswith("app-blue-") for n in k8s.endpoint_pods("app"))


def test_deploy_again_with_the_same_version_changes_nothing(k8s, tool):
    tool.ok("deploy", "green", "v7")
    before = k8s.deployment("app-green")["metadata"]
    tool.ok("deploy", "green", "v7")
    after = k8s.deployment("app-green")["metadata"]
    assert after["generation"] == before["generation"]


def test_a_stalled_rollout_fails_with_the_progress_deadline(k8s, tool):
    k8s.stall("app-green", deadline_s=2)
    t = time.time()
    code, out, _ = tool.run("deploy", "green", "v8")
    assert code == 1, out
    assert "rollout of app-green exceeded its progress deadline" in out
    assert time.time() - t >= 1.5  # it waited for the deadline, it did not give up at once
    # Production untouched.
    assert selector_slot(k8s, "app") == "blue"
    assert all(n.startswith("app-blue-") for n in k8s.endpoint_pods("app"))
    assert k8s.deployment("app-blue")["spec"]["replicas"] == 2


def test_swap_points_production_at_the_new_slot_and_waits_for_its_endpoints(k8s, tool):
    tool.ok("deploy", "green", "v2")
    tool.ok("swap", "green")
    assert selector_slot(k8s, "app") == "green"
    assert selector_slot(k8s, "app-stage") == "blue"
    ready = k8s.endpoint_pods("app")
    green = sorted(p["metadata"]["name"] for p in k8s.pods({"slot": "green"}))
    assert ready and ready == green
    assert k8s.service("app")["spec"]["selector"]["app"] == "shop"  # merged, not replaced


def test_swap_waits_until_the_new_slot_serves(k8s, tool):
    """A swap to a slot with no ready pods does not succeed while production has no endpoints."""
    code, out, _ = tool.run("swap", "green", "--cancel-after", "1500")
    assert code == 1 and "canceled" in out, out
    assert k8s.endpoint_pods("app") == []


def test_retire_scales_the_old_slot_to_zero(k8s, tool):
    tool.ok("deploy", "green", "v2")
    tool.ok("swap", "green")
    tool.ok("retire", "blue")
    d = k8s.deployment("app-blue")
    assert d["spec"]["replicas"] == 0
    assert d["status"].get("replicas", 0) == 0
    assert k8s.pods({"slot": "blue"}) == []


def test_rollback_points_production_back_and_scales_the_other_down(k8s, tool):
    tool.ok("deploy", "green", "v2")
    tool.ok("swap", "green")
    tool.ok("rollback", "blue")
    assert selector_slot(k8s, "app") == "blue"
    assert selector_slot(k8s, "app-stage") == "green"
    blue = sorted(p["metadata"]["name"] for p in k8s.pods({"slot": "blue"}))
    assert k8s.endpoint_pods("app") == blue and blue
    assert k8s.deployment("app-green")["spec"]["replicas"] == 0
    assert k8s.pods({"slot": "green"}) == []


def test_observe_reads_the_production_slot(k8s, tool):
    assert tool.ok("observe") == "ok observed=blue"
    tool.ok("deploy", "green", "v2")
    assert tool.ok("observe") == "ok observed=blue"
    tool.ok("swap", "green")
    assert tool.ok("observe") == "ok observed=green"
    k8s.load({"apiVersion": "v1", "kind": "Service",
              "metadata": {"name": "app", "namespace": "shop"},
              "spec": {"selector": {"app": "shop"}, "ports": [{"port": 80, "targetPort": 8080}]}})
    assert tool.ok("observe") == "ok observed=unknown"


# -- the API's failures -------------------------------------------------------------------------


def test_a_conflict_is_re_read_and_patched_again(k8s, tool):
    k8s.requests(clear=True)
    k8s.faults(409, count=2, methods=["PATCH"], path_contains="/deployments/app-green")
    tool.ok("deploy", "green", "v3")
    assert k8s.deployment("app-green")["spec"]["template"]["metadata"]["annotations"][
        "rotor.io/secret-version"] == "v3"
    seen = [(r["method"], r["status"]) for r in api_requests(k8s, contains="/app-green")]
    # PATCH 409, re-read, PATCH 409, re-read, PATCH 200, then the rollout polls.
    assert seen[:5] == [("PATCH", 409), ("GET", 200), ("PATCH", 409), ("GET", 200),
                        ("PATCH", 200)], seen


def test_conflicts_are_bounded(k8s, tool):
    k8s.faults(409, count=50, methods=["PATCH"], path_contains="/deployments/app-green")
    code, out, _ = tool.run("deploy", "green", "v3")
    assert code == 1
    assert 'kubernetes: 409 Conflict: Operation cannot be fulfilled on deployments.apps ' \
           '"app-green"' in out, out


def test_429_waits_as_retry_after_says(k8s, tool):
    k8s.requests(clear=True)
    k8s.faults(429, count=1, retry_after=2, methods=["PATCH"], path_contains="/services/app")
    tool.ok("deploy", "green", "v2")
    tool.ok("swap", "green")
    patches = api_requests(k8s, "PATCH", "/services/app")
    assert patches[0]["status"] == 429 and patches[1]["status"] == 200, patches
    assert patches[1]["time"] - patches[0]["time"] >= 1.9, patches
    assert selector_slot(k8s, "app") == "green"


def test_5xx_is_retried_with_backoff(k8s, tool):
    k8s.faults(503, count=2, methods=["GET"], path_contains="/deployments/app-green")
    tool.ok("deploy", "green", "v2")
    statuses = [r["status"] for r in api_requests(k8s, "GET", "/deployments/app-green")]
    assert statuses[:2] == [503, 503] and 200 in statuses


def test_the_status_of_an_error_is_the_reason(tmp_path, k8s):
    tool = Tool(str(tmp_path), k8s, deployments={"blue": "app-blue", "green": "app-purple"})
    code, out, _ = tool.run("deploy", "green", "v2")
    assert code == 1
    assert 'kubernetes: 404 NotFound: deployments.apps "app-purple" not found' in out, out


def test_the_token_is_re_read_as_it_rotates(k8s, tool):
    tool.ok("observe")
    k8s.rotate_token()  # the old token no longer works
    tool.ok("deploy", "green", "v2")
    assert all(r["status"] != 401 for r in api_requests(k8s))


def test_a_token_rotated_during_an_action_is_picked_up(k8s, tool):
    """The deploy polls for seconds (a slow pod); the token rotates meanwhile."""
    k8s.settings(pod_ready_seconds=2)
    p = subprocess.Popen([TOOL, tool.path, "app-db", "deploy", "green", "v4"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1)
    k8s.rotate_token()
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0 and out.startswith("ok"), out + err[-3000:]


def test_a_wrong_token_fails_with_unauthorized(k8s, tool):
    with open(k8s.token_file, "w") as f:
        f.write("not-the-token\n")
    code, out, _ = tool.run("observe")
    assert code == 1 and "kubernetes: 401 Unauthorized" in out, out
    # Retried once (the token file is read again), not forever.
    assert [r["status"] for r in api_requests(k8s)].count(401) == 2


def test_cancel_stops_the_polling(k8s, tool):
    k8s.stall("app-green")
    code, out, err = tool.run("deploy", "green", "v5", "--cancel-after", "700")
    assert code == 1 and "canceled" in out, out + err[-2000:]
    n = len(api_requests(k8s))
    time.sleep(0.5)
    assert len(api_requests(k8s)) == n  # nothing polls after the tool is gone


def test_only_the_version_id_reaches_the_cluster(k8s, tool):
    tool.ok("deploy", "green", "kv-version-0001")
    state = json.dumps(k8s.state())
    assert "kv-version-0001" in state
    d = k8s.deployment("app-green")
    # The driver's one change to the pod template is the annotation: no env, no volume.
    assert d["spec"]["template"]["spec"]["containers"][0].get("env") is None
