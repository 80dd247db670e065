"""The messages between the process pool and its children, and their framing.

One stream socket (a socketpair) per child. Every message is a frame: a 4-byte little-endian
length, then the message as msgpack (msgspec, tagged arrays). Payloads and results cross as
bytes; no user object is ever pickled. The child speaks only when spoken to: one `Hello` ->
one `Ready` or `StartFailed`; then each `Request` -> one `Result` or `Failure`. End of file
on the socket tells the child to exit, and tells the parent its child is gone.
"""

from __future__ import annotations

import struct

import msgspec

HEADER = struct.Struct("<I")

#: A frame larger than this is a broken or hostile peer (the parent kills such a child).
MAX_FRAME_BYTES = 2**31 - 1


class Hello(msgspec.Struct, tag="hello", array_like=True):
    app_path: str  # "module:attribute", the string `mesh ai --app` takes
    on_child_start: str  # "module:function" run once before Ready, or ""
    report_rss: bool  # read /proc/self/statm after each task
    max_result_bytes: int  # 0: no bound
    node_id: str
    parent_pid: int  # the child exits with its parent (PR_SET_PDEATHSIG where it exists)


class Ready(msgspec.Struct, tag="ready", array_like=True):
    pid: int
    kinds: list[str]
    rss_bytes: int


class StartFailed(msgspec.Struct, tag="start_failed", array_like=True):
    message: str
    traceback: str


class Request(msgspec.Struct, tag="req", array_like=True):
    run_id: int
    kind: str
    payload: bytes
    task_id: str
    attempt: int
    delivery: int
    idempotency_key: str
    headers: dict[str, str]
    submitted_ns: int


class Result(msgspec.Struct, tag="ok", array_like=True):
    run_id: int
    result: bytes
    rss_bytes: int  # 0 unless the Hello asked for it


class Failure(msgspec.Struct, tag="err", array_like=True):
    run_id: int
    error_class: int  # mesh.executors.errors.ErrorClass
    type_name: str
    message: str
    traceback: str
    retry_after_s: float
    dependency: str
    rss_bytes: int


ToChild = Hello | Request
ToParent = Ready | StartFailed | Result | Failure

_encoder = msgspec.msgpack.Encoder()


def frame(message: ToChild | ToParent) -> bytes:
    body = _encoder.encode(message)
    return HEADER.pack(len(body)) + body


def rss_bytes(pid: int | str = "self") -> int:
    """Resident set size of a process from /proc/PID/statm (Linux); 0 where unreadable."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE_BYTES
    except (OSError, ValueError, IndexError):
        return 0


try:
    import os as _os
    _PAGE_BYTES = _os.sysconf("SC_PAGE_SIZE")
except (ValueError, OSError, AttributeError):  # pragma: no cover - not Linux
    _PAGE_BYTES = 4096
