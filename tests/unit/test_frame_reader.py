"""FrameReader.read_now: an owner takes a few waiting messages in its own turn (the Helper
takes waiting ack batches before an intake batch's sync); the rest are read on a later turn."""

from __future__ import annotations

import asyncio

import zmq

from mesh import sockets


def test_read_now_takes_at_most_its_limit_and_leaves_the_rest_to_a_later_turn() -> None:
    async def scenario() -> None:
        ctx = zmq.Context()
        pull = ctx.socket(zmq.PULL)
        push = ctx.socket(zmq.PUSH)
        try:
            pull.bind("inproc://frames")
            push.connect("inproc://frames")
            got: list[bytes] = []
            batch_ends: list[int] = []
            reader = sockets.FrameReader(pull, got.append,
                                         on_batch_end=lambda: batch_ends.append(len(got)))
            assert not reader.read_now(4), "a stopped reader reads nothing"
            reader.start(asyncio.get_running_loop())
            await asyncio.sleep(0)  # start() reads once: nothing waits yet
            for n in range(6):
                push.send(b"%d" % n)
            # inproc delivers at once: the six wait; the loop has not run the reader since
            assert not reader.read_now(4), "two are left: the reader comes back for them"
            assert got == [b"0", b"1", b"2", b"3"] and batch_ends == [4]
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            assert got == [b"%d" % n for n in range(6)] and batch_ends == [4, 6]
            push.send(b"6")
            assert reader.read_now(4), "one waited and was read: none is left"
            assert got[-1] == b"6" and batch_ends[-1] == 7
            assert reader.read_now(4) and batch_ends[-1] == 7, "nothing waited: no batch end"
            reader.stop()
        finally:
            push.close(0)
            pull.close(0)
            ctx.term()

    asyncio.run(scenario())
