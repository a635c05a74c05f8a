#!/usr/bin/python3
"""A Kubernetes API emulator for rotor's tests: apps/v1 Deployments, v1 Services, Pods, Endpoints and
EndpointSlices over HTTPS with a bearer token, with a simulated controller, watches, and a plain-HTTP
control port (load objects, faults, stalls, state). Python 3 standard library only (PyYAML is used
for YAML bodies when it is installed). See docs/kubernetes-emulator.md.

    server.py --cert-dir DIR --token-file FILE --ready-file FILE [--port 0] [--control-port 0]
              [--seed shop|none] [--pod-ready-seconds 1.0] [--tick-seconds 0.1]
"""

import argparse
import copy
import datetime
import hashlib
import http.server
import json
import os
import random
import re
import signal
import ssl
import sys
import threading
import time
import urllib.parse
import uuid

try:
    import yaml  # python3-yaml; optional: only YAML bodies on the control port need it
except ImportError:  # pragma: no cover
    yaml = None

# ---------------------------------------------------------------------------------------------
# Resource table: what discovery advertises and how paths map to stored kinds. One row a resource.

RESOURCES = {
    # plural: (group, version, kind, namespaced, short names, verbs)
    "pods": ("", "v1", "Pod", True, ["po"], ["get", "list", "watch", "delete"]),
    "services": ("", "v1", "Service", True, ["svc"],
                 ["create", "delete", "get", "list", "patch", "update", "watch"]),
    "endpoints": ("", "v1", "Endpoints", True, ["ep"], ["get", "list", "watch"]),
    "namespaces": ("", "v1", "Namespace", False, ["ns"], ["get", "list"]),
    "deployments": ("apps", "v1", "Deployment", True, ["deploy"],
                    ["create", "delete", "get", "list", "patch", "update", "watch"]),
    "endpointslices": ("discovery.k8s.io", "v1", "EndpointSlice", True, [], ["get", "list", "watch"]),
}
SUBRESOURCES = {
    "deployments/scale": ("autoscaling", "v1", "Scale", ["get", "patch", "update"]),
    "deployments/status": ("apps", "v1", "Deployment", ["get", "patch", "update"]),
}
GROUPS = {"apps": "v1", "discovery.k8s.io": "v1"}
VERSION = {"major": "1", "minor": "28", "gitVersion": "v1.28.0-rotor-emulator",
           "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
           "buildDate": "2024-01-01T00:00:00Z", "goVersion": "go1.21.0", "compiler": "gc",
           "platform": "linux/amd64"}
# Strategic merge patch: the list fields rotor's objects use and the key their items merge by.
MERGE_KEYS = {"containers": "name", "initContainers": "name", "env": "name", "volumes": "name",
              "volumeMounts": "mountPath", "imagePullSecrets": "name"}


def now_iso(t=None):
    return datetime.datetime.fromtimestamp(t if t is not None else time.time(),
                                           datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def qualified(plural):
    group = RESOURCES[plural][0]
    return plural + ("." + group if group else "")


def api_version(plural):
    group, version = RESOURCES[plural][0], RESOURCES[plural][1]
    return group + "/" + version if group else version


class ApiError(Exception):
    """Becomes a Kubernetes Status response."""

    REASONS = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound",
               405: "MethodNotAllowed", 409: "Conflict", 410: "Expired", 415: "UnsupportedMediaType",
               422: "Invalid", 429: "TooManyRequests", 500: "InternalError"}

    def __init__(self, code, message, reason=None, details=None, headers=None):
        super().__init__(message)
        self.code, self.message = code, message
        self.reason = reason or self.REASONS.get(code, "Unknown")
        self.details, self.headers = details, headers or {}

    def status(self):
        s = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
             "message": self.message, "reason": self.reason, "code": self.code}
        if self.details:
            s["details"] = self.details
        return s


def not_found(plural, name):
    return ApiError(404, '%s "%s" not found' % (qualified(plural), name),
                    details={"name": name, "group": RESOURCES[plural][0], "kind": plural})


def conflict(plural, name):
    return ApiError(409, 'Operation cannot be fulfilled on %s "%s": the object has been modified; '
                    "please apply your changes to the latest version and try again"
                    % (qualified(plural), name),
                    details={"name": name, "group": RESOURCES[plural][0], "kind": plural})


def invalid(plural, name, causes):
    """causes: [(field, message)]."""
    kind = RESOURCES[plural][2] + ("." + RESOURCES[plural][0] if RESOURCES[plural][0] else "")
    text = ", ".join("%s: %s" % c for c in causes)
    return ApiError(422, '%s "%s" is invalid: %s' % (kind, name, text),
                    details={"name": name, "group": RESOURCES[plural][0],
                             "kind": RESOURCES[plural][2],
                             "causes": [{"reason": "FieldValueInvalid", "message": m, "field": f}
                                        for f, m in causes]})


# ---------------------------------------------------------------------------------------------
# Patches.


def merge_patch(target, patch):
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            result.pop(k, None)
        else:
            result[k] = merge_patch(result.get(k), v)
    return result


def strategic_merge(target, patch, field=None):
    """Strategic merge patch for the shapes in MERGE_KEYS, `$patch: replace|delete` and the
    directives kubectl may add; other lists are replaced, as for the real types without a
    patchStrategy."""
    if isinstance(patch, dict):
        if patch.get("$patch") == "replace":
            return {k: v for k, v in copy.deepcopy(patch).items() if k != "$patch"}
        if patch.get("$patch") == "delete":
            return None
        result = copy.deepcopy(target) if isinstance(target, dict) else {}
        for k, v in patch.items():
            if k.startswith("$setElementOrder/") or k in ("$retainKeys", "$patch"):
                continue
            if v is None:
                result.pop(k, None)
                continue
            merged = strategic_merge(result.get(k), v, k)
            if merged is None:
                result.pop(k, None)
            else:
                result[k] = merged
        return result
    if isinstance(patch, list) and field in MERGE_KEYS and isinstance(target, list):
        key = MERGE_KEYS[field]
        result = copy.deepcopy(target)
        for item in patch:
            if not isinstance(item, dict) or key not in item:
                result.append(copy.deepcopy(item))
                continue
            idx = next((i for i, t in enumerate(result) if isinstance(t, dict)
                        and t.get(key) == item[key]), None)
            if item.get("$patch") == "delete":
                if idx is not None:
                    del result[idx]
            elif idx is None:
                result.append({k: v for k, v in copy.deepcopy(item).items() if k != "$patch"})
            else:
                result[idx] = strategic_merge(result[idx], item, None)
        return result
    return copy.deepcopy(patch)


def _pointer(path):
    if path == "":
        return []
    if not path.startswith("/"):
        raise ApiError(422, "invalid JSON pointer %r" % path)
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _walk(doc, parts):
    for p in parts:
        if isinstance(doc, list):
            doc = doc[int(p)]
        else:
            doc = doc[p]
    return doc


