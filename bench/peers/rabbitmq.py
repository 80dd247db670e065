"""RabbitMQ with a quorum queue, driven the way the RabbitMQ and pika docs recommend.

Docs followed (cited per choice):
- Queue: one durable quorum queue, persistent messages: the replicated, fsynced queue type
  the docs recommend for data safety (https://www.rabbitmq.com/docs/quorum-queues). One node.
- Producer: publisher confirms handled asynchronously with a bounded window of outstanding
  confirms — the docs' fastest strategy ("Strategy #3: Handling Publisher Confirms
  Asynchronously", https://www.rabbitmq.com/tutorials/tutorial-seven-java; "publishers
  ... should limit the number of outstanding confirms", https://www.rabbitmq.com/docs/confirms
  §Publisher Confirms). pika's asynchronous adapter on one long-lived event loop
  (`AsyncioConnection`, the asyncio form of pika's `SelectConnection` publisher example,
  https://pika.readthedocs.io/en/stable/examples/asynchronous_publisher_example.html):
  publish, keep going while fewer than PIPELINE_WINDOW confirms are outstanding, settle them
  as the broker's (multiple) acks arrive. One at a time: publish one, wait for its confirm.
  The loop runs for a whole phase: nothing is started and stopped per window or per task.
- Consumers: one process each, `basic_qos(prefetch_count=16)` (at most 16 unacked,
  https://www.rabbitmq.com/docs/consumer-prefetch), manual acks; what a poll of the
  connection delivered is acked with one `basic_ack(multiple=True)`
  ("Acknowledging Multiple Deliveries at Once", https://www.rabbitmq.com/docs/confirms).
  pika BlockingConnection, as in pika's consumer examples.

The broker is the Debian rabbitmq-server started by hand: its own node name, epmd (on
127.0.0.1 and a free port, run in the foreground so it dies with the benchmark), data dir
(RABBITMQ_MNESIA_BASE), logs, ports and an empty plugin list, all via environment.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

from .base import (IN_FLIGHT_PER_CONSUMER, PIPELINE_WINDOW, AsyncSystem, NotAvailable, Reporter, Server,
                   free_port, loop_name, port_open, wait_until)

QUEUE = "tasks"
RABBIT_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"  # Debian; /usr/sbin/ wrapper would su to user rabbitmq
BOOT_TIMEOUT_S = 120.0


def consume(index: int, args: dict, log_path: str, stop_event) -> None:
    import pika

    log = Reporter(log_path)
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", args["port"], heartbeat=0))
    ch = conn.channel()
    ch.basic_qos(prefetch_count=IN_FLIGHT_PER_CONSUMER)
    got: list[tuple[bytes, int]] = []
    last_tag = [0]

    def on_msg(channel, method, properties, body) -> None:
        got.append((body, time.monotonic_ns()))
        last_tag[0] = method.delivery_tag

    ch.basic_consume(QUEUE, on_msg, auto_ack=False)
    log.hello()
    try:
        while not stop_event.is_set():
            conn.process_data_events(time_limit=0.1)  # returns once it has dispatched deliveries
            if got:
                ch.basic_ack(last_tag[0], multiple=True)
                for body, t in got:
                    log.received(body, t)
                got.clear()
    finally:
        try:
            conn.close()
        except Exception:
            pass
        log.close()


class RabbitMQ(AsyncSystem):
    name = "rabbitmq"
    consumer_target = staticmethod(consume)

    def start_servers(self, workdir: Path) -> None:
        if not Path(RABBIT_SERVER).exists():
            raise NotAvailable("rabbitmq-server not installed (bash bench/install_peers.sh)")
        epmd_exe = shutil.which("epmd")
        if epmd_exe is None:
            raise NotAvailable("epmd (erlang) not found")
        versions = sorted(Path("/usr/lib/rabbitmq/lib").glob("rabbitmq_server-*"))
        self.server_version = versions[-1].name.replace("_server-", " ") if versions else "rabbitmq"
        self.durability = "fsynced (quorum queue, Ra WAL)"
        base = workdir / "rabbitmq"
        (base / "log").mkdir(parents=True, exist_ok=True)
        self.port, dist_port, epmd_port = free_port(), free_port(), free_port()
        (base / "enabled_plugins").write_text("[].\n")
        (base / "rabbitmq-env.conf").write_text("")
        (base / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.port}\n"
            "log.console = false\n"
            "log.file.level = warning\n"
        )
        env = {
            "HOME": str(base),  # .erlang.cookie goes here
            "ERL_EPMD_PORT": str(epmd_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODENAME": f"bench{self.port}@localhost",
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(dist_port),
            "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(base / "log"),
            "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq.conf"),
            "RABBITMQ_CONF_ENV_FILE": str(base / "rabbitmq-env.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(base / "rabbit.pid"),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        }
        epmd = Server([epmd_exe, "-port", str(epmd_port), "-address", "127.0.0.1"], base / "epmd.log")
        self.servers.append(epmd)
        wait_until(lambda: port_open(epmd_port), 10.0, "epmd", server=epmd)
        srv = Server([RABBIT_SERVER], base / "server.log", env=env, cwd=base)
        self.servers.append(srv)
        wait_until(self._can_connect, BOOT_TIMEOUT_S, "rabbitmq-server", interval_s=0.5, server=srv)

    def _can_connect(self) -> bool:
        import pika

        if not port_open(self.port):
            return False
        conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", self.port, connection_attempts=1,
                                                                 socket_timeout=2, blocked_connection_timeout=2))
        conn.close()
        return True

    def consumer_args(self) -> dict:
        return {"port": self.port}

    def server_pids(self) -> list[int]:
        return [s.pid for s in self.servers if s.alive()]  # beam.smp (exec'd by the script) + epmd

    # ---- producer: pika's asyncio adapter, confirms settled as they come
    async def setup_async(self) -> None:
        import pika
        from pika.adapters.asyncio_connection import AsyncioConnection

        self._pika = pika
        self._props = pika.BasicProperties(delivery_mode=2)
        self._next_tag = 0
        self._outstanding: dict[int, asyncio.Future] = {}  # delivery tag -> settled on confirm
        self._window = asyncio.Semaphore(PIPELINE_WINDOW)
        loop = asyncio.get_running_loop()
        ready: asyncio.Future = loop.create_future()

        def fail(_conn, exc):
            if not ready.done():
                ready.set_exception(NotAvailable(f"rabbitmq producer connection failed: {exc!r}"))
            for fut in self._outstanding.values():
                if not fut.done():
                    fut.set_exception(RuntimeError(f"connection closed: {exc!r}"))

        def on_open(conn):
            conn.channel(on_open_callback=on_channel)

        def on_channel(ch):
            self.ch = ch
            ch.confirm_delivery(ack_nack_callback=self._on_confirm, callback=lambda _f: declare())

        def declare():
            self.ch.queue_declare(QUEUE, durable=True, arguments={"x-queue-type": "quorum"},
                                  callback=lambda _f: ready.set_result(None))

        self.conn = AsyncioConnection(pika.ConnectionParameters("127.0.0.1", self.port, heartbeat=0),
                                      on_open_callback=on_open, on_open_error_callback=fail,
                                      on_close_callback=fail, custom_ioloop=loop)
        await ready
        self.client = (f"pika AsyncioConnection, publisher confirms, window {PIPELINE_WINDOW}; consumers: pika"
                       f" BlockingConnection, prefetch {IN_FLIGHT_PER_CONSUMER}, multiple acks; {loop_name(loop)}")
        self.notes.append(f"rabbitmq: {self.client}")

    def _on_confirm(self, frame) -> None:
        m = frame.method
        nack = isinstance(m, self._pika.spec.Basic.Nack)
        if m.multiple:  # every tag up to this one; the dict is in tag order
            tags = []
            for t in self._outstanding:
                if t > m.delivery_tag:
                    break
                tags.append(t)
        else:
            tags = [m.delivery_tag]
        for t in tags:
            fut = self._outstanding.pop(t, None)
            if fut is None:
                continue
            self._window.release()
            if nack:
                fut.set_exception(RuntimeError(f"publish nacked (tag {t})"))
            else:
                fut.set_result(None)

    async def publish_nowait(self, payload: bytes) -> asyncio.Future:
        await self._window.acquire()
        self.ch.basic_publish("", QUEUE, payload, self._props)
        self._next_tag += 1
        fut = asyncio.get_running_loop().create_future()
        self._outstanding[self._next_tag] = fut
        return fut

    async def publish_wait(self, payload: bytes) -> None:
        await (await self.publish_nowait(payload))

    async def flush(self) -> None:
        if self._outstanding:
            await asyncio.gather(*self._outstanding.values())

    async def close_async(self) -> None:
        if self.conn.is_open:
            closed = asyncio.get_running_loop().create_future()
            self.conn.add_on_close_callback(lambda *_: closed.done() or closed.set_result(None))
            self.conn.close()
            await closed


def make() -> RabbitMQ:
    return RabbitMQ()
