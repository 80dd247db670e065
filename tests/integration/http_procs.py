"""Start `mesh http` gateway processes inside a test's Cluster (stopped and reaped with it)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from nodes.launch import NodeProcess


def write_tokens(directory: Path) -> dict[str, str]:
    """A 0600 token file with one client and one operator token; returns role -> token and
    the path under "file"."""
    tokens = {"client": secrets.token_urlsafe(24), "operator": secrets.token_urlsafe(24)}
    path = directory / "tokens"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write("# role token\n" + "".join(f"{r} {t}\n" for r, t in tokens.items()))
    return {**tokens, "file": str(path)}


def start_gateway(cluster, intakes: list[str], *extra: str, name: str = "http",  # noqa: ANN001
                  tokens_file: str | None = None) -> NodeProcess:
    args = ["http", "--bind", "127.0.0.1:0"]
    for intake in intakes:
        args += ["--intake", intake]
    args += ["--tokens", tokens_file] if tokens_file else ["--no-auth"]
    proc = NodeProcess([*args, *extra], env=cluster.env,
                       log_path=cluster.workdir / f"{name}.log", name=name)
    cluster.processes.append(proc)
    return proc.start()
