"""Where the time of one task goes, one at a time: submit -> accepted and submit -> handler.

    python bench/latency_probe.py [--tasks 2000] [--early]

Starts a Helper and one AI node as processes whose hot-path functions are wrapped to stamp
CLOCK_MONOTONIC (the same clock in every process) per task id, submits tasks one at a time
with the blocking client, and prints the median of each leg:

    client send -> Helper has the request -> task sent to the AI node -> AI node has it
    -> handler starts;   Helper has the request -> answer sent -> client has "accepted"

plus the Helper's CPU time per request (thread_time) and how often the journal round ran on
the loop thread (Journal.sync_here). The wrappers add a little to every leg; the figures are
for finding where the time goes, the benchmarks (mesh_bench.py, compare.py) for the totals.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

now = time.monotonic_ns
WARMUP = 300


def stamped_submits(client, kind: str, count: int, gap_s: float,  # noqa: ANN001
                    warmup: int = WARMUP) -> tuple[dict, dict, list]:
    """Submit `warmup` + `count` tasks of `kind` one at a time through a SyncClient, `gap_s`
    apart; returns when each was sent and accepted (monotonic ns, by task id) and the ids
    after the warm-up. (bench/group_probe.py drives its members the same way.)"""
    from mesh import make_task
    sent, accepted, ids = {}, {}, []
    for i in range(warmup + count):
        task = make_task(kind, b"x" * 200)
        t = now()
        client.submit_many([task])
        accepted[task.task_id] = now()
        sent[task.task_id] = t
        if i >= warmup:
            ids.append(task.task_id)
        if gap_s:
            time.sleep(gap_s)
    return sent, accepted, ids


def _dump_at_exit(stamps: dict, path: str) -> None:
    atexit.register(lambda: Path(path).write_text(json.dumps(stamps)))


def run_helper(out: str, argv: list[str]) -> int:
    import mesh.helper as helper_module
    import mesh.journal.journal as journal_module
    from mesh import wire

    stamps: dict = {"has_request": {}, "sent": {}, "answered": {}, "cpu_us": [], "inline": []}
    helper_cls = helper_module.Helper

    on_submit = helper_cls._on_submit

    def _on_submit(self, identity, rid, submit):  # noqa: ANN001, ANN202
        t, cpu = now(), time.thread_time_ns()
        on_submit(self, identity, rid, submit)
        stamps["cpu_us"].append((time.thread_time_ns() - cpu) / 1000)
        if len(submit.tasks) == 1:
            stamps["has_request"][submit.tasks[0].task_id] = t

    send_noblock = helper_module._send_noblock

    def _send(sock, frame):  # noqa: ANN001, ANN202
        ok = send_noblock(sock, frame)
        t = now()
        if ok:
            for dispatch in wire.decode_dispatch_batch(frame).dispatches:
                stamps["sent"].setdefault(dispatch.task.task_id, t)
        return ok

    reply = helper_cls._reply

    def _reply(self, identity, message):  # noqa: ANN001, ANN202
        t = now()
        reply(self, identity, message)
        if message.HasField("submit") and len(message.submit.results) == 1:
            stamps["answered"][message.submit.results[0].task_id] = t

    sync_here = journal_module.Journal.sync_here

    def _sync_here(self):  # noqa: ANN001, ANN202
        done = sync_here(self)
        stamps["inline"].append(int(done))
        return done

    helper_cls._on_submit, helper_cls._reply = _on_submit, _reply
    helper_module._send_noblock = _send
    journal_module.Journal.sync_here = _sync_here
    _dump_at_exit(stamps, out)
    from nodes.cli import main
    return main(argv)


def run_ai(out: str, acks: str, insecure: bool = False) -> None:
    import mesh.ai_node as ai_module
    from mesh import App, wire
    from mesh.settings import AINodeSettings
    from mesh.trust import Trust

    stamps: dict = {"has_task": {}, "handler": {}}
    on_frame = ai_module.AINode._on_frame

    def _on_frame(self, frame, *rest):  # noqa: ANN001, ANN002, ANN202 - rest: the sender's key
        t = now()
        on_frame(self, frame, *rest)
        for dispatch in wire.decode_dispatch_batch(frame).dispatches:
            stamps["has_task"].setdefault(dispatch.task.task_id, t)

    ai_module.AINode._on_frame = _on_frame
    _dump_at_exit(stamps, out)
    app = App("probe")

    @app.task("probe")
    async def probe(payload: bytes, ctx) -> bytes:  # noqa: ANN001
        stamps["handler"].setdefault(ctx.task_id, now())
        return b""

    async def main() -> None:
        # Trust: plain with --insecure, else the local store with a key of the node's own
        trust = Trust.plain() if insecure else None
        node = ai_module.AINode(AINodeSettings(node_id="probe-ai"), app, helpers=[acks],
                                trust=trust)
        await node.start()
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(15, stop.set)
        await stop.wait()
        await node.stop()

    from nodes.runtime import run
    run(main())


def _median_us(a: dict, b: dict, ids: list[str]) -> float:
    deltas = [b[i] - a[i] for i in ids if i in a and i in b]
    return statistics.median(deltas) / 1000 if deltas else float("nan")


def drive(tasks: int, early: bool, insecure: bool = False) -> None:
    from mesh import Client, SyncClient
    from mesh.trust import Trust

    trust = Trust.plain() if insecure else Trust.default()  # the Helper's: --insecure or the local store

    work = Path(tempfile.mkdtemp(prefix="mesh-probe-"))
    env = dict(os.environ, MESH_LOG_LEVEL="WARNING", PYTHONPATH=str(ROOT))
    helper_log = work / "helper.log"
    me = [sys.executable, str(Path(__file__).resolve())]
    procs = []
    try:
        with open(helper_log, "w") as log:
            procs.append(subprocess.Popen(
                me + ["--role", "helper", "--out", str(work / "helper.json"), "--", "helper",
                      "--data-dir", str(work / "h"), "--discovery", f"embedded://{work / 'reg'}",
                      "--metrics-port", "0"] + (["--dispatch-before-sync"] if early else [])
                + (["--insecure"] if insecure else []),
                stdout=log, stderr=subprocess.STDOUT, env=env))
        ready = None
        deadline = time.monotonic() + 30
        while ready is None:
            assert time.monotonic() < deadline, f"no READY from the Helper: {helper_log.read_text()}"
            time.sleep(0.05)
            for line in helper_log.read_text().splitlines():
                if line.startswith("READY "):
                    ready = json.loads(line[6:])
        procs.append(subprocess.Popen(
            me + ["--role", "ai", "--out", str(work / "ai.json"), "--acks", ready["acks"]]
            + (["--insecure"] if insecure else []), env=env))

        async def node_up() -> None:
            async with Client(ready["intake"], trust=trust) as client:
                while (await client.stats())["nodes"] < 1:
                    await asyncio.sleep(0.05)
        asyncio.run(asyncio.wait_for(node_up(), 30))

        client = SyncClient(ready["intake"], trust=trust)
        sent, accepted, ids = stamped_submits(client, "probe", tasks, 0.0005)
        time.sleep(0.3)  # the last handler starts
        client.close()
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)
    helper = json.loads((work / "helper.json").read_text())
    ai = json.loads((work / "ai.json").read_text())
    legs = [
        ("client send -> Helper has the request", sent, helper["has_request"]),
        ("Helper has the request -> task sent", helper["has_request"], helper["sent"]),
        ("task sent -> AI node has it", helper["sent"], ai["has_task"]),
        ("AI node has it -> handler starts", ai["has_task"], ai["handler"]),
        ("= client send -> handler starts", sent, ai["handler"]),
        ("Helper has the request -> answer sent", helper["has_request"], helper["answered"]),
        ("answer sent -> client has it", helper["answered"], accepted),
        ("= client send -> accepted", sent, accepted),
    ]
    mode = ("dispatch during sync" if early else "dispatch after sync") + (
        ", plain links" if insecure else ", CURVE links")
    print(f"latency probe: {tasks} tasks one at a time, {mode}, medians in us")
    for name, a, b in legs:
        print(f"  {name:40s} {_median_us(a, b, ids):8.1f}")
    cpu = helper["cpu_us"][-tasks:]
    inline = helper["inline"]
    print(f"  Helper CPU per request (thread time)     {statistics.median(cpu):8.1f}")
    print(f"  journal rounds on the loop thread: {sum(inline)} of {len(inline)} batch syncs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--early", action="store_true", help="--dispatch-before-sync")
    parser.add_argument("--insecure", action="store_true",
                        help="plain links everywhere (as the compared peers), not CURVE")
    parser.add_argument("--role", choices=("helper", "ai"), help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--acks", help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.role == "helper":
        sys.exit(run_helper(args.out, [a for a in rest if a != "--"]))
    if args.role == "ai":
        run_ai(args.out, args.acks, args.insecure)
        return
    drive(args.tasks, args.early, args.insecure)


if __name__ == "__main__":
    main()
