"""bench/keyvault.py N LIMIT: N secrets rotated at once through the Key Vault emulator, which
enforces LIMIT secret writes (PUT, PATCH) per sliding 10 s window per vault and answers 429
beyond it, as Key Vault documents (300 per 10 s). rotor's own limiter is set to the same LIMIT.
Run through bench/keyvault.sh.

Each rotation writes twice: generate's PUT of the new version and retire's PATCH disabling the
old one. Figures, from the emulator's request log:
  sustained rate  (writes - LIMIT) / (last write - first write): the writes beyond the first
                  window's budget over the time they took. Under a sliding-window limit no
                  schedule does better than LIMIT per 10 s, and one that fills every window as soon
                  as it opens scores exactly that; the ratio to LIMIT/10 s is the figure.
  mean rate       writes / (last write - first write), for context: a limiter that lets the
                  first window's budget go at once scores above LIMIT/10 s.
  peak            the most writes in any 10 s window (must not exceed LIMIT).
  throttled       429 answers (goal 0).
  limiter-bound   the limiter's own rate where it is the bottleneck: for each write k past the
                  first LIMIT, its gap to write k - LIMIT. No schedule can make it shorter than
                  the 10 s window; a gap within SATURATED_S of it means write k was waiting for
                  that slot (with no demand the gap is much longer: the rotations' other stages
                  between generate's PUT and retire's PATCH). 10 s / the mean of those gaps is
                  the ratio to the limit while saturated; the sustained rate above also counts
                  the time no write was asked for.
"""

import os
import sys
import time

from benchlab import SOURCE, append_result, common_fields, mib, note_pid, proc_status

sys.path.insert(0, os.path.join(SOURCE, "tests", "e2e"))
from kvlab import KvLab  # noqa: E402
from rotorlab import wait_for  # noqa: E402

WINDOW_MS = 10000
SATURATED_S = 1.0


def limiter_bound(times_ms, limit):
    """(writes limited by the window, mean gap s, min gap s, ratio to the limit) or None."""
    t = sorted(times_ms)
    gaps = [(t[k] - t[k - limit]) / 1000 for k in range(limit, len(t))]
    bound = [g for g in gaps if g < WINDOW_MS / 1000 + SATURATED_S]
    if not bound:
        return None
    mean = sum(bound) / len(bound)
    return len(bound), round(mean, 3), round(min(gaps), 3), round(WINDOW_MS / 1000 / mean, 3)


def sliding_peak(times_ms, window_ms=WINDOW_MS):
    times_ms = sorted(times_ms)
    peak, lo = 0, 0
    for hi, t in enumerate(times_ms):
        while times_ms[lo] <= t - window_ms:
            lo += 1
        peak = max(peak, hi - lo + 1)
    return peak


