"""Where an intake batch's journal sync runs when ack batches wait (`Helper._sync_submits`).

A single Helper takes a few waiting ack frames first and then syncs on its loop, so their
result records ride on that round (handing the sync to the flusher so the loop could take
them cost two thread wake-ups and a second fdatasync). More than a few, or a group leader
(whose sync ships to its followers first): the flusher syncs while the loop takes the acks.
The collaborators are stand-ins: the decision is what is under test, not the sockets."""

from __future__ import annotations

import asyncio

import zmq

from mesh.helper import INLINE_ACK_FRAMES, Helper


class _AckSocket:
    def __init__(self, waiting: bool) -> None:
        self.waiting = waiting

    def getsockopt(self, option: int) -> int:
        assert option == zmq.EVENTS
        return zmq.POLLIN if self.waiting else 0


class _AckReader:
    def __init__(self, drains: bool, log: list) -> None:
        self.drains = drains
        self.log = log

    def read_now(self, limit: int) -> bool:
        self.log.append(("read_now", limit))
        return self.drains

    def wake(self) -> None:
        self.log.append(("wake",))


class _Journal:
    last_fsync_s = 0.0002

    def __init__(self, log: list) -> None:
        self.log = log

    def sync_here(self) -> bool:
        self.log.append(("sync_here",))
        return True

    def sync_future(self) -> asyncio.Future:
        self.log.append(("sync_future",))
        future = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future


def _sync_path(*, acks_wait: bool, drains: bool = True, group: bool = False) -> list:
    """Run one intake batch's _sync_submits; what it called, in order, and the answer."""
    log: list = []

    async def scenario() -> None:
        helper = Helper.__new__(Helper)
        helper._group = object() if group else None
        helper._ack = _AckSocket(acks_wait)
        helper._ack_reader = _AckReader(drains, log)
        helper.journal = _Journal(log)
        helper._unsynced = [lambda error: log.append(("answered", error))]
        helper._answer_synced = lambda answers, error: [answer(error) for answer in answers]
        helper._sync_submits()
        await asyncio.sleep(0)  # a flusher sync answers in a future's callback
        await asyncio.sleep(0)

    asyncio.run(scenario())
    return log


def test_with_no_ack_waiting_the_sync_runs_on_the_loop() -> None:
    assert _sync_path(acks_wait=False) == [("sync_here",), ("answered", None)]


def test_a_few_waiting_acks_are_read_first_and_the_sync_still_runs_on_the_loop() -> None:
    assert _sync_path(acks_wait=True) == [
        ("read_now", INLINE_ACK_FRAMES), ("sync_here",), ("answered", None)]


def test_more_acks_than_a_few_leave_the_sync_to_the_flusher() -> None:
    assert _sync_path(acks_wait=True, drains=False) == [
        ("read_now", INLINE_ACK_FRAMES), ("wake",), ("sync_future",), ("answered", None)]


def test_a_group_leader_ships_first_so_its_acks_wait_for_the_flushers_sync() -> None:
    assert _sync_path(acks_wait=True, group=True) == [
        ("wake",), ("sync_future",), ("answered", None)]
