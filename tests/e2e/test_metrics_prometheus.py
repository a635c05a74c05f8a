"""What an operator watches, checked with the operator's own tools: promtool accepts rotor's
/metrics, and a real Prometheus scrapes it and answers queries over rotor_build_info, the
stage-duration histogram and the per-secret VALID UNTIL gauge with the figures the journal holds.
After a restart, before any rotation, the per-secret gauges are read back from the journal; a
rotation aborted after the swap (production keeps its new password) moves them and is counted.

prometheus and promtool come from Debian's prometheus package (scripts/setup.sh). Without them
the test skips on a workstation, and fails under CI=true, where a skip would hide the check."""
import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.parse
import urllib.request

import pytest

from rotorlab import free_port, wait_for

STAGES = ["prepare", "generate", "set-db", "deploy", "verify", "swap", "approve", "retire"]
# rotor_stage_duration_seconds' bounds (consumer/observe.c), to find the bucket of a duration.
STAGE_BUCKETS = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800,
                 3600, 7200, 21600, 86400]


def tool(name):
    path = shutil.which(name)
    if path:
        return path
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{name} is missing: scripts/setup.sh installs Debian's prometheus package")
    pytest.skip(f"{name} is missing (apt-get install prometheus, or scripts/setup.sh)")


def http_port(daemon):
    m = wait_for(lambda: re.search(r'"msg":"http.listening".*?"port":"(\d+)"', daemon.text()),
                 30, what="rotor's HTTP port")
    return int(m.group(1))


