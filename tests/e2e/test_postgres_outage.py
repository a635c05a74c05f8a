"""PostgreSQL outages in the middle of a rotation: a fast restart of the server, and a 30 s network
partition between rotor (journal and admin connections both) and PostgreSQL, made by a TCP proxy
the test controls (tcpproxy.py), refused or blackholed. The rotation completes, and nothing is
lost: one store version, each stage completed once, every event on the topic.

The blackhole is the case a client must detect by itself: a connection that stays open and
silent. rotor gives up a journal query after 30 s without an answer and a connection attempt after
10 s (pg.c's deadlines), then reconnects.

ROTOR_OUTAGE_SECONDS sets the partition (30 s by default, see outagelab.py)."""
import time

import pytest

from outagelab import assert_nothing_lost, outage_seconds
from rotorlab import wait_for
from tcpproxy import TcpProxy

OUTAGE = outage_seconds()
# Enough attempts, backed off, for a stage to ride out the outage (3 attempts within 2 s would
# fail the rotation, and roll it back, as configured).
STAGES = "{ timeout: 30s, max_attempts: 20, backoff: { initial: 500ms, max: 5s } }"


def at_stage(lab, rid, stage):
    wait_for(lambda: any(r["id"] == rid and r["stage"] == stage for r in lab.rotations()), 60,
             0.1, what=stage)


def test_rotation_completes_through_a_postgres_restart(make_lab):
    lab = make_lab(approval="{ mode: auto, soak: 3s }", drain="2s", stages=STAGES)
    d = lab.start()
    rid = lab.rotation_for(lab.request(reason="postgres restart"))["id"]
    at_stage(lab, rid, "approve")  # in the soak: the next write is the journal's
    started = time.time()
    lab.pg.restart()
    restarted = time.time()
    assert lab.wait_status(rid, ("completed", "failed"), 120)["status"] == "completed", \
        lab.history(rid)
    print(f"OUTAGE postgres restart {restarted - started:.1f}s; rotation completed "
          f"{time.time() - restarted:.1f}s after it")
    assert '"journal.reconnected"' in d.text()
    assert_nothing_lost(lab, rid)
    assert d.alive()


@pytest.fixture
def proxied_lab(make_lab):
    """A lab whose journal and admin connections go through a TcpProxy (TCP, 127.0.0.1)."""
    proxies = []

    def make(**kwargs):
        lab = make_lab(stages=STAGES, **kwargs)
        proxy = TcpProxy(("127.0.0.1", lab.pg.port))
        proxies.append(proxy)
        dsn = f"host=127.0.0.1 port={proxy.port} user=postgres dbname=postgres"
        lab.opts["env_extra"] = dict(lab.opts.get("env_extra") or {}, ROTOR_JOURNAL_DSN=dsn,
                                     APP_DB_ADMIN_DSN=dsn)
        return lab, proxy

    yield make
    for p in proxies:
        p.close()


@pytest.mark.parametrize("mode", ["refuse", "blackhole"])
def test_rotation_completes_through_a_partition(proxied_lab, mode):
    lab, proxy = proxied_lab(approval="{ mode: auto, soak: 3s }", drain="2s")
    d = lab.start()
    rid = lab.rotation_for(lab.request(reason=f"partition {mode}"))["id"]
    at_stage(lab, rid, "approve")
    assert proxy.connections() > 0  # rotor's connections go through the proxy
    proxy.partition(mode)
    cut_at = time.time()
    time.sleep(OUTAGE)
    # cut off all along: nothing moved on in the journal (the test's own connection is direct)
    assert [r["stage"] for r in lab.rotations() if r["id"] == rid] == ["approve"]
    assert d.alive(), d.text()[-4000:]
    proxy.heal()
    healed_at = time.time()
    assert lab.wait_status(rid, ("completed", "failed"), 150)["status"] == "completed", \
        lab.history(rid)
    print(f"PARTITION {mode} {healed_at - cut_at:.1f}s; rotation completed "
          f"{time.time() - healed_at:.1f}s after the heal")
    assert_nothing_lost(lab, rid)
    assert d.alive()
