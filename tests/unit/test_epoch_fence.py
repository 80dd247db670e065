"""Epoch fencing at the AI node (decision 009): a node keeps the highest epoch it has seen per
Helper group and refuses a deposed leader's deliveries (REJECTED, STALE_EPOCH); they never run.
Deliveries go straight to the node's frame handler; acks are read from a real PULL socket."""

from __future__ import annotations

from mesh import make_task, wire
from mesh.ai_node import AINode
from tests.unit.test_ai_node_runs import _acks_until, _run


def _group_frame(node: AINode, acks: str, task, *, group: str, epoch: int, helper_inc: int,
                 seq: int = 1) -> bytes:  # noqa: ANN001
    return wire.encode_dispatch_batch_raw(
        [(wire.task_bytes(task), 1, 1, 0)],
        wire.dispatch_suffix(node.incarnation, acks, f"h{epoch}", helper_inc), seq,
        wire.dispatch_batch_tail(acks, helper_inc, group, epoch))


def test_dispatch_batch_tail_carries_group_and_epoch() -> None:
    frame = wire.encode_dispatch_batch_raw([], b"", 3, wire.dispatch_batch_tail("tcp://x:1", 7, "g", 12))
    batch = wire.decode_dispatch_batch(frame)
    assert (batch.group, batch.group_epoch, batch.reply_to, batch.helper_incarnation, batch.seq) \
        == ("g", 12, "tcp://x:1", 7, 3)
    cancel = wire.decode_dispatch_batch(wire.encode_cancel_batch(["t"], "tcp://x:1", 7, "g", 12))
    assert (cancel.group, cancel.group_epoch) == ("g", 12)
    plain = wire.decode_dispatch_batch(wire.encode_dispatch_batch_raw(
        [], b"", 1, wire.dispatch_batch_tail("tcp://x:1", 7)))
    assert (plain.group, plain.group_epoch) == ("", 0)


def test_node_refuses_deliveries_of_an_older_epoch_of_the_same_group() -> None:
    async def scenario(node: AINode, acks: str, pull) -> None:  # noqa: ANN001
        new = make_task("quick", b"new")
        node._on_frame(_group_frame(node, acks, new, group="g", epoch=20, helper_inc=2))
        got = await _acks_until(pull, lambda got: any(
            a.task_id == new.task_id and a.kind == wire.DONE for a in got))
        assert node.group_epochs == {"g": 20}
        # the deposed leader (epoch 10) sends late: refused, never run
        late = make_task("quick", b"late")
        node._on_frame(_group_frame(node, acks, late, group="g", epoch=10, helper_inc=1))
        got = await _acks_until(pull, lambda got: any(a.task_id == late.task_id for a in got))
        answer = [a for a in got if a.task_id == late.task_id]
        assert [(a.kind, a.error_class) for a in answer] == [(wire.REJECTED, wire.STALE_EPOCH)]
        assert "epoch 10" in answer[0].error and "20" in answer[0].error
        assert node.refused["stale_epoch"] == 1
        assert late.task_id not in node._running
        # the same epoch, another group, and a Helper of no group are not fenced
        for task, group, epoch in ((make_task("quick", b"a"), "g", 20),
                                   (make_task("quick", b"b"), "other", 1),
                                   (make_task("quick", b"c"), "", 0)):
            node._on_frame(_group_frame(node, acks, task, group=group, epoch=epoch, helper_inc=3))
            await _acks_until(pull, lambda got, t=task: any(
                a.task_id == t.task_id and a.kind == wire.DONE for a in got))
        assert node.group_epochs == {"g": 20, "other": 1}
        assert node.refused["stale_epoch"] == 1
    _run(scenario)


def test_node_ignores_a_deposed_leaders_cancellation() -> None:
    async def scenario(node: AINode, acks: str, pull) -> None:  # noqa: ANN001
        hung = make_task("hang", b"", run_timeout_s=30)
        node._on_frame(_group_frame(node, acks, hung, group="g", epoch=5, helper_inc=2))
        node._epoch_current("g", 6)  # a newer leader reached the node meanwhile
        node._on_frame(wire.encode_cancel_batch([hung.task_id], acks, 2, "g", 5))
        assert hung.task_id in node._running
        assert node._running[hung.task_id].cancel_event is None
        assert node.refused["stale_epoch"] == 1
    _run(scenario)
