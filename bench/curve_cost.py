"""What CURVE costs on loopback TCP: PUSH/PULL throughput and DEALER/ROUTER round trips,
plain against CURVE (with the mesh's ZAP handler admitting the client), and the cost of
reading the User-Id of each frame (copy=False + frame.get) on the receiving side.

    .venv/bin/python bench/curve_cost.py [--messages 200000] [--size 200] [--trips 5000]

Each side runs in its own thread with its own sockets; the ZAP handler only works during the
handshake, so it is out of the measured loops. Figures are for this machine and its load.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import threading
import time

import zmq

from mesh import sockets
from mesh.trust import Domain, Role, Trust


def _pair(trust: Trust | None, ctx: zmq.Context, server_type: int, client_type: int,
          server_role: Role, client_role: Role, domain: Domain) -> tuple:
    server = ctx.socket(server_type)
    client = ctx.socket(client_type)
    if trust is not None:
        sockets.secure(server, trust.server(ctx, server_role, domain))
    server.bind("tcp://127.0.0.1:0")
    endpoint = server.getsockopt_string(zmq.LAST_ENDPOINT)
    sockets.connect(client, endpoint,
                    trust.client(client_role, server_role) if trust is not None else None)
    return server, client


def throughput(pull: zmq.Socket, push: zmq.Socket, messages: int, size: int,
               user_id: bool) -> float:
    body = b"x" * size
    push.send(body)
    pull.recv()  # the handshake is done before the clock starts
    done = threading.Event()

    def sender() -> None:
        for _ in range(messages):
            push.send(body)
        done.set()

    started = time.perf_counter()
    threading.Thread(target=sender, daemon=True).start()
    if user_id:
        for _ in range(messages):
            frame = pull.recv(copy=False)
            frame.bytes  # noqa: B018 - what FrameReader(with_user_id=True) does per message
            sockets.user_id(frame)
    else:
        for _ in range(messages):
            pull.recv()
    elapsed = time.perf_counter() - started
    done.wait()
    pull.close(linger=0)
    push.close(linger=0)
    return messages / elapsed


def round_trips(router: zmq.Socket, dealer: zmq.Socket, trips: int, size: int) -> list[float]:
    stop = threading.Event()

    def echo() -> None:
        while not stop.is_set():
            if router.poll(100):
                router.send_multipart(router.recv_multipart())

    body = b"x" * size
    thread = threading.Thread(target=echo, daemon=True)
    thread.start()
    dealer.send(body)
    dealer.recv()
    times = []
    for _ in range(trips):
        t0 = time.perf_counter()
        dealer.send(body)
        dealer.recv()
        times.append(time.perf_counter() - t0)
    stop.set()
    thread.join()
    router.close(linger=0)
    dealer.close(linger=0)
    return times


async def main(args: argparse.Namespace) -> None:
    trust = Trust.local(tempfile.mkdtemp(prefix="mesh-bench-keys-"))
    ctx = sockets.new_context()
    sync_ctx = sockets.sync_view(ctx)
    configs = (("plain", None, False), ("curve", trust, False),
               ("curve + User-Id per frame", trust, True))
    runs: dict[str, list[tuple[float, float, float]]] = {name: [] for name, _, _ in configs}
    # Rounds interleave the configurations, so a burst of load from elsewhere on the machine
    # hits all of them; the table shows the median of the rounds.
    for _ in range(args.rounds):
        for name, t, uid in configs:
            # Sockets made here (Trust.server starts the ZAP handler on this loop), handed to a
            # thread once: the loop stays free to answer the handshakes.
            pull, push = _pair(t, sync_ctx, zmq.PULL, zmq.PUSH, Role.HELPER, Role.AI_NODE,
                               Domain.ACKS)
            rate = await asyncio.to_thread(throughput, pull, push, args.messages, args.size, uid)
            router, dealer = _pair(t, sync_ctx, zmq.ROUTER, zmq.DEALER, Role.HELPER, Role.CLIENT,
                                   Domain.INTAKE)
            rtt = await asyncio.to_thread(round_trips, router, dealer, args.trips, args.size)
            rtt_us = sorted(x * 1e6 for x in rtt)
            runs[name].append((rate, statistics.median(rtt_us), rtt_us[int(len(rtt_us) * 0.99)]))
    rows = [(name, *(statistics.median(r[i] for r in runs[name]) for i in range(3)))
            for name, _, _ in configs]
    print(f"{args.size}-byte messages, {args.messages} PUSH/PULL, {args.trips} round trips, "
          f"median of {args.rounds} interleaved rounds")
    print(f"{'link':28} {'PUSH/PULL msg/s':>16} {'RTT p50 us':>11} {'RTT p99 us':>11}")
    for name, rate, p50, p99 in rows:
        print(f"{name:28} {rate:16,.0f} {p50:11.1f} {p99:11.1f}")
    trust.close()
    ctx.term()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--size", type=int, default=200)
    parser.add_argument("--trips", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    asyncio.run(main(parser.parse_args()))
