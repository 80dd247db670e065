"""One response, one write (mesh/http_writes.py): the coalescing transport against a fake
transport, then uvicorn's httptools protocol with it, on loopback in this process: keep-alive,
pipelined requests, a large body under flow control, a caller that goes away."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest

from mesh.http_writes import CoalescedWrites, coalesce_writes

pytestmark = pytest.mark.timeout(60)


class FakeTransport(asyncio.Transport):
    """Records what reaches the wire: each write, and close/abort/eof in order."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, bytes]] = []
        self.closing = False
        self.buffered = 0

    def write(self, data: bytes) -> None:
        if self.closing:
            raise RuntimeError("write on a closed transport")
        self.calls.append(("write", bytes(data)))

    def writes(self) -> list[bytes]:
        return [data for op, data in self.calls if op == "write"]

    def close(self) -> None:
        self.calls.append(("close", b""))
        self.closing = True

    def abort(self) -> None:
        self.calls.append(("abort", b""))
        self.closing = True

    def write_eof(self) -> None:
        self.calls.append(("eof", b""))

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return self.buffered


def test_the_writes_of_one_callback_leave_as_one_write_after_it_in_order() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        real = FakeTransport()
        writes = CoalescedWrites(real, loop)
        writes.write(b"HTTP/1.1 202 Accepted\r\n\r\n")
        writes.write(bytearray(b"{}"))
        writes.writelines([b"a", memoryview(b"b")])
        assert real.writes() == [], "nothing is sent while the callback runs"
        assert writes.get_write_buffer_size() == 29
        await asyncio.sleep(0)
        assert real.writes() == [b"HTTP/1.1 202 Accepted\r\n\r\n{}ab"]
        writes.write(b"next")
        await asyncio.sleep(0)
        writes.write(b"")
        await asyncio.sleep(0)
        assert real.writes() == [b"HTTP/1.1 202 Accepted\r\n\r\n{}ab", b"next"]
        assert writes.get_write_buffer_size() == 0
    asyncio.run(scenario())


def test_close_and_eof_send_what_is_buffered_first_and_abort_drops_it() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        real = FakeTransport()
        writes = CoalescedWrites(real, loop)
        writes.write(b"head")
        writes.write(b"body")
        writes.write_eof()
        writes.write(b"bye")
        writes.close()
        await asyncio.sleep(0)  # the flush scheduled by the first write finds nothing
        assert real.calls == [("write", b"headbody"), ("eof", b""), ("write", b"bye"),
                              ("close", b"")]
        aborted = FakeTransport()
        writes = CoalescedWrites(aborted, loop)
        writes.write(b"never")
        writes.abort()
        await asyncio.sleep(0)
        assert aborted.calls == [("abort", b"")]
    asyncio.run(scenario())


def test_a_large_write_is_handed_over_at_once_for_the_transports_flow_control() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        real = FakeTransport()
        writes = CoalescedWrites(real, loop, flush_bytes=1000)
        writes.write(b"h" * 10)
        writes.write(b"b" * 2000)
        assert real.writes() == [b"h" * 10 + b"b" * 2000], "not held to the callback's end"
        real.buffered = 2010
        assert writes.get_write_buffer_size() == 2010
        await asyncio.sleep(0)
        assert len(real.writes()) == 1
    asyncio.run(scenario())


def test_bytes_buffered_when_the_connection_went_away_are_dropped_without_an_error() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        errors: list[dict] = []
        loop.set_exception_handler(lambda _, context: errors.append(context))
        real = FakeTransport()
        writes = CoalescedWrites(real, loop)
        writes.write(b"answer")
        real.closing = True  # the peer reset the connection: the loop closed the transport
        await asyncio.sleep(0)
        assert real.calls == [] and errors == []
        assert writes.is_closing()
    asyncio.run(scenario())


# ---- with uvicorn's httptools protocol, on loopback ---------------------------------------


