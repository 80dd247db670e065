"""Frames <-> values: the only module that imports the generated protobuf code.

Every top-level envelope carries `version`; a frame of another major version, a frame that does
not parse, or one above the size limit raises `WireError` (the receive loops count and drop it).
On the hot path the protobuf messages themselves are the values (upb makes them cheap to build
and read, and converting each task into another type would cost more than the rest of its
dispatch); no other module serializes or parses them.
"""

from __future__ import annotations

import time

from google.protobuf.message import DecodeError

from mesh._pb import mesh_pb2 as _pb
from mesh.errors import UnsupportedVersion, WireError

#: the protocol this build speaks; bump when an old reader would misread a new frame
PROTOCOL_VERSION = 1

# The message types, named for what they are. Build them through these names, read their fields;
# serialize and parse only through the functions below.
Task = _pb.Task
Dispatch = _pb.Dispatch
DispatchBatch = _pb.DispatchBatch
Ack = _pb.Ack
AckBatch = _pb.AckBatch
Heartbeat = _pb.Heartbeat
ClientRequest = _pb.ClientRequest
ClientReply = _pb.ClientReply
SubmitRequest = _pb.SubmitRequest
SubmitResult = _pb.SubmitResult
TaskStatus = _pb.TaskStatus
TaskRecord = _pb.TaskRecord
TransitionRecord = _pb.TransitionRecord
Alert = _pb.Alert
ReplayRequest = _pb.ReplayRequest
ReplayReply = _pb.ReplayReply
Attempt = _pb.Attempt
CancelResult = _pb.CancelResult
NodeInfo = _pb.NodeInfo
NodesReply = _pb.NodesReply
DeadLetterReply = _pb.DeadLetterReply
KindQueue = _pb.KindQueue
RateLimitInfo = _pb.RateLimitInfo
CircuitInfo = _pb.CircuitInfo

# Enums as plain ints (protobuf enum values are ints already).
QUEUED, DISPATCHED, RUNNING, SUCCEEDED, DEAD, CANCELLED = (
    _pb.QUEUED, _pb.DISPATCHED, _pb.RUNNING, _pb.SUCCEEDED, _pb.DEAD, _pb.CANCELLED)
TERMINAL_STATES = frozenset((SUCCEEDED, DEAD, CANCELLED))
STARTED, DONE, FAILED, REJECTED = _pb.STARTED, _pb.DONE, _pb.FAILED, _pb.REJECTED
RETRYABLE, FATAL, RETRY_LATER, TIMEOUT = _pb.RETRYABLE, _pb.FATAL, _pb.RETRY_LATER, _pb.TIMEOUT
UNKNOWN_TASK_KIND, WRONG_INCARNATION, DRAINING, MALFORMED = (
    _pb.UNKNOWN_TASK_KIND, _pb.WRONG_INCARNATION, _pb.DRAINING, _pb.MALFORMED)
STALE_EPOCH = _pb.STALE_EPOCH
CANCELLED_RUN = _pb.CANCELLED_RUN
ATTEMPTS_EXHAUSTED, FATAL_ERROR, EXPIRED, UNKNOWN_KIND, DELIVERY_LIMIT, PAYLOAD_REJECTED = (
    _pb.ATTEMPTS_EXHAUSTED, _pb.FATAL_ERROR, _pb.EXPIRED, _pb.UNKNOWN_KIND,
    _pb.DELIVERY_LIMIT, _pb.PAYLOAD_REJECTED)
OK, QUEUE_FULL, PAYLOAD_TOO_LARGE, JOURNAL_FAILED, MALFORMED_REQUEST = (
    _pb.OK, _pb.QUEUE_FULL, _pb.PAYLOAD_TOO_LARGE, _pb.JOURNAL_FAILED, _pb.MALFORMED_REQUEST)
