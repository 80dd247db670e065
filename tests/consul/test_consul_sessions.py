"""Sessions and KV locks: the fake agent checked through py-consul over real HTTP, then
discovery's session/lock calls and the Consul leadership of a Helper group on top of it."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import consul
import pytest
from consul.exceptions import BadRequest, NotFound

from discovery.consul import ConsulDiscovery
from discovery.leadership import ConsulLock
from fake_agent import FakeConsulAgent
from mesh.leadership import Leadership

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def lock_agent():
    """An agent that takes sub-10 s session TTLs and invalidates exactly at TTL (multiplier 1)."""
    fake = FakeConsulAgent(min_session_ttl_s=0.0, session_ttl_multiplier=1.0).start()
    try:
        yield fake
    finally:
        fake.stop()


def py_consul(agent: FakeConsulAgent) -> consul.Consul:
    return consul.Consul(host=agent.host, port=agent.port, connections_timeout=10)


@pytest.fixture
def disco(lock_agent):
    d = ConsulDiscovery(lock_agent.addr, timeout_s=5.0)
    try:
        yield d
    finally:
        d.close()


def wait_for(predicate, timeout_s: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


# -- the fake agent, through py-consul -------------------------------------------------------------


def test_session_create_info_list_renew_destroy_have_consuls_shapes(agent):
    c = py_consul(agent)
    sid = c.session.create(name="leader", ttl=10, lock_delay=5, behavior="delete")
    _, info = c.session.info(sid)
    assert info["ID"] == sid and info["Name"] == "leader" and info["Behavior"] == "delete"
    assert info["TTL"] == "10s" and info["LockDelay"] == 5_000_000_000 and info["NodeChecks"] == ["serfHealth"]
    assert [s["ID"] for s in c.session.list()[1]] == [sid]
    assert c.session.renew(sid)["ID"] == sid
    assert c.session.destroy(sid) is True
    assert c.session.info(sid)[1] is None
    with pytest.raises(NotFound):
        c.session.renew(sid)
    assert c.session.destroy(sid) is True  # idempotent, as in Consul


def test_session_ttl_below_ten_seconds_is_refused_like_consul(agent):
    c = py_consul(agent)
    with pytest.raises(BadRequest, match="Invalid Session TTL"):
        c.http.put(consul.callback.CB.json(), "/v1/session/create", data='{"TTL": "2s"}')


def test_kv_acquire_counts_lock_index_and_only_the_holder_releases(agent):
    c = py_consul(agent)
    a, b = c.session.create(name="a"), c.session.create(name="b")
    assert c.kv.put("g/leader", "A", acquire=a) is True
    assert c.kv.put("g/leader", "B", acquire=b) is False
    assert c.kv.put("g/leader", "A2", acquire=a) is True  # the holder again: value updated, same lock
    _, entry = c.kv.get("g/leader")
    assert (entry["Value"], entry["Session"], entry["LockIndex"]) == (b"A2", a, 1)
    assert c.kv.put("g/leader", None, release=b) is False
    assert c.kv.put("g/leader", None, release=a) is True
    _, entry = c.kv.get("g/leader")
    assert "Session" not in entry and entry["LockIndex"] == 1
    assert c.kv.put("g/leader", "B", acquire=b) is True  # a release sets no lock-delay
    assert c.kv.get("g/leader")[1]["LockIndex"] == 2


def test_kv_get_missing_is_404_with_an_index_and_cas_and_delete_work(agent):
    c = py_consul(agent)
    index, entry = c.kv.get("nothing/here")
    assert entry is None and int(index) >= 1
    assert c.kv.put("k", "v1", cas=0) is True
    assert c.kv.put("k", "v2", cas=0) is False
    modify = c.kv.get("k")[1]["ModifyIndex"]
    assert c.kv.put("k", "v3", cas=modify + 100) is False
    assert c.kv.put("k", "v3", cas=modify) is True
    assert c.kv.delete("k", cas=modify) is False
    assert c.kv.delete("k") is True
    assert c.kv.get("k")[1] is None


def test_ttl_expiry_invalidates_the_session_and_releases_its_lock(lock_agent):
    c = py_consul(lock_agent)
    d = ConsulDiscovery(lock_agent.addr)
    try:
        sid = d.create_session("short", ttl_s=0.3, lock_delay_s=0)
        assert c.kv.put("g/leader", "x", acquire=sid) is True
        before = c.kv.get("g/leader")[1]["ModifyIndex"]
        wait_for(lambda: c.session.info(sid)[1] is None, 5, "the session to expire")
        _, entry = c.kv.get("g/leader")
        assert entry is not None and "Session" not in entry  # behavior release: the key stays
        assert entry["ModifyIndex"] > before and entry["LockIndex"] == 1
        assert d.renew_session(sid) is False
    finally:
        d.close()


def test_renewal_keeps_a_session_past_its_ttl(lock_agent):
    d = ConsulDiscovery(lock_agent.addr)
    try:
        sid = d.create_session("renewed", ttl_s=0.4, lock_delay_s=0)
        for _ in range(8):  # 1.2 s: three TTLs
            assert d.renew_session(sid) is True
            time.sleep(0.15)
        assert d.session_info(sid) is not None
    finally:
        d.close()


def test_the_fake_waits_twice_the_ttl_by_default_like_consul():
    fake = FakeConsulAgent(min_session_ttl_s=0.0).start()  # session_ttl_multiplier=2
    d = ConsulDiscovery(fake.addr)
    try:
        sid = d.create_session("x", ttl_s=0.4, lock_delay_s=0)
        time.sleep(0.55)
        assert d.session_info(sid) is not None  # past TTL, within 2 x TTL
        wait_for(lambda: d.session_info(sid) is None, 5, "invalidation at 2 x TTL")
    finally:
        d.close()
        fake.stop()


def test_lock_delay_blocks_reacquire_after_invalidation(lock_agent):
    c = py_consul(lock_agent)
    a = c.session.create(name="a", lock_delay=1)
    b = c.session.create(name="b", lock_delay=0)
    assert c.kv.put("g/leader", "a", acquire=a) is True
    c.session.destroy(a)
    t0 = time.monotonic()
    assert c.kv.put("g/leader", "b", acquire=b) is False  # in a's lock-delay
    wait_for(lambda: c.kv.put("g/leader", "b", acquire=b), 5, "the lock-delay to end")
    assert 0.9 <= time.monotonic() - t0 < 3.0
    assert c.kv.get("g/leader")[1]["LockIndex"] == 2


def test_behavior_delete_deletes_the_key_when_the_session_ends(lock_agent):
    c = py_consul(lock_agent)
    sid = c.session.create(name="eph", behavior="delete", lock_delay=0)
    assert c.kv.put("g/ephemeral", "here", acquire=sid) is True
    c.session.destroy(sid)
    assert c.kv.get("g/ephemeral")[1] is None


def test_a_failing_node_check_invalidates_its_sessions(lock_agent):
    c = py_consul(lock_agent)
    sid = c.session.create(name="on-node", lock_delay=0)
    free = c.session.create(name="no-checks", checks=[], lock_delay=0)
    lock_agent.set_node_health("critical")
    assert c.session.info(sid)[1] is None
    assert c.session.info(free)[1] is not None


def test_a_blocking_query_on_a_key_wakes_on_change(lock_agent):
    c = py_consul(lock_agent)
    c.kv.put("g/leader", "v1")
    index, _ = c.kv.get("g/leader")
    got: list = []

    def block():
        got.append(py_consul(lock_agent).kv.get("g/leader", index=index, wait="10s"))

    t = threading.Thread(target=block)
    t0 = time.monotonic()
    t.start()
    time.sleep(0.2)
    assert not got  # still blocked: nothing changed
    c.kv.put("unrelated/key", "x")
    time.sleep(0.2)
    assert not got  # a change of another key does not wake a query on this one
    c.kv.put("g/leader", "v2")
    t.join(5)
    assert got and got[0][1]["Value"] == b"v2" and int(got[0][0]) > int(index)
    assert time.monotonic() - t0 < 5


def test_a_blocking_query_wakes_when_the_session_holding_the_key_ends(lock_agent):
    c = py_consul(lock_agent)
    sid = c.session.create(name="a", lock_delay=0)
    c.kv.put("g/leader", "a", acquire=sid)
    index, _ = c.kv.get("g/leader")
    d = ConsulDiscovery(lock_agent.addr)
    try:
        result: list = []
        t = threading.Thread(target=lambda: result.append(d.get_key("g/leader", index=int(index), wait_s=10)))
        t.start()
        time.sleep(0.1)
        c.session.destroy(sid)
        t.join(5)
        new_index, state = result[0]
        assert new_index > int(index) and state is not None and state.session is None
    finally:
        d.close()


# -- the Consul leadership -------------------------------------------------------------------------


def test_two_campaigners_one_wins_and_the_other_takes_over_after_lock_delay_with_a_higher_epoch(lock_agent):
    async def main():
        da, db = ConsulDiscovery(lock_agent.addr), ConsulDiscovery(lock_agent.addr)
        a = Leadership(ConsulLock(da, "orders", ttl_s=1.0, lock_delay_s=0.5), group="orders",
                       candidate_id="h1", advert={"ep_repl": "tcp://127.0.0.1:1"}, retry_interval_s=0.1)
        b = Leadership(ConsulLock(db, "orders", ttl_s=1.0, lock_delay_s=0.5), group="orders",
                       candidate_id="h2", retry_interval_s=0.1)
        try:
            term_a = await asyncio.wait_for(a.campaign(), 5)
            assert term_a.leader_id == "h1" and a.holds()
            b_campaign = asyncio.create_task(b.campaign())
            await asyncio.sleep(1.5)  # past a's TTL: a keeps renewing, b waits
            assert not b_campaign.done() and a.holds()
            _, seen = await b.observe()
            assert seen is not None and (seen.leader_id, seen.epoch) == ("h1", term_a.epoch)
            assert seen.advert == {"ep_repl": "tcp://127.0.0.1:1"}

            destroyed_at = time.monotonic()
            lock_agent.expire_session(a.backend.session)  # what a missed TTL does
            term_b = await asyncio.wait_for(b_campaign, 10)
            assert time.monotonic() - destroyed_at >= 0.45  # held back by a's lock-delay
            assert term_b.leader_id == "h2" and term_b.epoch > term_a.epoch
            await asyncio.wait_for(a.lost.wait(), 5)  # a learns it lost at its next renewal
            assert not a.holds() and a.term is None and "lost" in a.lost_reason
        finally:
            await a.close()
            await b.close()
            da.close()
            db.close()

    asyncio.run(main())


def test_resign_releases_at_once_without_lock_delay(lock_agent):
    async def main():
        d = ConsulDiscovery(lock_agent.addr)
        a = Leadership(ConsulLock(d, "g", ttl_s=1.0, lock_delay_s=5.0), group="g", candidate_id="h1")
        b = Leadership(ConsulLock(d, "g", ttl_s=1.0, lock_delay_s=5.0), group="g", candidate_id="h2",
                       retry_interval_s=0.1)
        try:
            first = await a.campaign()
            await a.resign()
            second = await asyncio.wait_for(b.campaign(), 2)  # well within the 5 s lock-delay
            assert second.epoch > first.epoch and lock_agent.sessions().keys() == {b.backend.session}
        finally:
            await a.close()
            await b.close()
            d.close()

    asyncio.run(main())


_CAMPAIGNER = """
import asyncio, sys, time
from discovery.consul import ConsulDiscovery
from discovery.leadership import ConsulLock
from mesh.leadership import Leadership