def main():
    n, limit = int(sys.argv[1]), int(sys.argv[2])
    bound = float(os.environ.get("KEYVAULT_TIMEOUT", "900"))
    stages = "{ timeout: 600s, max_attempts: 3, backoff: { initial: 200ms, max: 2s } }"
    print(f"# keyvault: {n} secrets, limit {limit} writes per 10 s; load {common_fields()['load']}",
          flush=True)
    lab = KvLab(secrets=n, writes_per_10s=limit, current=None, stages=stages,
                pg_settings=("max_connections=1000",))
    try:
        note_pid(lab.kv.proc.pid)
        lab.kv.faults(write_limit_per_10s=limit)
        d = lab.start()
        note_pid(d.p.pid)
        # The bootstrap's PUTs count in the emulator's window: start once they have left it.
        seeded = [r["time"] for r in lab.kv.requests() if r["seq"] <= lab.seed_seq]
        wait_s = (max(seeded) + WINDOW_MS + 500) / 1000 - time.time() if seeded else 0
        if wait_s > 0:
            time.sleep(wait_s)
        t0 = time.monotonic()
        # on each secret's owner partition (murmur2, as rotor's producer): with kcat's default
        # two thirds would be forwarded through the outbox first (bench/benchlab.py)
        ids = lab.request_many(lab.secret_names(), props=(
            ("partitioner", os.environ.get("BENCH_PARTITIONER", "murmur2_random")),))
        wanted = set(ids.values())

        def all_done():
            rows = [r for r in lab.rotations() if r["request_id"] in wanted]
            ended = [r for r in rows if r["status"] in ("completed", "failed")]
            return rows if len(ended) == len(wanted) else None
        try:
            rows = wait_for(all_done, bound, 1.0, what=f"{n} rotations")
        except AssertionError:
            rows = [r for r in lab.rotations() if r["request_id"] in wanted]
        elapsed = time.monotonic() - t0
        st = proc_status(d.p.pid)
        completed = sum(r["status"] == "completed" for r in rows)
        failed = sum(r["status"] == "failed" for r in rows)
        reqs = lab.vault_requests()
        vault = [r for r in reqs if r["kind"] == "vault"]
        writes = [r for r in vault if r["method"] in ("PUT", "PATCH")]
        ok = [r["time"] for r in writes if r["status"] == 200]
        throttled = sum(r["status"] == 429 for r in reqs)
        span_s = (max(ok) - min(ok)) / 1000 if len(ok) > 1 else float("nan")
        limit_rate = limit * 1000 / WINDOW_MS
        rate = (len(ok) - limit) / span_s if len(ok) > limit else float("nan")
        mean = len(ok) / span_s if span_s else float("nan")
        peak = sliding_peak(ok)
        lb = limiter_bound(ok, limit)
        # where the time went: each kind of write's first and last, from the requests' produce
        t_req = min(r["time"] for r in reqs if r["kind"] == "vault") / 1000
        phases = {}
        for method, what in (("PUT", "generate PUT"), ("PATCH", "retire PATCH")):
            ts = [r["time"] / 1000 - t_req for r in writes
                  if r["method"] == method and r["status"] == 200]
            if ts:
                phases[what] = (round(min(ts), 1), round(max(ts), 1), len(ts))
        row = dict(common_fields(), secrets=n, limit_per_10s=limit, completed=completed,
                   failed=failed, writes=len(ok), write_span_s=round(span_s, 2),
                   mean_writes_s=round(mean, 2), mean_ratio=round(mean / limit_rate, 3),
                   sustained_writes_s=round(rate, 2), ratio=round(rate / limit_rate, 3),
                   peak_10s=peak, throttled=throttled, all_done_s=round(elapsed, 1),
                   vault_requests=len(vault), rss_mib=round(mib(st["VmRSS"]), 1),
                   hwm_mib=round(mib(st["VmHWM"]), 1))
        print(f"keyvault: {completed}/{n} rotations completed ({failed} failed) in {elapsed:.1f} s; "
              f"{len(ok)} writes over {span_s:.2f} s: mean {mean:.2f} writes/s "
              f"({mean / limit_rate:.3f} of the limit), sustained {rate:.2f} writes/s against the "
              f"limit {limit_rate:.0f}/s = {rate / limit_rate:.3f} (goal >= 0.95: "
              f"{'met' if rate / limit_rate >= 0.95 else 'NOT met'}); peak {peak} per 10 s "
              f"(limit {limit}); throttled (429) {throttled} (goal 0: "
              f"{'met' if throttled == 0 else 'NOT met'}); {len(vault)} vault requests; rotor "
              f"VmHWM {row['hwm_mib']} MiB", flush=True)
        if lb:
            print(f"#   limiter-bound: {lb[0]} of {len(ok) - limit} writes waited for a slot; their "
                  f"gap to the write {limit} before: mean {lb[1]} s, least {lb[2]} s (window "
                  f"{WINDOW_MS / 1000:g} s): {lb[3]} of the limit while saturated (goal >= 0.95: "
                  f"{'met' if lb[3] >= 0.95 else 'NOT met'})", flush=True)
            row["saturated_writes"], row["saturated_gap_s"] = lb[0], lb[1]
            row["saturated_ratio"] = lb[3]
        created = lab.pg.query(
            "SELECT extract(epoch FROM min(created_at)), extract(epoch FROM max(created_at)) "
            "FROM rotor.rotations")[0]
        row["created_span_s"] = round(float(created[1]) - float(created[0]), 1)
        print("#   writes (first s, last s, count) after the first vault request: " +
              ", ".join(f"{k} {v}" for k, v in phases.items()) +
              f"; the {n} rotations were created over {row['created_span_s']} s (journal)")
        append_result("keyvault", row)
        print("| date | secrets | writes | mean writes/s (/ limit) | sustained writes/s (/ limit) "
              "| peak per 10 s | 429s | all done (s) | load |")
        print(f"| {row['date']} | {n} | {len(ok)} | {row['mean_writes_s']} ({row['mean_ratio']}) | "
              f"{row['sustained_writes_s']} ({row['ratio']}) | {peak} | {throttled} | "
              f"{row['all_done_s']} | {row['load']} |")
    finally:
        lab.close()


if __name__ == "__main__":
    main()