PERMISSION_DENIED = _pb.PERMISSION_DENIED
ALREADY_FINISHED = _pb.ALREADY_FINISHED
NOT_FOUND, SHUTTING_DOWN, INVALID_TASK, UNSUPPORTED_VERSION = (
    _pb.NOT_FOUND, _pb.SHUTTING_DOWN, _pb.INVALID_TASK, _pb.UNSUPPORTED_VERSION)
LIST, INSPECT, REPLAY, PURGE = _pb.LIST, _pb.INSPECT, _pb.REPLAY, _pb.PURGE
INFO, WARNING, ERROR, CRITICAL = _pb.INFO, _pb.WARNING, _pb.ERROR, _pb.CRITICAL


def state_name(state: int) -> str:
    return _pb.TaskState.Name(state) if state else "UNKNOWN"


def dead_reason_name(reason: int) -> str:
    return _pb.DeadReason.Name(reason) if reason else ""


def error_class_name(value: int) -> str:
    return _pb.ErrorClass.Name(value)


def severity_value(name: str) -> int:
    try:
        return _pb.Severity.Value(name.upper())
    except ValueError:
        raise ValueError(
            f"unknown severity {name!r}; use one of info, warning, error, critical") from None


def severity_name(value: int) -> str:
    return _pb.Severity.Name(value).lower() if value else "unspecified"


def now_ns() -> int:
    """Wall clock in ns: comparable across processes on one host (latency figures, deadlines)."""
    return time.time_ns()


# ---- encoding -------------------------------------------------------------------------------


def encode(message) -> bytes:  # noqa: ANN001 - any envelope
    return message.SerializeToString()


def encode_dispatch_batch(dispatches: list) -> bytes:
    batch = DispatchBatch(version=PROTOCOL_VERSION, sent_ns=time.time_ns())
    batch.dispatches.extend(dispatches)
    return batch.SerializeToString()


def encode_cancel_batch(task_ids: list[str], reply_to: str, helper_incarnation: int,
                        group: str = "", group_epoch: int = 0) -> bytes:
    """A DispatchBatch with no dispatch, only cancellations: seq 0, so it is not on the
    link's ledger (see DispatchBatch.cancel_task_ids)."""
    batch = DispatchBatch(version=PROTOCOL_VERSION, sent_ns=time.time_ns(), reply_to=reply_to,
                          helper_incarnation=helper_incarnation, group=group,
                          group_epoch=group_epoch)
    batch.cancel_task_ids.extend(task_ids)
    return batch.SerializeToString()


def encode_ack_batch(heartbeat, acks: list) -> bytes:  # noqa: ANN001
    batch = AckBatch(version=PROTOCOL_VERSION, heartbeat=heartbeat)
    if acks:
        batch.acks.extend(acks)
    return batch.SerializeToString()


def encode_record(message) -> bytes:  # noqa: ANN001 - journal payloads carry no version field
    return message.SerializeToString()


# ---- decoding -------------------------------------------------------------------------------


def _parse(cls, frame: bytes, limit_bytes: int | None, what: str):  # noqa: ANN001, ANN202
    if limit_bytes is not None and len(frame) > limit_bytes:
        raise WireError(f"{what} of {len(frame)} bytes exceeds the limit of {limit_bytes} bytes")
    try:
        message = cls.FromString(frame)
    except DecodeError as exc:
        raise WireError(f"malformed {what} ({len(frame)} bytes): {exc}") from None
    version = getattr(message, "version", PROTOCOL_VERSION)
    if version != PROTOCOL_VERSION:
        raise UnsupportedVersion(version, PROTOCOL_VERSION)
    return message


def decode_dispatch_batch(frame: bytes, limit_bytes: int | None = None):  # noqa: ANN201
    return _parse(DispatchBatch, frame, limit_bytes, "dispatch batch")


def decode_ack_batch(frame: bytes, limit_bytes: int | None = None):  # noqa: ANN201
    return _parse(AckBatch, frame, limit_bytes, "ack batch")


def decode_client_request(frame: bytes, limit_bytes: int | None = None):  # noqa: ANN201
    return _parse(ClientRequest, frame, limit_bytes, "client request")


