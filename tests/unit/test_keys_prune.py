"""AI nodes started without --node-id get a key named after host and pid; the keys of such
runs that are gone are pruned at the next start, so the store does not grow forever."""

from __future__ import annotations

import argparse
import os

from mesh.trust import Trust
from nodes import keys


def test_keys_of_generated_node_ids_whose_process_is_gone_are_pruned(tmp_path) -> None:  # noqa: ANN001
    root = tmp_path / "keys"
    dead = "ai-node-ai-h1-999999999"  # beyond pid_max: never a live process
    alive = f"ai-node-ai-h1-{os.getpid()}"
    for identity in (dead, alive, "ai-node-gpu-1", "ai-node-ai-h2-999999999"):
        Trust.local(root, identity=identity).close()
    args = argparse.Namespace(keys=str(root), insecure=False)
    assert keys.prune_generated_node_keys(args, "h1") == 1
    own = {p.name for p in (root / "own").iterdir()}
    allowed = {p.name for p in (root / "allowed" / "ai-node").iterdir()}
    assert f"{dead}.key_secret" not in own and f"{dead}.key" not in allowed
    for kept in (alive, "ai-node-gpu-1", "ai-node-ai-h2-999999999"):  # live, named, other host
        assert f"{kept}.key_secret" in own and f"{kept}.key" in allowed
    assert keys.prune_generated_node_keys(args, "h1") == 0


def test_insecure_nodes_prune_nothing(tmp_path) -> None:  # noqa: ANN001
    assert keys.prune_generated_node_keys(
        argparse.Namespace(keys=str(tmp_path), insecure=True), "h1") == 0
