"""What a node process imports, and what each module costs in memory.

    python bench/import_cost.py [--run SECONDS] [--top 40] [--by package|module] -- helper --insecure ...
    python bench/import_cost.py -- -c 'import mesh.helper'

Runs `mesh ARGS...` (or, after `-c`, one statement) in this process with an import hook that
reads the process's memory before and after each module is created and executed, and charges
each module what its own load added (its imports' loads are charged to them). With `--run`, the
node runs that many seconds (its start-up imports included), then the report is printed and the
process stops with SIGTERM.

Two figures per module: RSS (VmRSS: shared-library pages it touched count in full) and private
(Private_Clean + Private_Dirty from /proc/self/smaps_rollup: what this process alone holds).
The sum of one column is the growth the imports caused; the rest of the process's figure is the
bare interpreter and what ran between imports.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def memory_kib() -> tuple[int, int]:
    """(VmRSS, private) of this process in KiB."""
    rss = private = 0
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key == "Rss":
                rss = int(value.split()[0])
            elif key in ("Private_Clean", "Private_Dirty"):
                private += int(value.split()[0])
    return rss, private


class _Cost:
    __slots__ = ("name", "rss", "private", "child_rss", "child_private", "start")

    def __init__(self, name: str) -> None:
        self.name = name
        self.rss = self.private = self.child_rss = self.child_private = 0
        self.start = memory_kib()


COSTS: dict[str, tuple[int, int]] = {}  # module -> (own RSS KiB, own private KiB)
_stack: list[_Cost] = []


class _MeasuringLoader:
    """Wraps a module's loader: the span from create_module to the end of exec_module is the
    module's load; what nested loads added is subtracted, so each KiB is charged once."""

    def __init__(self, loader, name: str) -> None:  # noqa: ANN001
        self._loader = loader
        self._name = name

    def __getattr__(self, attr: str):  # noqa: ANN204
        return getattr(self._loader, attr)

    def create_module(self, spec):  # noqa: ANN001, ANN201
        _stack.append(_Cost(self._name))
        create = getattr(self._loader, "create_module", None)
        return create(spec) if create is not None else None

    def exec_module(self, module) -> None:  # noqa: ANN001
        try:
            self._loader.exec_module(module)
        finally:
            cost = _stack.pop()
            rss, private = memory_kib()
            total_rss, total_private = rss - cost.start[0], private - cost.start[1]
            COSTS[self._name] = (total_rss - cost.child_rss, total_private - cost.child_private)
            if _stack:
                _stack[-1].child_rss += total_rss
                _stack[-1].child_private += total_private


class _MeasuringFinder:
    @staticmethod
    def find_spec(name, path=None, target=None):  # noqa: ANN001, ANN205
        for finder in sys.meta_path:
            if finder is _MeasuringFinder:
                continue
            find = getattr(finder, "find_spec", None)
            if find is None:
                continue
            spec = find(name, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _MeasuringLoader(spec.loader, name)
                return spec
        return None


def report(top: int, by: str) -> None:
    rss, private = memory_kib()
    rows: dict[str, list[int]] = {}
    for name, (r, p) in COSTS.items():
        key = name.split(".")[0] if by == "package" else name
        row = rows.setdefault(key, [0, 0, 0])
        row[0] += r
        row[1] += p
        row[2] += 1
    total_r = sum(r for r, _ in COSTS.values())
    total_p = sum(p for _, p in COSTS.values())
    print(f"{len(sys.modules)} modules in sys.modules, {len(COSTS)} loaded after the hook; "
          f"process now: RSS {rss / 1024:.1f} MiB, private {private / 1024:.1f} MiB; charged "
          f"to imports: RSS {total_r / 1024:.1f} MiB, private {total_p / 1024:.1f} MiB")
    print(f"| {by} | modules | RSS KiB | private KiB |")
    print("|---|---:|---:|---:|")
    for key, (r, p, n) in sorted(rows.items(), key=lambda kv: -kv[1][1])[:top]:
        print(f"| {key} | {n} | {r} | {p} |")
    sys.stdout.flush()


def main() -> None:
    args = sys.argv[1:]
    run_s, top, by = 0.0, 40, "package"
    while args and args[0] != "--":
        flag = args.pop(0)
        if flag == "--run":
            run_s = float(args.pop(0))
        elif flag == "--top":
            top = int(args.pop(0))
        elif flag == "--by":
            by = args.pop(0)
        else:
            sys.exit(f"unknown option {flag} (see the docstring)")
    args = args[1:]
    sys.path.insert(0, str(ROOT))
    sys.meta_path.insert(0, _MeasuringFinder)
    if args[:1] == ["-c"]:
        exec(compile(args[1], "<-c>", "exec"), {"__name__": "__main__"})  # noqa: S102
        report(top, by)
        return
    if run_s:
        def later() -> None:
            time.sleep(run_s)
            report(top, by)
            os.kill(os.getpid(), signal.SIGTERM)
        threading.Thread(target=later, daemon=True).start()
    from nodes.cli import main as mesh_main
    code = mesh_main(args)
    if not run_s:
        report(top, by)
    sys.exit(code)


if __name__ == "__main__":
    main()
