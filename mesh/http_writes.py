"""One HTTP response, one write: the gateway's uvicorn protocol with its writes coalesced.

uvicorn writes a response as two `transport.write` calls, the status line and headers, then
the body, and uvloop sends each at once: two send syscalls, two TCP segments, and a caller
that wakes for the head and again for the body. For the gateway's small JSON answers that is
most of the cost of answering (issue 12's bench: the head's write was a sixth of the
gateway's busy time one request at a time, because the send runs the caller's side of
loopback TCP too).

`CoalescedWrites` wraps the connection's transport: the writes made during one callback of
the event loop (an ASGI task step writes the head and the body in one) are joined and handed
to the real transport by a `call_soon` callback, so they leave as one write, in order, as
soon as that step is over. What it keeps of the transport's contract:

- order: every byte goes through the one buffer, flushed in order; `close()` and
  `write_eof()` flush first, so a response written before a close is sent before the FIN;
- flow control: more than `flush_bytes` buffered is handed over at once (a large body does
  not wait and is not copied twice), so the real transport's high-water mark, its
  `pause_writing()` to the protocol and uvicorn's drain work as without the wrapper; the
  buffered bytes count in `get_write_buffer_size()`;
- a connection that is gone: bytes still buffered when the transport closed under us (the
  peer reset it) are dropped, as the transport would drop them; `abort()` drops them too;
- everything else (reading, extra info, limits) is the real transport's.

`coalesce_writes(protocol_class)` gives the subclass of a uvicorn HTTP protocol (httptools or
h11) whose connections get this transport, and which hands a response over as soon as it is
complete (uvicorn's `on_response_complete`, called from the last `send` of the response),
without waiting for the end of the callback; `uvicorn.Config(http=...)` takes a class.
"""

from __future__ import annotations

import asyncio

#: buffered bytes past which a write is handed to the transport at once, not at the end of
#: the callback (uvicorn's own read high-water mark: 64 KiB)
FLUSH_BYTES = 64 * 1024


class CoalescedWrites(asyncio.Transport):
    """The transport of one connection, with the writes of one loop callback sent as one."""

    __slots__ = ("_transport", "_loop", "_chunks", "_size_bytes", "_scheduled", "flush_bytes")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop,
                 flush_bytes: int = FLUSH_BYTES) -> None:
        super().__init__()
        self._transport = transport
        self._loop = loop
        self._chunks: list[bytes] = []
        self._size_bytes = 0
        self._scheduled = False
        self.flush_bytes = flush_bytes

    # ---- writing ------------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if self._transport.is_closing() and not self._chunks:
            self._transport.write(data)  # after close(): whatever the transport does then
            return
        self._chunks.append(bytes(data) if not isinstance(data, bytes) else data)
        self._size_bytes += len(data)
        if self._size_bytes >= self.flush_bytes:
            self.flush()
        elif not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._flush_scheduled)

    def writelines(self, list_of_data) -> None:  # noqa: ANN001 - iterable of bytes-like
        for data in list_of_data:
            self.write(data)

    def flush(self) -> None:
        """Hand what is buffered to the transport now (dropped if the connection is gone)."""
        chunks = self._chunks
        if not chunks:
            return
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self._chunks = []
        self._size_bytes = 0
        if not self._transport.is_closing():
            self._transport.write(data)

    def _flush_scheduled(self) -> None:
        self._scheduled = False
        self.flush()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + self._size_bytes

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._chunks = []
        self._size_bytes = 0
        self._transport.abort()

    # ---- the rest is the real transport's -------------------------------------------------

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_extra_info(self, name: str, default: object = None) -> object:
        return self._transport.get_extra_info(name, default)

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def is_reading(self) -> bool:
        return self._transport.is_reading()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._transport.set_write_buffer_limits(high, low)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._transport.get_write_buffer_limits()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._transport.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._transport.get_protocol()


def coalesce_writes(protocol_class: type[asyncio.Protocol]) -> type[asyncio.Protocol]:
    """A subclass of the uvicorn HTTP protocol `protocol_class` whose connections write
    through `CoalescedWrites` (pass it to `uvicorn.Config(http=...)`)."""

    class Coalesced(protocol_class):
        def connection_made(self, transport: asyncio.Transport) -> None:
            super().connection_made(CoalescedWrites(transport, asyncio.get_running_loop()))

        def on_response_complete(self) -> None:
            # The answer is whole: send it now, not after the rest of this callback (the
            # app's bookkeeping after its last `send`, the end of the task).
            self.transport.flush()
            super().on_response_complete()

    Coalesced.__name__ = Coalesced.__qualname__ = f"Coalesced{protocol_class.__name__}"
    return Coalesced