class RecordingTransport:
    """Under the coalescing one: counts the writes that reach the real transport."""

    def __init__(self, transport: asyncio.Transport, writes: list[int]) -> None:
        self._transport = transport
        self._writes = writes

    def write(self, data: bytes) -> None:
        self._writes.append(len(data))
        self._transport.write(data)

    def __getattr__(self, name: str):  # noqa: ANN204 - everything else is the real one's
        return getattr(self._transport, name)


BIG_BYTES = 4 * 2**20
BUSY_S = 0.5


async def app(scope: dict, receive, send) -> None:  # noqa: ANN001
    """/small: a JSON answer as the gateway's (start, then one body); /big: 4 MiB in chunks;
    /echo: the request body back."""
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if scope["path"] == "/then-busy":  # complete, then hold the loop before returning
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"4")]})
        await send({"type": "http.response.body", "body": b"done"})
        time.sleep(BUSY_S)
        return
    if scope["path"] == "/big":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"%d" % BIG_BYTES)]})
        chunk = b"x" * 2**20
        for i in range(4):
            await send({"type": "http.response.body", "body": chunk, "more_body": i < 3})
        return
    answer = body if scope["path"] == "/echo" else b'{"id": "%s"}' % scope["path"][1:].encode()
    await send({"type": "http.response.start", "status": 202,
                "headers": [(b"content-length", b"%d" % len(answer)),
                            (b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": answer})


class Server:
    """uvicorn with the coalesced httptools protocol on a free loopback port, in this loop
    (HTTPS with `tls`: (certificate file, key file))."""

    def __init__(self, writes: list[int], tls: tuple[str, str] | None = None) -> None:
        import uvicorn
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        self.paused = 0

        class Recording(coalesce_writes(HttpToolsProtocol)):
            def connection_made(self, transport: asyncio.Transport) -> None:
                super().connection_made(RecordingTransport(transport, writes))

            def pause_writing(this) -> None:  # noqa: N805 - `self` is the Server here
                self.paused += 1
                super().pause_writing()

        self.server = uvicorn.Server(uvicorn.Config(
            app, host="127.0.0.1", port=0, loop="none", lifespan="off", access_log=False,
            log_level="warning", http=Recording, ssl_certfile=tls and tls[0],
            ssl_keyfile=tls and tls[1]))

    async def __aenter__(self) -> tuple[str, int]:
        self.serving = asyncio.ensure_future(self.server.serve())
        while not self.server.started:
            assert not self.serving.done(), "the server did not start"
            await asyncio.sleep(0.01)
        return self.server.servers[0].sockets[0].getsockname()[:2]

    async def __aexit__(self, *exc: object) -> None:
        self.server.should_exit = True
        await self.serving


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    return int(head[9:12]), await reader.readexactly(length)


def request(path: str, body: bytes = b"") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n\r\n"
            .encode() + body)


def run(scenario) -> None:  # noqa: ANN001
    uvloop = pytest.importorskip("uvloop")
    uvloop.run(scenario())


def test_each_answer_on_a_keep_alive_connection_is_one_write() -> None:
    async def scenario() -> None:
        writes: list[int] = []
        async with Server(writes) as (host, port):
            reader, writer = await asyncio.open_connection(host, port)
            for i in range(5):
                writer.write(request(f"/t{i}"))
                assert await read_response(reader) == (202, b'{"id": "t%d"}' % i)
            writer.close()
        assert len(writes) == 5, f"one write per response, got sizes {writes}"
    run(scenario)


def test_pipelined_requests_are_answered_in_order() -> None:
    async def scenario() -> None:
        writes: list[int] = []
        async with Server(writes) as (host, port):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(b"".join(request("/echo", b"body-%d" % i) for i in range(20)))
            for i in range(20):
                assert await read_response(reader) == (202, b"body-%d" % i)
            writer.close()
        assert len(writes) == 20
    run(scenario)


def test_a_large_body_to_a_slow_reader_arrives_whole_under_flow_control() -> None:
    async def scenario() -> None:
        writes: list[int] = []
        server = Server(writes)
        async with server as (host, port):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            sock.connect((host, port))
            sock.setblocking(False)
            loop = asyncio.get_running_loop()
            await loop.sock_sendall(sock, request("/big") + request("/after"))
            await asyncio.sleep(0.2)  # the server fills the socket and its buffer, then waits
            received = bytearray()
            while not received.endswith(b'{"id": "after"}'):
                chunk = await loop.sock_recv(sock, 65536)
                assert chunk, "the server closed early"
                received += chunk
            sock.close()
            assert server.paused, "the transport's high-water mark paused the writer"
        head, _, rest = bytes(received).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        assert rest[:BIG_BYTES] == b"x" * BIG_BYTES
        assert rest[BIG_BYTES:].startswith(b"HTTP/1.1 202")
        assert rest.endswith(b'{"id": "after"}')
    run(scenario)


def test_a_caller_that_goes_away_mid_answer_leaves_the_server_serving() -> None:
    async def scenario() -> None:
        writes: list[int] = []
        loop = asyncio.get_running_loop()
        errors: list[dict] = []
        loop.set_exception_handler(lambda _, context: errors.append(context))
        async with Server(writes) as (host, port):
            for _ in range(3):
                sock = socket.create_connection((host, port))
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00"
                                b"\x00\x00\x00\x00")  # close with a reset
                sock.sendall(request("/big") + request("/t"))
                sock.close()
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(request("/still"))
            assert await read_response(reader) == (202, b'{"id": "still"}')
            writer.close()
        assert errors == [], errors
    run(scenario)


def test_a_complete_answer_leaves_before_the_app_returns() -> None:
    """The response is handed over from uvicorn's on_response_complete, not at the end of the
    loop callback: a caller has it while the app still runs after its last send."""
    async def scenario() -> None:
        writes: list[int] = []
        async with Server(writes) as (host, port):
            arrived: list[float] = []

            def caller() -> None:
                with socket.create_connection((host, port)) as sock:
                    sock.sendall(request("/then-busy"))
                    data = b""
                    while not data.endswith(b"done"):
                        data += sock.recv(4096)
                    arrived.append(time.monotonic())
            thread = threading.Thread(target=caller)
            started = time.monotonic()
            thread.start()
            await asyncio.get_running_loop().run_in_executor(None, thread.join, 10)
        assert arrived, "no answer"
        assert arrived[0] - started < BUSY_S * 0.6, \
            f"the answer came {arrived[0] - started:.2f}s after the request"
        assert len(writes) == 1
    run(scenario)


def test_https_answers_are_one_write_each_into_the_tls_transport(tmp_path) -> None:  # noqa: ANN001
    import shutil
    import ssl
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("no openssl command to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)

    async def scenario() -> None:
        writes: list[int] = []
        context = ssl.create_default_context(cafile=str(cert))
        context.check_hostname = False
        async with Server(writes, tls=(str(cert), str(key))) as (host, port):
            reader, writer = await asyncio.open_connection(host, port, ssl=context)
            for i in range(3):
                writer.write(request(f"/s{i}"))
                assert await read_response(reader) == (202, b'{"id": "s%d"}' % i)
            writer.write(b"".join(request("/echo", b"p%d" % i) for i in range(3)))
            for i in range(3):
                assert await read_response(reader) == (202, b"p%d" % i)
            writer.close()
        assert len(writes) == 6, f"one write per response, got sizes {writes}"
    run(scenario)


def test_a_100_continue_is_sent_while_the_app_waits_for_the_body() -> None:
    """uvicorn writes `100 Continue` from the app's first receive and then waits for the body:
    the write leaves at the end of that callback, without a response to complete it."""
    async def scenario() -> None:
        writes: list[int] = []
        async with Server(writes) as (host, port):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n"
                         b"Expect: 100-continue\r\n\r\n")
            interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert interim.startswith(b"HTTP/1.1 100 Continue")
            writer.write(b"body")
            assert await read_response(reader) == (202, b"body")
            writer.close()
        assert len(writes) == 2
    run(scenario)
