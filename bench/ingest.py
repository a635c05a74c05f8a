"""bench/ingest.py MODE N: rotor's ingest rate of N input messages against kcat's raw consume of
the same topic in the same run. Run through bench/ingest.sh.

MODE
  keyvault     N Key Vault events (Event Grid schema, one event a message, as Event Grid
               delivers through Event Hubs) about secrets rotor does not manage: parse, validate,
               decide "not a secret rotor manages", log, count; nothing is written.
  absorbed     N rotation.requested commands, each with its own event id, for a secret whose
               rotation waits on a manual approval: each is looked up by id, absorbed (a history
               row and a rotation.absorbed outbox row in the journal) and announced by the relay.
  redelivered  N copies of the one rotation.requested that opened that rotation (the same event
               id redelivered): each is looked up by id in the journal and skipped.

The rotor process is fresh for each run, the broker a `rotor broker` of its own with 32
partitions a topic. The clock runs from the first message produced to the moment
rotor_input_messages_total (read from /metrics every 50 ms) has grown by N.
  keyvault: the N events, with distinct keys, are produced by one `kcat -P -l FILE` while rotor is in its
  group; over 32 partitions they fit in the mock broker, which keeps 5 MiB a partition.
  absorbed, redelivered: every command is keyed by the secret, so all N are on one partition,
  where 5 MiB hold about 8 000 of them: one kcat -P fed through a pipe keeps at most
  INGEST_BACKLOG (default 4000) produced and not yet handled.
The baseline is `kcat -C -e -o beginning -q | wc -l` of the same topic, timed twice after rotor is
done: all N Key Vault events; for the commands, the part of the topic the broker still holds.
"""

import json
import os
import secrets as pysecrets
import sys
import time

from benchlab import (KV_TOPIC, BenchLab, append_result, common_fields, mib, proc_status,
                      wait_for)

MODES = ("keyvault", "absorbed", "redelivered")


def request(secret, reason, event_id=None):
    return {"specversion": "1.0", "id": event_id or pysecrets.token_hex(16),
            "source": "/bench/ingest", "type": "rotation.requested", "subject": secret,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "datacontenttype": "application/json",
            "data": {"secret": secret, "reason": reason, "requested_by": "bench",
                     "trigger": "pipeline"}}


def keyvault_event(i):
    name = f"not-managed-{i % 1000}"
    version = pysecrets.token_hex(16)
    return [{"id": pysecrets.token_hex(16),
             "topic": "/subscriptions/0000/resourceGroups/rg/providers/Microsoft.KeyVault/"
                      "vaults/other-vault",
             "subject": name, "eventType": "Microsoft.KeyVault.SecretNearExpiry",
             "data": {"Id": f"https://other-vault.vault.azure.net/secrets/{name}/{version}",
                      "VaultName": "other-vault", "ObjectType": "Secret", "ObjectName": name,
                      "Version": version, "NBF": None, "EXP": str(int(time.time()) + 86400)},
             "dataVersion": "1", "metadataVersion": "1",
             "eventTime": time.strftime("%Y-%m-%dT%H:%M:%S.0000000Z", time.gmtime())}]


def open_rotation(lab, secret):
    """Requests a rotation of secret and waits until it waits on the manual approval; returns the
    request event."""
    ev = request(secret, "bench: the rotation in flight")
    path = os.path.join(lab.root, "first.txt")
    with open(path, "w") as f:
        f.write(f"{secret}\t{json.dumps(ev)}\n")
    lab.kcat_produce(path, "rotor.commands", keyed=True)

    def waiting():
        rows = lab.pg.query("SELECT status FROM rotor.rotations WHERE request_id = %s",
                            (ev["id"],))
        return rows and rows[0][0] == "waiting"
    wait_for(waiting, 120, 0.2, what="the rotation to wait on its approval")
    return ev


