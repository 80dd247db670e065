"""Start node programs as subprocesses, wait for their READY line, stop them for sure.

Used by the demo and the integration tests: readiness is a line on stdout, never a sleep, and
`stop` always ends with SIGKILL and a reap, whatever state the process is in.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path


class NodeProcess:
    def __init__(self, args: list[str], *, env: dict[str, str] | None = None,
                 log_path: str | os.PathLike | None = None, name: str = "node",
                 cwd: str | os.PathLike | None = None, program: list[str] | None = None) -> None:
        self.args = args
        self.name = name
        self.cwd = cwd
        #: how `mesh` is run (default: this interpreter, -m nodes.cli)
        self.program = program or [sys.executable, "-m", "nodes.cli"]
        self.env = {**os.environ, **(env or {})}
        self.log_path = Path(log_path) if log_path else None
        self.proc: subprocess.Popen | None = None
        self.ready: dict = {}
        self._log = None

    def start(self, timeout_s: float = 20.0) -> NodeProcess:
        stderr = subprocess.DEVNULL
        if self.log_path is not None:
            self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
            stderr = self._log
        self.proc = subprocess.Popen(
            [*self.program, *self.args], stdout=subprocess.PIPE,
            stderr=stderr, env=self.env, start_new_session=True, cwd=self.cwd)
        self.ready = self._wait_ready(timeout_s)
        return self

    def _wait_ready(self, timeout_s: float) -> dict:
        deadline = time.monotonic() + timeout_s
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        buf = b""
        try:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name} exited with {self.proc.returncode} before "
                                       f"READY (log: {self.log_path})")
                if not sel.select(timeout=0.1):
                    continue
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                if not chunk:
                    continue
                buf += chunk
                for line in buf.split(b"\n"):
                    if line.startswith(b"READY "):
                        return json.loads(line[6:])
            raise TimeoutError(f"{self.name} not READY within {timeout_s}s "
                               f"(log: {self.log_path})")
        finally:
            sel.close()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL and reap."""
        if self.proc is None:
            return
        if self.alive():
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """SIGTERM, wait, then SIGKILL; always reaps. Returns the exit code."""
        if self.proc is None:
            return None
        if self.alive():
            try:
                os.kill(self.proc.pid, signal.SIGCONT)  # a stopped process cannot handle TERM
                os.kill(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=timeout_s)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                pass
        self.kill()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.proc.returncode

    def __enter__(self) -> NodeProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def stop_all(procs: list[NodeProcess], timeout_s: float = 10.0) -> None:
    """Stop many nodes at once: SIGTERM to all, then wait, then SIGKILL what is left; always
    reaps. A further SIGTERM to the caller meanwhile is ignored, so cleanup is never cut."""
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        for proc in procs:
            if proc.alive():
                try:
                    os.kill(proc.pid, signal.SIGCONT)
                    os.kill(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + timeout_s
        for proc in procs:
            if proc.proc is None:
                continue
            try:
                proc.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for proc in procs:
            proc.stop(timeout_s=0)
    finally:
        signal.signal(signal.SIGTERM, previous)


def descendants(pid: int) -> list[int]:
    """Every live descendant of `pid` (from /proc), children before grandchildren. A launcher
    such as `mesh demo` starts its nodes in sessions of their own, so its process group does
    not hold them."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], list(children.get(pid, []))
    while todo:
        child = todo.pop(0)
        out.append(child)
        todo.extend(children.get(child, []))
    return out


def kill_tree(pid: int) -> None:
    """SIGKILL `pid`, every descendant of it and its process group (the caller reaps `pid`)."""
    for victim in [*descendants(pid), pid]:
        try:
            os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
