"""Where a Helper group's accept latency (and CPU) goes, one task at a time, leg by leg.

    python bench/group_probe.py [--tasks 1500] [--gap-us 0] [--nodes 2] [--single]
                                [--threads] [--cpu-in] [--split] [--tree PATH] [--insecure]

Starts a group of 2 (embedded mode, --min-replicas 1) and AI nodes as processes whose hot-path
functions are wrapped to stamp CLOCK_MONOTONIC (one clock for every process on the host) per
record index, submits tasks one at a time with the blocking client, and prints the median
(and p90) of each leg of the path to "accepted":

    client send -> leader has the request -> Append sent (the leader ships the record)
    -> follower wakes (its reader runs) -> follower has the Append -> its fdatasync done
    -> its Ack sent -> leader has the Ack -> answer sent -> client has "accepted"

and the journal rounds run on each member's loop thread (their median includes the
fdatasync; the leader's runs while its record travels). Also the CPU time per task of every
process (--threads: per thread, and its system part), which on a small host says as much as
the legs: every hop and every fdatasync costs CPU in the kernel, and on 2 cores the work of
one process delays the next leg of another. --cpu-in: thread CPU time per task inside the
Helper's and the group's hot functions (nested ones count in each). --split: the mean legs of
the fastest and slowest quarter of the tasks. --single: a Helper alone, same client and
nodes, for comparison (total and CPU only). `--gap-us 0` submits as bench/group_bench.py
does (the next submit right after the answer, while the AI node answers the last one);
the default pause keeps the legs apart. `--tree` runs the nodes from another checkout
(its .venv), for before/after. The wrappers add a little to every leg: the figures say where
the time goes; bench/group_bench.py gives the totals.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import json
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
now = time.monotonic_ns
WARMUP = 300

LEGS = ["client send -> leader has the request", "leader has the request -> Append sent",
        "Append sent -> follower wakes", "follower wakes -> it has the Append",
        "follower has it -> its fdatasync done", "fdatasync done -> Ack sent",
        "Ack sent -> leader has it", "leader has the Ack -> answer sent",
        "answer sent -> client has it"]
TOTAL = "= client send -> accepted"


def run_member(out: str, argv: list[str], cpu_in: bool) -> int:
    """A Helper (a group member: it may lead or follow) with stamps on both sides."""
    import mesh.group as group_module
    import mesh.group_log as group_log_module
    import mesh.helper as helper_module
    import mesh.journal.journal as journal_module
    import mesh.replication as replication_module
    import mesh.sockets as sockets_module
    from mesh import replica_link

    stamps: dict = {"has_request": {}, "index_of": {}, "shipped": {}, "acked": {}, "answered": {},
                    "f_woke": {}, "f_has": {}, "f_synced": {}, "f_ack_sent": {},
                    "rounds_us": [], "refused": 0, "cpu_in": {}}
    atexit.register(lambda: Path(out).write_text(json.dumps(stamps)))

    def wrap(owner, name, make) -> None:  # noqa: ANN001
        setattr(owner, name, make(getattr(owner, name)))

    def on_submit(fn):  # noqa: ANN001, ANN202
        def _on_submit(self, identity, rid, submit):  # noqa: ANN001, ANN202
            t = now()
            fn(self, identity, rid, submit)
            if len(submit.tasks) == 1:
                stamps["has_request"][submit.tasks[0].task_id] = t
        return _on_submit

    def reply(fn):  # noqa: ANN001, ANN202
        def _reply(self, identity, message):  # noqa: ANN001, ANN202
            t = now()
            fn(self, identity, message)
            if message.HasField("submit") and len(message.submit.results) == 1:
                stamps["answered"].setdefault(message.submit.results[0].task_id, t)
        return _reply

    def state_append(fn):  # noqa: ANN001, ANN202
        def _append(self, type, key, payload):  # noqa: A002, ANN001, ANN202
            entry = fn(self, type, key, payload)
            if type == 1 and key and not key.startswith(b"\x00"):  # a TASK record
                stamps["index_of"].setdefault(key.decode(errors="replace"), entry.index)
            return entry
        return _append

    wrap(helper_module.Helper, "_on_submit", on_submit)
    wrap(helper_module.Helper, "_reply", reply)
    wrap(replication_module.LeaderState, "append", state_append)

    encode, decode = replica_link.encode, replica_link.decode
    woke = [0]

    def _encode(msg):  # noqa: ANN001, ANN202
        frame = encode(msg)
        t = now()
        if isinstance(msg, replication_module.Append):
            for e in msg.entries:
                stamps["shipped"].setdefault(str(e.index), t)
        elif isinstance(msg, replication_module.Ack):
            stamps["f_ack_sent"].setdefault(str(msg.durable_index), t)
        return frame

    def _decode(frame):  # noqa: ANN001, ANN202
        t = now()
        msg = decode(frame)
        if isinstance(msg, replication_module.Append):
            for e in msg.entries:
                stamps["f_has"].setdefault(str(e.index), t)
                stamps["f_woke"].setdefault(str(e.index), woke[0])
        elif isinstance(msg, replication_module.Ack):
            stamps["acked"].setdefault(str(msg.durable_index), t)
        return msg

    replica_link.encode, replica_link.decode = _encode, _decode

    def ready(fn):  # noqa: ANN001, ANN202
        def _ready(self):  # noqa: ANN001, ANN202 - when the follower's reader began its batch
            if getattr(self._on_message, "__self__", None).__class__.__name__ == "deque":
                woke[0] = now()
            return fn(self)
        return _ready

    def durable(fn):  # noqa: ANN001, ANN202
        def _durable(self, index):  # noqa: ANN001, ANN202
            stamps["f_synced"].setdefault(str(index), now())
            return fn(self, index)
        return _durable

    def sync_here(fn):  # noqa: ANN001, ANN202
        def _sync_here(self):  # noqa: ANN001, ANN202
            t = now()
            done = fn(self)
            if done:
                stamps["rounds_us"].append((now() - t) / 1000)
            else:
                stamps["refused"] += 1
            return done
        return _sync_here

    wrap(sockets_module.FrameReader, "_ready", ready)
    wrap(replication_module.FollowerState, "durable", durable)
    wrap(journal_module.Journal, "sync_here", sync_here)

    if cpu_in:
        cpu = stamps["cpu_in"]

        def timed(owner, name: str, label: str) -> None:  # noqa: ANN001
            def make(fn):  # noqa: ANN001, ANN202
                def wrapper(*a, **k):  # noqa: ANN002, ANN003, ANN202
                    t = time.thread_time_ns()
                    try:
                        return fn(*a, **k)
                    finally:
                        cpu[label] = cpu.get(label, 0) + time.thread_time_ns() - t
                return wrapper
            wrap(owner, name, make)

        h, gl = helper_module.Helper, group_log_module
        for owner, name, label in (
                (sockets_module.FrameReader, "_ready", "every frame reader"),
                (h, "_on_client_frames", "intake frames (admission, sync, replies)"),
                (h, "_sync_submits", "sync of a submit batch (ship, round here)"),
                (h, "_answer_synced", "answers after a sync (and dispatch)"),
                (h, "_on_ack_frame", "AI node acks"), (h, "_dispatch", "dispatch passes"),
                (h, "_reply", "replies"),
                (group_module.GroupMember, "_on_router_frames", "replication frames (leader)"),
                (group_module.GroupMember, "_pump", "pump (leader ships)"),
                (gl.LeaderJournal, "append", "LeaderJournal.append"),
                (gl.LeaderJournal, "sync_future", "LeaderJournal.sync_future"),
                (gl.LeaderJournal, "commit_advanced", "commit advanced"),
                (gl.FollowerLog, "append_now", "FollowerLog.append_now (round here)"),
                (gl.FollowerLog, "track", "FollowerLog.track"),
                (journal_module.Journal, "append", "Journal.append")):
            timed(owner, name, label)
    from nodes.cli import main
    return main(argv)


def _first_at_least(stamps: dict[str, int], index: int, cache: list) -> int | None:
    """The first stamp of an index >= `index` (an ack covers every index below it)."""
    if not cache:
        cache.extend(sorted((int(k), v) for k, v in stamps.items()))
    for k, v in cache:
        if k >= index:
            return v
    return None


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def drive(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(ROOT))
    from latency_probe import stamped_submits  # the driver only: members import their tree's mesh
    from mesh import Client, SyncClient, make_task
    from mesh.trust import Trust
    from nodes.launch import NodeProcess

    tree = Path(args.tree).resolve()
    work = Path(tempfile.mkdtemp(prefix="mesh-gprobe-"))
    env = {"MESH_LOG_LEVEL": "WARNING", "MESH_KEY_DIR": str(work / "keys")}
    trust = Trust.plain() if args.insecure else Trust.local(work / "keys")
    plain = ["--insecure"] if args.insecure else []
    python = str(tree / ".venv" / "bin" / "python")
    me = [python, str(Path(__file__).resolve()), *(["--cpu-in"] if args.cpu_in else [])]
    disc = f"embedded://{work / 'reg'}"
    lock_dir = work / "groups"
    intake = f"tcp://127.0.0.1:{_port()}"
    members = [("solo", intake)] if args.single else [("g1", intake), ("g2", f"tcp://127.0.0.1:{_port()}")]
    procs = []
    try:
        for member, ep in members:
            grouping = [] if args.single else ["--group", "g", "--group-size", "2",
                                               "--group-lock-dir", str(lock_dir)]
            procs.append(NodeProcess(
                ["--role", "member", "--out", str(work / f"{member}.json"), "--", "helper",
                 "--helper-id", member, "--data-dir", str(work / member), "--discovery", disc,
                 "--intake", ep, *grouping, *plain],
                env=env, log_path=work / f"{member}.log", name=member, cwd=tree, program=me).start())
            if member == "g1":  # g1 leads: wait for it before its follower starts
                deadline = time.monotonic() + 30
                while not (lock_dir / "g.leader").exists():
                    assert time.monotonic() < deadline, "g1 did not lead"
                    time.sleep(0.05)
        for n in range(args.nodes):
            procs.append(NodeProcess(["ai", "--app", "nodes.sample_app:app", "--node-id", f"ai-{n}",
                                      "--discovery", disc, *plain], env=env, name=f"ai-{n}",
                                     cwd=tree, program=[python, "-m", "nodes.cli"]).start())

        async def ready() -> None:
            async with Client(intake, trust=trust, timeout_s=2.0) as client:
                while True:
                    try:
                        results = await client.submit_results([make_task("noop", b"warm")])
                        if results and results[0].code == 1 and (await client.stats())["nodes"] >= args.nodes:
                            return
                    except Exception:  # noqa: BLE001 - not up yet
                        pass
                    await asyncio.sleep(0.1)
        asyncio.run(asyncio.wait_for(ready(), 60))

        def cpu_s() -> dict[str, float]:
            hz = os.sysconf("SC_CLK_TCK")
            out = {"client": sum(os.times()[:2])}
            for proc in procs:
                fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
                out[proc.name] = (int(fields[11]) + int(fields[12])) / hz
                if args.threads:
                    for task_dir in Path(f"/proc/{proc.pid}/task").iterdir():
                        stat = (task_dir / "stat").read_text()
                        name = stat[stat.index("(") + 1:stat.rindex(")")]
                        f = stat.rsplit(")", 1)[1].split()
                        key = f"{proc.name}/{name}"
                        out[key] = out.get(key, 0) + (int(f[11]) + int(f[12])) / hz
                        out[key + " (system)"] = out.get(key + " (system)", 0) + int(f[12]) / hz
            return out

        client = SyncClient(intake, trust=trust)
        cpu_before, wall_start = cpu_s(), time.monotonic()
        sent, accepted, ids = stamped_submits(client, "noop", args.tasks, args.gap_us / 1e6,
                                              WARMUP)
        cpu_after, wall = cpu_s(), time.monotonic() - wall_start
        client.close()
    finally:
        for proc in reversed(procs):
            proc.stop()  # SIGTERM first: the stamps are written at exit
        trust.close()
    try:
        report(args, work, members, ids, sent, accepted, cpu_before, cpu_after, wall)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(args: argparse.Namespace, work: Path, members: list, ids: list, sent: dict,  # noqa: PLR0913
           accepted: dict, cpu_before: dict, cpu_after: dict, wall: float) -> None:
    tree = Path(args.tree).resolve()
    count = WARMUP + args.tasks
    busy = sum(cpu_after[k] - cpu_before[k] for k in cpu_after if "/" not in k) / wall
    cpu_line = ", ".join(f"{k} {(cpu_after[k] - cpu_before.get(k, 0)) / count * 1e6:.0f}"
                         for k in cpu_after if cpu_after[k] - cpu_before.get(k, 0) > 0)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    setup = (f"{args.tasks} tasks one at a time, {args.gap_us} us apart, {args.nodes} AI node(s), "
             f"{'plain links' if args.insecure else 'CURVE links'}, tree {tree}, load average {load}")
    runs = {name: json.loads((work / f"{name}.json").read_text()) for name, _ in members}
    if args.single:
        total = [(accepted[t] - sent[t]) / 1000 for t in ids]
        print(f"single Helper: {setup}")
        print(f"  accept p50 {statistics.median(total):.1f} us, p90 {_p90(total):.1f} us")
    else:
        print(f"group of 2: {setup}; medians (p90) in us")
        lead, fol = runs["g1"], runs["g2"]
        deltas: dict[str, list[float]] = {name: [] for name in [*LEGS, TOTAL]}
        caches: dict[str, list] = {"synced": [], "ack_sent": [], "acked": []}
        for tid in ids:
            index = lead["index_of"].get(tid)
            if index is None:
                continue
            key = str(index)
            points = [sent.get(tid), lead["has_request"].get(tid), lead["shipped"].get(key),
                      fol["f_woke"].get(key), fol["f_has"].get(key),
                      _first_at_least(fol["f_synced"], index, caches["synced"]),
                      _first_at_least(fol["f_ack_sent"], index, caches["ack_sent"]),
                      _first_at_least(lead["acked"], index, caches["acked"]),
                      lead["answered"].get(tid), accepted.get(tid)]
            if any(p is None for p in points):
                continue
            for name, a, b in zip(LEGS, points, points[1:]):
                deltas[name].append((b - a) / 1000)
            deltas[TOTAL].append((points[-1] - points[0]) / 1000)
        for name, values in deltas.items():
            if values:
                print(f"  {name:42s} {statistics.median(values):8.1f} ({_p90(values):7.1f})  n={len(values)}")
        if args.split and deltas[TOTAL]:
            rows = sorted(zip(*deltas.values()), key=lambda r: r[-1])
            q = max(1, len(rows) // 4)
            for label, part in (("fastest quarter", rows[:q]), ("slowest quarter", rows[-q:])):
                print(f"  {label}, mean of each leg: "
                      + ", ".join(f"{statistics.mean(col):.0f}" for col in zip(*part)))
    for name, st in runs.items():
        rounds = st["rounds_us"][-args.tasks:]
        print(f"  {name}: journal rounds on the loop thread {len(st['rounds_us'])} (median "
              f"{statistics.median(rounds) if rounds else 0:.0f} us), left to the flusher {st['refused']}")
    print(f"  CPU per task (us): {cpu_line}; busy {busy:.2f} of {os.cpu_count()} cores")
    for name, st in runs.items():
        for label, ns in sorted(st["cpu_in"].items(), key=lambda kv: -kv[1]):
            print(f"  {name} CPU in {label}: {ns / 1000 / count:.1f} us per task")


def _p90(values: list[float]) -> float:
    return sorted(values)[int(len(values) * 0.9)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=1500)
    parser.add_argument("--gap-us", type=int, default=500,
                        help="pause between submits (0: as bench/group_bench.py)")
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--single", action="store_true", help="a Helper alone, for comparison")
    parser.add_argument("--threads", action="store_true", help="CPU per thread as well")
    parser.add_argument("--cpu-in", action="store_true", help="thread CPU in the hot functions")
    parser.add_argument("--split", action="store_true", help="legs of the fastest/slowest quarter")
    parser.add_argument("--insecure", action="store_true", help="plain links (no CURVE)")
    parser.add_argument("--tree", default=str(ROOT), help="the checkout whose .venv runs the nodes")
    parser.add_argument("--role", choices=("member",), help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.role == "member":
        sys.exit(run_member(args.out, [a for a in rest if a != "--"], args.cpu_in))
    drive(args)


if __name__ == "__main__":
    main()
