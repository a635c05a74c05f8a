"""Fifty rotations at once under the per-vault write limiter: every one completes, each writes
exactly its two versions' worth (generate's PUT, retire's PATCH), and no 10-second window holds
more writes than the limit."""
import time

from kvlab import make_kvlab  # noqa: F401 (fixture)
from rotorlab import wait_for


def sliding_peak(times_ms, window_ms=10000):
    """The most events in any half-open window of window_ms."""
    times_ms = sorted(times_ms)
    peak, lo = 0, 0
    for hi, t in enumerate(times_ms):
        while times_ms[lo] <= t - window_ms:
            lo += 1
        peak = max(peak, hi - lo + 1)
    return peak


def test_fifty_rotations_stay_under_the_write_limit(make_kvlab):
    limit = 20
    # a generate waits in the limiter's queue for up to ~40 s: longer stages than the lab's 30 s
    stages = "{ timeout: 120s, max_attempts: 3, backoff: { initial: 200ms, max: 2s } }"
    lab = make_kvlab(secrets=50, writes_per_10s=limit, current=None, stages=stages,
                     pg_settings=("max_connections=300",))
    lab.start()
    t0 = time.monotonic()
    ids = lab.request_many(lab.secret_names())
    rots = {name: lab.rotation_for(req, timeout=60)["id"] for name, req in ids.items()}

    def all_done():
        by_id = {r["id"]: r for r in lab.rotations()}
        return all(by_id[rid]["status"] in ("completed", "failed") for rid in rots.values())
    # 100 writes at 20 per 10 s take 50 s at best; the rest is margin for a loaded machine
    wait_for(all_done, 300, 0.5, what="fifty rotations")
    elapsed = time.monotonic() - t0
    by_id = {r["id"]: r for r in lab.rotations()}
    failed = [by_id[rid] for rid in rots.values() if by_id[rid]["status"] != "completed"]
    assert not failed, failed

    writes = [r for r in lab.vault_requests()
              if r["kind"] == "vault" and r["method"] in ("PUT", "PATCH")]
    assert all(r["status"] == 200 for r in writes), "the emulator enforces nothing here"
    # a generate PUT and a retire PATCH per rotation, no more
    assert len(writes) == 100
    peak = sliding_peak([r["time"] for r in writes])
    span = (max(r["time"] for r in writes) - min(r["time"] for r in writes)) / 1000
    print(f"\nfifty rotations: {len(writes)} writes over {span:.1f}s, peak {peak} per 10s "
          f"(limit {limit}), all completed in {elapsed:.1f}s")
    assert peak <= limit
    # the limiter was the bottleneck: it let whole windows through
    assert peak >= limit // 2
    for i in range(50):
        blue, green = lab.vault_names(i)
        [g] = lab.versions(green)
        assert g["tags"]["slot"] == "green" and g["tags"]["role"] == lab.roles(i)[1]
        [b] = lab.versions(blue)
        assert b["attributes"]["enabled"] is False
    assert lab.can_login(lab.roles(49)[1], lab.versions(lab.vault_names(49)[1])[0]["value"])