def json_patch(doc, ops):
    """RFC 6902."""
    doc = copy.deepcopy(doc)
    if not isinstance(ops, list):
        raise ApiError(400, "json patch must be a list of operations")
    for op in ops:
        try:
            kind, parts = op["op"], _pointer(op["path"])
            if kind in ("add", "replace", "test", "remove"):
                parent, last = _walk(doc, parts[:-1]), parts[-1] if parts else None
            if kind == "test":
                if _walk(doc, parts) != op["value"]:
                    raise ApiError(422, "the server rejected our request due to an error in our "
                                   "request: testing value %s failed" % op["path"])
            elif kind == "remove":
                del parent[int(last) if isinstance(parent, list) else last]
            elif kind == "add":
                if isinstance(parent, list):
                    parent.insert(len(parent) if last == "-" else int(last), op["value"])
                else:
                    parent[last] = op["value"]
            elif kind == "replace":
                if isinstance(parent, list):
                    parent[int(last)] = op["value"]
                else:
                    if last not in parent:
                        raise KeyError(last)
                    parent[last] = op["value"]
            elif kind in ("move", "copy"):
                src = _pointer(op["from"])
                value = copy.deepcopy(_walk(doc, src))
                if kind == "move":
                    sp = _walk(doc, src[:-1])
                    del sp[int(src[-1]) if isinstance(sp, list) else src[-1]]
                doc = json_patch(doc, [{"op": "add", "path": op["path"], "value": value}])
            else:
                raise ApiError(400, "unknown json patch op %r" % kind)
        except (KeyError, IndexError, ValueError, TypeError) as e:
            raise ApiError(422, "the server rejected our request due to an error in our request: "
                           "jsonpatch %s operation does not apply: %s" % (op.get("op"), e))
    return doc


# ---------------------------------------------------------------------------------------------
# Selectors.


def parse_label_selector(text):
    """Equality, inequality, set-based (in/notin) and existence terms."""
    terms = []
    for term in re.findall(r"(?:[^,(]|\([^)]*\))+", text or ""):
        term = term.strip()
        if not term:
            continue
        m = re.match(r"^([\w./-]+)\s+(in|notin)\s+\(([^)]*)\)$", term)
        if m:
            terms.append((m.group(1), m.group(2), {v.strip() for v in m.group(3).split(",")}))
        elif "!=" in term:
            k, v = term.split("!=", 1)
            terms.append((k.strip(), "notin", {v.strip()}))
        elif "=" in term:
            k, v = term.replace("==", "=").split("=", 1)
            terms.append((k.strip(), "in", {v.strip()}))
        elif term.startswith("!"):
            terms.append((term[1:].strip(), "!exists", None))
        else:
            terms.append((term, "exists", None))
    return terms


def labels_match(labels, terms):
    labels = labels or {}
    for key, op, values in terms:
        if op == "in" and labels.get(key) not in values:
            return False
        if op == "notin" and key in labels and labels[key] in values:
            return False
        if op == "exists" and key not in labels:
            return False
        if op == "!exists" and key in labels:
            return False
    return True


def field_match(obj, text):
    for term in (text or "").split(","):
        if not term:
            continue
        neg = "!=" in term
        k, v = re.split(r"!=|==|=", term, maxsplit=1)
        cur = obj
        for part in k.split("."):
            cur = cur.get(part) if isinstance(cur, dict) else None
        if (str(cur) == v) == neg:
            return False
    return True


def selector_string(sel):
    return ",".join("%s=%s" % kv for kv in sorted((sel or {}).items()))


# ---------------------------------------------------------------------------------------------
# The cluster: objects, resourceVersion, watch history, faults, controller.


