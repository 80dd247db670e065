"""RabbitMQ the way Celery uses it, made durable: one quorum queue, persistent messages,
publisher confirms, manual acks, prefetch 16 per consumer.

The broker is the Debian rabbitmq-server started by hand: its own node name, epmd (on
127.0.0.1 and a free port, run in the foreground so it dies with the benchmark), data
dir (RABBITMQ_MNESIA_BASE), logs, ports and an empty plugin list, all via environment.
No system service, no management plugin.

Producer: pika SelectConnection (callback API) so a window of publishes can wait for
its confirms together — BlockingChannel in confirm mode waits for each publish's confirm
before sending the next, which would make "pipelined" impossible. One-at-a-time figures
use the same path with windows of one. Consumers: pika BlockingConnection, basic_qos(16),
ack after receipt.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from .base import BaseSystem, IN_FLIGHT_PER_CONSUMER, NotAvailable, Reporter, Server, free_port, port_open, wait_until

QUEUE = "tasks"
RABBIT_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"  # Debian; /usr/sbin/ wrapper would su to user rabbitmq
BOOT_TIMEOUT_S = 120.0


def consume(index: int, args: dict, report_addr: str, stop_event) -> None:
    import pika

    rep = Reporter(report_addr)
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", args["port"], heartbeat=0))
    ch = conn.channel()
    ch.basic_qos(prefetch_count=IN_FLIGHT_PER_CONSUMER)

    def on_msg(channel, method, properties, body) -> None:
        t = time.monotonic_ns()
        channel.basic_ack(method.delivery_tag)
        rep.received(body, t)

    ch.basic_consume(QUEUE, on_msg, auto_ack=False)
    rep.hello()
    try:
        while not stop_event.is_set():
            conn.process_data_events(time_limit=0.1)
    finally:
        try:
            conn.close()
        except Exception:
            pass
        rep.close()


class RabbitMQ(BaseSystem):
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
        self.notes.append("rabbitmq: producer = pika SelectConnection, windows of confirms; consumers = pika"
                          " BlockingConnection, prefetch 16, ack after receipt")
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
        self.broker = srv
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

    # ---- producer on pika's callback API
    def setup_producer(self) -> None:
        import pika

        self._pika = pika
        self._outstanding: set[int] = set()
        self._next_tag = 0
        self._error: str | None = None
        self._ready = False
        self._props = pika.BasicProperties(delivery_mode=2)

        def on_open(conn):
            conn.channel(on_open_callback=on_channel)

        def on_channel(ch):
            self.ch = ch
            ch.confirm_delivery(ack_nack_callback=self._on_confirm, callback=lambda _f: declare())

        def declare():
            self.ch.queue_declare(QUEUE, durable=True, arguments={"x-queue-type": "quorum"},
                                  callback=lambda _f: ready())

        def ready():
            self._ready = True
            self.conn.ioloop.stop()

        def on_fail(_conn, exc):
            self._error = f"connection failed: {exc!r}"
            self.conn.ioloop.stop()

        self.conn = pika.SelectConnection(pika.ConnectionParameters("127.0.0.1", self.port, heartbeat=0),
                                          on_open_callback=on_open, on_open_error_callback=on_fail,
                                          on_close_callback=on_fail)
        self._run_loop(30.0, "producer setup")
        if not self._ready:
            raise NotAvailable(f"rabbitmq producer setup failed: {self._error}")

    def _on_confirm(self, frame) -> None:
        m = frame.method
        if isinstance(m, self._pika.spec.Basic.Nack):
            self._error = f"publish nacked (tag {m.delivery_tag})"
        if m.multiple:
            self._outstanding = {t for t in self._outstanding if t > m.delivery_tag}
        else:
            self._outstanding.discard(m.delivery_tag)
        if not self._outstanding:
            self.conn.ioloop.stop()

    def _run_loop(self, timeout_s: float, what: str) -> None:
        timed_out = []

        def on_timeout():
            timed_out.append(True)
            self.conn.ioloop.stop()

        timer = self.conn.ioloop.call_later(timeout_s, on_timeout)
        self.conn.ioloop.start()
        self.conn.ioloop.remove_timeout(timer)
        if timed_out:
            from .base import PhaseTimeout

            raise PhaseTimeout(f"rabbitmq {what}: no answer within {timeout_s:.0f}s")

    def publish_window(self, payloads: list[bytes]) -> None:
        for p in payloads:
            self.ch.basic_publish("", QUEUE, p, self._props)
            self._next_tag += 1
            self._outstanding.add(self._next_tag)
        self._run_loop(30.0, "publisher confirms")
        if self._error:
            raise RuntimeError(self._error)

    def close_producer(self) -> None:
        conn = getattr(self, "conn", None)
        if conn is not None and conn.is_open:
            self._error = None
            conn.close()
            try:
                self._run_loop(5.0, "close")
            except Exception:
                pass
        self.conn = None


def make() -> RabbitMQ:
    return RabbitMQ()
