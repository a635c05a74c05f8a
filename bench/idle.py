"""bench/idle.py SECRETS SECONDS: rotor idle with SECRETS secrets configured (each on a 30-day
schedule), the broker in another process (`rotor broker`). Run through bench/idle.sh.

After a settling time, over a window of SECONDS:
  RSS          VmRSS and VmHWM of rotor (/proc/PID/status), goal <= 8 MiB.
  wake-ups/s   context switches (voluntary + involuntary, /proc/PID/task/TID/status) of the loop
               thread (the main thread, TID == PID; goal <= 1/s) and of every thread of the
               process (threads started within the window count from zero), per thread too.
Baseline in the same window: `kcat -G` consuming rotor's commands topic in a group of its own, a
bare librdkafka consumer doing nothing: the floor librdkafka's own threads set.
Then, for 31 s (IDLE_STRACE), strace on the loop thread alone: which system calls wake it, and the timeouts its
epoll_wait is given (each a libuv timer coming due); an epoll_wait with a zero timeout does not
sleep and is not counted as a wake-up.
"""

import collections
import os
import re
import shutil
import subprocess
import sys
import time

from benchlab import (KCAT, BenchLab, append_result, common_fields, mib, proc_status, start,
                      switches)

SETTLE_S = float(os.environ.get("IDLE_SETTLE", "15"))
# one schedule round (daemon.schedule_interval, 30 s by default) falls inside the strace window
STRACE_S = int(os.environ.get("IDLE_STRACE", "31"))


def deltas(a, b, dt):
    """{tid: (name, wake-ups/s)} between two switches() snapshots."""
    out = {}
    for tid, (v1, n1, name) in b.items():
        v0, n0, _ = a.get(tid, (0, 0, name))
        out[tid] = (name, ((v1 - v0) + (n1 - n0)) / dt)
    return out