class Cluster:
    HISTORY = 20000

    def __init__(self, pod_ready_seconds=1.0):
        self.lock = threading.RLock()
        self.cond = threading.Condition(self.lock)
        self.rv = 100
        self.objects = {}  # (plural, namespace, name) -> object
        self.history = []  # (rv, type, plural, object snapshot)
        self.namespaces = {"default", "kube-system"}
        self.faults = []  # [{"status", "count", "retry_after", "methods", "path_contains"}]
        self.stalled = set()  # (namespace, name)
        self.progress = {}  # (namespace, name) -> time of the last progress
        self.requests = []
        self.pod_ready_seconds = pod_ready_seconds
        self.next_ip = 10
        self.stopping = False

    # -- storage -----------------------------------------------------------------------------

    def _bump(self):
        self.rv += 1
        return str(self.rv)

    def _record(self, etype, plural, obj):
        self.history.append((self.rv, etype, plural, copy.deepcopy(obj)))
        del self.history[:-self.HISTORY]
        self.cond.notify_all()

    def get(self, plural, ns, name):
        obj = self.objects.get((plural, ns, name))
        if obj is None:
            raise not_found(plural, name)
        return obj

    def put(self, plural, obj, etype=None):
        """Stores obj (owned from now on) with a new resourceVersion and records the event."""
        md = obj["metadata"]
        key = (plural, md.get("namespace"), md["name"])
        etype = etype or ("MODIFIED" if key in self.objects else "ADDED")
        md["resourceVersion"] = self._bump()
        self.objects[key] = obj
        self._record(etype, plural, obj)
        return obj

    def delete(self, plural, ns, name):
        obj = self.objects.pop((plural, ns, name), None)
        if obj is None:
            raise not_found(plural, name)
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = self._bump()
        self._record("DELETED", plural, obj)
        return obj

    def items(self, plural, ns=None):
        return [o for (p, n, _), o in sorted(self.objects.items(), key=lambda kv: kv[0][1:])
                if p == plural and (ns is None or n == ns)]

    # -- creation with the API server's defaults -----------------------------------------------

    def create(self, obj):
        """Creates or replaces (by name) an object from a manifest; returns the stored copy."""
        kind = obj.get("kind")
        plural = next((p for p, r in RESOURCES.items() if r[2] == kind), None)
        if plural is None or plural in ("endpoints", "endpointslices"):
            raise ApiError(400, "the emulator cannot load kind %r" % kind)
        obj = copy.deepcopy(obj)
        md = obj.setdefault("metadata", {})
        if not md.get("name"):
            raise ApiError(422, "metadata.name: Required value")
        if plural == "namespaces":
            self.namespaces.add(md["name"])
        ns = md.setdefault("namespace", "default") if RESOURCES[plural][3] else None
        if ns:
            self.namespaces.add(ns)
        old = self.objects.get((plural, ns, md["name"]))
        md["uid"] = old["metadata"]["uid"] if old else str(uuid.uuid4())
        md["creationTimestamp"] = old["metadata"]["creationTimestamp"] if old else now_iso()
        md.pop("resourceVersion", None)
        obj["apiVersion"], obj["kind"] = api_version(plural), RESOURCES[plural][2]
        if plural == "deployments":
            self._default_deployment(obj, old)
        elif plural == "services":
            spec = obj.setdefault("spec", {})
            spec.setdefault("type", "ClusterIP")
            spec.setdefault("clusterIP", "10.96.%d.%d" % (random.randint(0, 254), random.randint(1, 254)))
            spec.setdefault("sessionAffinity", "None")
            for p in spec.setdefault("ports", []):
                p.setdefault("protocol", "TCP")
                p.setdefault("targetPort", p.get("port"))
            obj.setdefault("status", {"loadBalancer": {}})
        stored = self.put(plural, obj)
        if plural == "deployments":
            self.progress[(ns, md["name"])] = time.time()
        self.sync_endpoints()
        return stored

    def _default_deployment(self, obj, old):
        spec = obj.setdefault("spec", {})
        spec.setdefault("replicas", 1)
        spec.setdefault("revisionHistoryLimit", 10)
        spec.setdefault("progressDeadlineSeconds", 600)
        spec.setdefault("strategy", {"type": "RollingUpdate", "rollingUpdate":
                                     {"maxSurge": "25%", "maxUnavailable": "25%"}})
        tmpl = spec.setdefault("template", {})
        tmpl.setdefault("metadata", {})
        tspec = tmpl.setdefault("spec", {})
        tspec.setdefault("restartPolicy", "Always")
        tspec.setdefault("terminationGracePeriodSeconds", 30)
        tspec.setdefault("dnsPolicy", "ClusterFirst")
        for c in tspec.setdefault("containers", []):
            c.setdefault("imagePullPolicy", "IfNotPresent")
            c.setdefault("terminationMessagePath", "/dev/termination-log")
            c.setdefault("terminationMessagePolicy", "File")
        err = validate_deployment(obj, old)
        if err:
            raise err
        obj["metadata"]["generation"] = old["metadata"]["generation"] + 1 if old else 1
        obj["status"] = old.get("status", {}) if old else {}

    # -- updates through the API ---------------------------------------------------------------

    def update(self, plural, ns, name, new, subresource=None, dry_run=False):
        """PUT semantics: new is the whole object (or Scale); resourceVersion, when set, must be
        the current one. Returns the stored object (or Scale)."""
        old = self.get(plural, ns, name)
        md = new.get("metadata") or {}
        if md.get("name") not in (None, name):
            raise ApiError(400, "the name of the object (%s) does not match the name on the URL (%s)"
                           % (md.get("name"), name))
        if md.get("resourceVersion") and md["resourceVersion"] != old["metadata"]["resourceVersion"]:
            raise conflict(plural, name)
        if subresource == "scale":
            replicas = (new.get("spec") or {}).get("replicas")
            updated = copy.deepcopy(old)
            updated["spec"]["replicas"] = replicas
        elif subresource == "status":
            updated = copy.deepcopy(old)
            updated["status"] = copy.deepcopy(new.get("status", {}))
        else:
            updated = copy.deepcopy(new)
            umd = updated.setdefault("metadata", {})
            for k in ("uid", "creationTimestamp", "generation", "name", "namespace"):
                if k in old["metadata"]:
                    umd[k] = old["metadata"][k]
            updated["apiVersion"], updated["kind"] = old["apiVersion"], old["kind"]
            for src, dst in ((old, updated), (old["metadata"], umd)):
                dst.update({k: v for k, v in src.items() if k.startswith("_")})
            if "status" in old:
                updated["status"] = copy.deepcopy(old["status"])
        self._validate(plural, updated, old)
        if plural == "deployments" and updated.get("spec") != old.get("spec"):
            updated["metadata"]["generation"] = old["metadata"].get("generation", 1) + 1
            self.progress[(ns, name)] = time.time()
        if dry_run:
            updated["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
            return self._view(plural, updated, subresource)
        if updated == old or self._same_but_rv(updated, old):
            return self._view(plural, old, subresource)
        self.put(plural, updated)
        self.sync_endpoints()
        return self._view(plural, updated, subresource)

    @staticmethod
    def _same_but_rv(a, b):
        a, b = copy.deepcopy(a), copy.deepcopy(b)
        a["metadata"].pop("resourceVersion", None)
        b["metadata"].pop("resourceVersion", None)
        return a == b

    def patch(self, plural, ns, name, ctype, body, subresource=None, dry_run=False):
        old = self.get(plural, ns, name)
        current = self._view(plural, old, subresource)
        try:
            patch = json.loads(body or b"null")
        except ValueError as e:
            raise ApiError(400, "error decoding patch: %s" % e)
        if ctype == "application/merge-patch+json":
            result = merge_patch(current, patch)
        elif ctype == "application/strategic-merge-patch+json":
            result = strategic_merge(current, patch)
        elif ctype == "application/json-patch+json":
            result = json_patch(current, patch)
        else:
            raise ApiError(415, 'the body of the request was in an unknown format - accepted media '
                           'types include: application/json-patch+json, application/merge-patch+json, '
                           'application/strategic-merge-patch+json')
        if not isinstance(result, dict):
            raise ApiError(400, "patch did not produce an object")
        # A resourceVersion the patch itself does not set is no precondition.
        rmd = result.setdefault("metadata", {})
        if rmd.get("resourceVersion") == current["metadata"].get("resourceVersion"):
            rmd.pop("resourceVersion", None)
        return self.update(plural, ns, name, result, subresource, dry_run)

    def _validate(self, plural, new, old):
        if plural == "deployments":
            err = validate_deployment(new, old)
            if err:
                raise err
        elif plural == "services":
            sel = (new.get("spec") or {}).get("selector") or {}
            bad = [k for k, v in sel.items() if not isinstance(v, str)]
            if bad:
                raise invalid(plural, new["metadata"]["name"],
                              [("spec.selector", "Invalid value: %r: must be a string" % bad[0])])
            if (new.get("spec") or {}).get("clusterIP") != (old.get("spec") or {}).get("clusterIP"):
                raise invalid(plural, new["metadata"]["name"],
                              [("spec.clusterIP", "Invalid value: %r: field is immutable"
                                % (new.get("spec") or {}).get("clusterIP"))])
        elif plural in ("pods", "endpoints", "endpointslices", "namespaces"):
            raise ApiError(405, "the emulator does not update %s" % plural)

    def _view(self, plural, obj, subresource):
        if subresource != "scale":
            return obj
        md = obj["metadata"]
        return {"kind": "Scale", "apiVersion": "autoscaling/v1",
                "metadata": {"name": md["name"], "namespace": md["namespace"], "uid": md["uid"],
                             "resourceVersion": md["resourceVersion"],
                             "creationTimestamp": md["creationTimestamp"]},
                "spec": {"replicas": obj["spec"].get("replicas", 0)},
                "status": {"replicas": obj.get("status", {}).get("replicas", 0),
                           "selector": selector_string(
                               obj["spec"].get("selector", {}).get("matchLabels"))}}

    # -- faults ----------------------------------------------------------------------------------

    def take_fault(self, method, path):
        for f in self.faults:
            if f["count"] <= 0:
                continue
            if f.get("methods") and method not in f["methods"]:
                continue
            if f.get("path_contains") and f["path_contains"] not in path:
                continue
            f["count"] -= 1
            return f
        return None

    def settle(self):
        """Brings every rollout to its end at once: the seed starts from a steady state."""
        for _ in range(10):
            self.tick()
            for pod in self.items("pods"):
                if pod.get("_ready_at"):
                    pod["_ready_at"] = 0
        self.tick()

    # -- the simulated controllers --------------------------------------------------------------

    def tick(self):
        with self.lock:
            for dep in self.items("deployments"):
                self._reconcile(dep)
            self._reap_orphans()
            self._ready_pods()
            for dep in self.items("deployments"):
                self._update_status(dep)
            self.sync_endpoints()

    def _reap_orphans(self):
        live = {(d["metadata"]["namespace"], d["metadata"]["uid"]) for d in self.items("deployments")}
        for pod in self.items("pods"):
            owner = pod["metadata"].get("annotations", {}).get("emulator.rotor.io/owner-uid")
            if owner and (pod["metadata"]["namespace"], owner) not in live:
                self.delete("pods", pod["metadata"]["namespace"], pod["metadata"]["name"])

    def _pods_of(self, dep):
        uid = dep["metadata"]["uid"]
        return [p for p in self.items("pods", dep["metadata"]["namespace"])
                if p["metadata"].get("annotations", {}).get("emulator.rotor.io/owner-uid") == uid]

    @staticmethod
    def template_hash(dep):
        text = json.dumps(dep["spec"].get("template", {}), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:10]

    @staticmethod
    def _resolve(value, replicas, round_up):
        if isinstance(value, str) and value.endswith("%"):
            x = int(value[:-1]) * replicas / 100.0
            return int(-(-x // 1)) if round_up else int(x)
        return int(value or 0)

    def _reconcile(self, dep):
        ns, name = dep["metadata"]["namespace"], dep["metadata"]["name"]
        spec = dep["spec"]
        desired = spec.get("replicas", 1)
        strategy = spec.get("strategy") or {}
        if strategy.get("type") == "Recreate":
            surge, unavailable = 0, desired
        else:
            ru = strategy.get("rollingUpdate") or {}
            surge = self._resolve(ru.get("maxSurge", "25%"), desired, True)
            unavailable = self._resolve(ru.get("maxUnavailable", "25%"), desired, False)
            if surge == 0 and unavailable == 0:
                unavailable = 1
        h = self.template_hash(dep)
        pods = self._pods_of(dep)
        new = [p for p in pods if p["metadata"]["labels"].get("pod-template-hash") == h]
        old = [p for p in pods if p not in new]
        # Scale the new ReplicaSet towards desired within the surge allowance.
        room = desired + surge - len(pods) if old else desired - len(new)
        for _ in range(max(0, min(desired - len(new), room))):
            self._create_pod(dep, h)
        for p in sorted(new, key=lambda p: self._ready(p))[:max(0, len(new) - desired)]:
            self.delete("pods", ns, p["metadata"]["name"])
        # Scale old ones down without going under desired - maxUnavailable available pods.
        pods = self._pods_of(dep)
        available = sum(1 for p in pods if self._ready(p))
        new_ready = sum(1 for p in pods if self._ready(p) and p not in old)
        for p in sorted(old, key=lambda p: self._ready(p)):
            if new_ready >= desired or not self._ready(p) or available - 1 >= desired - unavailable:
                if self._ready(p):
                    available -= 1
                self.delete("pods", ns, p["metadata"]["name"])
        if dep.get("status", {}).get("observedGeneration") != dep["metadata"].get("generation"):
            self.progress[(ns, name)] = time.time()

    def _create_pod(self, dep, h):
        md, tmpl = dep["metadata"], dep["spec"].get("template", {})
        self.next_ip += 1
        labels = dict((tmpl.get("metadata") or {}).get("labels") or {})
        labels["pod-template-hash"] = h
        annotations = dict((tmpl.get("metadata") or {}).get("annotations") or {})
        annotations["emulator.rotor.io/owner-uid"] = md["uid"]
        stalled = (md["namespace"], md["name"]) in self.stalled
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": "%s-%s-%s" % (md["name"], h, "".join(
                   random.choice("bcdfghjklmnpqrstvwxz2456789") for _ in range(5))),
                   "namespace": md["namespace"], "uid": str(uuid.uuid4()),
                   "creationTimestamp": now_iso(), "labels": labels, "annotations": annotations,
                   "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                        "name": "%s-%s" % (md["name"], h), "uid": md["uid"],
                                        "controller": True, "blockOwnerDeletion": True}]},
               "spec": dict(copy.deepcopy(tmpl.get("spec") or {}), nodeName="emulator-node"),
               "status": {"phase": "Pending", "podIP": "10.244.%d.%d" % (self.next_ip // 250,
                                                                          self.next_ip % 250 + 2),
                          "hostIP": "10.0.0.1", "startTime": now_iso(),
                          "conditions": [{"type": "Ready", "status": "False",
                                          "lastTransitionTime": now_iso()}]},
               "_ready_at": None if stalled else time.time() + self.pod_ready_seconds}
        self.put("pods", pod)

    @staticmethod
    def _ready(pod):
        return pod["status"].get("phase") == "Running" and any(
            c["type"] == "Ready" and c["status"] == "True" for c in pod["status"]["conditions"])

    def _ready_pods(self):
        for pod in self.items("pods"):
            ready_at = pod.get("_ready_at")
            if ready_at is not None and time.time() >= ready_at and not self._ready(pod):
                pod = copy.deepcopy(pod)
                pod["status"]["phase"] = "Running"
                pod["status"]["conditions"] = [{"type": "Ready", "status": "True",
                                                "lastTransitionTime": now_iso()}]
                self.put("pods", pod)
            elif ready_at is None and pod["status"].get("phase") == "Pending" and \
                    "containerStatuses" not in pod["status"]:
                pod = copy.deepcopy(pod)
                pod["status"]["containerStatuses"] = [
                    {"name": c.get("name", "app"), "ready": False, "restartCount": 0,
                     "image": c.get("image", ""), "state": {"waiting": {
                         "reason": "ImagePullBackOff", "message": "stalled by the emulator"}}}
                    for c in pod["spec"].get("containers") or [{}]]
                self.put("pods", pod)

    def _update_status(self, dep):
        ns, name = dep["metadata"]["namespace"], dep["metadata"]["name"]
        desired = dep["spec"].get("replicas", 1)
        h = self.template_hash(dep)
        pods = self._pods_of(dep)
        new = [p for p in pods if p["metadata"]["labels"].get("pod-template-hash") == h]
        ready = sum(1 for p in pods if self._ready(p))
        st = copy.deepcopy(dep.get("status") or {})
        counts = {"replicas": len(pods), "updatedReplicas": len(new), "readyReplicas": ready,
                  "availableReplicas": ready, "unavailableReplicas": len(pods) - ready}
        before = {k: st.get(k, 0) for k in counts}
        if before != counts:
            self.progress[(ns, name)] = time.time()
        for k, v in counts.items():
            if v:
                st[k] = v
            else:
                st.pop(k, None)
        st["observedGeneration"] = dep["metadata"].get("generation", 1)
        unavailable = self._resolve(((dep["spec"].get("strategy") or {}).get("rollingUpdate") or {})
                                    .get("maxUnavailable", "25%"), desired, False)
        rs = "%s-%s" % (name, h)
        conds = {c["type"]: c for c in st.get("conditions", [])}
        self._set_cond(conds, "Available", ready >= desired - unavailable,
                       "MinimumReplicasAvailable" if ready >= desired - unavailable
                       else "MinimumReplicasUnavailable",
                       "Deployment has minimum availability." if ready >= desired - unavailable
                       else "Deployment does not have minimum availability.")
        complete = len(new) == desired and len(pods) == desired and ready == desired
        deadline = dep["spec"].get("progressDeadlineSeconds", 600)
        if complete:
            self._set_cond(conds, "Progressing", True, "NewReplicaSetAvailable",
                           'ReplicaSet "%s" has successfully progressed.' % rs)
        elif time.time() - self.progress.get((ns, name), time.time()) > deadline:
            self._set_cond(conds, "Progressing", False, "ProgressDeadlineExceeded",
                           'ReplicaSet "%s" has timed out progressing.' % rs)
        elif before != counts or "Progressing" not in conds or \
                conds["Progressing"]["reason"] != "ReplicaSetUpdated":
            self._set_cond(conds, "Progressing", True, "ReplicaSetUpdated",
                           'ReplicaSet "%s" is progressing.' % rs, touch=True)
        st["conditions"] = [conds[t] for t in ("Available", "Progressing") if t in conds]
        revision = self._revision(dep, h)
        if st != dep.get("status") or revision is not None:
            dep = copy.deepcopy(dep)
            dep["status"] = st
            if revision is not None:
                dep["metadata"].setdefault("annotations", {})[
                    "deployment.kubernetes.io/revision"] = revision
            self.put("deployments", dep)

    @staticmethod
    def _revision(dep, h):
        """The revision annotation to set, or None when it is already right: a new pod template
        (even one seen before, as a rollback) gets the next revision, as in a cluster."""
        md = dep["metadata"]
        if md.get("_rev_hash") != h:
            md["_rev"], md["_rev_hash"] = md.get("_rev", 0) + 1, h
        revision = str(md["_rev"])
        if (md.get("annotations") or {}).get("deployment.kubernetes.io/revision") == revision:
            return None
        return revision

    @staticmethod
    def _set_cond(conds, ctype, ok, reason, message, touch=False):
        status = "True" if ok else "False"
        c = conds.get(ctype)
        ts = now_iso()
        if c is None or c["status"] != status:
            conds[ctype] = {"type": ctype, "status": status, "lastUpdateTime": ts,
                            "lastTransitionTime": ts, "reason": reason, "message": message}
        elif c["reason"] != reason or c["message"] != message or touch:
            c.update(lastUpdateTime=ts, reason=reason, message=message)

    def sync_endpoints(self):
        """Endpoints and EndpointSlices of every Service with a selector, from its pods."""
        for svc in self.items("services"):
            ns, name = svc["metadata"]["namespace"], svc["metadata"]["name"]
            sel = (svc.get("spec") or {}).get("selector")
            if not sel:
                continue
            terms = [(k, "in", {v}) for k, v in sel.items()]
            pods = [p for p in self.items("pods", ns) if labels_match(p["metadata"]["labels"], terms)]
            ready = [p for p in pods if self._ready(p)]
            unready = [p for p in pods if not self._ready(p)]
            ports = [{"name": p.get("name"), "port": p.get("targetPort", p.get("port")),
                      "protocol": p.get("protocol", "TCP")} for p in svc["spec"].get("ports", [])]
            for p in ports:
                if p["name"] is None:
                    del p["name"]

            def addr(p):
                return {"ip": p["status"]["podIP"], "nodeName": "emulator-node",
                        "targetRef": {"kind": "Pod", "namespace": ns, "name": p["metadata"]["name"],
                                      "uid": p["metadata"]["uid"]}}
            subset = {}
            if ready:
                subset["addresses"] = [addr(p) for p in ready]
            if unready:
                subset["notReadyAddresses"] = [addr(p) for p in unready]
            if subset:
                subset["ports"] = ports
            self._put_derived("endpoints", ns, name, {
                "apiVersion": "v1", "kind": "Endpoints",
                "metadata": {"name": name, "namespace": ns, "labels": svc["metadata"].get("labels", {})},
                "subsets": [subset] if subset else []})
            self._put_derived("endpointslices", ns, name + "-emu", {
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
                "metadata": {"name": name + "-emu", "namespace": ns,
                             "labels": {"kubernetes.io/service-name": name,
                                        "endpointslice.kubernetes.io/managed-by":
                                            "endpointslice-controller.k8s.io"}},
                "endpoints": [{"addresses": [p["status"]["podIP"]],
                               "conditions": {"ready": self._ready(p), "serving": self._ready(p),
                                              "terminating": False},
                               "nodeName": "emulator-node",
                               "targetRef": addr(p)["targetRef"]} for p in pods],
                "ports": ports})

    def _put_derived(self, plural, ns, name, obj):
        old = self.objects.get((plural, ns, name))
        if old is not None:
            cmp = copy.deepcopy(old)
            for k in ("uid", "creationTimestamp", "resourceVersion"):
                cmp["metadata"].pop(k, None)
            if cmp == obj:
                return
        obj["metadata"]["uid"] = old["metadata"]["uid"] if old else str(uuid.uuid4())
        obj["metadata"]["creationTimestamp"] = old["metadata"]["creationTimestamp"] if old else now_iso()
        self.put(plural, obj)

    # -- state for the control port -------------------------------------------------------------

    def snapshot(self):
        with self.lock:
            out = {"resourceVersion": str(self.rv), "stalled": sorted("/".join(s) for s in self.stalled),
                   "faults": copy.deepcopy(self.faults)}
            for plural in RESOURCES:
                if plural != "namespaces":
                    out[plural] = [public(o) for o in self.items(plural)]
            return out


