"""The frames of a Helper group's record stream: replication messages <-> bytes.

The state machines are in mesh/replication.py; this module only encodes their values (and one
of its own, `ResetRequest`) for the leader's ROUTER and the followers' DEALERs
(mesh/sockets.py `repl_router`/`repl_dealer`, CURVE with the helper role in the
`mesh.replication` domain). A frame is msgpack: `[tag, field, ...]`, tag first. Internal to
a group (both ends run the same build), so it is not in proto/mesh.proto; `VERSION` in each
Hello lets a leader refuse a member of another build instead of misreading it.

Bad frames raise `WireError`; the readers count and drop them.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from mesh.errors import WireError
from mesh.replication import Ack, Append, Entry, Hello, Refuse, Snapshot, Start

#: 2: a Hello with `reset` (a dirty log) beside its true log end; a Hello without it is still
#: sent as version 1, so a rolling upgrade keeps replicating through a leader of the older build
VERSION = 2
#: the largest frame either end takes (a batch is bounded far below it; snapshots are chunked)
MAX_FRAME_BYTES = 64 * 2**20
#: a snapshot is sent in chunks of about this many bytes of records
SNAPSHOT_CHUNK_BYTES = 1 * 2**20


@dataclass(frozen=True, slots=True)
class ResetRequest:
    """Follower -> leader: my log cannot be cut back to where you said (it has records past
    its last known position, or the leader asked for a truncation); send me a snapshot."""

    member_id: str
    epoch: int


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder()


def encode(msg: object) -> bytes:
    if isinstance(msg, Append):
        entries = [[e.epoch, e.index, e.type, e.key, e.payload] for e in msg.entries]
        return _encoder.encode(["append", msg.epoch, msg.leader_id, msg.prev_index, msg.prev_epoch,
                                entries, msg.commit_index])
    if isinstance(msg, Ack):
        return _encoder.encode(["ack", msg.member_id, msg.epoch, msg.durable_index])
    if isinstance(msg, Hello):
        if not msg.reset:  # as version 1 spoke it: a leader of the previous build reads it
            return _encoder.encode(["hello", 1, msg.member_id, msg.epoch, msg.last_index, msg.last_epoch])
        return _encoder.encode(["hello", VERSION, msg.member_id, msg.epoch, msg.last_index, msg.last_epoch,
                                msg.reset])
    if isinstance(msg, Start):
        return _encoder.encode(["start", msg.epoch, msg.leader_id, msg.truncate_after])
    if isinstance(msg, Snapshot):
        return _encoder.encode(["snapshot", msg.epoch, msg.leader_id, msg.as_of_index, msg.as_of_epoch,
                                [list(r) for r in msg.records], msg.first, msg.last])
    if isinstance(msg, Refuse):
        return _encoder.encode(["refuse", msg.member_id, msg.epoch, msg.reason])
    if isinstance(msg, ResetRequest):
        return _encoder.encode(["reset", msg.member_id, msg.epoch])
    raise TypeError(f"not a replication message: {msg!r}")


def decode(frame: bytes) -> object:
    try:
        parts = _decoder.decode(frame)
        tag, rest = parts[0], parts[1:]
        if tag == "append":
            epoch, leader_id, prev_index, prev_epoch, entries, commit = rest
            return Append(int(epoch), str(leader_id), int(prev_index), int(prev_epoch),
                          tuple(Entry(int(a), int(b), int(c), bytes(d), bytes(e)) for a, b, c, d, e in entries),
                          int(commit))
        if tag == "ack":
            member_id, epoch, durable = rest
            return Ack(str(member_id), int(epoch), int(durable))
        if tag == "hello":
            version, rest = rest[0], rest[1:]
            if version == 1:  # before `reset`: a dirty log said Hello from index 0
                member_id, epoch, last_index, last_epoch = rest
                return Hello(str(member_id), int(epoch), int(last_index), int(last_epoch))
            if version != VERSION:
                raise WireError(f"replication version {version!r}, this build speaks {VERSION}")
            member_id, epoch, last_index, last_epoch, reset = rest
            return Hello(str(member_id), int(epoch), int(last_index), int(last_epoch), bool(reset))
        if tag == "start":
            epoch, leader_id, truncate_after = rest
            return Start(int(epoch), str(leader_id), int(truncate_after))
        if tag == "snapshot":
            epoch, leader_id, as_of_index, as_of_epoch, records, first, last = rest
            return Snapshot(int(epoch), str(leader_id), int(as_of_index), int(as_of_epoch),
                            tuple((int(t), bytes(k), bytes(p)) for t, k, p in records), bool(first), bool(last))
        if tag == "refuse":
            member_id, epoch, reason = rest
            return Refuse(str(member_id), int(epoch), str(reason))
        if tag == "reset":
            member_id, epoch = rest
            return ResetRequest(str(member_id), int(epoch))
    except WireError:
        raise
    except (msgspec.DecodeError, ValueError, TypeError, IndexError) as exc:
        raise WireError(f"malformed replication frame: {exc}") from None
    raise WireError(f"unknown replication message {str(parts[0])[:40]!r}")


def snapshot_chunks(epoch: int, leader_id: str, as_of_index: int, as_of_epoch: int,
                    records: list[tuple[int, bytes, bytes]]) -> list[Snapshot]:
    """A snapshot as messages of about SNAPSHOT_CHUNK_BYTES each (at least one, `first` on the
    first and `last` on the last)."""
    chunks: list[list[tuple[int, bytes, bytes]]] = [[]]
    size = 0
    for record in records:
        if chunks[-1] and size + len(record[1]) + len(record[2]) > SNAPSHOT_CHUNK_BYTES:
            chunks.append([])
            size = 0
        chunks[-1].append(record)
        size += len(record[1]) + len(record[2]) + 8
    return [Snapshot(epoch, leader_id, as_of_index, as_of_epoch, tuple(chunk), n == 0, n == len(chunks) - 1)
            for n, chunk in enumerate(chunks)]
