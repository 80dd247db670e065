"""Processes and handlers for the alert-lane integration tests and bench/alert_latency.py.

- `python -m tests.integration.alert_procs publisher --publisher-id P --data-dir D [--pub E]
  [--replay E] [--keys DIR | --insecure]`: an AlertPublisher with the helper key of the local
  store (as a Helper's), driven by stdin lines `publish N [KIND [SEVERITY [PACE_MS [SOURCE]]]]`;
  prints `READY {...}` and `PUBLISHED <last seq>` after each command; `flush` waits until the
  journal holds them (`FLUSHED <last seq>`); SIGTERM stops it cleanly.
- `python -m tests.integration.alert_procs load [--seconds S]`: a message-heavy load, a PUSH/PULL
  pair in two processes hammering loopback (stands in for a saturated task lane).
- `record`: a notifier handler (`--handler tests.integration.alert_procs:record`) appending
  `publisher_id seq latency_us` per alert to the file in $MESH_TEST_ALERT_OUT.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import signal
import sys
import time

_out = None


async def record(alert) -> None:  # noqa: ANN001 - a wire.Alert
    global _out
    if _out is None:
        _out = open(os.environ["MESH_TEST_ALERT_OUT"], "a", buffering=1)  # noqa: SIM115
    latency_us = (time.time_ns() - alert.time_ns) // 1000
    _out.write(f"{alert.publisher_id} {alert.seq} {latency_us}\n")


async def _publisher(args: argparse.Namespace) -> int:
    import logging

    from mesh.alerts import AlertPublisher, AlertPublisherSettings
    from nodes import keys

    logging.basicConfig(level=os.environ.get("MESH_LOG_LEVEL", "WARNING"))
    pub = AlertPublisher(AlertPublisherSettings(
        publisher_id=args.publisher_id, data_dir=args.data_dir, pub_endpoint=args.pub,
        replay_endpoint=args.replay, state_interval_s=args.state_interval),
        trust=keys.trust_from_args(args))
    await pub.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    lines: asyncio.Queue[str] = asyncio.Queue()

    def read_stdin() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(lines.put_nowait, line)
        loop.call_soon_threadsafe(stop.set)

    import threading
    threading.Thread(target=read_stdin, daemon=True).start()
    print("READY " + json.dumps({"role": "alert-publisher", "pub": pub.pub_endpoint,
                                 "replay": pub.replay_endpoint, "epoch": pub.epoch,
                                 "next_seq": pub.last_seq + 1, "curve_key": pub.public_key}),
          flush=True)
    while not stop.is_set():
        get = asyncio.ensure_future(lines.get())
        stopped = asyncio.ensure_future(stop.wait())
        await asyncio.wait({get, stopped}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if not get.done():
            get.cancel()
            break
        words = get.result().split()
        if words == ["flush"]:
            await pub.flush()
            print(f"FLUSHED {pub.last_seq}", flush=True)
            continue
        if not words or words[0] != "publish":
            continue
        count = int(words[1])
        kind = words[2] if len(words) > 2 else "equipment.fault"
        severity = words[3] if len(words) > 3 else "critical"
        pace_s = float(words[4]) / 1000 if len(words) > 4 else 0.0
        # a source with escapes: "\\n" is a newline, as a forged node id would carry one
        source = words[5].encode().decode("unicode_escape") if len(words) > 5 else "press-7"
        for i in range(count):
            pub.publish(kind, severity, source, b"payload", {"i": str(i)})
            if pace_s:
                await asyncio.sleep(pace_s)
            elif i % 500 == 499:
                await asyncio.sleep(0)
        print(f"PUBLISHED {pub.last_seq}", flush=True)
    await pub.stop()
    return 0


def _push(endpoint: str, seconds: float) -> None:
    import zmq
    ctx = zmq.Context()
    s = ctx.socket(zmq.PUSH)
    s.setsockopt(zmq.SNDHWM, 10_000)
    s.connect(endpoint)
    msg = b"t" * 256
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for _ in range(1000):
            s.send(msg)
    s.close(linger=0)
    ctx.term()


def _load(args: argparse.Namespace) -> int:
    import zmq
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    pusher = multiprocessing.get_context("spawn").Process(
        target=_push, args=(f"tcp://127.0.0.1:{port}", args.seconds), daemon=True)
    pusher.start()
    print("READY " + json.dumps({"role": "load", "port": port}), flush=True)
    signal.signal(signal.SIGTERM, lambda *_: (pusher.kill(), os._exit(0)))
    received = 0
    end = time.monotonic() + args.seconds
    while time.monotonic() < end:
        if pull.poll(100):
            for _ in range(1000):
                try:
                    pull.recv(zmq.NOBLOCK)
                    received += 1
                except zmq.Again:
                    break
    pusher.kill()
    pull.close(linger=0)
    ctx.term()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="role", required=True)
    p = sub.add_parser("publisher")
    p.add_argument("--publisher-id", required=True)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--pub", default="tcp://127.0.0.1:0")
    p.add_argument("--replay", default="tcp://127.0.0.1:0")
    p.add_argument("--state-interval", type=float, default=0.2)
    from nodes import keys
    keys.add_trust_arguments(p)
    load = sub.add_parser("load")
    load.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    if args.role == "publisher":
        return asyncio.run(_publisher(args))
    return _load(args)


if __name__ == "__main__":
    raise SystemExit(main())