def validate_deployment(new, old):
    name = new["metadata"]["name"]
    spec = new.get("spec") or {}
    causes = []
    replicas = spec.get("replicas")
    if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
        causes.append(("spec.replicas", "Invalid value: %s: must be greater than or equal to 0"
                       % json.dumps(replicas)))
    sel = (spec.get("selector") or {}).get("matchLabels") or {}
    labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
    if not sel:
        causes.append(("spec.selector", "Required value"))
    elif not labels_match(labels, [(k, "in", {v}) for k, v in sel.items()]):
        causes.append(("spec.template.metadata.labels", "Invalid value: %s: `selector` does not "
                       "match template `labels`" % json.dumps(labels, sort_keys=True)))
    if old is not None and spec.get("selector") != (old.get("spec") or {}).get("selector"):
        causes.append(("spec.selector", "Invalid value: %s: field is immutable"
                       % json.dumps(spec.get("selector"), sort_keys=True)))
    if not isinstance(spec.get("progressDeadlineSeconds", 600), int):
        causes.append(("spec.progressDeadlineSeconds", "Invalid value: must be an integer"))
    return invalid("deployments", name, causes) if causes else None


def public(obj):
    """The object as clients see it: without the emulator's private bookkeeping."""
    obj = copy.deepcopy(obj)
    for d in (obj, obj.get("metadata") or {}):
        for k in [k for k in d if k.startswith("_")]:
            del d[k]
    return obj


