"""Side-by-side benchmark: the same durable task workload on every system, one table.

    python bench/compare.py                      # all rows, 3 runs each, interleaved
    python bench/compare.py --quick              # 1 run, fewer tasks: does everything work?
    python bench/compare.py --systems redis,zmq --runs 5

Every system is driven the way its own docs recommend (see the header of each
bench/peers/<system>.py). Runs are interleaved: run 1 of every system, then run 2 of every
system, ..., the order rotated by one each round; every run starts its server fresh, and the
1-minute load average is recorded before it. One run of one system:
  start the server and the producer (no consumers) -> submit latency, one at a time;
  start 3 consumer processes (16 unacked at most each) -> warm-up, submit->consumer latency
  (one task every 3 ms), throughput (the system's fast client pattern), latency at a fixed
  offered load (--rate).
Each figure is the median over --runs runs of the per-run statistic. Results go to
bench/results/latest.{md,json,png}; raw samples to bench/results/raw/ (not committed).
See bench/README.md for how to read the table and bench/peers/base.py for the interface.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import importlib.metadata
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from peers import base  # noqa: E402

# Rows: name -> (factory "module:function" under bench/peers, keyword arguments). A variant of
# a system is one more entry, e.g. "mesh-fsync-always": ("peers.mesh:make", {"insecure": True,
# "helper_args": ["--fsync", "always"]}). Rows whose name starts with "mesh" get a
# relative table. The peers run without TLS, so the mesh rows compared with them run plain
# (--insecure); `mesh-curve` is the mesh as installed (CURVE on every link) beside them.
ROWS: dict[str, tuple[str, dict]] = {
    "mesh": ("peers.mesh:make", {"insecure": True}),
    "mesh-early": ("peers.mesh:make", {"insecure": True, "early": True}),
    "mesh-curve": ("peers.mesh:make", {}),
    "rabbitmq": ("peers.rabbitmq:make", {}),
    "nats": ("peers.nats_js:make", {}),
    "nats-fsync": ("peers.nats_js:make_fsync", {}),
    "redis": ("peers.redis_list:make", {}),
    "zmq": ("peers.zmq_plain:make", {}),
}
SYSTEMS = ROWS  # the old name
DEFAULT_ORDER = list(ROWS)

FULL = dict(durable=1000, e2e=1000, throughput=20000, paced=5000, warmup=1000, runs=3)
QUICK = dict(durable=200, e2e=200, throughput=3000, paced=1000, warmup=200, runs=1)
DEFAULT_RATE = 1000.0  # tasks/s for the paced figure: well below every durable row's throughput

CDF_QS = [0, 1, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 97.5, 99, 99.5, 99.9, 100]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- machine


def sh(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def machine_info(workdir: Path) -> dict:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    df = sh(["df", "-T", str(workdir)]).splitlines()
    device, fstype = (df[-1].split()[0], df[-1].split()[1]) if len(df) > 1 else ("?", "?")
    disk = f"{device} ({fstype})"
    name = Path(device).name.rstrip("0123456789") if device.startswith("/dev/") else ""
    rot = Path(f"/sys/block/{name}/queue/rotational")
    if name and rot.exists():
        disk += ", kernel says rotational" if rot.read_text().strip() == "1" else ", non-rotational"
    mem_kib = 0
    try:
        mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "kernel": platform.release(),
        "mem_gib": round(mem_kib / 1024 / 1024, 1),
        "disk": disk,
        "python": platform.python_version(),
    }


def client_versions() -> dict:
    out = {}
    for d in ("pyzmq", "pika", "nats-py", "uvloop", "redis", "hiredis", "matplotlib"):
        try:
            out[d] = importlib.metadata.version(d)
        except importlib.metadata.PackageNotFoundError:
            out[d] = None
    return out


# --------------------------------------------------------------------------- running


def load(name: str):
    """The system object, or raise NotAvailable saying why it cannot be built."""
    if name not in ROWS:
        raise base.NotAvailable(f"unknown system {name!r}; known: {', '.join(ROWS)}")
    spec, kwargs = ROWS[name]
    modname, factory = spec.split(":")
    try:
        mod = importlib.import_module(modname)
    except ImportError as exc:
        raise base.NotAvailable(f"cannot import {modname}: {exc}") from None
    system = getattr(mod, factory)(**kwargs)
    system.name = name
    return system


def oneline(text: str, limit: int = 240) -> str:
    """A reason fit for one table cell: one line, no pipes, bounded length."""
    text = " ".join(str(text).split()).replace("|", "/")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def figure(fn, *args):
    """Run one measurement; return (value, None) or (None, short reason)."""
    try:
        return fn(*args), None
    except base.PhaseTimeout as exc:
        return None, oneline(f"timeout: {exc}")
    except Exception as exc:  # one broken figure must not lose the rest of the row
        traceback.print_exc()
        return None, oneline(f"error: {type(exc).__name__}: {exc}")


class Row:
    def __init__(self, name: str):
        self.name = name
        self.available = True
        self.reason = ""
        self.version = ""
        self.durability = ""
        self.durable = True
        self.notes: list[str] = []
        self.runs: dict[str, list] = {"durable": [], "e2e": [], "throughput": [], "paced": []}
        self.errors: dict[str, str] = {}
        self.rss_kib: int | None = None
        self.loads: list[float] = []  # 1-minute load average before each run
        self.e2e_samples: list[list[int]] = []  # one list per run
        self.paced_samples: list[list[int]] = []

    def absorb(self, system) -> None:
        self.version = getattr(system, "server_version", "") or self.version
        self.durable = getattr(system, "durable", True)
        self.durability = getattr(system, "durability", "") or self.durability
        for n in getattr(system, "notes", []):
            if n not in self.notes:
                self.notes.append(n)

    def note_rss(self, system) -> None:
        try:
            pids = system.server_pids()
        except Exception:
            return
        kib = base.peak_rss_kib(pids) if pids else None
        if kib is not None:
            self.rss_kib = max(self.rss_kib or 0, kib)


def run_once(row: Row, root: Path, r: int, sizes: dict, rate: float) -> None:
    """One run of one system on a freshly started server: every figure once."""
    if not row.available:
        return
    try:
        system = load(row.name)
    except base.NotAvailable as exc:
        row.available, row.reason = False, oneline(exc)
        return
    row.loads.append(round(os.getloadavg()[0], 2))
    workdir = Path(tempfile.mkdtemp(prefix=f"{row.name}-run{r + 1}-", dir=root))
    t0 = time.monotonic()
    try:
        system.start(workdir)
    except Exception as exc:
        row.available, row.reason = False, oneline(f"{type(exc).__name__}: {exc}", 300)
        row.absorb(system)
        log(f"{row.name}: not available: {row.reason}")
        shutil.rmtree(workdir, ignore_errors=True)
        return
    log(f"{row.name}: run {r + 1}: started in {time.monotonic() - t0:.1f}s (load {row.loads[-1]})")
    try:
        row.absorb(system)

        def measured(key: str, fn, *args) -> None:
            if row.errors.get(key, "").startswith("timeout"):
                return  # timed out once: do not spend another deadline on it
            val, err = figure(fn, *args)
            if err:
                row.errors[key] = err
                log(f"{row.name}: {key} run {r + 1}: {err}")
            elif key == "throughput":
                row.runs[key].append(val)
                log(f"{row.name}: throughput run {r + 1}: {val:,.0f} tasks/s")
            else:
                row.runs[key].append(summarize(val))
                if key == "e2e":
                    row.e2e_samples.append(val)
                if key == "paced":
                    row.paced_samples.append(val)
                if val:
                    log(f"{row.name}: {key} run {r + 1}: p50 {base.percentile(val, 50) / 1e6:.3f} ms"
                        f" p99 {base.percentile(val, 99) / 1e6:.3f} ms")

        figure(system.submit_latency, max(1, sizes["warmup"] // 5))  # connections, caches; discarded
        measured("durable", system.submit_latency, sizes["durable"])  # no consumers attached
        system.start_consumers()  # and drains the backlog the submit latency left
        figure(system.throughput, sizes["warmup"])  # warm-up with consumers; discarded
        measured("e2e", system.e2e_latency, sizes["e2e"])
        measured("throughput", system.throughput, sizes["throughput"])
        measured("paced", system.paced, rate, sizes["paced"])
        row.note_rss(system)
    except Exception as exc:
        traceback.print_exc()
        row.errors.setdefault("run", oneline(f"run {r + 1}: {type(exc).__name__}: {exc}"))
        log(f"{row.name}: run {r + 1} failed: {exc}")
    finally:
        system.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        log(f"{row.name}: run {r + 1}: stopped")


def summarize(samples: list[int]) -> dict:
    return {"n": len(samples), "p50_ns": base.percentile(samples, 50), "p99_ns": base.percentile(samples, 99)}


# --------------------------------------------------------------------------- results


FIGS = [  # key, column header, lower_is_better
    ("durable_p50_ms", "submit→durable p50 ms (no consumers)", True),
    ("durable_p99_ms", "submit→durable p99 ms (no consumers)", True),
    ("e2e_p50_ms", "submit→consumer p50 ms", True),
    ("e2e_p99_ms", "submit→consumer p99 ms", True),
    ("throughput", "durable throughput tasks/s (fast client)", False),
    ("paced_p50_ms", "p50 @ {rate} ms", True),
    ("paced_p99_ms", "p99 @ {rate} ms", True),
    ("rss_mib", "broker peak RSS MiB", True),
]


def row_figures(row: Row) -> dict:
    def med(key: str, stat: str):
        vals = [r[stat] for r in row.runs[key] if r["n"]]
        return base.median(vals) / 1e6 if vals else None

    tp = base.median(row.runs["throughput"]) if row.runs["throughput"] else None
    return {
        "durable_p50_ms": med("durable", "p50_ns"),
        "durable_p99_ms": med("durable", "p99_ns"),
        "e2e_p50_ms": med("e2e", "p50_ns"),
        "e2e_p99_ms": med("e2e", "p99_ns"),
        "throughput": tp,
        "paced_p50_ms": med("paced", "p50_ns"),
        "paced_p99_ms": med("paced", "p99_ns"),
        "rss_mib": row.rss_kib / 1024 if row.rss_kib else None,
    }


def fmt(key: str, v) -> str:
    if v is None:
        return "—"
    if key == "throughput":
        return f"{v:,.0f}"
    if key == "rss_mib":
        return f"{v:,.0f}"
    return f"{v:.3f}" if v < 1 else f"{v:.2f}" if v < 10 else f"{v:.1f}"


def cell(row: Row, figs: dict, key: str) -> str:
    v = figs[key]
    if v is not None:
        return fmt(key, v)
    if key.startswith("durable") and not row.durable:
        return "n/a (no journal)"
    if key == "rss_mib" and row.available:
        return "n/a (no broker)"
    for prefix, ek in (("durable", "durable"), ("e2e", "e2e"), ("throughput", "throughput"), ("paced", "paced")):
        if key.startswith(prefix) and ek in row.errors:
            return row.errors[ek].split(":")[0]  # "timeout" / "error"; full text in notes
    return "—"


def render(rows: list[Row], rate: float | None, fsync: dict, meta: dict) -> str:
    rate_s = f"{rate:,.0f}/s" if rate else "fixed load"
    heads = [h.format(rate=rate_s) for _, h, _ in FIGS]
    lines = ["| system | submit ack means | " + " | ".join(heads) + " |", "|---" * (len(heads) + 2) + "|"]
    figs_by = {}
    for row in rows:
        label = f"{row.name}"
        if not row.available:
            lines.append(f"| {label} | not available: {row.reason} |" + " |" * len(heads))
            continue
        figs_by[row.name] = figs = row_figures(row)
        lines.append(f"| {label} | {row.durability or '—'} | " + " | ".join(cell(row, figs, k) for k, _, _ in FIGS) + " |")
    lines.append(f"| raw disk | 256 B append + fdatasync | {fmt('', fsync['p50_ms'])} | {fmt('', fsync['p99_ms'])} |"
                 + " — |" * (len(heads) - 2))

    out = ["\n".join(lines)]
    peers = [r for r in rows if r.available and not r.name.startswith("mesh")]
    for name in [r.name for r in rows if r.name.startswith("mesh")]:  # one table per mesh row
        mesh = figs_by.get(name)
        if not mesh or not peers:
            continue
        rl = [f"| {name} vs | " + " | ".join(heads) + " |", "|---" * (len(heads) + 1) + "|"]
        for r in peers:
            cells = []
            for key, _, lower in FIGS:
                m, p = mesh[key], figs_by[r.name][key]
                if not m or not p:
                    cells.append("—")
                    continue
                better = (p / m) if lower else (m / p)  # > 1: mesh better
                cells.append(f"{better:.2f}× better" if better >= 1 else f"{1 / better:.2f}× worse")
            rl.append(f"| {r.name} | " + " | ".join(cells) + " |")
        out.append(f"`{name}` relative to each peer (\"2.00× better\" = half the latency / RSS, "
                   "or twice the throughput):\n\n" + "\n".join(rl))

    notes = []
    for row in rows:
        if row.version:
            notes.append(f"- {row.name}: {row.version}")
        notes.extend(f"- {n}" for n in row.notes)
        for k, e in row.errors.items():
            notes.append(f"- {row.name} {k}: {e}")
        if row.loads:
            notes.append(f"- {row.name}: 1-min load average before each run: {', '.join(map(str, row.loads))}")
        notes.extend(f"- {row.name}: {s}" for s in spread_notes(row))
    m = meta
    header = (f"Measured {m['date']} on {m['machine']['nproc']} × {m['machine']['cpu']}, kernel {m['machine']['kernel']},"
              f" {m['machine']['mem_gib']} GiB RAM, disk {m['machine']['disk']}; Python {m['machine']['python']};"
              f" 1-min load average before/after {m['loadavg_1m_before_after'][0]}/{m['loadavg_1m_before_after'][1]}"
              " (other work on the machine shows up here)."
              f" Runs per figure: {m['runs']} (median of per-run p50/p99); tasks per run: durable {m['sizes']['durable']},"
              f" e2e {m['sizes']['e2e']}, throughput {m['sizes']['throughput']}, paced {m['sizes']['paced']}"
              f" at {rate_s} ({m['rate_rule']}). Runs interleaved (run 1 of every system, then run 2, ...; order"
              f" rotated each round), every run on a freshly started server. Submit→durable is measured with no"
              f" consumers attached; every other figure with 3 consumer processes, 16 unacked at most each."
              f" {'QUICK run (smoke test, not for quoting).' if m['quick'] else ''}")
    return header.strip() + "\n\n" + "\n\n".join(out) + ("\n\nNotes:\n" + "\n".join(notes) if notes else "") + "\n"


def spread_notes(row: Row) -> list[str]:
    """Say so when the median hides a bad run (a p99 far above the median p99)."""
    out = []
    for key, label in (("durable", "submit→durable"), ("e2e", "submit→consumer"), ("paced", "paced")):
        p99s = [r["p99_ns"] / 1e6 for r in row.runs[key] if r["n"]]
        if len(p99s) > 1 and max(p99s) > 3 * base.median(p99s) and max(p99s) > 1.0:
            out.append(f"{label} p99 per run {', '.join(f'{v:.1f}' for v in p99s)} ms (median shown)")
    tps = row.runs["throughput"]
    if len(tps) > 1 and max(tps) > 1.3 * min(tps):
        out.append(f"throughput per run {', '.join(f'{v:,.0f}' for v in tps)} tasks/s (median shown)")
    return out


def cdf_points(runs: list[list[int]]) -> list[list[float]]:
    """CDF quantiles (percentile, ms) of the run whose p99 is the median p99, so the plot shows
    the same run the table reports rather than a pool dominated by one bad run."""
    runs = [r for r in runs if r]
    if not runs:
        return []
    ranked = sorted(runs, key=lambda r: base.percentile(r, 99))
    samples = ranked[(len(ranked) - 1) // 2]
    return [[q, base.percentile(samples, q) / 1e6] for q in CDF_QS]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--systems", default=",".join(DEFAULT_ORDER),
                    help=f"comma list from {','.join(ROWS)} (default: all, in that order)")
    ap.add_argument("--runs", type=int, default=None, help="runs per figure (default 3; 1 with --quick)")
    ap.add_argument("--quick", action="store_true", help="1 run with fewer tasks: an end-to-end smoke test")
    ap.add_argument("--rate", type=float, default=DEFAULT_RATE,
                    help=f"offered load for the paced figure, tasks/s (default {DEFAULT_RATE:,.0f})")
    ap.add_argument("--out", type=Path, default=BENCH / "results", help="results directory")
    ap.add_argument("--workdir", type=Path, default=None,
                    help="where servers keep their data (default: a temp dir; its disk is the one measured)")
    ap.add_argument("--no-plot", action="store_true")
    args = ap.parse_args(argv)
    # SIGTERM -> SystemExit so the finally blocks stop every server and consumer we started
    signal.signal(signal.SIGTERM, lambda _sig, _frame: sys.exit(143))

    sizes = dict(QUICK if args.quick else FULL)
    runs = args.runs or sizes["runs"]
    names = [n.strip() for n in args.systems.split(",") if n.strip()]
    root = Path(tempfile.mkdtemp(prefix="mesh-bench-", dir=args.workdir))
    rows = [Row(n) for n in names]
    rate = args.rate
    rule = "--rate" if args.rate != DEFAULT_RATE else "fixed, the same for every row"
    load_before = os.getloadavg()
    try:
        log(f"work dir {root}")
        fs = base.fsync_probe(root)
        fsync = {"n": len(fs), "p50_ms": base.percentile(fs, 50) / 1e6, "p99_ms": base.percentile(fs, 99) / 1e6}
        log(f"raw fdatasync p50 {fsync['p50_ms']:.3f} ms p99 {fsync['p99_ms']:.3f} ms")
        for r in range(runs):  # interleaved: run r of every system, order rotated each round
            k = r % len(rows)
            for row in rows[k:] + rows[:k]:
                run_once(row, root, r, sizes, rate)
    finally:
        base._kill_leftover_servers()
        shutil.rmtree(root, ignore_errors=True)

    meta = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_info(args.workdir or Path(tempfile.gettempdir())),
        "clients": client_versions(),
        "loadavg_1m_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "runs": runs, "sizes": sizes, "quick": args.quick, "rate": rate, "rate_rule": rule,
        "workload": {"task_size_bytes": base.TASK_SIZE_BYTES, "producers": 1, "consumers": base.CONSUMERS,
                     "in_flight_per_consumer": base.IN_FLIGHT_PER_CONSUMER,
                     "throughput_batch": base.THROUGHPUT_BATCH, "pipeline_window": base.PIPELINE_WINDOW,
                     "e2e_interval_s": base.E2E_INTERVAL_S},
    }
    md = render(rows, rate, fsync, meta)
    print(md)

    args.out.mkdir(parents=True, exist_ok=True)
    result = {
        **meta, "fsync": fsync,
        "systems": [{
            "name": r.name, "available": r.available, "reason": r.reason, "version": r.version,
            "durability": r.durability,
            "durable": r.durable, "notes": r.notes, "errors": r.errors, "loadavg_1m_before_runs": r.loads,
            "figures": row_figures(r) if r.available else None, "runs": r.runs,
            "e2e_cdf_ms": cdf_points(r.e2e_samples), "paced_cdf_ms": cdf_points(r.paced_samples),
        } for r in rows],
    }
    (args.out / "latest.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "latest.md").write_text(md)
    raw = args.out / "raw"
    raw.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (raw / f"samples-{stamp}.json").write_text(json.dumps(
        {r.name: {"e2e_ns": r.e2e_samples, "paced_ns": r.paced_samples} for r in rows}))
    log(f"wrote {args.out / 'latest.md'}, {args.out / 'latest.json'}, raw samples in {raw}")
    if not args.no_plot:
        try:
            import plot

            png = plot.plot(result, args.out / "latest.png")
            log(f"wrote {png}")
        except Exception as exc:
            log(f"plot skipped: {type(exc).__name__}: {exc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