def wait_handled(lab, target, deadline, stall_s=60):
    """Polls rotor_input_messages_total every 50 ms until it reaches target, the deadline passes
    or it has not moved for stall_s; returns (count, monotonic time it was last seen growing)."""
    done = lab.counter("rotor_input_messages_total")
    moved = time.monotonic()
    while done < target and time.monotonic() < deadline and time.monotonic() - moved < stall_s:
        time.sleep(0.05)
        now = lab.counter("rotor_input_messages_total")
        if now != done:
            done, moved = now, time.monotonic()
    return done, moved


def paced_produce(lab, lines, topic, base, backlog, deadline):
    """Feeds lines to one kcat -P through a pipe, keeping at most `backlog` messages produced
    and not yet handled by rotor: the mock broker keeps only 5 MiB a partition, and every
    command for one secret is on one partition (key = secret), so a producer far ahead of rotor
    would see the oldest ones deleted before rotor reads them."""
    p = lab.kcat_producer(topic, keyed=True)
    sent, chunk = 0, 250
    try:
        while sent < len(lines) and time.monotonic() < deadline:
            handled = lab.counter("rotor_input_messages_total") - base
            if sent - handled + chunk <= backlog:
                batch = lines[sent:sent + chunk]
                p.stdin.write("".join(batch).encode())
                p.stdin.flush()
                sent += len(batch)
            else:
                time.sleep(0.01)
    finally:
        p.stdin.close()
        p.wait(60)
    return sent


def run(mode, n, timeout, backlog):
    kv = mode == "keyvault"
    # 32 partitions: Key Vault events with distinct keys spread evenly over them, so that the mock
    # broker's 5 MiB a partition holds all 100 000 (the kcat baseline reads them all). Keyless,
    # kcat's sticky partitioner left some partitions over 5 MiB, and the oldest were deleted.
    # BENCH_PG_SETTINGS: PostgreSQL settings separated by ";" (e.g. log_min_duration_statement=0,
    # with ROTOR_KEEP_BENCH=1 to keep the server's log)
    pg = tuple(x for x in os.environ.get("BENCH_PG_SETTINGS", "").split(";") if x)
    lab = BenchLab(secrets=1, approval="{ mode: manual, gate: retire }", keyvault_topic=kv,
                   partitions=32, pg_settings=pg)
    try:
        lab.start_rotor()
        secret = lab.names()[0]
        lines = []
        if kv:
            topic = KV_TOPIC
            # keyed as Event Hubs' partition keys would be: spread evenly over the partitions
            lines = [f"kv-{i}\t{json.dumps(keyvault_event(i))}\n" for i in range(n)]
        else:
            topic = "rotor.commands"
            first = open_rotation(lab, secret)
            for i in range(n):
                ev = first if mode == "redelivered" else request(secret, f"duplicate {i}")
                lines.append(f"{secret}\t{json.dumps(ev)}\n")
        time.sleep(1.0)  # let the set-up's outbox and logging settle
        rss_before = proc_status(lab.pid)["VmRSS"]
        base = lab.counter("rotor_input_messages_total")
        t0 = time.monotonic()
        deadline = t0 + timeout
        if kv:
            path = os.path.join(lab.root, "messages.txt")
            with open(path, "w") as f:
                f.writelines(lines)
            produce_s = lab.kcat_produce(path, topic, keyed=True)
            produced = n
        else:
            produced = paced_produce(lab, lines, topic, base, backlog, deadline)
            produce_s = time.monotonic() - t0
        done, last = wait_handled(lab, base + produced, deadline)
        end = time.monotonic() if done >= base + n else last
        elapsed = end - t0
        handled = int(done - base)
        st = proc_status(lab.pid)
        outcomes = {k: v for k, v in lab.metrics().items()
                    if k.startswith("rotor_input_messages_total{")
                    or k.startswith("rotor_keyvault_events_total{")}
        forwarded = sum(v for k, v in outcomes.items() if 'outcome="forwarded"' in k)
        if forwarded:
            # each forwarded command comes back as a second message, counted again: the rate is
            # not the handling rate of the commands produced (see BenchLab.partitioner_args)
            print(f"# WARNING: {int(forwarded)} messages were forwarded to their owner's partition",
                  flush=True)
        unsent = None
        if not kv:
            unsent = lab.pg.query("SELECT count(*) FROM rotor.outbox WHERE sent_at IS NULL")[0][0]
        # the baseline, twice: the same topic, whole (as far as the broker kept it), raw
        kc = [lab.kcat_consume_count(topic) for _ in range(2)]
        kcat_msgs = kc[0][0]
        if kv and kcat_msgs != n:
            print(f"# WARNING: the topic holds {kcat_msgs} messages, {n} were produced",
                  flush=True)
        kcat_s = sum(s for _, s in kc) / len(kc)
        rotor_rate = handled / elapsed
        kcat_rate = kcat_msgs / kcat_s
        return {"mode": mode, "n": n, "handled": handled,
                "timed_out": int(handled < n), "rotor_s": round(elapsed, 3),
                "produce_s": round(produce_s, 3), "rotor_msg_s": round(rotor_rate, 1),
                "kcat_msgs": kcat_msgs, "kcat_s": round(kcat_s, 3),
                "kcat_msg_s": round(kcat_rate, 1), "ratio": round(rotor_rate / kcat_rate, 4),
                "rss_idle_mib": round(mib(rss_before), 1), "rss_mib": round(mib(st["VmRSS"]), 1),
                "hwm_mib": round(mib(st["VmHWM"]), 1), "outbox_unsent": unsent,
                "outcomes": json.dumps(outcomes, separators=(",", ":"))}
    finally:
        lab.close()