# ---------------------------------------------------------------------------------------------
# The seed: namespace shop, two slots of one application, a production and a stage Service.


def seed_shop():
    def deployment(slot, replicas):
        labels = {"app": "shop", "slot": slot}
        return {"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "app-" + slot, "namespace": "shop", "labels": dict(labels)},
                "spec": {"replicas": replicas, "selector": {"matchLabels": dict(labels)},
                         "template": {"metadata": {"labels": dict(labels), "annotations": {
                             "rotor.io/secret-version": "v1"}},
                             "spec": {"containers": [{"name": "app", "image": "shop:1",
                                                      "ports": [{"containerPort": 8080}]}]}}}}

    def service(name, slot):
        return {"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": name, "namespace": "shop", "labels": {"app": "shop"}},
                "spec": {"selector": {"app": "shop", "slot": slot},
                         "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}

    return [deployment("blue", 2), deployment("green", 0), service("app", "blue"),
            service("app-stage", "green")]


# ---------------------------------------------------------------------------------------------
# HTTP.

PATH_RE = re.compile(r"^/(?:api/(?P<core>v1)|apis/(?P<group>[^/]+)/(?P<version>[^/]+))"
                     r"(?:/namespaces/(?P<ns>[^/]+))?/(?P<plural>[^/]+)(?:/(?P<name>[^/]+))?"
                     r"(?:/(?P<sub>[^/]+))?$")


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "rotor-k8s-emulator"

    def log_message(self, fmt, *args):
        if self.server.verbose:
            sys.stderr.write("k8s-emulator: " + fmt % args + "\n")

    # -- plumbing ----------------------------------------------------------------------------

    def body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def send_json(self, code, obj, headers=None):
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-cache, private")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        self.status_sent = code

    def send_error_status(self, err):
        self.send_json(err.code, err.status(), err.headers)

    def dispatch(self):
        self.status_sent = None
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
        cluster = self.server.cluster
        try:
            self.route(url.path, query)
        except ApiError as e:
            self.send_error_status(e)
        except (ValueError, KeyError, TypeError) as e:
            self.send_error_status(ApiError(400, "bad request: %s" % e))
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            self.close_connection = True
        finally:
            with cluster.lock:
                cluster.requests.append({"time": time.time(), "method": self.command,
                                         "path": url.path, "query": query,
                                         "content_type": self.headers.get("Content-Type"),
                                         "user_agent": self.headers.get("User-Agent"),
                                         "status": self.status_sent})
                del cluster.requests[:-5000]

    do_GET = do_PUT = do_PATCH = do_POST = do_DELETE = do_HEAD = lambda self: self.dispatch()


class ApiHandler(Handler):
    """The Kubernetes API (HTTPS, bearer token)."""

    def authorized(self):
        auth = self.headers.get("Authorization", "")
        try:
            with open(self.server.token_file) as f:
                tokens = {line.strip() for line in f if line.strip()}
        except OSError:
            tokens = set()
        return auth.startswith("Bearer ") and auth[7:].strip() in tokens

    def route(self, path, query):
        cluster = self.server.cluster
        body = self.body() if self.command in ("PUT", "PATCH", "POST") else b""
        if not self.authorized():
            raise ApiError(401, "Unauthorized")
        if path.rstrip("/") in ("/version", "/api", "/apis", "/api/v1") or \
                path.startswith("/apis/") and path.count("/") <= 3 or path.startswith("/openapi"):
            return self.discovery(path.rstrip("/"))
        m = PATH_RE.match(path)
        if not m:
            raise ApiError(404, "the server could not find the requested resource")
        group = "" if m.group("core") else m.group("group")
        version = m.group("core") or m.group("version")
        plural, ns, name, sub = m.group("plural"), m.group("ns"), m.group("name"), m.group("sub")
        if plural not in RESOURCES or RESOURCES[plural][:2] != (group, version):
            raise ApiError(404, "the server could not find the requested resource")
        if sub and "%s/%s" % (plural, sub) not in SUBRESOURCES:
            raise ApiError(404, "the server could not find the requested resource")
        with cluster.lock:
            fault = cluster.take_fault(self.command, path) if ns or name else None
        if fault:
            code = fault["status"]
            if code == 409:
                err = conflict(plural, name or "")
            else:
                err = ApiError(code, "Too many requests, please try again later."
                               if code == 429 else "Internal error injected by the emulator")
                if code == 429:
                    ra = int(fault.get("retry_after", 1))
                    err.details = {"retryAfterSeconds": ra}
                    err.headers = {"Retry-After": str(ra)}
            raise err
        dry_run = "dryRun" in query
        if plural == "namespaces":
            return self.namespaces(name)
        if self.command == "GET" and name is None:
            if query.get("watch") in ("1", "true"):
                return self.watch(plural, ns, query)
            return self.list(plural, ns, query)
        if name is None:
            if self.command == "POST":
                obj = self.decode(body)
                obj.setdefault("metadata", {})["namespace"] = ns
                with cluster.lock:
                    if (plural, ns, obj["metadata"].get("name")) in cluster.objects:
                        raise ApiError(409, '%s "%s" already exists' % (
                            qualified(plural), obj["metadata"].get("name")), reason="AlreadyExists")
                    return self.send_json(201, public(cluster.create(obj)))
            raise ApiError(405, "the server does not allow this method on the requested resource")
        with cluster.lock:
            if self.command == "GET":
                return self.send_json(200, public(cluster._view(plural, cluster.get(plural, ns, name), sub)))
            if self.command == "PUT":
                return self.send_json(200, public(cluster.update(plural, ns, name, self.decode(body),
                                                                 sub, dry_run)))
            if self.command == "PATCH":
                ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip()
                return self.send_json(200, public(cluster.patch(plural, ns, name, ctype, body, sub,
                                                                dry_run)))
            if self.command == "DELETE" and sub is None:
                obj = cluster.delete(plural, ns, name)
                cluster.sync_endpoints()
                return self.send_json(200, public(obj))
        raise ApiError(405, "the server does not allow this method on the requested resource")

    @staticmethod
    def decode(body):
        try:
            obj = json.loads(body or b"null")
        except ValueError as e:
            raise ApiError(400, "error decoding body: %s" % e)
        if not isinstance(obj, dict):
            raise ApiError(400, "the body must be an object")
        return obj

    def namespaces(self, name):
        cluster = self.server.cluster
        with cluster.lock:
            names = sorted(cluster.namespaces)

        def ns_obj(n):
            return {"apiVersion": "v1", "kind": "Namespace",
                    "metadata": {"name": n, "resourceVersion": "1", "uid": str(uuid.uuid5(
                        uuid.NAMESPACE_DNS, n))}, "status": {"phase": "Active"}}
        if name is None:
            return self.send_json(200, {"kind": "NamespaceList", "apiVersion": "v1",
                                        "metadata": {"resourceVersion": "1"},
                                        "items": [ns_obj(n) for n in names]})
        if name not in names:
            raise not_found("namespaces", name)
        return self.send_json(200, ns_obj(name))

    def matching(self, plural, ns, query):
        terms = parse_label_selector(query.get("labelSelector"))
        return [o for o in self.server.cluster.items(plural, ns)
                if labels_match(o["metadata"].get("labels"), terms)
                and field_match(o, query.get("fieldSelector"))]

    def list(self, plural, ns, query):
        cluster = self.server.cluster
        with cluster.lock:
            items = [public(o) for o in self.matching(plural, ns, query)]
            rv = str(cluster.rv)
        for o in items:
            o.pop("apiVersion", None)
            o.pop("kind", None)
        kind = RESOURCES[plural][2]
        accept = self.headers.get("Accept", "")
        if "as=Table" in accept:
            return self.send_json(200, table(plural, items, rv, query))
        self.send_json(200, {"kind": kind + "List", "apiVersion": api_version(plural),
                             "metadata": {"resourceVersion": rv}, "items": items})

    def watch(self, plural, ns, query):
        """Newline-delimited watch events over a chunked response, from resourceVersion on."""
        cluster = self.server.cluster
        terms = parse_label_selector(query.get("labelSelector"))
        fields = query.get("fieldSelector")
        timeout = float(query.get("timeoutSeconds") or 1800)
        deadline = time.time() + timeout

        def wanted(p, obj):
            return p == plural and (ns is None or obj["metadata"].get("namespace") == ns) and \
                labels_match(obj["metadata"].get("labels"), terms) and field_match(obj, fields)

        with cluster.lock:
            rv = query.get("resourceVersion") or "0"
            pending = []
            if rv == "0":
                pending = [("ADDED", o) for o in cluster.items(plural, ns) if wanted(plural, o)]
                last = cluster.rv
            else:
                last = int(rv)
                oldest = cluster.history[0][0] if cluster.history else cluster.rv
                if last < oldest - 1 and len(cluster.history) >= cluster.HISTORY:
                    pending = [("ERROR", ApiError(410, "too old resource version: %s (%d)" % (
                        rv, oldest), reason="Expired").status())]
                    deadline = 0
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-cache, private")
        self.end_headers()
        self.status_sent = 200
        try:
            while True:
                for etype, obj in pending:
                    self.chunk(json.dumps({"type": etype, "object": public(obj) if etype != "ERROR"
                                           else obj}).encode() + b"\n")
                pending = []
                with cluster.lock:
                    if time.time() >= deadline or cluster.stopping:
                        break
                    news = [(r, t, o) for (r, t, p, o) in cluster.history
                            if r > last and wanted(p, o)]
                    top = cluster.rv
                    if not news and top == last:
                        cluster.cond.wait(min(1.0, max(0.0, deadline - time.time())))
                        continue
                    pending = [(t, o) for (_, t, o) in news]
                    last = top
            self.chunk(b"")
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError, OSError):
            pass
        self.close_connection = True

    def chunk(self, data):
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def discovery(self, path):
        port = self.server.server_address[1]
        if path == "/version":
            return self.send_json(200, VERSION)
        if path == "/openapi/v2":
            if "protobuf" not in self.headers.get("Accept", ""):
                return self.send_json(200, OPENAPI_V2_JSON)
            self.send_response(200)
            self.send_header("Content-Type", "application/com.github.proto-openapi.spec.v2.v1.0+protobuf")
            self.send_header("Content-Length", str(len(OPENAPI_V2_PB)))
            self.end_headers()
            self.wfile.write(OPENAPI_V2_PB)
            self.status_sent = 200
            return None
        if path == "/api":
            return self.send_json(200, {"kind": "APIVersions", "versions": ["v1"],
                                        "serverAddressByClientCIDRs": [
                                            {"clientCIDR": "0.0.0.0/0",
                                             "serverAddress": "127.0.0.1:%d" % port}]})

        def group_obj(g):
            gv = {"groupVersion": "%s/%s" % (g, GROUPS[g]), "version": GROUPS[g]}
            return {"name": g, "versions": [gv], "preferredVersion": gv}
        if path == "/apis":
            return self.send_json(200, {"kind": "APIGroupList", "apiVersion": "v1",
                                        "groups": [group_obj(g) for g in GROUPS]})
        if path.startswith("/apis/") and path.count("/") == 2 and path[6:] in GROUPS:
            return self.send_json(200, dict(group_obj(path[6:]), kind="APIGroup", apiVersion="v1"))
        gv = "v1" if path == "/api/v1" else path[len("/apis/"):]
        resources = []
        for plural, (group, version, kind, namespaced, short, verbs) in RESOURCES.items():
            if (group + "/" + version if group else version) != gv:
                continue
            r = {"name": plural, "singularName": kind.lower(), "namespaced": namespaced,
                 "kind": kind, "verbs": verbs}
            if short:
                r["shortNames"] = short
            if plural in ("pods", "services", "deployments"):
                r["categories"] = ["all"]
            resources.append(r)
            for sub, (sgroup, sversion, skind, sverbs) in SUBRESOURCES.items():
                if sub.startswith(plural + "/"):
                    resources.append({"name": sub, "singularName": "", "namespaced": namespaced,
                                      "group": sgroup, "version": sversion, "kind": skind,
                                      "verbs": sverbs})
        if not resources:
            raise ApiError(404, "the server could not find the requested resource")
        return self.send_json(200, {"kind": "APIResourceList", "apiVersion": "v1",
                                    "groupVersion": gv, "resources": resources})


