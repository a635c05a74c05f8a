#!/usr/bin/python3
"""https_server.py: a scripted HTTPS server for rotor's HTTP and Entra ID tests (stdlib only).

It plays three parts at once and records every request it serves (method, path, headers, body):
  /echo...                               200 with the request as JSON (method, path, headers, body)
  any default path with ?delay_ms=N      answers N milliseconds late
  /slow?ms=N                             answers "slow" after N milliseconds
  /<tenant>/oauth2/v2.0/token            Entra ID: {"access_token": "entra-<n>", "expires_in": 3599}
  /metadata/identity/oauth2/token        IMDS: expires_in and expires_on as strings, as IMDS sends

Tests script the next answers of a path and read what was sent through control paths:
  POST /_script  {"path": "/p", "responses": [R, ...]}   queue answers for /p (query ignored)
  GET  /_requests                                         the recorded requests, oldest first
  POST /_reset                                            forget scripts and records
where R is {"status": 200, "headers": {...}, "body": "text" | "json": {...}, "delay_ms": 0,
"drop": false}; "drop" closes the connection without answering.

Usage: https_server.py --cert server.pem --key server.key --port-file FILE [--watch-stdin]
With --watch-stdin the server exits when its stdin closes, so it never outlives a crashed test.
"""
import argparse
import http.server
import json
import os
import ssl
import sys
import threading
import time
import urllib.parse

LOCK = threading.Lock()
SCRIPTS = {}
RECORDS = []
COUNTER = [0]


def next_token_number():
    with LOCK:
        COUNTER[0] += 1
        return COUNTER[0]


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "rotor-test/1"

    def log_message(self, fmt, *args):
        pass

    def _read_body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n).decode("utf-8", "replace") if n else ""

    def _send(self, status, body="", headers=None, ctype="text/plain"):
        data = body.encode() if isinstance(body, str) else body
        self.send_response(status)
        hdrs = {"Content-Type": ctype}
        hdrs.update(headers or {})
        for k, v in hdrs.items():
            self.send_header(k, str(v))
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _send_json(self, status, obj, headers=None):
        self._send(status, json.dumps(obj), headers, "application/json")

    def _control(self, path, body):
        if path == "/_script":
            spec = json.loads(body)
            with LOCK:
                SCRIPTS.setdefault(spec["path"], []).extend(spec["responses"])
            self._send_json(200, {"ok": True})
        elif path == "/_requests":
            with LOCK:
                recs = list(RECORDS)
            self._send_json(200, recs)
        elif path == "/_reset":
            with LOCK:
                SCRIPTS.clear()
                RECORDS.clear()
            self._send_json(200, {"ok": True})
        else:
            self._send_json(404, {"error": "no such control path"})

    def _scripted(self, spec):
        time.sleep(spec.get("delay_ms", 0) / 1000.0)
        if spec.get("drop"):
            self.close_connection = True
            self.connection.close()
            return
        if "json" in spec:
            self._send_json(spec.get("status", 200), spec["json"], spec.get("headers"))
        else:
            self._send(spec.get("status", 200), spec.get("body", ""), spec.get("headers"))

    def _default(self, path, query, req):
        if path.startswith("/echo"):
            self._send_json(200, req)
        elif path == "/slow":
            time.sleep(int(query.get("ms", ["1000"])[0]) / 1000.0)
            self._send(200, "slow")
        elif path.endswith("/oauth2/v2.0/token") and self.command == "POST":
            n = next_token_number()
            self._send_json(200, {"access_token": "entra-%d" % n, "expires_in": 3599,
                                  "ext_expires_in": 3599, "token_type": "Bearer"})
        elif path == "/metadata/identity/oauth2/token" and self.command == "GET":
            n = next_token_number()
            now = int(time.time())
            self._send_json(200, {"access_token": "imds-%d" % n, "expires_in": "3599",
                                  "expires_on": str(now + 3599), "not_before": str(now),
                                  "resource": query.get("resource", [""])[0],
                                  "token_type": "Bearer"})
        else:
            self._send_json(404, {"error": {"code": "NotFound", "message": path}})

    def _handle(self):
        body = self._read_body()
        url = urllib.parse.urlsplit(self.path)
        if url.path.startswith("/_"):
            self._control(url.path, body)
            return
        req = {"method": self.command, "path": self.path,
               "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body}
        with LOCK:
            RECORDS.append(req)
            queue = SCRIPTS.get(url.path)
            spec = queue.pop(0) if queue else None
        query = urllib.parse.parse_qs(url.query)
        if spec is not None:
            self._scripted(spec)
        else:
            time.sleep(int(query.get("delay_ms", ["0"])[0]) / 1000.0)
            self._default(url.path, query, req)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _handle


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr, ctx):
        super().__init__(addr, Handler)
        self.ctx = ctx

    def get_request(self):
        sock, addr = self.socket.accept()
        # The handshake runs on the handler's thread, so a client that rejects our certificate
        # (or stalls) never holds up the accept loop.
        return self.ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr

    def handle_error(self, request, client_address):
        # Refused handshakes, timeouts and dropped connections are what the tests provoke.
        pass


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--port-file", required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--watch-stdin", action="store_true")
    args = ap.parse_args()

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(args.cert, args.key)
    srv = Server((args.host, 0), ctx)
    tmp = args.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write("%d\n" % srv.server_address[1])
    os.rename(tmp, args.port_file)

    if args.watch_stdin:
        def watch():
            while sys.stdin.buffer.read(4096):
                pass
            os._exit(0)
        threading.Thread(target=watch, daemon=True).start()
    try:
        srv.serve_forever(poll_interval=0.1)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