def pss_kib(pid):
    """Proportional set size (shared pages divided among their users), from smaps_rollup."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_by_file(pid, top=8):
    """The mappings' resident size (kB) summed per backing file (anonymous ones under their
    kind: [heap], [stack], or "anonymous"), largest first."""
    per, name = collections.Counter(), None
    try:
        with open(f"/proc/{pid}/smaps") as f:
            for line in f:
                first = line.split(None, 1)[0]
                if "-" in first and not first.endswith(":"):
                    parts = line.split()
                    name = os.path.basename(parts[5]) if len(parts) > 5 else "anonymous"
                elif first == "Rss:":
                    per[name] += int(line.split()[1])
    except OSError:
        return []
    return per.most_common(top)


def smaps_rollup(pid):
    """Rss, Pss, shared and private, clean and dirty, anonymous (kB) from smaps_rollup: what of
    the resident set is pages of files other processes can share, and what only rotor holds."""
    keep = ("Rss", "Pss", "Shared_Clean", "Shared_Dirty", "Private_Clean", "Private_Dirty",
            "Anonymous")
    out = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                k = line.split(":", 1)[0]
                if k in keep:
                    out[k] = int(line.split()[1])
    except OSError:
        pass
    return out


def strace_loop(pid, seconds):
    """Counts what the loop thread does for `seconds` with strace (main thread only)."""
    if not shutil.which("strace"):
        return None
    out = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"rotor-idle-strace.{pid}")
    try:
        subprocess.run(["timeout", "-s", "INT", str(seconds), "strace", "-qq", "-tt", "-p",
                        str(pid), "-o", out], capture_output=True, timeout=seconds + 30)
        with open(out) as f:
            lines = f.read().splitlines()
    except (OSError, subprocess.SubprocessError):
        return None
    finally:
        if os.path.exists(out):
            os.unlink(out)
    calls = collections.Counter()
    timeouts = collections.Counter()
    woke = collections.Counter()
    for line in lines:
        m = re.match(r"[\d:.]+ (\w+)\((.*)", line)
        if not m:
            continue
        calls[m.group(1)] += 1
        if m.group(1) in ("epoll_wait", "epoll_pwait"):
            t = re.search(r", (-?\d+)(?:, NULL, \d+)?\) += (\d+)", line)
            if t:
                timeouts[int(t.group(1))] += 1
                # a zero timeout never sleeps: libuv polls once without waiting before each
                # blocking poll when its idle-time metric is on (health.c's loop lag)
                if t.group(1) != "0":
                    woke["timer" if t.group(2) == "0" else "fd"] += 1
    return calls, timeouts, woke, seconds


def main():
    n, window = int(sys.argv[1]), float(sys.argv[2])
    print(f"# idle: {n} secrets, window {window:.0f} s; load {common_fields()['load']}", flush=True)
    lab = BenchLab(secrets=n, schedule="{ every: 30d }")
    kcat = None
    try:
        lab.start_rotor()
        kcat = start([KCAT, "-b", lab.bootstrap, "-G", "bench-idle-baseline", "-q", "-o", "end",
                      "rotor.commands"], os.path.join(lab.root, "kcat.log"))
        time.sleep(SETTLE_S)
        pid = lab.pid
        r0, k0, t0 = switches(pid), switches(kcat.p.pid), time.monotonic()
        time.sleep(window)
        r1, k1, t1 = switches(pid), switches(kcat.p.pid), time.monotonic()
        dt = t1 - t0
        st = proc_status(pid)
        rd, kd = deltas(r0, r1, dt), deltas(k0, k1, dt)
        loop = rd[pid][1]
        loop_vol = (r1[pid][0] - r0[pid][0]) / dt
        loop_invol = (r1[pid][1] - r0[pid][1]) / dt
        pss = pss_kib(pid)
        proc_total = sum(w for _, w in rd.values())
        kcat_total = sum(w for _, w in kd.values())
        row = dict(common_fields(), secrets=n, window_s=round(dt, 1),
                   rss_mib=round(mib(st["VmRSS"]), 2), hwm_mib=round(mib(st["VmHWM"]), 2),
                   rss_anon_mib=round(mib(st["RssAnon"]), 2),
                   rss_file_mib=round(mib(st["RssFile"]), 2),
                   pss_mib=round(mib(pss), 2) if pss else "",
                   threads=len(r1), loop_wakeups_s=round(loop, 2),
                   loop_voluntary_s=round(loop_vol, 2), loop_involuntary_s=round(loop_invol, 2),
                   process_wakeups_s=round(proc_total, 2), kcat_wakeups_s=round(kcat_total, 2),
                   ratio_process_kcat=round(proc_total / kcat_total, 2) if kcat_total else "",
                   kcat_rss_mib=round(mib(proc_status(kcat.p.pid)["VmRSS"]), 2))
        print(f"idle: rotor VmRSS {row['rss_mib']} MiB (VmHWM {row['hwm_mib']}; goal <= 8: "
              f"{'met' if row['rss_mib'] <= 8 else 'NOT met'}; anonymous {row['rss_anon_mib']}, "
              f"file-backed {row['rss_file_mib']}, PSS {row['pss_mib']}), loop thread {loop:.2f} "
              f"wake-ups/s ({loop_vol:.2f} voluntary + {loop_invol:.2f} involuntary) "
              f"(goal <= 1: {'met' if loop <= 1 else 'NOT met'}), whole process "
              f"{proc_total:.2f}/s over {len(r1)} threads; baseline kcat -G {kcat_total:.2f}/s "
              f"(RSS {row['kcat_rss_mib']} MiB): rotor/kcat {row['ratio_process_kcat']}",
              flush=True)
        by_name = collections.defaultdict(float)
        for tid, (name, w) in rd.items():
            by_name[("loop " if tid == pid else "") + name] += w
        print("#   rotor threads (wake-ups/s): " +
              ", ".join(f"{k} {v:.2f}" for k, v in sorted(by_name.items(), key=lambda x: -x[1])))
        kn = collections.defaultdict(float)
        for name, w in kd.values():
            kn[name] += w
        print("#   kcat threads (wake-ups/s): " +
              ", ".join(f"{k} {v:.2f}" for k, v in sorted(kn.items(), key=lambda x: -x[1])))
        print("#   resident by mapping (MiB): " + ", ".join(
            f"{name} {mib(kb):.2f}" for name, kb in rss_by_file(pid, top=20)), flush=True)
        print("#   smaps_rollup (MiB): " + ", ".join(
            f"{k} {mib(v):.2f}" for k, v in smaps_rollup(pid).items()), flush=True)
        tr = strace_loop(pid, STRACE_S)
        if tr:
            calls, timeouts, woke, secs = tr
            row["strace_epoll_s"] = round(sum(woke.values()) / secs, 2)
            print(f"#   strace of the loop thread over {secs} s: epoll returns "
                  f"{dict(woke)} ({sum(woke.values()) / secs:.2f}/s); epoll timeouts (ms: count) "
                  f"{dict(sorted(timeouts.items()))}; calls {dict(calls.most_common(12))}")
        append_result("idle", row)
        print("| date | secrets | VmRSS (MiB) | VmHWM (MiB) | loop wake-ups/s | process wake-ups/s "
              "| threads | kcat -G wake-ups/s | load |")
        print(f"| {row['date']} | {n} | {row['rss_mib']} | {row['hwm_mib']} | {row['loop_wakeups_s']}"
              f" | {row['process_wakeups_s']} | {row['threads']} | {row['kcat_wakeups_s']} | "
              f"{row['load']} |")
    finally:
        if kcat:
            kcat.kill()
        lab.close()


if __name__ == "__main__":
    main()
