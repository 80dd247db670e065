"""Redis as a reliable queue: LPUSH to a list, BLMOVE into a per-consumer processing list,
LREM from it on ack (the "reliable queue" pattern). Durability: AOF with
appendfsync always, so Redis fsyncs the AOF before it replies to the write
(one fsync per event-loop iteration, i.e. per batch of ready commands).

Consumers keep up to 16 tasks in flight: one BLMOVE (blocking, 0.1 s so stop is noticed)
then up to 15 non-blocking LMOVEs in one pipeline; each task is acked with LREM, all acks
of a batch in one pipeline. Every consumer-side move and ack is itself an fsynced write.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from .base import BaseSystem, IN_FLIGHT_PER_CONSUMER, NotAvailable, Reporter, Server, free_port, wait_until

QUEUE = "tasks"


def consume(index: int, args: dict, report_addr: str, stop_event) -> None:
    import redis

    rep = Reporter(report_addr)
    r = redis.Redis(host="127.0.0.1", port=args["port"])
    processing = f"processing:{index}"
    r.ping()
    rep.hello()
    try:
        while not stop_event.is_set():
            first = r.blmove(QUEUE, processing, 0.1, "RIGHT", "LEFT")
            if first is None:
                continue
            got = [(first, time.monotonic_ns())]
            pipe = r.pipeline(transaction=False)
            for _ in range(IN_FLIGHT_PER_CONSUMER - 1):
                pipe.lmove(QUEUE, processing, "RIGHT", "LEFT")
            more = pipe.execute()
            now = time.monotonic_ns()
            got.extend((m, now) for m in more if m is not None)
            pipe = r.pipeline(transaction=False)
            for m, _ in got:
                pipe.lrem(processing, 1, m)
            pipe.execute()
            for m, t in got:
                rep.received(m, t)
    finally:
        r.close()
        rep.close()


class RedisList(BaseSystem):
    name = "redis"
    consumer_target = staticmethod(consume)

    def start_servers(self, workdir: Path) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise NotAvailable("redis-server not installed (bash bench/install_peers.sh)")
        import subprocess

        self.server_version = subprocess.run([exe, "--version"], capture_output=True, text=True,
                                             timeout=10).stdout.split(" sha=")[0].strip()
        self.durability = "fsynced (AOF, appendfsync always)"
        self.port = free_port()
        data = workdir / "redis"
        data.mkdir(parents=True, exist_ok=True)
        srv = Server([exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(data),
                      "--appendonly", "yes", "--appendfsync", "always", "--save", "",
                      "--daemonize", "no", "--protected-mode", "yes"],
                     workdir / "redis.log")
        self.servers.append(srv)
        wait_until(self._ping, 20.0, "redis-server", server=srv)

    def _ping(self) -> bool:
        import redis

        return bool(redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=0.5).ping())

    def setup_producer(self) -> None:
        import redis

        self.r = redis.Redis(host="127.0.0.1", port=self.port)
        self.r.delete(QUEUE)

    def consumer_args(self) -> dict:
        return {"port": self.port}

    def publish_window(self, payloads: list[bytes]) -> None:
        if len(payloads) == 1:
            self.r.lpush(QUEUE, payloads[0])
            return
        pipe = self.r.pipeline(transaction=False)
        for p in payloads:
            pipe.lpush(QUEUE, p)
        pipe.execute()

    def close_producer(self) -> None:
        if getattr(self, "r", None) is not None:
            self.r.close()
            self.r = None


def make() -> RedisList:
    return RedisList()