def main():
    mode = sys.argv[1]
    sizes = [int(x) for x in sys.argv[2].split(",")]
    timeout = float(os.environ.get("INGEST_TIMEOUT", "600"))
    backlog = int(os.environ.get("INGEST_BACKLOG", "4000"))
    assert mode in MODES, f"mode must be one of {MODES}"
    rows = []
    for n in sizes:
        print(f"# ingest {mode} {n}: load {common_fields()['load']}", flush=True)
        r = dict(common_fields(), **run(mode, n, timeout, backlog))
        append_result("ingest", r)
        rows.append(r)
        print(f"ingest {mode:<11} n={n:<7} rotor {r['rotor_msg_s']:>9.1f} msg/s "
              f"({r['handled']} in {r['rotor_s']} s, produce {r['produce_s']} s)  "
              f"kcat {r['kcat_msg_s']:>9.1f} msg/s ({r['kcat_msgs']} in {r['kcat_s']} s)  ratio {r['ratio']:.4f}  "
              f"RSS {r['rss_idle_mib']} -> {r['rss_mib']} MiB, HWM {r['hwm_mib']} MiB"
              + ("  TIMED OUT" if r["timed_out"] else ""), flush=True)
        print(f"#   outcomes {r['outcomes']}" +
              (f", outbox unsent {r['outbox_unsent']}" if r["outbox_unsent"] is not None else ""),
              flush=True)
    goal = all(r["ratio"] >= 0.3 for r in rows)
    if len(rows) >= 2:
        small, big = rows[0], rows[-1]
        scale = big["rotor_msg_s"] / small["rotor_msg_s"]
        flat = abs(scale - 1) <= 0.2
    else:
        scale, flat = float("nan"), None
    print(f"ingest {mode}: rotor/kcat {', '.join(format(r['ratio'], '.4f') for r in rows)} "
          f"(goal >= 0.3: {'met' if goal else 'NOT met'}); rate at {rows[-1]['n']} / rate at "
          f"{rows[0]['n']} = {scale:.2f} (goal within 20%: "
          f"{'met' if flat else 'NOT met' if flat is not None else 'n/a'})")
    print("| date | mode | n | rotor msg/s | kcat msg/s | rotor/kcat | RSS idle -> end (MiB) | "
          "VmHWM (MiB) | load |")
    for r in rows:
        print(f"| {r['date']} | {r['mode']} | {r['n']} | {r['rotor_msg_s']} | "
              f"{r['kcat_msg_s']} | {r['ratio']} | {r['rss_idle_mib']} -> {r['rss_mib']} | "
              f"{r['hwm_mib']} | {r['load']} |")


if __name__ == "__main__":
    main()
