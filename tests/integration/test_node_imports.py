"""A Helper process loads what a Helper needs and nothing of the other node kinds: the client
library, the AI node runtime and its executors, the HTTP gateway's stack, the notifier, the group
modules (without --group), Consul's client (in embedded mode). Each module a process imports
stays in its memory for good: these cost ~3 MiB of the Helper's RSS at idle
(docs/decisions/012-helper-memory.md)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from nodes.launch import NodeProcess

pytestmark = pytest.mark.timeout(60)

WRAPPER = Path(__file__).resolve().parent.parent / "support" / "modules_at_ready.py"

#: modules (and packages: every submodule too) a Helper in embedded mode must not import
NOT_IN_A_HELPER = (
    "mesh.client", "mesh.helper_pool", "mesh.ai_node", "mesh.app", "mesh.executors",
    "mesh.alert_subscriber", "mesh.alert_webhook", "mesh.alert_handlers", "mesh.group",
    "mesh.replication", "mesh.replica_link", "mesh.leadership", "mesh.http_views",
    "mesh.http_openapi", "nodes.http", "nodes.notifier", "nodes.sample_app",
    "nodes.client_factory", "discovery.consul", "consul", "requests", "starlette", "uvicorn",
    "httptools", "multiprocessing", "importlib.metadata",
)


def _imported_at_ready(cluster, args: list[str], name: str) -> set[str]:  # noqa: ANN001
    out = cluster.workdir / f"{name}.modules.json"
    proc = NodeProcess(args, env=cluster.env, log_path=cluster.workdir / f"{name}.log",
                       name=name, program=[sys.executable, str(WRAPPER), str(out)])
    cluster.processes.append(proc)
    proc.start()
    return set(json.loads(out.read_text()))


def _offending(modules: set[str], banned: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if any(m == b or m.startswith(b + ".") for b in banned))


def test_helper_process_imports_none_of_the_other_node_kinds_modules(cluster) -> None:  # noqa: ANN001
    modules = _imported_at_ready(
        cluster, ["helper", "--helper-id", "lean", "--data-dir", str(cluster.workdir / "lean"),
                  "--discovery", cluster.discovery, "--metrics-port", "0"], "helper")
    assert "mesh.helper" in modules and "mesh.journal" in modules  # it is a Helper
    assert _offending(modules, NOT_IN_A_HELPER) == []
