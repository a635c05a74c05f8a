"""tcpproxy: a TCP proxy that a test controls, to put a network partition between rotor and a
server (PostgreSQL here) without touching the machine's firewall.

    proxy = TcpProxy(("127.0.0.1", pg_port))    # listens on 127.0.0.1:proxy.port, forwards
    proxy.partition("refuse")      # every connection reset; new ones reset at once (refused)
    proxy.partition("blackhole")   # every connection goes mute for good: bytes are swallowed,
                                   # nothing is answered or closed; new ones are accepted and mute
    proxy.heal()                   # new connections are forwarded again (mute ones stay mute)
    proxy.close()

"blackhole" is the nastier case, what a firewall or NAT that dropped its state, or a peer host
that vanished, looks like to a client: the kernel still accepts and acknowledges (this is a proxy
in user space, so TCP keepalives are answered and tcp_user_timeout never fires), and only a client
that gives up on a silent connection by itself recovers. A connection muted by a partition stays
mute after heal(), as one whose state the firewall lost would.
"""
import select
import socket
import struct
import threading

__all__ = ["TcpProxy"]


def _reset(sock):
    """Closes sock with a RST (SO_LINGER 0), as a refused or cut connection is seen."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


class _Pair:
    """One client connection and its upstream, pumped by one thread."""

    def __init__(self, proxy, client):
        self.proxy = proxy
        self.client = client
        self.upstream = None
        self.mute = False
        self.closed = False
        self.lock = threading.Lock()

    def close(self, reset=False):
        with self.lock:
            if self.closed:
                return
            self.closed = True
        for s in (self.client, self.upstream):
            if s is not None:
                (_reset if reset else socket.socket.close)(s)

    def run(self):
        try:
            if self.mute:
                self._swallow()
                return
            self.upstream = socket.create_connection(self.proxy.target, timeout=5)
            self.upstream.settimeout(None)
            self._pump()
        except OSError:
            pass
        finally:
            self.close()
            self.proxy._forget(self)

    def _pump(self):
        peers = {self.client: self.upstream, self.upstream: self.client}
        while not self.closed:
            if self.mute:
                self._swallow()
                return
            try:
                ready, _, _ = select.select(list(peers), [], [], 0.1)
            except (OSError, ValueError):
                return
            for s in ready:
                try:
                    data = s.recv(65536)
                except OSError:
                    return
                if not data or self.closed:
                    return
                if self.mute:
                    continue  # lost in the partition
                try:
                    peers[s].sendall(data)
                except OSError:
                    return

    def _swallow(self):
        """Reads and drops what the client sends, answers nothing, never closes: until the client
        gives up (EOF or reset) or the proxy is closed."""
        while not self.closed:
            try:
                ready, _, _ = select.select([self.client], [], [], 0.1)
                if ready and not self.client.recv(65536):
                    return
            except (OSError, ValueError):
                return


class TcpProxy:
    def __init__(self, target, host="127.0.0.1"):
        self.target = target
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((host, 0))
        self.listener.listen(64)
        self.host, self.port = self.listener.getsockname()
        self.mode = "forward"
        self.pairs = set()
        self.accepted = 0  # connections accepted, for the tests' assertions
        self.lock = threading.Lock()
        self.stopping = False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while not self.stopping:
            try:
                ready, _, _ = select.select([self.listener], [], [], 0.1)
                if not ready:
                    continue
                client, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                self.accepted += 1
                mode = self.mode
                if mode == "refuse":
                    _reset(client)
                    continue
                pair = _Pair(self, client)
                pair.mute = mode == "blackhole"
                self.pairs.add(pair)
            threading.Thread(target=pair.run, daemon=True).start()

    def _forget(self, pair):
        with self.lock:
            self.pairs.discard(pair)

    def partition(self, mode="blackhole"):
        """Cuts every connection the way mode says (see the module docstring) until heal()."""
        assert mode in ("refuse", "blackhole"), mode
        with self.lock:
            self.mode = mode
            pairs = list(self.pairs)
        for p in pairs:
            if mode == "refuse":
                p.close(reset=True)
            else:
                p.mute = True

    def heal(self):
        with self.lock:
            self.mode = "forward"

    def connections(self):
        """Connections open now (mute ones included)."""
        with self.lock:
            return len(self.pairs)

    def close(self):
        self.stopping = True
        self.thread.join(2)
        self.listener.close()
        with self.lock:
            pairs = list(self.pairs)
        for p in pairs:
            p.close()
