"""An AI node's runs in one process: run timeouts free the slot and answer FAILED/TIMEOUT,
also for a run cancelled before its first step. Deliveries go straight to the node's frame
handler; its acks are read from a real PULL socket on loopback."""

from __future__ import annotations

import asyncio
import time

import zmq
import zmq.asyncio

from mesh import App, make_task, wire
from mesh.ai_node import AINode
from mesh.settings import AINodeSettings
from mesh.trust import Trust


def _app() -> App:
    app = App("runs")

    @app.task("hang")
    async def hang(payload: bytes) -> bytes:
        await asyncio.sleep(3600)
        return b""

    @app.task("quick")
    async def quick(payload: bytes) -> bytes:
        return payload

    return app


def _frame(node: AINode, acks: str, task, delivery: int = 1) -> bytes:  # noqa: ANN001
    return wire.encode_dispatch_batch_raw(
        [(wire.task_bytes(task), 1, delivery, 0)],
        wire.dispatch_suffix(node.incarnation, acks, "h", 1))


async def _acks_until(pull, want, deadline_s: float = 10.0) -> list:  # noqa: ANN001
    got: list = []
    end = time.monotonic() + deadline_s
    while not want(got):
        left = end - time.monotonic()
        assert left > 0, f"acks never matched; got {[(a.task_id, a.kind) for a in got]}"
        if await pull.poll(int(left * 1000)):
            got.extend(wire.decode_ack_batch(await pull.recv()).acks)
    return got


def _run(scenario) -> None:  # noqa: ANN001
    async def main() -> None:
        ctx = zmq.asyncio.Context()
        pull = ctx.socket(zmq.PULL)
        port = pull.bind_to_random_port("tcp://127.0.0.1")
        acks = f"tcp://127.0.0.1:{port}"
        # plain links: deliveries go straight to the frame handler here (tests/integration/
        # test_trust_node.py runs them through CURVE)
        node = AINode(AINodeSettings(node_id="n", concurrency=2), _app(), helpers=[acks],
                      trust=Trust.plain())
        await node.start()
        try:
            await scenario(node, acks, pull)
        finally:
            await node.stop()
            pull.close(linger=0)
            ctx.term()
    asyncio.run(main())


def _failed_timeout(task_id: str):  # noqa: ANN202
    return lambda got: any(a.task_id == task_id and a.kind == wire.FAILED
                           and a.error_class == wire.TIMEOUT for a in got)


def test_a_hung_run_fails_with_timeout_and_frees_its_slot() -> None:
    async def scenario(node: AINode, acks: str, pull) -> None:  # noqa: ANN001
        hung = make_task("hang", b"", run_timeout_s=0.2)
        node._on_frame(_frame(node, acks, hung))
        got = await _acks_until(pull, _failed_timeout(hung.task_id))
        timeout = next(a for a in got if a.kind == wire.FAILED)
        assert "run timeout of 0.2s" in timeout.error
        assert node.running == 0
        quick = make_task("quick", b"ok")
        node._on_frame(_frame(node, acks, quick))
        await _acks_until(pull, lambda g: any(a.task_id == quick.task_id
                                              and a.kind == wire.DONE for a in g))
    _run(scenario)


def test_a_run_cancelled_before_its_first_step_is_answered_and_frees_its_slot() -> None:
    async def scenario(node: AINode, acks: str, pull) -> None:  # noqa: ANN001
        task = make_task("hang", b"", run_timeout_s=60)
        node._on_frame(_frame(node, acks, task))
        job = node._running[task.task_id]
        job.timed_out = True  # as the sweep does, before the loop ran the first step
        job.runner.cancel()
        await _acks_until(pull, _failed_timeout(task.task_id))
        assert node.running == 0
    _run(scenario)
