"""In Consul mode an AI node also refuses a node id that a passing instance in the catalog
already has (another host's node: the local lock file cannot see it), but not the registration
a SIGKILLed run of this host left behind (passing until its TTL lapses)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from discovery import Instance
from discovery.consul import ConsulDiscovery
from nodes.cli import EXIT_IN_USE
from nodes.launch import NodeProcess


@pytest.fixture
def node_env(tmp_path):
    runtime = tmp_path / "xdg"  # the node's lock files, private to this test
    runtime.mkdir(mode=0o700)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONSUL_")}
    env.update(XDG_RUNTIME_DIR=str(runtime), MESH_LOG_LEVEL="WARNING", MESH_DISCOVERY="")
    return env


def register_ai_7(agent, **meta) -> None:  # noqa: ANN001
    disco = ConsulDiscovery(agent.addr, timeout_s=2.0)
    try:
        disco.register(Instance(service="mesh-ai", instance_id="ai-7-5eed", address="10.0.0.9",
                                port=5555, meta={"node_id": "ai-7", "incarnation": "5eed", **meta}),
                       ttl_s=60)
    finally:
        disco.close()


def run_ai_7(agent, env) -> subprocess.CompletedProcess:  # noqa: ANN001
    return subprocess.run(
        [sys.executable, "-m", "nodes.cli", "ai", "--node-id", "ai-7",
         "--discovery", f"consul://{agent.addr}"],
        env=env, capture_output=True, text=True, timeout=30, check=False)


def test_ai_node_refuses_a_node_id_passing_in_the_catalog_from_another_host(agent, node_env):
    register_ai_7(agent, host="other-host", pid="4242")
    result = run_ai_7(agent, node_env)
    assert result.returncode == EXIT_IN_USE, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "mesh ai: node id ai-7 is in use by ai-7-5eed at 10.0.0.9:5555, passing in discovery "
        "(another AI node); stop it or choose another --node-id")
    assert "READY" not in result.stdout
    assert list(agent.services()) == ["ai-7-5eed"]  # the refused node registered nothing


def test_ai_node_refuses_a_live_pid_of_this_host_passing_in_the_catalog(agent, node_env):
    register_ai_7(agent, host=socket.gethostname(), pid=str(os.getpid()))
    result = run_ai_7(agent, node_env)
    assert result.returncode == EXIT_IN_USE, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"mesh ai: node id ai-7 is in use by pid {os.getpid()} (another AI node); "
        "stop it or choose another --node-id")


def test_a_sigkilled_run_of_this_host_still_passing_does_not_block_the_restart(agent, node_env):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    register_ai_7(agent, host=socket.gethostname(), pid=str(gone.pid))
    node = NodeProcess(["ai", "--node-id", "ai-7", "--discovery", f"consul://{agent.addr}",
                        "--discovery-ttl", "1"], env=node_env)
    with node:
        assert node.ready["node_id"] == "ai-7"
