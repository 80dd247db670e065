"""In Consul mode an AI node also refuses a node id that a passing instance in the catalog
already has (another host's node: the local lock file cannot see it)."""

from __future__ import annotations

import os
import subprocess
import sys

from discovery import Instance
from discovery.consul import ConsulDiscovery
from nodes.cli import EXIT_IN_USE


def test_ai_node_refuses_a_node_id_passing_in_the_catalog(agent, tmp_path):
    runtime = tmp_path / "xdg"  # the node's lock files, private to this test
    runtime.mkdir(mode=0o700)
    disco = ConsulDiscovery(agent.addr, timeout_s=2.0)
    try:
        disco.register(Instance(service="mesh-ai", instance_id="ai-7-5eed", address="10.0.0.9",
                                port=5555, meta={"node_id": "ai-7", "incarnation": "5eed"}),
                       ttl_s=60)
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONSUL_")}
        env.update(XDG_RUNTIME_DIR=str(runtime), MESH_LOG_LEVEL="WARNING")
        result = subprocess.run(
            [sys.executable, "-m", "nodes.cli", "ai", "--node-id", "ai-7",
             "--discovery", f"consul://{agent.addr}"],
            env=env, capture_output=True, text=True, timeout=30, check=False)
    finally:
        disco.close()
    assert result.returncode == EXIT_IN_USE, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "mesh ai: node id ai-7 is in use by ai-7-5eed at 10.0.0.9:5555, passing in discovery "
        "(another AI node); stop it or choose another --node-id")
    assert "READY" not in result.stdout
    assert [s for s in agent.services()] == ["ai-7-5eed"]  # the refused node registered nothing
