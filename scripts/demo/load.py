#!/usr/bin/python3
"""load.py: the demo's steady load: GET requests at a fixed rate through the ingress (loopback
only), counting every non-2xx answer or connection error as failed and recording which slot served
each answer; a JSON summary file is rewritten every second and at exit.

    load.py --url http://127.0.0.1:PORT/users --summary FILE [--rate 50] [--max-seconds 900]
            [--max-requests 100000] [--workers 4] [--timeout 5] [--keepalive]

Runs until SIGTERM or SIGINT, or a bound is reached. By default one connection per request, and
no retry: a failure it counts is a request the user would have seen fail.

--keepalive: each worker keeps its connection open across requests, as a browser does. A server
may close an idle kept-alive connection at any moment (nginx's graceful reload closes them), and a
request sent just then finds the connection gone before any byte of an answer: RFC 9112 section
9.3.1 lets a client retry such a request (GET is idempotent) once on a new connection, as browsers
do. The load does that and counts it in "retries"; a retried request that fails again, an error
on a fresh connection, or an error after the first byte of the answer, is a failure.
"""
import argparse
import http.client
import json
import os
import signal
import sys
import threading
import time
import urllib.parse

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
SAMPLES = 20  # failures kept verbatim in the summary


class Stats:
    """Counts and the run-length sequence of slots, by the time each request started."""

    def __init__(self):
        self.lock = threading.Lock()
        self.sent = self.ok = self.failed = 0
        self.retries = 0  # kept-alive connections found closed, whose request was sent again
        self.connections = 0  # connections opened
        self.retry_samples = []
        self.retried_by = {}  # retries by what the closed connection looked like
        self.errors = {}
        self.samples = []
        self.by_slot = {}
        self.answers = []  # (start time, slot) of every successful request
        self.started = time.time()

    def record(self, start, slot, error, retried=None, connections=0):
        """retried: why the request was sent a second time (a closed kept-alive connection), or
        None; connections: how many connections the request opened."""
        with self.lock:
            self.sent += 1
            self.connections += connections
            if retried is not None:
                self.retries += 1
                self.retried_by[retried] = self.retried_by.get(retried, 0) + 1
                if len(self.retry_samples) < SAMPLES:
                    self.retry_samples.append({"t": round(start - self.started, 3),
                                               "error": retried})
            if error is None:
                self.ok += 1
                self.by_slot[slot] = self.by_slot.get(slot, 0) + 1
                self.answers.append((start, slot))
                return
            self.failed += 1
            self.errors[error] = self.errors.get(error, 0) + 1
            if len(self.samples) < SAMPLES:
                self.samples.append({"t": round(start - self.started, 3), "error": error})

    def runs(self):
        """[slot, count, first, last] runs of the same slot, ordered by request start."""
        out = []
        for start, slot in sorted(self.answers):
            t = round(start - self.started, 3)
            if out and out[-1][0] == slot:
                out[-1][1] += 1
                out[-1][3] = t
            else:
                out.append([slot, 1, t, t])
        return out

    def summary(self, done):
        with self.lock:
            return {"sent": self.sent, "ok": self.ok, "failed": self.failed,
                    "retries": self.retries, "retried": list(self.retry_samples),
                    "retried_by": dict(self.retried_by),
                    "connections": self.connections,
                    "errors": dict(self.errors), "failures": list(self.samples),
                    "by_slot": dict(self.by_slot), "runs": self.runs(),
                    "elapsed": round(time.time() - self.started, 3), "done": done}


def check_answer(resp, body):
    """Returns (slot, None) for a 2xx whose X-Slot and JSON slot agree, else (None, reason)."""
    if not 200 <= resp.status < 300:
        return None, f"HTTP {resp.status}"
    header = resp.getheader("X-Slot")
    try:
        slot = json.loads(body).get("slot")
    except ValueError:
        return None, "body is not JSON"
    if header != slot:
        return None, f"X-Slot {header} but body slot {slot}"
    return slot, None


