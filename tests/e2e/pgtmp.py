"""pgtmp: a private PostgreSQL server for the end-to-end tests (the Python twin of
tests/support/with-postgres).

    from pgtmp import pgtmp

    with pgtmp(settings={"log_statement": "all"}) as pg:
        pg.dsn                 # superuser DSN: "host=<socket dir> port=<port> user=postgres dbname=postgres"
        pg.host, pg.port       # socket directory and TCP port (also listening on 127.0.0.1)
        pg.dsn_for("app_blue", "secret", tcp=True)   # DSN for another role (SCRAM)
        pg.execute("CREATE ROLE app_blue LOGIN PASSWORD 'x'")   # as postgres, autocommit
        pg.log_path            # server log, worth printing when a test fails

What it does: a fresh cluster (tests/support/pg-initdb) in a temporary directory (as the
`postgres` OS user when running as root, through `runuser -u postgres --`), pg_hba with trust
for the superuser `postgres` and scram-sha-256 for every other role (as in production), a free
port on 127.0.0.1, the socket in the temporary directory, optional extra `-c` settings; on exit `pg_ctl stop -m immediate` and the
directory is removed (set ROTOR_KEEP_PG=1 to keep it for a post-mortem).
"""

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile

__all__ = ["PgServer", "pgtmp", "pg_bindir"]

_HBA = """\
local all postgres trust
host  all postgres 127.0.0.1/32 trust
local all all scram-sha-256
host  all all 127.0.0.1/32 scram-sha-256
"""


_PG_INITDB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "support", "pg-initdb")


def pg_bindir():
    """The newest installed PostgreSQL server binary directory (raises if there is none)."""
    dirs = [d for d in glob.glob("/usr/lib/postgresql/*/bin") if os.path.exists(os.path.join(d, "initdb"))]
    if not dirs:
        raise RuntimeError("PostgreSQL server binaries not found (scripts/setup.sh installs them)")
    return sorted(dirs, key=lambda d: [int(x) if x.isdigit() else x for x in d.split("/")])[-1]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_pg(cmd):
    """Runs cmd as the postgres OS user when we are root (initdb refuses to run as root)."""
    return (["runuser", "-u", "postgres", "--"] + cmd) if os.geteuid() == 0 else cmd


class PgServer:
    """A running server; see the module docstring."""

    def __init__(self, tmpdir, port, bindir):
        self.tmpdir = tmpdir
        self.host = tmpdir
        self.port = port
        self.bindir = bindir
        self.data_dir = os.path.join(tmpdir, "data")
        self.log_path = os.path.join(tmpdir, "server.log")
        self.dsn = self.dsn_for("postgres")

    def dsn_for(self, user, password=None, dbname="postgres", tcp=False):
        """libpq key=value DSN; tcp=True goes through 127.0.0.1 instead of the socket."""
        parts = ["host=%s" % ("127.0.0.1" if tcp else self.host), "port=%d" % self.port,
                 "user=%s" % user, "dbname=%s" % dbname]
        if password is not None:
            parts.append("password='%s'" % password.replace("\\", "\\\\").replace("'", "\\'"))
        return " ".join(parts)

    def connect(self, dsn=None, autocommit=True):
        """A psycopg2 connection (superuser unless dsn is given)."""
        import psycopg2

        conn = psycopg2.connect(dsn or self.dsn)
        conn.autocommit = autocommit
        return conn

    def execute(self, sql, params=None):
        """Runs one statement as postgres; returns fetched rows for queries, else None."""
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(sql, params)
                return cur.fetchall() if cur.description else None
        finally:
            conn.close()

    def log(self):
        """The server log so far (for assertion messages)."""
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except OSError:
            return ""


def _start(tmpdir, bindir, settings):
    """initdb once, then start on a free port; retries with another port if one was taken
    between choosing it and binding it."""
    data = os.path.join(tmpdir, "data")
    init = subprocess.run([_PG_INITDB, data], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
    if init.returncode != 0:
        raise RuntimeError("initdb failed:\n" + init.stdout)
    with open(os.path.join(data, "pg_hba.conf"), "w") as f:
        f.write(_HBA)
    extra = " ".join("-c %s=%s" % (k, v) for k, v in (settings or {}).items())
    last = ""
    for _ in range(3):
        port = _free_port()
        opts = ("-p %d -k %s -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c password_encryption=scram-sha-256 %s" % (port, tmpdir, extra))
        r = subprocess.run(_as_pg([os.path.join(bindir, "pg_ctl"), "-D", data, "-l",
                                   os.path.join(tmpdir, "server.log"), "-w", "-t", "60", "-o", opts,
                                   "start"]),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if r.returncode == 0:
            return port
        last = r.stdout
    raise RuntimeError("pg_ctl start failed:\n" + last)


def _stop(tmpdir, bindir):
    subprocess.run(_as_pg([os.path.join(bindir, "pg_ctl"), "-D", os.path.join(tmpdir, "data"),
                           "-m", "immediate", "stop"]),
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@contextlib.contextmanager
def pgtmp(settings=None):
    """Starts a private PostgreSQL server and yields a PgServer; stops and removes it on exit.
    settings: extra server settings, e.g. {"log_statement": "all"} (each becomes -c key=value)."""
    bindir = pg_bindir()
    tmpdir = tempfile.mkdtemp(prefix="rotor-pg.")
    os.chmod(tmpdir, 0o755)
    if os.geteuid() == 0:
        shutil.chown(tmpdir, user="postgres")
    try:
        port = _start(tmpdir, bindir, settings)
        yield PgServer(tmpdir, port, bindir)
    finally:
        # Also after a failed or timed-out start: a server may be up without pg_ctl saying so.
        if os.path.isdir(os.path.join(tmpdir, "data")):
            _stop(tmpdir, bindir)
        if not os.environ.get("ROTOR_KEEP_PG"):
            shutil.rmtree(tmpdir, ignore_errors=True)
