"""docker-compose.yml is accepted by `docker compose config` (no Docker engine needed).

Skipped when neither the docker client with its compose plugin nor the standalone
`docker-compose` is installed. With compose v2 the resolved configuration is read as JSON and
every node's command is parsed by the real `mesh` argument parser, so a misspelt flag fails
here and not at `docker compose up`.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from nodes import cli, config

ROOT = Path(__file__).resolve().parents[2]
NODES = {"helper", "ai-1", "ai-2", "ai-3", "notifier"}


def _compose() -> list[str]:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True,
                                 timeout=30).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    if legacy:
        return [legacy]
    pytest.skip("neither `docker compose` (client + compose plugin) nor `docker-compose` installed")


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*_compose(), "-f", str(ROOT / "docker-compose.yml"), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_compose_file_is_accepted_with_consul_helper_three_ai_nodes_and_a_notifier() -> None:
    out = _run("config", "-q")
    assert out.returncode == 0, out.stderr
    services = set(_run("config", "--services").stdout.split())
    assert services == {"consul", *NODES}


def test_compose_nodes_use_consul_advertise_their_name_and_run_valid_mesh_commands() -> None:
    if _compose()[-1] != "compose":
        pytest.skip("the standalone docker-compose (v1) prints no JSON")
    out = _run("config", "--format", "json")
    assert out.returncode == 0, out.stderr
    resolved = json.loads(out.stdout)["services"]
    consul = resolved["consul"]
    assert any(p.get("host_ip") == "127.0.0.1" and str(p.get("published")) == "8500"
               for p in consul["ports"]), consul["ports"]
    parser = cli.build_parser()
    for name in NODES:
        svc = resolved[name]
        assert svc["environment"]["CONSUL_HTTP_ADDR"] == "consul:8500"
        assert svc["environment"]["MESH_ADVERTISE_HOST"] == svc["hostname"] == name
        args = parser.parse_args(svc["command"])  # exits (SystemExit) on an unknown flag
        assert args.command in ("helper", "ai", "notifier")
        if args.command == "ai":
            assert args.app == "nodes.sample_app:app" and args.bind.startswith("tcp://0.0.0.0:")


def test_wildcard_bind_is_narrowed_to_the_advertised_address() -> None:
    # mesh reports the endpoint it bound; 0.0.0.0 would send peers to themselves
    assert config.bindable("tcp://0.0.0.0:7101", "127.0.0.1") == "tcp://127.0.0.1:7101"
    assert config.bindable("tcp://*:7101", "localhost") == "tcp://127.0.0.1:7101"
    own = socket.gethostbyname(socket.gethostname())
    assert config.bindable("tcp://0.0.0.0:0", None) == f"tcp://{own}:0"
    # a specific address, or ipc://, stays as given
    assert config.bindable("tcp://10.1.2.3:7101", "ai-1") == "tcp://10.1.2.3:7101"
    assert config.bindable("ipc:///tmp/x", "ai-1") == "ipc:///tmp/x"
    assert config.metrics_endpoint("0.0.0.0", "10.0.0.5", 9102) == "http://10.0.0.5:9102/metrics"
    assert config.metrics_endpoint("127.0.0.1", "10.0.0.5", 9102) == "http://127.0.0.1:9102/metrics"
    assert config.metrics_endpoint("0.0.0.0", "10.0.0.5", None) == ""
