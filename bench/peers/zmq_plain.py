"""Plain ZeroMQ PUSH/PULL: no journal, no acks. The floor row: what the wire alone costs.

The producer PUSH binds; each of the 3 consumers PULLs with RCVHWM=16 (≈16 in flight each;
ZeroMQ also buffers in the kernel socket buffers, so it is not an exact bound). Nothing is
durable, so the submit-to-durable column is n/a; `publish_window` returns once the
messages are queued in the producer's socket.
"""

from __future__ import annotations

import time
from pathlib import Path

import zmq

from .base import BaseSystem, IN_FLIGHT_PER_CONSUMER, Reporter


def consume(index: int, args: dict, log_path: str, stop_event) -> None:
    rep = Reporter(log_path)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PULL)
    sock.setsockopt(zmq.RCVHWM, IN_FLIGHT_PER_CONSUMER)  # bounded prefetch, like the brokers' 16
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(args["addr"])
    rep.hello()
    try:
        while not stop_event.is_set():
            if not sock.poll(100):
                continue
            while True:
                try:
                    payload = sock.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                rep.received(payload, time.monotonic_ns())
    finally:
        sock.close()
        ctx.term()
        rep.close()


class ZmqPlain(BaseSystem):
    name = "zmq"
    durable = False
    consumer_target = staticmethod(consume)

    def start_servers(self, workdir: Path) -> None:
        self.server_version = f"libzmq {zmq.zmq_version()}, pyzmq {zmq.__version__}"
        self.durability = "none (no journal, no acks)"
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.PUSH)
        self.sock.setsockopt(zmq.LINGER, 0)  # benchmark data: nothing to save at close
        self.sock.setsockopt(zmq.SNDHWM, 10_000)
        port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.addr = f"tcp://127.0.0.1:{port}"
        self.notes.append("zmq: no journal and no acks; submit-to-durable is n/a; throughput is to consumer receipt")

    def consumer_args(self) -> dict:
        return {"addr": self.addr}

    def publish_window(self, payloads: list[bytes]) -> None:
        for p in payloads:
            self.sock.send(p)

    def submit_latency(self, n: int) -> list[int]:
        return []  # nothing is ever durable

    def close_producer(self) -> None:
        if getattr(self, "sock", None) is not None:
            self.sock.close()
            self.ctx.term()
            self.sock = None


def make() -> ZmqPlain:
    return ZmqPlain()
