#!/usr/bin/python3
"""probe_server.py: https_server.py's scripted handler over plain HTTP, for the http probe tests.

Same paths and control interface as https_server.py (/_script, /_requests, /_reset, /echo, /slow,
?delay_ms=N); only the transport differs, since probes hit plain http:// endpoints as often as
https:// ones.

Usage: probe_server.py --port-file FILE [--host 127.0.0.1] [--watch-stdin]
"""
import argparse
import http.server
import os
import sys
import threading

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import https_server  # noqa: E402


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request, client_address):
        # Clients that time out and hang up on a slow answer are what the tests provoke.
        pass


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port-file", required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--watch-stdin", action="store_true")
    args = ap.parse_args()

    srv = Server((args.host, 0), https_server.Handler)
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
