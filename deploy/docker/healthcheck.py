"""Docker HEALTHCHECK of a mesh container (copied into the image; no curl, standard library only).

Finds the container's mesh node process (`mesh helper|ai|notifier|http ...`) in /proc and asks it:
- helper, ai, notifier: GET its /metrics (--metrics-port, else $MESH_METRICS_PORT). The metrics
  server runs on its own thread, so this says the process serves, not that its event loop turns
  (the discovery TTL check says that). Without a metrics port, a running process is all it checks.
- http: GET /healthz on its --bind address: healthy once a Helper answers.
Exit 0 healthy, 1 unhealthy, with one line saying why (docker inspect shows it).
`healthcheck.py PID` asks process PID only (for trying it on a host running several nodes).
"""

from __future__ import annotations

import os
import ssl
import sys
import urllib.request
from pathlib import Path

ROLES = ("helper", "ai", "notifier", "http")
WILDCARDS = ("", "0.0.0.0", "*", "::", "[::]")
TIMEOUT_S = 3.0


def flag(argv: list[str], name: str) -> str | None:
    """The value of `--name V` or `--name=V` (the last one wins, as in argparse)."""
    value = None
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(name + "="):
            value = arg.split("=", 1)[1]
    return value


def node_role(argv: list[str]) -> tuple[str, list[str]] | None:
    """(role, arguments after it) if argv runs a mesh node: `mesh ROLE ...`, `python -m nodes.cli
    ROLE ...` or `.../bin/mesh ROLE ...`; None otherwise."""
    for i, arg in enumerate(argv[:4]):
        if os.path.basename(arg) == "mesh" or arg == "nodes.cli":
            rest = argv[i + 1:]
            if rest and rest[0] in ROLES:
                return rest[0], rest[1:]
    return None


def probe_url(role: str, args: list[str], environ: dict[str, str]) -> str | None:
    """The URL that answers 200 when the node is healthy; None when it serves nothing to ask."""
    if role == "http":
        host, _, port = (flag(args, "--bind") or "127.0.0.1:8080").rpartition(":")
        scheme = "https" if flag(args, "--tls-cert") else "http"
        return f"{scheme}://{_local(host)}:{port}/healthz"
    port = flag(args, "--metrics-port") or environ.get("MESH_METRICS_PORT")
    if not port or port == "0":
        return None
    return f"http://{_local(flag(args, '--metrics-addr') or '127.0.0.1')}:{port}/metrics"


def _local(host: str) -> str:
    return "127.0.0.1" if host in WILDCARDS else host


def find_node(proc: Path = Path("/proc"), pid: int | None = None) -> tuple[int, str, list[str]] | None:
    """The first mesh node process (a container runs one), or process `pid` if it is one."""
    entries = [proc / str(pid)] if pid is not None else proc.iterdir()
    for entry in entries:
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        found = node_role([a.decode(errors="replace") for a in argv if a])
        if found is not None:
            return int(entry.name), *found
    return None


def main(argv: list[str]) -> int:
    node = find_node(pid=int(argv[0]) if argv else None)
    if node is None:
        print("unhealthy: no mesh node process (mesh helper|ai|notifier|http) runs here")
        return 1
    pid, role, args = node
    url = probe_url(role, args, dict(os.environ))
    if url is None:
        print(f"healthy: mesh {role} (pid {pid}) runs; no metrics port to ask")
        return 0
    context = ssl._create_unverified_context() if url.startswith("https") else None  # noqa: S323 - our own loopback
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S, context=context) as reply:  # noqa: S310
            status = reply.status
    except Exception as exc:  # noqa: BLE001 - any failure is the answer
        print(f"unhealthy: mesh {role} (pid {pid}): {url}: {exc}")
        return 1
    print(f"healthy: mesh {role} (pid {pid}): {url} answered {status}")
    return 0 if status == 200 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
