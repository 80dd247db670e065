"""A Client following discovery through a Helper group's failover (decision 009, "Fixed"): while
no member is registered (the leader SIGKILLed, the next one not serving yet) a submit keeps
looking, reading discovery again with a short backoff, and is accepted once the follower leads,
within the Client's timeout; with every member gone it still fails within that timeout.
Embedded discovery, a group of 2, real processes."""

from __future__ import annotations

import asyncio
import signal
import threading
import time

import pytest

from mesh import Client, SyncClient, Unavailable, make_task, wire
from mesh.client import default_endpoints
from tests.integration.test_helper_group import _leader_h1_follower_h2_and_a_node
from tests.support.waiting import async_wait_until, wait_until

pytestmark = pytest.mark.timeout(180)


class CountingSource:
    """The discovery source `Client()` builds (`default_endpoints()`), counting its reads."""

    def __init__(self) -> None:
        self.source = default_endpoints()
        self.reads = 0
        self._lock = threading.Lock()

    def __call__(self):  # noqa: ANN204
        with self._lock:
            self.reads += 1
        return self.source()

    def close(self) -> None:
        close = getattr(self.source, "close", None)
        if close is not None:
            close()


def _none_listed() -> bool:
    source = default_endpoints()
    try:
        return not list(source())
    finally:
        getattr(source, "close", lambda: None)()


def test_a_client_following_discovery_submits_through_a_failover_with_no_helper_listed(discovered):  # noqa: ANN001
    """--min-replicas 0, so that the survivor of a group of 2 accepts alone: it serves only after
    waiting for the dead member's log end (plan_alert_s, 5 s), a failover window in which no
    Helper is listed. Two Clients submit in it: one made before the failover (its view still
    lists the dead leader) and one made in it (it finds none at first). Both keep looking, for
    up to their timeout (10 s here: the window is 5 s), and are accepted by the new leader."""
    group = _leader_h1_follower_h2_and_a_node(discovered, "--min-replicas", "0")

    async def scenario() -> None:
        source = CountingSource()
        async with Client(endpoints=source, timeout_s=10.0) as before:
            first = await before.submit_results([make_task("echo", b"a", task_id="a")])
            assert first[0].code == wire.OK
            group.procs["h1"].kill()
            wait_until(_none_listed, 10, what="no Helper listed in discovery")
            async with Client(timeout_s=10.0) as fresh:
                reads = source.reads
                started = time.monotonic()
                submits = [asyncio.ensure_future(client.submit_results(
                    [make_task("echo", p, task_id=p.decode())]))
                    for client, p in ((before, b"b"), (fresh, b"c"))]

                async def looked_again() -> bool:
                    return source.reads >= reads + 2 or all(s.done() for s in submits)
                await async_wait_until(looked_again, 5, interval_s=0.01,
                                       what="the client reading discovery again")
                for submit in submits:  # still looking, not failed at once
                    assert not submit.done(), submit.exception() or submit.result()
                results = await asyncio.gather(*submits)
                elapsed = time.monotonic() - started
                for (result,) in results:
                    assert result.code == wire.OK, (result.code, result.message)
                assert elapsed < 10.0, f"took {elapsed:.2f}s"
                assert group.leader()[0] == "h2"
                assert await fresh.result("c", timeout=30) == b"c"
            assert await before.result("b", timeout=30) == b"b"

    asyncio.run(scenario())


def test_a_client_following_discovery_with_every_helper_gone_fails_within_its_timeout(discovered):  # noqa: ANN001
    group = _leader_h1_follower_h2_and_a_node(discovered)
    for member in ("h1", "h2"):
        group.procs[member].kill()
    wait_until(_none_listed, 10, what="no Helper listed in discovery")

    async def scenario() -> None:
        async with Client() as client:
            started = time.monotonic()
            with pytest.raises(Unavailable) as unavailable:
                await client.submit("echo", b"none")
            elapsed = time.monotonic() - started
        # it looked for its whole timeout (3 s), and not much longer (a loaded machine's margin)
        assert 3.0 - 0.1 <= elapsed < 3.0 + 2.0, f"took {elapsed:.2f}s"
        assert "no Helper found" in str(unavailable.value)

    asyncio.run(scenario())

    with SyncClient() as client:
        started = time.monotonic()
        with pytest.raises(Unavailable):
            client.submit("echo", b"none")
        elapsed = time.monotonic() - started
    assert 3.0 - 0.1 <= elapsed < 3.0 + 2.0, f"took {elapsed:.2f}s"
