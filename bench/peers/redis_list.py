"""Redis as a reliable queue, driven the way the Redis and redis-py docs recommend.

Docs followed (cited per choice):
- Durability: AOF with `appendfsync always`: Redis fsyncs the AOF before it replies to a
  write, one fsync per event-loop iteration, i.e. per batch of ready commands
  (https://redis.io/docs/latest/operate/oss_and_stack/management/persistence/).
- Queue: the reliable-queue pattern, LPUSH to a list, LMOVE into a per-consumer processing
  list, LREM from it on ack ("Pattern: Reliable queue", https://redis.io/docs/latest/commands/lmove/).
- Client: redis-py with the hiredis parser (installed: redis-py uses it by itself; "for
  faster performance, install redis with hiredis support", https://redis.readthedocs.io/en/stable/
  and the redis-py README).
- Producer, one at a time: one LPUSH, answered after the fsync. Throughput: deep pipelines
  (https://redis.io/docs/latest/develop/use/pipelining/): THROUGHPUT_BATCH = 1,000 LPUSHes per
  pipeline, one round trip and one fsync each.
- Consumers: at most 16 in flight each. One pipeline per round: the LREM acks of the
  previous round, then 16 LMOVEs (the acks run first, so the processing list never holds more
  than 16); when that finds nothing, one BLMOVE blocks (0.1 s, so stop is noticed) for the
  next task. Under load that is one round trip (and one fsync) per 16 tasks instead of three.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from .base import BaseSystem, IN_FLIGHT_PER_CONSUMER, NotAvailable, Reporter, Server, free_port, wait_until

QUEUE = "tasks"


def consume(index: int, args: dict, log_path: str, stop_event) -> None:
    import redis

    log = Reporter(log_path)
    r = redis.Redis(host="127.0.0.1", port=args["port"])
    processing = f"processing:{index}"
    r.ping()
    log.hello()
    done: list[tuple[bytes, int]] = []  # received, to be acked by the next round trip
    try:
        while not stop_event.is_set():
            pipe = r.pipeline(transaction=False)
            for m, _ in done:
                pipe.lrem(processing, 1, m)
            for _ in range(IN_FLIGHT_PER_CONSUMER):
                pipe.lmove(QUEUE, processing, "RIGHT", "LEFT")
            res = pipe.execute()
            now = time.monotonic_ns()
            for m, t in done:  # acked now
                log.received(m, t)
            done = [(m, now) for m in res[len(done):] if m is not None]
            if done:
                continue
            m = r.blmove(QUEUE, processing, 0.1, "RIGHT", "LEFT")
            if m is not None:
                done = [(m, time.monotonic_ns())]
    finally:
        r.close()
        log.close()


class RedisList(BaseSystem):
    name = "redis"
    consumer_target = staticmethod(consume)

    def start_servers(self, workdir: Path) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise NotAvailable("redis-server not installed (bash bench/install_peers.sh)")
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
        from redis.utils import HIREDIS_AVAILABLE

        self.r = redis.Redis(host="127.0.0.1", port=self.port)
        self.r.delete(QUEUE)
        parser = "hiredis" if HIREDIS_AVAILABLE else "pure-Python parser (hiredis not installed)"
        self.client = (f"redis-py ({parser}), LPUSH one at a time; pipelines of {self.throughput_batch};"
                       f" consumers: acks + {IN_FLIGHT_PER_CONSUMER} LMOVEs per pipeline, BLMOVE when idle")
        self.notes.append(f"redis: {self.client}")

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
