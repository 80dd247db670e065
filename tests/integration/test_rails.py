"""Rails for the operator: a node started wrong stops at once with one line and an exit code
of its own (nodes/cli.py), before it says it is up; a clean stop logs no WARNING about the
discovery watch; --refuse-unknown-kinds answers a submit for a kind no node served (once
every live node has had the time to announce its kinds)."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mesh import Client, InvalidTask, wire
from mesh.helper import Helper
from mesh.settings import HelperSettings
from mesh.trust import Trust
from nodes import cli
from nodes.launch import NodeProcess
from tests.support.waiting import async_wait_until

MESH = [str(Path(sys.executable).with_name("mesh"))]  # the console script, as operators run it


def _run(args: list[str], tmp_path: Path, *, env: dict[str, str] | None = None,
         cwd: Path | None = None) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "MESH_APP"}
    environ.update(env or {})
    return subprocess.run([*MESH, *args], capture_output=True, text=True, timeout=60, env=environ,
                          cwd=cwd or tmp_path)


def _one_line_error(proc: subprocess.CompletedProcess, command: str) -> str:
    """The last line of stderr is the error, alone and whole; no traceback anywhere."""
    assert "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"mesh {command}: "), proc.stderr
    return last


@pytest.fixture
def busy_port():  # noqa: ANN201
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    yield sock.getsockname()[1]
    sock.close()


def test_mesh_ai_without_app_exits_with_usage_and_one_line(tmp_path) -> None:  # noqa: ANN001
    proc = _run(["ai", "--discovery", f"embedded://{tmp_path}/reg"], tmp_path)
    assert proc.returncode == cli.EXIT_USAGE, proc.stderr
    assert "--app MODULE:APP is required" in _one_line_error(proc, "ai")


def test_an_app_that_does_not_import_exits_4_with_one_line_naming_where(tmp_path) -> None:  # noqa: ANN001
    (tmp_path / "broken.py").write_text("import os\nraise RuntimeError('no model file')\n")
    proc = _run(["ai", "--app", "broken:app", "--discovery", f"embedded://{tmp_path}/reg"],
                tmp_path)
    assert proc.returncode == cli.EXIT_APP, proc.stderr
    line = _one_line_error(proc, "ai")
    assert "broken.py:2" in line and "RuntimeError: no model file" in line
    proc = _run(["ai", "--app", "nosuchmodule:app"], tmp_path)
    assert proc.returncode == cli.EXIT_APP
    assert "No module named 'nosuchmodule'" in _one_line_error(proc, "ai")
    proc = _run(["ai", "--app", "os:path"], tmp_path)
    assert proc.returncode == cli.EXIT_APP and "is not a mesh.App" in _one_line_error(proc, "ai")


def test_app_from_the_current_directory_serves_tasks(cluster, tmp_path) -> None:  # noqa: ANN001
    workdir = tmp_path / "service"
    workdir.mkdir()
    (workdir / "mytasks.py").write_text(
        "from mesh import App\napp = App('mine')\n\n@app.task('shout')\n"
        "def shout(payload: bytes) -> bytes:\n    return payload.upper()\n")
    cluster.start_helper()
    node = NodeProcess(["ai", "--app", "mytasks:app", "--discovery", cluster.discovery],
                       env={**cluster.env, "MESH_APP": ""}, cwd=workdir, program=MESH,
                       log_path=tmp_path / "mine.log", name="mine")
    cluster.processes.append(node)
    node.start()

    async def scenario() -> None:
        async with Client(cluster.intake, timeout_s=10) as client:
            task_id = await client.submit("shout", b"hello")
            assert await client.result(task_id, timeout=20) == b"HELLO"
    asyncio.run(scenario())


def test_a_taken_metrics_port_stops_the_helper_before_it_is_up(tmp_path, busy_port) -> None:  # noqa: ANN001
    proc = _run(["helper", "--data-dir", str(tmp_path / "h"), "--discovery",
                 f"embedded://{tmp_path}/reg", "--metrics-port", str(busy_port)], tmp_path)
    assert proc.returncode == cli.EXIT_ADDRESS_IN_USE, proc.stderr
    assert f"metrics port 127.0.0.1:{busy_port} is in use" in _one_line_error(proc, "helper")
    assert " up: " not in proc.stderr and "READY" not in proc.stdout


def test_a_taken_task_port_stops_the_ai_node_with_the_endpoint_named(tmp_path, busy_port) -> None:  # noqa: ANN001
    proc = _run(["ai", "--app", "nodes.sample_app:app", "--discovery", f"embedded://{tmp_path}/r",
                 "--bind", f"tcp://127.0.0.1:{busy_port}"], tmp_path)
    assert proc.returncode == cli.EXIT_ADDRESS_IN_USE, proc.stderr
    assert f"tcp://127.0.0.1:{busy_port} is in use" in _one_line_error(proc, "ai")
    assert "READY" not in proc.stdout


def test_unreachable_discovery_exits_3_with_one_line_before_up(tmp_path, busy_port) -> None:  # noqa: ANN001
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there: connection refused
    for args in (["helper", "--data-dir", str(tmp_path / "h")],
                 ["ai", "--app", "nodes.sample_app:app"]):
        proc = _run([*args, "--discovery", f"consul://127.0.0.1:{port}", "--discovery-wait",
                     "0.5"], tmp_path)
        assert proc.returncode == cli.EXIT_UNAVAILABLE, proc.stderr
        line = _one_line_error(proc, args[0])
        assert f"consul://127.0.0.1:{port} does not answer" in line
        assert " up: " not in proc.stderr and "READY" not in proc.stdout


def test_a_clean_stop_logs_no_warning_about_the_discovery_watch(cluster) -> None:  # noqa: ANN001
    cluster.start_helper()
    cluster.start_ai()
    for proc in cluster.processes:
        assert proc.stop() == 0
    logs = "\n".join(p.log_path.read_text() for p in cluster.processes)
    warnings = [line for line in logs.splitlines() if " WARNING " in line and "watch" in line]
    assert warnings == [], warnings
    assert "stopped" in logs


def test_refuse_unknown_kinds_answers_a_submit_for_a_kind_no_node_served(cluster) -> None:  # noqa: ANN001
    cluster.start_helper("--refuse-unknown-kinds")
    cluster.start_ai()

    async def scenario() -> None:
        async with Client(cluster.intake, timeout_s=10) as client:
            async def echo_accepted() -> bool:
                try:
                    return bool(await client.submit("echo", b"x"))
                except InvalidTask:
                    return False  # the node's first heartbeat has not arrived yet
            await async_wait_until(echo_accepted, timeout_s=15, what="kind echo announced")

            # accepted during the Helper's first --node-dead-after seconds (nodes may not have
            # announced their kinds yet), refused after
            await async_wait_until(lambda: _vision_refused(client.submit), timeout_s=15,
                                   what="kind vision refused")
    asyncio.run(scenario())


async def _vision_refused(submit) -> bool:  # noqa: ANN001 - Client.submit or Helper.submit
    """Submit a task of kind `vision` (no node serves it): True if it was refused as such."""
    try:
        await submit("vision", b"x")
        return False
    except InvalidTask as exc:
        assert "no AI node has served task kind 'vision'" in str(exc), exc
        return True


def test_refuse_unknown_kinds_accepts_any_kind_until_every_live_node_has_spoken(
    tmp_path: Path,
) -> None:
    """Right after a (re)start no node has announced its kinds to this run yet: real work of a
    kind a live node serves must not be refused as invalid then. Within node_dead_after_s of
    the start a submit of an unannounced kind is accepted; after it, refused."""
    settings = HelperSettings(helper_id="kinds", data_dir=str(tmp_path / "helper"),
                              refuse_unknown_kinds=True, node_dead_after_s=3.0)

    async def scenario() -> None:
        async with Helper(settings, trust=Trust.plain()) as helper:
            started = time.monotonic()
            task_id = await helper.submit("vision", b"x")
            assert time.monotonic() - started < settings.node_dead_after_s, \
                "the first submit came too late to test the window"
            assert helper.status(task_id).state == wire.QUEUED
            await async_wait_until(lambda: _vision_refused(helper.submit), timeout_s=15,
                                   what="kind vision refused")
            refused_at = time.monotonic()  # the wait returns as soon as a submit is refused
            assert refused_at - started >= settings.node_dead_after_s - 0.05
    asyncio.run(scenario())
