"""What CURVE on every link costs the mesh: the same mesh_bench run with and without it.

    python bench/trust_cost.py [--runs 3] [--quick]

Runs `bench/mesh_bench.py`'s measurement alternately with CURVE (the default) and with
`--insecure`, `--runs` times each (interleaved, so a noisy neighbour hurts both alike), and
prints the medians of accept and end-to-end p50/p99 and of throughput, with the differences
the issue sets targets for: at most 15% less throughput and at most 50 us more p50.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import mesh_bench  # noqa: E402


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--tasks", type=int, default=50_000)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.samples, args.tasks = 1, 200, 10_000
    figures: dict[str, dict[str, list[float]]] = {"curve": {}, "insecure": {}}
    for run in range(args.runs):
        order = ("curve", "insecure") if run % 2 == 0 else ("insecure", "curve")
        for mode in order:
            ns = argparse.Namespace(nodes=args.nodes, samples=args.samples, tasks=args.tasks,
                                    submitters=4, batch=256, fsync="batch",
                                    dispatch_before_sync=False, insecure=mode == "insecure")
            print(f"run {run + 1} {mode}: load average {_load()}", flush=True)
            r = asyncio.run(mesh_bench.run(ns))
            f = figures[mode]
            for name, values in (("accept", r["accept_s"]), ("e2e", r["e2e_s"])):
                f.setdefault(f"{name}_p50", []).append(mesh_bench.pct(values, 50) * 1e6)
                f.setdefault(f"{name}_p99", []).append(mesh_bench.pct(values, 99) * 1e6)
            f.setdefault("throughput", []).append(r["throughput"])
    med = {mode: {k: statistics.median(v) for k, v in f.items()} for mode, f in figures.items()}
    c, p = med["curve"], med["insecure"]
    print(f"\nCURVE vs --insecure, medians of {args.runs} interleaved runs, {os.cpu_count()} cores")
    print("| figure | --insecure | CURVE | difference |")
    print("|---|---:|---:|---:|")
    for key in ("accept_p50", "accept_p99", "e2e_p50", "e2e_p99"):
        print(f"| {key.replace('_', ' ')} | {p[key]:.0f} us | {c[key]:.0f} us | "
              f"{c[key] - p[key]:+.0f} us |")
    ratio = c["throughput"] / p["throughput"]
    print(f"| throughput | {p['throughput']:,.0f}/s | {c['throughput']:,.0f}/s | "
          f"{(ratio - 1) * 100:+.1f}% |")
    print(f"\ntargets: throughput >= -15% ({'met' if ratio >= 0.85 else 'missed'}), "
          f"accept p50 <= +50 us ({'met' if c['accept_p50'] - p['accept_p50'] <= 50 else 'missed'}), "
          f"e2e p50 <= +50 us ({'met' if c['e2e_p50'] - p['e2e_p50'] <= 50 else 'missed'})")


if __name__ == "__main__":
    main()
