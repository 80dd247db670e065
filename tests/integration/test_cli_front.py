"""The `mesh` client commands against real node processes (issue 12): payloads from stdin and
files, --timeout, real JSON out, the documented exit codes, `mesh cancel`, `mesh dlq inspect`
and `mesh nodes`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(180)
REPO = Path(__file__).resolve().parents[2]


def mesh(*argv: str, stdin: bytes = b"", timeout_s: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("MESH_INTAKE", None)
    return subprocess.run([sys.executable, "-m", "nodes.cli", *argv], input=stdin, cwd=REPO,
                          env=env, capture_output=True, timeout=timeout_s)


def out_json(proc: subprocess.CompletedProcess) -> dict:
    lines = proc.stdout.decode().strip().splitlines()
    assert lines, f"no output; stderr: {proc.stderr.decode()}"
    return json.loads(lines[-1])


def test_submit_reads_stdin_and_files_prints_json_and_exits_by_outcome(cluster, tmp_path) -> None:  # noqa: ANN001
    cluster.start_helper()
    cluster.start_ai()
    at = ("--discovery", cluster.discovery)

    done = mesh("submit", "echo", "-", "--wait", "30", *at, stdin=b'{"from": "stdin"}')
    assert done.returncode == 0, done.stderr
    status = out_json(done)
    assert status["state"] == "SUCCEEDED" and status["result"] == {"from": "stdin"}

    payload = tmp_path / "payload.json"
    payload.write_bytes(b'[1, 2, 3]')
    from_file = mesh("submit", "echo", f"@{payload}", "--wait", "30", *at)
    assert from_file.returncode == 0 and out_json(from_file)["result"] == [1, 2, 3]

    missing = mesh("submit", "echo", f"@{tmp_path / 'nope'}", *at)
    assert missing.returncode == 2 and b"cannot read the payload file" in missing.stderr

    dead = mesh("submit", "simulate", '{"fatal": true}', "--wait", "30", *at)
    assert dead.returncode == 1 and out_json(dead)["state"] == "DEAD"
    dead_id = out_json(dead)["task_id"]

    waiting = mesh("submit", "wait", "60", "--wait", "0.5", *at)
    assert waiting.returncode == 4, waiting.stderr
    running = out_json(waiting)
    assert running["wait_timed_out"] is True and running["state"] in (
        "QUEUED", "DISPATCHED", "RUNNING")

    cancel = mesh("cancel", running["task_id"], *at)
    assert cancel.returncode == 0 and out_json(cancel)["state"] == "CANCELLED"
    again = mesh("cancel", running["task_id"], *at)
    assert again.returncode == 1 and out_json(again)["state"] == "CANCELLED"
    status = mesh("status", running["task_id"], *at)
    assert status.returncode == 0 and out_json(status)["state"] == "CANCELLED"

    inspect = mesh("dlq", "inspect", dead_id, *at)
    assert inspect.returncode == 0, inspect.stderr
    letter = json.loads(inspect.stdout.decode().splitlines()[0])
    assert letter["payload_preview"] == '{"fatal": true}' and letter["payload_bytes"] == 15
    assert letter["submitted_at"] and letter["finished_at"]
    assert [h["outcome"] for h in letter["history"]] == ["failed"]
    assert "FatalError" in letter["history"][0]["error"] and letter["history"][0]["at"]
    unknown = mesh("dlq", "inspect", "no-such-task", *at)
    assert unknown.returncode != 0 and b"no-such-task" in unknown.stderr

    nodes = mesh("nodes", *at)
    assert nodes.returncode == 0, nodes.stderr
    assert "ai-1" in nodes.stdout.decode() and "alive" in nodes.stdout.decode()
    as_json = json.loads(mesh("nodes", "--json", *at).stdout)
    node = as_json["nodes"][0]
    assert node["id"] == "ai-1" and node["state"] == "alive" and node["version"]
    assert {"credit", "held", "last_beat_s", "host"} <= set(node)

    stats = mesh("stats", *at)
    assert stats.returncode == 0 and json.loads(stats.stdout)["cancelled"] == 1.0


def test_submit_with_no_helper_answering_exits_3_within_its_timeout(cluster) -> None:  # noqa: ANN001
    helper = cluster.start_helper()
    intake = cluster.intake
    helper.kill()
    down = mesh("submit", "echo", "x", "--intake", intake, "--timeout", "1", timeout_s=30)
    assert down.returncode == 3, (down.stdout, down.stderr)
    assert b"no reply from the Helper" in down.stderr
