"""Circuit breakers with real Helper and AI node processes: a handler whose dependency is down
(DependencyDown("ocr-api")) opens the dependency's breaker within its window; while it is open
the kind is not dispatched (tasks wait queued, no attempt charged); after the cool-down one
probe runs alone; its success closes the breaker and every task succeeds: nothing is lost."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from mesh import Client, wire
from tests.support.waiting import async_wait_until

pytestmark = pytest.mark.timeout(120)

BREAKER = "circuit.dependency.ocr-api"
REPO = Path(__file__).resolve().parents[2]


def _metric(proc, metric: str, **labels: str) -> float:  # noqa: ANN001 - NodeProcess
    text = urllib.request.urlopen(
        f"http://127.0.0.1:{proc.ready['metrics_port']}/metrics", timeout=5).read().decode()
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    found = re.search("^" + re.escape(metric) + r"\{" + re.escape(want) + r"\} (\S+)$", text,
                      re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_a_breaker_opens_within_its_window_probes_closes_and_loses_nothing(
        cluster, tmp_path) -> None:  # noqa: ANN001
    state = tmp_path / "ocr-api"
    state.write_text("down")
    run_log = tmp_path / "runs.jsonl"
    cluster.env.update(MESH_TEST_DEPENDENCY_FILE=str(state), MESH_TEST_RUN_LOG=str(run_log))
    helper = cluster.start_helper(
        "--breaker-min-calls", "4", "--breaker-window-calls", "10", "--breaker-window", "30",
        "--breaker-cool-down", "2", "--retry-base", "0.05", "--retry-cap", "0.1",
        "--max-attempts", "50")
    # prefetch 0: nothing waits on the node, so what runs is what the Helper sent
    cluster.start_ai("--app", "tests.policies_app:app", "--concurrency", "2", "--prefetch", "0")

    def runs() -> list[dict]:
        if not run_log.exists():
            return []
        return [json.loads(line) for line in run_log.read_text().splitlines()]

    async def main() -> None:
        async with Client(cluster.intake) as client:
            async def node_seen() -> bool:
                return (await client.stats())["nodes"] == 1
            await async_wait_until(node_seen, 30, what="the AI node seen")
            ids = [await client.submit("ocr", b"%d" % i) for i in range(8)]

            async def opened() -> bool:
                return (await client.stats()).get(BREAKER) == 2.0
            await async_wait_until(opened, 30, what="the ocr-api breaker open")
            assert 4 <= len(runs()) <= 4 + 2  # opened at its minimum of calls (+ in flight)

            # While open, nothing is dispatched: every task waits queued.
            async def all_queued() -> bool:
                return all(s.state == wire.QUEUED for s in await client.statuses(ids))
            await async_wait_until(all_queued, 10, what="every ocr task queued while open")
            held = len(runs())
            attempts = {s.task_id: s.attempts for s in await client.statuses(ids)}
            assert (await client.stats()).get(BREAKER) == 2.0 and len(runs()) == held
            # `mesh nodes` shows the breaker open and when its probe may go (issue 14)
            circuits = {(c.scope, c.name): c for c in
                        (await client.nodes())[cluster.intake].circuits}
            ocr_api = circuits[("dependency", "ocr-api")]
            assert ocr_api.state in ("open", "half_open"), ocr_api  # the cool-down is 2 s
            assert ocr_api.probe_in_ms <= 2000
            shown = subprocess.run(
                [sys.executable, "-m", "nodes.cli", "nodes", "--intake", cluster.intake,
                 "--json"], capture_output=True, timeout=60, cwd=REPO,
                env={**os.environ, **cluster.env})
            assert shown.returncode == 0, shown.stderr.decode()
            listed = {(c["scope"], c["name"]): c for c in json.loads(shown.stdout)["circuits"]}
            assert listed[("dependency", "ocr-api")]["state"] in ("open", "half_open")

            state.write_text("up")

            async def closed() -> bool:
                return (await client.stats()).get(BREAKER) == 0.0
            await async_wait_until(closed, 30, what="the breaker closed by a probe")
            statuses = await asyncio.gather(*(client.wait(t, timeout=30) for t in ids))
            assert all(s.state == wire.SUCCEEDED for s in statuses)  # nothing lost
            # Held tasks were charged no attempt while the breaker was open.
            for s in statuses:
                assert s.attempts <= attempts[s.task_id] + 1
        after = runs()[held:]
        probe, rest = after[0], after[1:]
        assert not probe["down"]
        # Half-open: the probe ran alone; the others went only once it had succeeded.
        assert all(r["start"] >= probe["end"] for r in rest), after
        assert len(after) == 8  # each task ran exactly once more, successfully
        assert _metric(helper, "mesh_circuit_transitions_total", scope="dependency",
                       state="half_open") >= 1
        assert _metric(helper, "mesh_circuit_state", name="ocr-api", scope="dependency") == 0
        log = (cluster.workdir / "helper-1.log").read_text()
        assert "circuit breaker dependency ocr-api: closed -> open" in log
        assert "ocr-api: half_open -> closed" in log
        # and the alerts went out on the Helper's alert lane (its journal holds them)
        published = b"".join(p.read_bytes() for p in
                             (cluster.workdir / "helper-1" / "alerts").rglob("*") if p.is_file())
        assert b"mesh.circuit.open" in published and b"mesh.circuit.closed" in published

    asyncio.run(main())
