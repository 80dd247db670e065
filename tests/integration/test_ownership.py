"""One owner at a time, with real node processes: a second Helper on a live data dir, or a
second AI node with a live node id, exits at once with code 75 and names the holder's pid; after
the holder is SIGKILLed (the kernel drops its lock) a new one starts."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from nodes.cli import EXIT_IN_USE, EXIT_UNAVAILABLE

NOBODY = 65534


def run_cli(args: list[str], env: dict[str, str], timeout_s: float = 30.0) -> subprocess.CompletedProcess:
    """Run `mesh ARGS` to its end (killed and reaped by subprocess.run on the timeout)."""
    return subprocess.run([sys.executable, "-m", "nodes.cli", *args], env=env,
                          capture_output=True, text=True, timeout=timeout_s, check=False)


def env_of(cluster) -> dict[str, str]:  # noqa: ANN001
    return {**os.environ, **cluster.env}


def last_line(stderr: str) -> str:
    return stderr.strip().splitlines()[-1]


def mode_of(path) -> int:  # noqa: ANN001
    return os.stat(path).st_mode & 0o777


def test_second_helper_on_a_live_data_dir_exits_75_naming_the_pid_and_one_starts_after_sigkill(cluster):
    first = cluster.start_helper()
    data_dir = cluster.workdir / "helper-1"
    assert mode_of(data_dir) == 0o700
    assert mode_of(data_dir / "LOCK") == 0o600
    journal_before = sorted(os.listdir(data_dir / "journal"))

    second = run_cli(["helper", "--helper-id", "helper-1", "--data-dir", str(data_dir),
                      "--discovery", cluster.discovery], env_of(cluster))

    assert second.returncode == EXIT_IN_USE == 75, second.stderr
    assert last_line(second.stderr) == (
        f"mesh helper: data dir {data_dir} is in use by pid {first.pid} (another Helper); "
        "stop it or choose another --data-dir")
    assert "READY" not in second.stdout
    assert "recovered" not in second.stderr  # refused before the journal was opened
    assert sorted(os.listdir(data_dir / "journal")) == journal_before
    assert first.alive()

    first.kill()  # SIGKILL: no cleanup ran, the kernel released the lock
    again = cluster.start_helper()
    assert again.alive() and again.pid != first.pid
    assert (data_dir / "LOCK").read_text() == f"{again.pid}\n"


def test_second_ai_node_with_a_live_node_id_exits_75_naming_the_pid_and_one_starts_after_sigkill(cluster):
    first = cluster.start_ai(node_id="ai-7")

    second = run_cli(["ai", "--node-id", "ai-7", "--discovery", cluster.discovery], env_of(cluster))

    assert second.returncode == EXIT_IN_USE, second.stderr
    assert last_line(second.stderr) == (
        f"mesh ai: node id ai-7 is in use by pid {first.pid} (another AI node); "
        "stop it or choose another --node-id")
    assert "READY" not in second.stdout
    assert first.alive()

    first.kill()
    again = cluster.start_ai(node_id="ai-7")
    assert again.alive() and again.ready["node_id"] == "ai-7"
    # another id was never in the way
    assert cluster.start_ai(node_id="ai-8").alive()


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root")
def test_a_node_refuses_a_registry_parent_another_user_made_first(tmp_path):
    runtime = tmp_path / "xdg"
    runtime.mkdir(mode=0o700)
    premade = runtime / "mesh"
    premade.mkdir(mode=0o755)
    os.chown(premade, NOBODY, NOBODY)
    env = {k: v for k, v in os.environ.items()
           if k not in ("MESH_DISCOVERY", "CONSUL_HTTP_ADDR")}
    env["XDG_RUNTIME_DIR"] = str(runtime)

    result = run_cli(["ai", "--node-id", "ai-x"], env)

    assert result.returncode == EXIT_UNAVAILABLE, result.stderr
    line = last_line(result.stderr)
    assert line.startswith(f"mesh ai: registry directory {premade} belongs to uid {NOBODY}, not to us")
    assert "READY" not in result.stdout
    assert os.listdir(premade) == []