def scrape(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        assert r.headers["Content-Type"] == "text/plain; version=0.0.4"
        return r.read().decode()


def promtool_check(text):
    # `check metrics` parses the exposition and lints it (names, units, help); any finding is a
    # non-zero exit.
    p = subprocess.run([tool("promtool"), "check", "metrics"], input=text, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0, (p.stdout, p.stderr, text)


def sample(text, series):
    m = re.search(r"^" + re.escape(series) + r" (\S+)$", text, re.M)
    return float(m.group(1)) if m else None


class Prometheus:
    """A Prometheus server in a temporary directory, scraping one target every second."""

    def __init__(self, root, target_port):
        self.dir = os.path.join(root, "prometheus")
        os.makedirs(self.dir)
        config = os.path.join(self.dir, "prometheus.yml")
        with open(config, "w") as f:
            f.write("global: { scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s }\n"
                    "scrape_configs:\n"
                    "  - job_name: rotor\n"
                    f"    static_configs: [ {{ targets: [ '127.0.0.1:{target_port}' ] }} ]\n")
        self.port = free_port()
        self.log = open(os.path.join(self.dir, "prometheus.log"), "w")
        self.proc = subprocess.Popen(
            [tool("prometheus"), f"--config.file={config}",
             f"--storage.tsdb.path={os.path.join(self.dir, 'data')}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=self.dir)

    def query(self, expr):
        url = (f"http://127.0.0.1:{self.port}/api/v1/query?"
               + urllib.parse.urlencode({"query": expr}))
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                doc = json.loads(r.read())
        except OSError:
            assert self.proc.poll() is None, self.text()
            return None  # not listening yet
        assert doc["status"] == "success", doc
        return doc["data"]["result"]

    def text(self):
        with open(self.log.name) as f:
            return f.read()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def bucket_of(seconds):
    """(lower, upper] of the bucket that holds seconds; le is "less than or equal"."""
    lower = 0.0
    for upper in STAGE_BUCKETS:
        if seconds <= upper:
            return lower, upper
        lower = upper
    return lower, float("inf")


def test_prometheus_scrapes_rotor(make_lab):
    tool("prometheus")
    tool("promtool")
    lab = make_lab(separate_broker=True)  # the broker outlives rotor's restart below
    d = lab.start()
    port = http_port(d)

    request_id = lab.request(reason="metrics")
    rot = lab.rotation_for(request_id)
    done = lab.wait_status(rot["id"], ("completed", "failed"), timeout=60)
    assert done["status"] == "completed", lab.history(rot["id"])
    # The counters move once the end is journaled; the row can be seen a moment before.
    text = wait_for(lambda: (lambda t: t if 'rotor_rotations_total{status="completed"} 1' in t
                             else None)(scrape(port)), 10, what="the completion in /metrics")
    promtool_check(text)
    # Every family served is in the operator's table (docs/operations.md, "Metrics").
    served = set(re.findall(r"^# TYPE (\S+) ", text, re.M))
    undocumented = served - documented_metrics()
    assert not undocumented, f"add to docs/operations.md's metrics table: {sorted(undocumented)}"

    expires_at, finished_at = lab.pg.query(
        "SELECT extract(epoch from expires_at)::float8, extract(epoch from finished_at)::float8"
        " FROM rotor.rotations WHERE id = %s", (rot["id"],))[0]
    # What each stage took, as the audit trail recorded it (approve records no duration).
    took = dict(lab.pg.query(
        "SELECT stage, duration_ms / 1000.0 FROM rotor.history"
        " WHERE rotation_id = %s AND outcome = 'completed' AND duration_ms IS NOT NULL",
        (rot["id"],)))
    assert set(took) == set(STAGES) - {"approve"}, took

    version = subprocess.run([os.environ.get("ROTOR_BIN", "rotor"), "version"],
                             capture_output=True, text=True, check=True).stdout.split()[-1]

    prom = Prometheus(lab.root, port)
    try:
        up = wait_for(lambda: prom.query('up{job="rotor"} == 1'), 60, 0.5,
                      what="Prometheus to scrape rotor")
        assert len(up) == 1

        info = prom.query("rotor_build_info")
        assert len(info) == 1, info
        assert info[0]["metric"]["version"] == version
        assert re.fullmatch(r"\d+\.\d+\.\d+", info[0]["metric"]["libuv"])
        assert info[0]["value"][1] == "1"

        # One observation per stage run, every one of them ok.
        counts = prom.query("sum by (stage, outcome) (rotor_stage_duration_seconds_count)")
        got = {(r["metric"]["stage"], r["metric"]["outcome"]): float(r["value"][1])
               for r in counts}
        assert got == {(s, "ok"): 1.0 for s in STAGES}, got
        total = prom.query("sum(rotor_stage_duration_seconds_count)")
        assert float(total[0]["value"][1]) == len(STAGES)

        # The p99 of each stage lies in the bucket of the duration the journal recorded: a
        # histogram that put an observation in the wrong bucket, or lost cumulativeness, would
        # answer outside it.
        q = prom.query("histogram_quantile(0.99, sum by (stage, le) "
                       "(rotor_stage_duration_seconds_bucket))")
        p99 = {r["metric"]["stage"]: float(r["value"][1]) for r in q}
        for stage, seconds in took.items():
            lower, upper = bucket_of(float(seconds))
            assert lower < p99[stage] <= upper, (stage, seconds, p99[stage])
        # histogram_quantile() repairs buckets that are not cumulative, so check them as
        # scraped: each stage's one observation is in its bucket, in every bucket above, in
        # +Inf, and in none below.
        for stage, seconds in took.items():
            lower, upper = bucket_of(float(seconds))

            def bucket(le):
                r = prom.query(f'rotor_stage_duration_seconds_bucket{{stage="{stage}",le="{le}"}}')
                return float(r[0]["value"][1])
            assert bucket(f"{upper:g}") == 1 and bucket("86400") == 1 and bucket("+Inf") == 1
            if lower > 0:
                assert bucket(f"{lower:g}") == 0, (stage, seconds)
        sums = prom.query("sum by (stage) (rotor_stage_duration_seconds_sum)")
        for r in sums:
            if r["metric"]["stage"] in took:
                assert abs(float(r["value"][1]) - float(took[r["metric"]["stage"]])) < 1e-6

        rotations = prom.query('rotor_rotation_duration_seconds_count{status="completed"}')
        assert float(rotations[0]["value"][1]) == 1

        # The secret's VALID UNTIL is the journal's expires_at; its last rotation, the finish.
        valid = prom.query('rotor_secret_valid_until_timestamp_seconds{secret="app-db"}')
        assert len(valid) == 1, valid
        assert abs(float(valid[0]["value"][1]) - expires_at) < 0.002
        last = prom.query('rotor_secret_last_rotation_timestamp_seconds{secret="app-db"}')
        assert abs(float(last[0]["value"][1]) - finished_at) < 5
        # The alert the gauge exists for: days left, here the 90d validity.
        left = prom.query('(rotor_secret_valid_until_timestamp_seconds{secret="app-db"} - time())'
                          ' / 86400')
        assert 89 < float(left[0]["value"][1]) <= 90

        # The loop's lag histogram is scraped and usable by histogram_quantile (its bound is
        # measured in bench/, not asserted here: this machine's load is not the daemon's).
        lag = wait_for(lambda: prom.query("histogram_quantile(0.99, rotor_loop_delay_seconds_bucket)"),
                       30, 0.5, what="loop delay samples")
        assert 0 <= float(lag[0]["value"][1]) < 10, lag
    finally:
        prom.stop()

    # After a restart, before any rotation of the new process, the gauges come from the journal.
    # The new process gates the retirement by hand, for the abort below.
    d.signal(signal.SIGTERM)
    assert d.wait(30) == 0
    lab.write_config(approval="{ mode: manual, gate: retire }")
    d2 = lab.start()
    text = gauges_after_start(d2)
    assert abs(valid_until(text) - expires_at) < 0.002
    assert abs(last_rotation(text) - finished_at) < 0.002
    assert sample(text, 'rotor_rotations_total{status="completed"}') is None

    # A rotation aborted after the swap leaves production on its new password: the gauges follow
    # it, and the end is counted by its status (an abort is a command, not a stage's end).
    request_id = lab.request(reason="abort after the swap")
    rot2 = lab.rotation_for(request_id)
    lab.wait_status(rot2["id"], "waiting", timeout=60)
    lab.command("rotation.abort", rot2["id"], by="pytest", reason="metrics")
    lab.wait_status(rot2["id"], "aborted", timeout=30)
    expires2, finished2, swapped = lab.pg.query(
        "SELECT extract(epoch from expires_at)::float8, extract(epoch from finished_at)::float8,"
        " swapped FROM rotor.rotations WHERE id = %s", (rot2["id"],))[0]
    assert swapped and expires2 > expires_at
    port2 = http_port(d2)
    text = wait_for(lambda: (lambda t: t if 'rotor_rotations_total{status="aborted"} 1' in t
                             else None)(scrape(port2)), 10, what="the abort in /metrics")
    promtool_check(text)
    assert sample(text, 'rotor_rotation_duration_seconds_count{status="aborted"}') == 1
    assert abs(valid_until(text) - expires2) < 0.002
    assert abs(last_rotation(text) - finished2) < 5

    # and a restart reads that row back, not the completed one before it.
    d2.signal(signal.SIGTERM)
    assert d2.wait(30) == 0
    text = gauges_after_start(lab.start())
    assert abs(valid_until(text) - expires2) < 0.002
    assert abs(last_rotation(text) - finished2) < 0.002


def documented_metrics():
    """Names in the first column of the metrics table of docs/operations.md."""
    source = os.environ.get("ROTOR_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "..", ".."))
    with open(os.path.join(source, "docs", "operations.md")) as f:
        doc = f.read()
    table = doc[doc.index("### Metrics"):]
    table = table[:table.index("\n\n", table.index("| name |"))]
    return set(re.findall(r"^\| `(rotor_[a-z0-9_]+)", table, re.M))


def gauges_after_start(daemon):
    port = http_port(daemon)
    text = wait_for(lambda: (lambda t: t if "rotor_secret_valid_until_timestamp_seconds" in t
                             else None)(scrape(port)), 20, what="the gauges after a restart")
    promtool_check(text)
    return text


def valid_until(text):
    return sample(text, 'rotor_secret_valid_until_timestamp_seconds{secret="app-db"}')


def last_rotation(text):
    return sample(text, 'rotor_secret_last_rotation_timestamp_seconds{secret="app-db"}')
