"""CPU per task, process by process: the mesh (producer, Helper, each AI node) beside NATS
JetStream (producer, nats-server, each consumer), at saturation, in one run.

    python bench/cpu_budget.py [--tasks 50000] [--runs 3] [--profile DIR]

Each system is the row of bench/compare.py (`mesh`: --insecure, as the peers have no TLS;
`nats`: JetStream file storage, publish_async with a window of 1,000; 3 consumer processes with
16 unacked at most each), driven through the harness's throughput phase: its fast client
pattern, until every task is logged by a consumer after its ack. Before and after that phase
the script reads utime + stime of every process from /proc/PID/stat (the producer is this
process: its figure includes the harness's own work of making payloads and reading the
consumer logs, the same for both systems). CPU microseconds per task = CPU time / tasks.

`--profile DIR`: py-spy records the Helper and AI node 0 during the mesh's measured phase of
the first run (DIR/helper.txt, DIR/ai-node.txt: collapsed stacks; DIR/*.svg: flame graphs);
the numbers of that run include py-spy's sampling cost in the profiled processes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from peers import base  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """utime + stime of one process (its threads included), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def self_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def make(name: str):  # noqa: ANN201
    if name == "mesh":
        from peers.mesh import MeshSystem
        return MeshSystem(insecure=True)
    from peers.nats_js import NatsJetStream
    return NatsJetStream()


def measure(name: str, tasks: int, workdir: Path, profile: Path | None) -> dict[str, float]:
    system = make(name)
    system.name = name
    try:
        system.start(workdir)
        system.start_consumers()
        system.throughput(min(tasks, 5000))  # warm-up, discarded
        server = system.servers[0].pid
        roles = {"producer": None, ("Helper" if name == "mesh" else "nats-server"): server}
        label = "AI node" if name == "mesh" else "consumer"
        for i, proc in enumerate(system.consumers):
            roles[f"{label} {i}"] = proc.pid
        spies = []
        if profile is not None:
            spies = _start_profiles(profile, server, system.consumers[0].pid)
        before = {r: (self_cpu_s() if pid is None else cpu_s(pid)) for r, pid in roles.items()}
        rate = system.throughput(tasks)
        after = {r: (self_cpu_s() if pid is None else cpu_s(pid)) for r, pid in roles.items()}
        for spy in spies:
            spy.wait(60)
        out = {r: (after[r] - before[r]) / tasks * 1e6 for r in roles}
        out["throughput"] = rate
        return out
    finally:
        system.stop()


def _start_profiles(directory: Path, helper: int, node: int) -> list[subprocess.Popen]:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    directory.mkdir(parents=True, exist_ok=True)
    procs = []
    for name, pid in (("helper", helper), ("ai-node", node)):
        for fmt, suffix in (("raw", "txt"), ("flamegraph", "svg")):
            procs.append(subprocess.Popen(
                [spy, "record", "--pid", str(pid), "--duration", "4", "--rate", "200",
                 "--nonblocking", "--format", fmt, "-o", str(directory / f"{name}.{suffix}")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    time.sleep(0.5)  # attached before the phase starts
    return procs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--systems", default="mesh,nats")
    parser.add_argument("--profile", type=Path, default=None)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="mesh-cpu-"))
    results: dict[str, list[dict[str, float]]] = {}
    loads = []
    try:
        for run in range(args.runs):
            for name in args.systems.split(","):
                loads.append(os.getloadavg()[0])
                profile = args.profile if (run == 0 and name == "mesh") else None
                results.setdefault(name, []).append(
                    measure(name, args.tasks, root / f"{name}-{run}", profile))
                print(f"run {run + 1} {name}: {results[name][-1]['throughput']:,.0f} tasks/s",
                      file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"CPU per task at saturation, {time.strftime('%Y-%m-%d %H:%M')}, {args.tasks:,} tasks "
          f"per run, median of {args.runs} runs, 1-min load average before each run "
          f"{min(loads):.2f}-{max(loads):.2f}; {os.cpu_count()} cores\n")
    for name, runs in results.items():
        print(f"| {name} process | CPU us per task |")
        print("|---|---:|")
        total = 0.0
        for role in runs[0]:
            if role == "throughput":
                continue
            value = statistics.median(r[role] for r in runs)
            total += value
            print(f"| {role} | {value:.1f} |")
        print(f"| **all processes** | **{total:.1f}** |")
        print(f"| throughput (tasks/s) | {statistics.median(r['throughput'] for r in runs):,.0f} |\n")


if __name__ == "__main__":
    main()