def decode_client_reply(frame: bytes):  # noqa: ANN201
    return _parse(ClientReply, frame, None, "client reply")


def decode_alert(frame: bytes, limit_bytes: int | None = None):  # noqa: ANN201
    return _parse(Alert, frame, limit_bytes, "alert")


def decode_replay_request(frame: bytes):  # noqa: ANN201
    return _parse(ReplayRequest, frame, 64 * 1024, "replay request")


def decode_replay_reply(frame: bytes):  # noqa: ANN201
    return _parse(ReplayReply, frame, None, "replay reply")


def decode_task_record(payload: bytes):  # noqa: ANN201
    try:
        return TaskRecord.FromString(payload)
    except DecodeError as exc:
        raise WireError(f"malformed task record: {exc}") from None


def decode_transition_record(payload: bytes):  # noqa: ANN201
    try:
        return TransitionRecord.FromString(payload)
    except DecodeError as exc:
        raise WireError(f"malformed transition record: {exc}") from None


def decode_task(payload: bytes):  # noqa: ANN201
    try:
        return Task.FromString(payload)
    except DecodeError as exc:
        raise WireError(f"malformed task: {exc}") from None


# ---- alert lane helpers (mesh/alerts.py, mesh/alert_subscriber.py) ---------------------------

#: first frame of a publisher-state beat on an alert PUB socket; every subscriber subscribes to
#: it besides its topics. Starts with a NUL byte so no alert topic (a kind) can collide with it.
ALERT_STATE_TOPIC = b"\x00state"


def severity_label(value: int) -> str:
    """Like severity_name, but never raises: an unknown value (a newer peer) reads "severity9"."""
    try:
        return severity_name(value)
    except ValueError:
        return f"severity{value}"


def alert_topic(kind: str, severity: int) -> bytes:
    """The first frame of an alert on PUB: `kind|severity`, so SUB prefixes filter on kinds."""
    return f"{kind}|{severity_label(severity)}".encode()


#: the one-byte varints (0..127): most lengths and counts on the hot paths are one of these
_SMALL_VARINTS = [bytes((i,)) for i in range(128)]


def _varint(value: int) -> bytes:
    if 0 <= value < 0x80:
        return _SMALL_VARINTS[value]
    if 0 <= value < 0x4000:  # two bytes: the length of a task or of one delivery, mostly
        return bytes((value & 0x7F | 0x80, value >> 7))
    if 0x100_0000_0000_0000 <= value < 0x8000_0000_0000_0000:
        # nine bytes at once: a nanosecond timestamp (every dispatch frame carries one)
        return bytes((value & 0x7F | 0x80, value >> 7 & 0x7F | 0x80, value >> 14 & 0x7F | 0x80,
                      value >> 21 & 0x7F | 0x80, value >> 28 & 0x7F | 0x80,
                      value >> 35 & 0x7F | 0x80, value >> 42 & 0x7F | 0x80,
                      value >> 49 & 0x7F | 0x80, value >> 56))
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_replay_reply(alert_frames: list[bytes], publisher_epoch: int,
                        first_available_seq: int, last_seq: int) -> bytes:
    """A ReplayReply built from alerts already encoded (the publisher's history keeps frames).

    Protobuf concatenation is merge, so appending each frame as field 2 (length-delimited)
    gives exactly the encoding of a reply that holds those alerts, without re-parsing them.
    Also used, with no alerts, as the publisher-state beat (epoch, first and last seq).
    """
    head = ReplayReply(version=PROTOCOL_VERSION, publisher_epoch=publisher_epoch,
                       first_available_seq=first_available_seq, last_seq=last_seq)
    parts = [head.SerializeToString()]
    for frame in alert_frames:
        parts.append(b"\x12" + _varint(len(frame)) + frame)
    return b"".join(parts)


def decode_publisher_state(frame: bytes):  # noqa: ANN201 - a ReplayReply without alerts
    return _parse(ReplayReply, frame, 4096, "publisher state")


