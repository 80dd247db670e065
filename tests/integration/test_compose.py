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
ONE_SHOTS = {"consul-acl", "keys"}


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
    assert services == {"consul", *ONE_SHOTS, *NODES}


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


def _raw() -> dict:
    yaml = pytest.importorskip("yaml", reason="PyYAML (the test extra) reads the compose file")
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())  # resolves anchors and <<


def test_compose_runs_every_node_with_keys_and_consul_with_acls_on() -> None:
    services = _raw()["services"]
    assert {"consul", *ONE_SHOTS, *NODES} == set(services)
    parser = cli.build_parser()
    for name in NODES:
        svc = services[name]
        env = svc["environment"]
        assert env["MESH_KEY_DIR"] == "/keys"
        assert env["CONSUL_HTTP_TOKEN_FILE"] == "/secrets/mesh.token"
        assert "CONSUL_HTTP_TOKEN" not in env  # a token never sits in the file or on a command line
        assert any(v.startswith("mesh-keys:/keys") for v in svc["volumes"]), svc["volumes"]
        assert "--insecure" not in svc["command"]
        args = parser.parse_args(svc["command"])
        assert not getattr(args, "insecure", False)
        assert svc["depends_on"]["keys"]["condition"] == "service_completed_successfully"
        assert svc["depends_on"]["consul-acl"]["condition"] == "service_completed_successfully"
    consul = services["consul"]
    assert "-dev" not in consul["command"]  # dev mode forgets ACL tokens on restart
    assert any("acl.hcl:/consul/config/acl.hcl" in v for v in consul["volumes"])
    acl = (ROOT / "deploy" / "consul" / "acl.hcl").read_text()
    assert "enabled" in acl and 'default_policy           = "deny"' in acl
    assert services["keys"]["command"] == ["keys", "local"]
    assert cli.build_parser().parse_args(services["keys"]["command"]).command == "keys"
