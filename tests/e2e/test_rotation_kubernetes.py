"""Full rotations with deploy kind kubernetes against the Kubernetes API emulator: blue -> green
ends with green rolled out on the new version, production's Service and endpoints on green and
blue scaled to zero; a rollout that stalls past its progress deadline fails the rotation before
swap with production untouched."""
import json

import pytest

from k8semu import KubernetesEmulator, rolled_out


def k8s_deploy(k8s):
    """The secret's deploy section for the emulator's seed (JSON is YAML's flow style)."""
    return json.dumps({"kind": "kubernetes", "kubernetes": {
        "api_url": k8s.url, "token_file": k8s.token_file, "ca_file": k8s.ca_file,
        "namespace": "shop", "deployments": {"blue": "app-blue", "green": "app-green"},
        "services": {"production": "app", "stage": "app-stage"}, "slot_label": "slot",
        "replicas": 2, "annotation": "rotor.io/secret-version", "poll": "200ms"}})


@pytest.fixture
def k8s_lab(make_lab):
    lab = make_lab()
    with KubernetesEmulator(lab.root, pod_ready_seconds=0.3) as k8s:
        lab.write_config(deploy=k8s_deploy(k8s))
        yield lab, k8s


def version_of(lab, rotation_id):
    return lab.pg.query("SELECT version FROM rotor.rotations WHERE id = %s", (rotation_id,))[0][0]


def test_rotation_blue_to_green(k8s_lab):
    lab, k8s = k8s_lab
    lab.start()
    rot = lab.rotation_for(lab.request(reason="kubernetes"))
    assert (rot["from"], rot["to"]) == ("blue", "green")
    done = lab.wait_status(rot["id"], ("completed", "failed"), timeout=90)
    assert done["status"] == "completed", (done, lab.history(rot["id"]))

    green = k8s.wait_rolled_out("app-green")
    version = version_of(lab, rot["id"])
    assert version
    assert green["spec"]["replicas"] == 2
    assert green["spec"]["template"]["metadata"]["annotations"]["rotor.io/secret-version"] == \
        version
    svc = k8s.service("app")["spec"]["selector"]
    assert svc == {"app": "shop", "slot": "green"}
    assert k8s.service("app-stage")["spec"]["selector"]["slot"] == "blue"
    pods = sorted(p["metadata"]["name"] for p in k8s.pods({"slot": "green"}))
    assert k8s.endpoint_pods("app") == pods and len(pods) == 2
    blue = k8s.deployment("app-blue")
    assert blue["spec"]["replicas"] == 0 and blue["status"].get("replicas", 0) == 0
    assert lab.active_slot() == "green"
    # The cluster saw the version id, never the password.
    password = lab.stored("pg-green")
    assert password not in json.dumps(k8s.state())
    assert lab.can_login("app_green", password)


def test_stalled_rollout_fails_before_swap(make_lab):
    lab = make_lab(stages="{ timeout: 30s, max_attempts: 2, backoff: { initial: 200ms, max: 1s } }")
    with KubernetesEmulator(lab.root, pod_ready_seconds=0.3) as k8s:
        lab.write_config(deploy=k8s_deploy(k8s))
        k8s.stall("app-green", deadline_s=2)
        lab.start()
        rot = lab.rotation_for(lab.request(reason="stalled"))
        done = lab.wait_status(rot["id"], "failed", timeout=90)
        assert done["stage"] == "deploy", done
        assert "rollout of app-green exceeded its progress deadline" in done["error"], done
        # Production untouched: the Service still selects blue, blue's pods serve it.
        assert k8s.service("app")["spec"]["selector"]["slot"] == "blue"
        assert k8s.service("app-stage")["spec"]["selector"]["slot"] == "green"
        assert all(n.startswith("app-blue-") for n in k8s.endpoint_pods("app"))
        assert rolled_out(k8s.deployment("app-blue"))
        assert lab.active_slot() == "blue"
        assert lab.can_login("app_blue", lab.initial_password)