async def main():
    d = ConsulDiscovery(sys.argv[1])
    lead = Leadership(ConsulLock(d, "orders", ttl_s=0.6, lock_delay_s=0.6), group="orders",
                      candidate_id=sys.argv[2], renew_interval_s=0.15, retry_interval_s=0.1)
    term = await lead.campaign()
    print("LEADER", term.epoch, flush=True)
    await lead.lost.wait()
    print("HOLDS", lead.holds(), flush=True)
    _, now = await lead.observe()
    print("LOST", now.epoch if now else 0, lead.lost_reason, flush=True)
    await lead.close()
    d.close()

asyncio.run(main())
"""


def test_a_stopped_leader_past_its_ttl_is_fenced_and_learns_the_newer_epoch_on_resume(lock_agent, tmp_path):
    script = tmp_path / "campaigner.py"
    script.write_text(_CAMPAIGNER)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, str(script), lock_agent.addr, "h1"], stdout=subprocess.PIPE,
                            text=True, env=env)
    try:
        line = proc.stdout.readline().split()
        assert line[:1] == ["LEADER"], line
        old_epoch = int(line[1])
        os.kill(proc.pid, signal.SIGSTOP)

        async def take_over():
            d = ConsulDiscovery(lock_agent.addr)
            b = Leadership(ConsulLock(d, "orders", ttl_s=0.6, lock_delay_s=0.6), group="orders",
                           candidate_id="h2", retry_interval_s=0.1)
            try:
                term = await asyncio.wait_for(b.campaign(), 10)
                os.kill(proc.pid, signal.SIGCONT)
                out = await asyncio.to_thread(lambda: [proc.stdout.readline(), proc.stdout.readline()])
                return term, out
            finally:
                await b.close()
                d.close()

        t0 = time.monotonic()
        term, out = asyncio.run(take_over())
        assert time.monotonic() - t0 >= 0.6 + 0.6 - 0.1  # TTL, then lock-delay
        assert term.epoch > old_epoch
        assert out[0].split() == ["HOLDS", "False"]
        lost = out[1].split()
        assert lost[0] == "LOST" and int(lost[1]) == term.epoch  # it sees who leads now
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
            proc.wait()
