"""The wire codec: hand-spliced hot-path frames equal what protobuf would build; bad frames
raise WireError."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh import wire
from mesh.errors import UnsupportedVersion, WireError

tasks = st.builds(
    lambda tid, kind, payload, prio, key, attempts, deadline, timeout, headers: wire.Task(
        task_id=tid, kind=kind, payload=payload, priority=prio, idempotency_key=key,
        max_attempts=attempts, deadline_ns=deadline, run_timeout_ms=timeout, headers=headers),
    st.text(min_size=1, max_size=40), st.text(min_size=1, max_size=20), st.binary(max_size=600),
    st.integers(-2**31, 2**31 - 1), st.text(max_size=20), st.integers(0, 2**32 - 1),
    st.integers(0, 2**64 - 1), st.integers(0, 2**32 - 1),
    st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3))


@settings(max_examples=200, deadline=None)
@given(tasks)
def test_spliced_task_record_equals_the_protobuf_message(task) -> None:  # noqa: ANN001
    spliced = wire.decode_task_record(wire.encode_new_task_record(wire.task_bytes(task)))
    assert spliced == wire.TaskRecord(task=task, state=wire.QUEUED, attempts=1)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(tasks, st.integers(1, 2**32 - 1), st.integers(1, 2**32 - 1),
                          st.integers(0, 2**32 - 1)),
                max_size=5),
       st.integers(0, 2**64 - 1), st.text(max_size=30), st.text(max_size=30),
       st.integers(0, 2**64 - 1))
def test_spliced_dispatch_batch_equals_the_protobuf_message(items, inc, reply, helper, hinc) -> None:  # noqa: ANN001
    suffix = wire.dispatch_suffix(inc, reply, helper, hinc)
    frame = wire.encode_dispatch_batch_raw(
        [(wire.task_bytes(t), attempt, delivery, replays)
         for t, attempt, delivery, replays in items], suffix)
    batch = wire.decode_dispatch_batch(frame)
    expected = [wire.Dispatch(task=t, attempt=a, delivery=d, incarnation=inc, reply_to=reply,
                              helper_id=helper, helper_incarnation=hinc, replays=r)
                for t, a, d, r in items]
    assert list(batch.dispatches) == expected
    for t, _a, _d, _r in items:  # the byte budget a frame is checked against holds each one
        body = len(next(d for d in batch.dispatches if d.task == t).SerializeToString())
        assert wire.dispatch_size(len(wire.task_bytes(t)), len(suffix)) >= \
            1 + len(wire._varint(body)) + body
    assert batch.version == wire.PROTOCOL_VERSION and batch.sent_ns > 0


def test_malformed_oversized_and_foreign_version_frames_raise_wire_errors() -> None:
    with pytest.raises(WireError, match="malformed"):
        wire.decode_ack_batch(b"\x08\x96\x01garbage")
    with pytest.raises(WireError, match="exceeds the limit"):
        wire.decode_client_request(b"\x00" * 100, limit_bytes=10)
    with pytest.raises(UnsupportedVersion, match="version 7"):
        wire.decode_ack_batch(wire.AckBatch(version=7).SerializeToString())
