"""A mesh of real node processes on loopback for integration and chaos tests.

Every process it starts is stopped (SIGTERM, then SIGKILL) and reaped at teardown, whatever
happened in the test. Nodes find each other through an embedded registry private to the test.
Every process gets the same $MESH_KEY_DIR (the session's store, tests/support/keys.py), so the
links are CURVE-authenticated as on one user's host, and a `Client()` in the test trusts them.
"""

from __future__ import annotations

import os
from pathlib import Path

from nodes.launch import NodeProcess
from nodes.sample_app import applied_effects


class Cluster:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.registry = workdir / "registry"
        self.effects = workdir / "effects"
        self.effects.mkdir(parents=True, exist_ok=True)
        self.discovery = f"embedded://{self.registry}"
        self.processes: list[NodeProcess] = []
        self.helper: NodeProcess | None = None
        self.ai_nodes: list[NodeProcess] = []
        self._ai_count = 0
        self.key_dir = os.environ.get("MESH_KEY_DIR") or str(workdir / "keys")
        self.env = {"MESH_EFFECT_LOG_DIR": str(self.effects), "MESH_LOG_LEVEL": "INFO",
                    "PYTHONUNBUFFERED": "1", "MESH_KEY_DIR": self.key_dir}

    def _start(self, args: list[str], name: str) -> NodeProcess:
        proc = NodeProcess(args, env=self.env, log_path=self.workdir / f"{name}.log", name=name)
        self.processes.append(proc)
        return proc.start()

    def start_helper(self, *extra: str, helper_id: str = "helper-1") -> NodeProcess:
        self.helper = self._start(
            ["helper", "--helper-id", helper_id, "--data-dir", str(self.workdir / helper_id),
             "--discovery", self.discovery, "--metrics-port", "0", *extra], helper_id)
        return self.helper

    def restart_helper(self, *extra: str) -> NodeProcess:
        assert self.helper is not None
        self.helper.kill()
        return self.start_helper(*extra)

    def start_ai(self, *extra: str, node_id: str | None = None) -> NodeProcess:
        self._ai_count += 1
        node_id = node_id or f"ai-{self._ai_count}"
        proc = self._start(["ai", "--app", "nodes.sample_app:app", "--node-id", node_id,
                            "--discovery", self.discovery, "--metrics-port", "0", *extra],
                           node_id)
        self.ai_nodes.append(proc)
        return proc

    @property
    def intake(self) -> str:
        return self.helper.ready["intake"]

    def applied_effects(self):  # noqa: ANN201
        return applied_effects(str(self.effects))

    def logs(self) -> str:
        out = []
        for proc in self.processes:
            if proc.log_path and proc.log_path.exists():
                out.append(f"==== {proc.name} ====\n" + proc.log_path.read_text()[-4000:])
        return "\n".join(out)

    def close(self) -> None:
        for proc in reversed(self.processes):
            proc.stop(timeout_s=5)
        leftovers = [p.pid for p in self.processes if p.alive()]
        assert not leftovers, f"processes still alive after teardown: {leftovers}"


def cpu_count() -> int:
    return os.cpu_count() or 1