def one_request(host, port, path, timeout):
    """One request on a new connection: (slot, None) for a good answer, else (None, reason)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        resp = conn.getresponse()
        return check_answer(resp, resp.read())
    except (OSError, http.client.HTTPException) as e:
        return None, type(e).__name__
    finally:
        conn.close()


# What a closed kept-alive connection looks like before any byte of the answer: the server closed
# it (RemoteDisconnected: EOF where the status line should be), or the request's bytes hit a socket
# the peer had already closed (a reset, or EPIPE).
CLOSED_BEFORE_ANSWER = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError,
                        ConnectionAbortedError)


class KeptAlive:
    """One worker's persistent connection (--keepalive)."""

    def __init__(self, host, port, timeout):
        self.host, self.port, self.timeout = host, port, timeout
        self.conn = None
        self.used = False  # the connection has carried a whole answer: it is a reused one
        self.opened = 0  # connections opened by the request under way

    def close(self):
        if self.conn is not None:
            self.conn.close()
        self.conn, self.used = None, False

    def _exchange(self, path):
        """Sends the request and reads the status line; raises as http.client does."""
        if self.conn is None:
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            self.opened += 1
        self.conn.request("GET", path)
        return self.conn.getresponse()

    def request(self, path):
        """Returns (slot, error, retried, connections opened)."""
        self.opened = 0
        retried = None
        try:
            try:
                resp = self._exchange(path)
            except CLOSED_BEFORE_ANSWER as e:
                if not self.used:
                    raise
                # A reused connection closed under us before any answer: once, on a new one.
                retried = type(e).__name__
                self.close()
                resp = self._exchange(path)
            body = resp.read()
            slot, error = check_answer(resp, body)
            if resp.will_close:
                self.close()
            else:
                self.used = True
            return slot, error, retried, self.opened
        except (OSError, http.client.HTTPException) as e:
            self.close()
            return None, type(e).__name__, retried, self.opened


def worker(args, target, stats, stop, index):
    host, port, path = target
    kept = KeptAlive(host, port, args.timeout) if args.keepalive else None
    period = args.workers / args.rate
    next_at = time.monotonic() + index * period / args.workers
    while not stop.is_set():
        delay = next_at - time.monotonic()
        if delay > 0 and stop.wait(delay):
            return
        next_at += period
        with stats.lock:
            if stats.sent >= args.max_requests:
                stop.set()
                return
        start = time.time()
        if kept is not None:
            slot, error, retried, opened = kept.request(path)
            stats.record(start, slot, error, retried, opened)
        else:
            slot, error = one_request(host, port, path, args.timeout)
            stats.record(start, slot, error, connections=1)
    if kept is not None:
        kept.close()


def write_summary(path, summary):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(summary, f)
    os.replace(tmp, path)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--url", required=True)
    p.add_argument("--summary", required=True)
    p.add_argument("--rate", type=float, default=50.0)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--timeout", type=float, default=5.0)
    p.add_argument("--max-seconds", type=float, default=900.0)
    p.add_argument("--max-requests", type=int, default=100000)
    p.add_argument("--keepalive", action="store_true",
                   help="persistent connections, a closed reused one retried once (counted)")
    args = p.parse_args()
    u = urllib.parse.urlsplit(args.url)
    if u.scheme != "http" or u.hostname not in LOOPBACK or not u.port:
        p.error("--url must be http://LOOPBACK:PORT/...: this load never leaves the machine")
    if not 0 < args.rate <= 1000 or not 1 <= args.workers <= 64:
        p.error("--rate must be in (0, 1000] and --workers in [1, 64]")
    return args, (u.hostname, u.port, u.path or "/")


def main():
    args, target = parse_args()
    stats = Stats()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    threads = [threading.Thread(target=worker, args=(args, target, stats, stop, i), daemon=True)
               for i in range(args.workers)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + args.max_seconds
    while not stop.wait(1.0):
        write_summary(args.summary, stats.summary(False))
        if time.monotonic() > deadline:
            stop.set()
    for t in threads:
        t.join(args.timeout + 1)
    write_summary(args.summary, stats.summary(True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