# ---- hot-path encoders: frames built from bytes already encoded ----------------------------
# Protobuf's encoding of a message field is tag + length + the sub-message's bytes, so a Task
# serialized once at admission is spliced into its journal record and into every Dispatch
# instead of being copied into a new message and serialized again per use. The unit tests check
# that protobuf parses these frames into exactly the messages the slow path would build.


def task_bytes(task) -> bytes:  # noqa: ANN001
    return task.SerializeToString()


def encode_new_task_record(task_encoded: bytes) -> bytes:
    """TaskRecord(task=..., state=QUEUED, attempts=1)."""
    return b"\x0a" + _varint(len(task_encoded)) + task_encoded + b"\x10\x01\x18\x01"


def new_task_record_size(task_bytes_len: int) -> int:
    """len(encode_new_task_record(x)) for an x of `task_bytes_len` bytes, without building it."""
    return 1 + _varint_len(task_bytes_len) + task_bytes_len + 4


def dispatch_suffix(incarnation: int, reply_to: str, helper_id: str,
                    helper_incarnation: int) -> bytes:
    """The Dispatch fields that are the same for every delivery to one node incarnation."""
    reply = reply_to.encode()
    helper = helper_id.encode()
    return (b"\x21" + incarnation.to_bytes(8, "little")
            + b"\x2a" + _varint(len(reply)) + reply
            + b"\x32" + _varint(len(helper)) + helper
            + b"\x39" + helper_incarnation.to_bytes(8, "little"))


def dispatch_batch_tail(reply_to: str, helper_incarnation: int, group: str = "",
                        group_epoch: int = 0) -> bytes:
    """The DispatchBatch fields naming its link (reply_to, helper_incarnation) and, for a
    group's leader, its group and epoch: the same for every frame to one node, and what lets a
    node place a probe (a frame with no dispatch)."""
    reply = reply_to.encode()
    tail = (b"\x2a" + _varint(len(reply)) + reply
            + b"\x31" + helper_incarnation.to_bytes(8, "little"))
    if group:
        name = group.encode()
        tail += b"\x42" + _varint(len(name)) + name + b"\x48" + _varint(group_epoch)
    return tail


def encode_dispatch_batch_raw(deliveries: list[tuple[bytes, int, int, int]], suffix: bytes,
                              seq: int = 0, tail: bytes = b"") -> bytes:
    """DispatchBatch of (task bytes, attempt, delivery, replays) sharing one `dispatch_suffix`;
    `seq` numbers the frame on its link, `tail` is its `dispatch_batch_tail`."""
    parts = [b"\x08" + _varint(PROTOCOL_VERSION)]
    for encoded, attempt, delivery, replays in deliveries:
        body = (b"\x0a" + _varint(len(encoded)) + encoded + b"\x10" + _varint(attempt)
                + b"\x18" + _varint(delivery) + suffix)
        if replays:
            body += b"\x40" + _varint(replays)
        parts.append(b"\x12" + _varint(len(body)) + body)
    parts.append(b"\x18" + _varint(time.time_ns()))
    if seq:
        parts.append(b"\x20" + _varint(seq))
    parts.append(tail)
    return b"".join(parts)


#: bytes of a DispatchBatch besides its dispatches and tail: version, sent_ns, seq (at most)
DISPATCH_BATCH_HEAD_BYTES = 2 + 11 + 11


def dispatch_size(task_bytes_len: int, suffix_len: int) -> int:
    """Bytes one delivery adds to a DispatchBatch, at most (attempt and delivery numbers
    counted at their largest, 5 bytes each, a replay count too): what a frame's byte budget is
    checked against."""
    body = 1 + _varint_len(task_bytes_len) + task_bytes_len + 6 + 6 + 6 + suffix_len
    return 1 + _varint_len(body) + body


def _varint_len(value: int) -> int:
    """len(_varint(value)) for value >= 0, without building it."""
    if value < 0x80:
        return 1
    if value < 0x4000:
        return 2
    return (value.bit_length() + 6) // 7