def _pb_string(field, text):
    data = text.encode()
    assert len(data) < 128  # one-byte varint length is all this needs
    return bytes([field << 3 | 2, len(data)]) + data


# An OpenAPI v2 document without definitions, in the protobuf form kubectl asks for (gnostic's
# openapi_v2.Document: swagger = 1, info = 2 {title = 1, version = 2}). kubectl's client-side
# validation skips kinds the document does not define, so `kubectl replace` and `apply` work.
OPENAPI_INFO = _pb_string(1, "Kubernetes") + _pb_string(2, VERSION["gitVersion"])
OPENAPI_V2_PB = _pb_string(1, "2.0") + bytes([2 << 3 | 2, len(OPENAPI_INFO)]) + OPENAPI_INFO
OPENAPI_V2_JSON = {"swagger": "2.0", "info": {"title": "Kubernetes", "version": VERSION["gitVersion"]},
                   "paths": {}, "definitions": {}}


def age(ts):
    try:
        then = datetime.datetime.strptime(ts, "%Y-%m-%dT%H:%M:%SZ").replace(
            tzinfo=datetime.timezone.utc).timestamp()
    except (TypeError, ValueError):
        return "<unknown>"
    s = int(time.time() - then)
    return "%ds" % s if s < 120 else "%dm" % (s // 60) if s < 7200 else "%dh" % (s // 3600)


def table(plural, items, rv, query):
    """A meta.k8s.io/v1 Table, as kubectl get asks for by default."""
    cols = {"deployments": ["Ready", "Up-to-date", "Available"],
            "services": ["Type", "Cluster-IP", "External-IP", "Port(s)"],
            "pods": ["Ready", "Status", "Restarts"],
            "endpoints": ["Endpoints"], "endpointslices": ["AddressType", "Ports", "Endpoints"],
            "namespaces": ["Status"]}[plural]

    def cells(o):
        st, spec = o.get("status") or {}, o.get("spec") or {}
        if plural == "deployments":
            return ["%d/%d" % (st.get("readyReplicas", 0), spec.get("replicas", 0)),
                    st.get("updatedReplicas", 0), st.get("availableReplicas", 0)]
        if plural == "services":
            return [spec.get("type"), spec.get("clusterIP"), "<none>",
                    ",".join("%s/%s" % (p["port"], p.get("protocol", "TCP"))
                             for p in spec.get("ports", []))]
        if plural == "pods":
            ready = any(c["type"] == "Ready" and c["status"] == "True" for c in st.get("conditions", []))
            n = len(spec.get("containers", []))
            return ["%d/%d" % (n if ready else 0, n), st.get("phase"), 0]
        if plural == "endpoints":
            eps = ["%s:%s" % (a["ip"], p["port"]) for s in o.get("subsets", [])
                   for a in s.get("addresses", []) for p in s.get("ports", [])]
            return [",".join(eps) or "<none>"]
        if plural == "endpointslices":
            return [o.get("addressType"), ",".join(str(p["port"]) for p in o.get("ports", [])),
                    ",".join(e["addresses"][0] for e in o.get("endpoints", []))]
        return ["Active"]

    include = query.get("includeObject", "Metadata")
    rows = []
    for o in items:
        obj = {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
               "metadata": o["metadata"]}
        if include == "Object":
            obj = dict(o, kind=RESOURCES[plural][2], apiVersion=api_version(plural))
        rows.append({"cells": [o["metadata"]["name"]] + cells(o) +
                     [age(o["metadata"].get("creationTimestamp"))],
                     "object": None if include == "None" else obj})
    return {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": rv},
            "columnDefinitions": [{"name": c, "type": "string", "format": "name" if c == "Name" else "",
                                   "description": c, "priority": 0}
                                  for c in ["Name"] + cols + ["Age"]],
            "rows": rows}


class ControlHandler(Handler):
    """Plain HTTP, no auth: the tests' side door. See docs/kubernetes-emulator.md."""

    def route(self, path, query):
        cluster = self.server.cluster
        body = self.body() if self.command in ("POST", "PUT") else b""
        parts = [p for p in path.split("/") if p]
        with cluster.lock:
            if path == "/state" and self.command == "GET":
                return self.send_json(200, cluster.snapshot())
            if path == "/requests" and self.command == "GET":
                return self.send_json(200, cluster.requests)
            if path == "/requests" and self.command == "DELETE":
                cluster.requests.clear()
                return self.send_json(200, {})
            if len(parts) == 4 and parts[0] == "objects" and self.command == "GET":
                _, plural, ns, name = parts
                if plural not in RESOURCES:
                    raise ApiError(404, "unknown resource %s" % plural)
                return self.send_json(200, public(cluster.get(plural, ns, name)))
            if path == "/load" and self.command == "POST":
                docs = self.documents(body)
                stored = [public(cluster.create(d)) for d in docs]
                return self.send_json(200, {"items": stored})
            if path == "/faults":
                if self.command == "GET":
                    return self.send_json(200, cluster.faults)
                if self.command == "DELETE":
                    cluster.faults = []
                    return self.send_json(200, cluster.faults)
                if self.command == "POST":
                    f = json.loads(body or b"{}")
                    if f.get("status") not in (409, 429, 500, 503):
                        raise ApiError(400, "status must be 409, 429, 500 or 503")
                    f.setdefault("count", 1)
                    cluster.faults.append(f)
                    return self.send_json(200, cluster.faults)
            if path == "/stall" and self.command == "POST":
                return self.stall(json.loads(body or b"{}"))
            if path == "/settings" and self.command == "POST":
                s = json.loads(body or b"{}")
                if "pod_ready_seconds" in s:
                    cluster.pod_ready_seconds = float(s["pod_ready_seconds"])
                return self.send_json(200, {"pod_ready_seconds": cluster.pod_ready_seconds})
        raise ApiError(404, "no such control endpoint: %s %s" % (self.command, path))

    def stall(self, req):
        cluster = self.server.cluster
        key = (req.get("namespace", "shop"), req["name"])
        dep = cluster.get("deployments", *key)
        if req.get("stalled", True):
            cluster.stalled.add(key)
            for pod in cluster._pods_of(dep):
                if not cluster._ready(pod):
                    pod["_ready_at"] = None
        else:
            cluster.stalled.discard(key)
            for pod in cluster._pods_of(dep):
                if pod.get("_ready_at") is None:
                    pod["_ready_at"] = time.time() + cluster.pod_ready_seconds
            # Pods starting again are progress: the status says so before this call returns.
            cluster.progress[key] = time.time()
            cluster.tick()
        deadline = req.get("progress_deadline_seconds")
        if deadline is not None and dep["spec"].get("progressDeadlineSeconds") != deadline:
            # As an operator would: a spec change, so generation and resourceVersion move.
            cluster.patch("deployments", key[0], key[1], "application/merge-patch+json",
                          json.dumps({"spec": {"progressDeadlineSeconds": int(deadline)}}))
        return self.send_json(200, public(cluster.get("deployments", *key)))

    def documents(self, body):
        text = body.decode()
        try:
            doc = json.loads(text)
            docs = [doc]
        except ValueError:
            if yaml is None:
                raise ApiError(415, "YAML needs python3-yaml; send JSON")
            docs = [d for d in yaml.safe_load_all(text) if d]
        out = []
        for d in docs:
            if isinstance(d, list):
                out.extend(d)
            elif isinstance(d, dict) and d.get("kind", "").endswith("List") and "items" in d:
                out.extend(d["items"])
            else:
                out.append(d)
        return out


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr, handler, cluster, tls=None, token_file=None, verbose=False):
        super().__init__(addr, handler)
        self.cluster, self.tls, self.token_file, self.verbose = cluster, tls, token_file, verbose

    def finish_request(self, request, client_address):
        # The TLS handshake runs here, on the connection's own thread, so that a slow client
        # cannot hold up accept().
        if self.tls is None:
            return super().finish_request(request, client_address)
        try:
            request.settimeout(30)
            conn = self.tls.wrap_socket(request, server_side=True)
            conn.settimeout(None)
        except (ssl.SSLError, OSError):
            return
        try:
            super().finish_request(conn, client_address)
        finally:
            conn.close()

    def handle_error(self, request, client_address):
        if self.verbose:
            super().handle_error(request, client_address)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cert-dir", required=True, help="holds server.pem and server.key")
    ap.add_argument("--token-file", required=True, help="valid bearer tokens, one a line (re-read)")
    ap.add_argument("--ready-file", required=True, help="JSON with the ports, written when ready")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--control-port", type=int, default=0)
    ap.add_argument("--seed", choices=["shop", "none"], default="shop")
    ap.add_argument("--pod-ready-seconds", type=float, default=1.0)
    ap.add_argument("--tick-seconds", type=float, default=0.1)
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()

    cluster = Cluster(args.pod_ready_seconds)
    if args.seed == "shop":
        with cluster.lock:
            for obj in seed_shop():
                cluster.create(obj)
            cluster.settle()
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(os.path.join(args.cert_dir, "server.pem"),
                        os.path.join(args.cert_dir, "server.key"))
    api = Server(("127.0.0.1", args.port), ApiHandler, cluster, tls, args.token_file, args.verbose)
    control = Server(("127.0.0.1", args.control_port), ControlHandler, cluster, None, None,
                     args.verbose)
    stop = threading.Event()

    def controller():
        while not stop.wait(args.tick_seconds):
            cluster.tick()

    threads = [threading.Thread(target=s.serve_forever, args=(0.05,), daemon=True)
               for s in (api, control)]
    threads.append(threading.Thread(target=controller, daemon=True))
    for t in threads:
        t.start()
    tmp = args.ready_file + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"port": api.server_address[1], "control_port": control.server_address[1],
                   "pid": os.getpid()}, f)
    os.rename(tmp, args.ready_file)

    def on_signal(signum, frame):
        stop.set()
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    stop.wait()
    with cluster.lock:
        cluster.stopping = True
        cluster.cond.notify_all()
    api.shutdown()
    control.shutdown()
    api.server_close()
    control.server_close()


if __name__ == "__main__":
    main()
