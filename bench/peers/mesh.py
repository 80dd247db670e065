"""The mesh as a row of the comparison: one Helper process (journal at its default policy,
`batch` group commit, fdatasync before "accepted") and 3 AI nodes with 16 slots each.

- The Helper runs as a server process (`mesh helper`); its READY line gives the endpoints.
- Each consumer process runs an AI node (the library's AINode, as `mesh ai` does) whose one
  handler reports the task to the harness the moment it starts: "submit to consumer" is
  submit to handler start. The DONE ack goes back to the Helper after the handler returns.
- The producer is a `mesh.SyncClient`: `publish_window` is one submit request carrying the
  whole window, answered once the window is on the Helper's disk.

`make_early()` is the same mesh with `dispatch_before_sync`: a task is sent to a node while its
journal record is still being synced; the submitter still hears "accepted" only after the sync
(see docs/decisions/004-dispatch-during-sync.md for what that means on a Helper crash).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

from .base import BaseSystem, IN_FLIGHT_PER_CONSUMER, NotAvailable, Reporter, Server, wait_until

ROOT = Path(__file__).resolve().parents[2]


def consume(index: int, args: dict, report_addr: str, stop_event) -> None:  # noqa: ANN001
    sys.path.insert(0, str(ROOT))
    from mesh import App
    from mesh.ai_node import AINode
    from mesh.settings import AINodeSettings

    reporter = Reporter(report_addr)
    app = App("bench")

    @app.task("bench")
    async def bench(payload: bytes) -> bytes:
        reporter.received(payload, time.monotonic_ns())
        return b""

    async def run() -> None:
        node = AINode(AINodeSettings(node_id=f"bench-ai-{index}",
                                     concurrency=IN_FLIGHT_PER_CONSUMER), app,
                      helpers=[args["acks"]])
        await node.start()
        reporter.hello()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, stop_event.wait)
        await node.stop()

    from nodes.runtime import run as run_node  # the loop, GC and GIL settings of `mesh ai`

    try:
        run_node(run())
    finally:
        reporter.close()


class MeshSystem(BaseSystem):
    name = "mesh"
    consumer_target = staticmethod(consume)

    def __init__(self, *, early: bool = False) -> None:
        super().__init__()
        self.early = early
        if early:
            self.name = "mesh-early"
        self.durability = "fsynced (group commit)"
        self.ready: dict = {}
        self.client = None
        if early:
            self.notes.append("mesh-early dispatches a task while its journal record is being "
                              "synced; the submitter is still answered after the sync")

    def start_servers(self, workdir: Path) -> None:
        sys.path.insert(0, str(ROOT))
        from mesh import __name__ as _  # noqa: F401 - importable, or not available
        import mesh.wire as wire

        self.server_version = f"mesh protocol {wire.PROTOCOL_VERSION}"
        args = [sys.executable, "-m", "nodes.cli", "helper", "--data-dir",
                str(workdir / "helper"), "--discovery", f"embedded://{workdir / 'registry'}"]
        if self.early:
            args.append("--dispatch-before-sync")
        log_path = workdir / "helper.log"
        srv = Server(args, log_path, env={"MESH_LOG_LEVEL": "WARNING"}, cwd=ROOT)
        self.servers.append(srv)

        def ready() -> bool:
            for line in log_path.read_text(errors="replace").splitlines():
                if line.startswith("READY "):
                    self.ready = json.loads(line[6:])
                    return True
            return False

        wait_until(ready, 30, "mesh helper", server=srv)

    def setup_producer(self) -> None:
        from mesh import SyncClient

        self.client = SyncClient(self.ready["intake"])

    def consumer_args(self) -> dict:
        return {"acks": self.ready["acks"]}

    def start(self, workdir: Path) -> None:
        super().start(workdir)
        deadline = time.monotonic() + 30
        while self._stats()["nodes"] < 3:  # every AI node has announced its credit
            if time.monotonic() > deadline:
                raise NotAvailable("the Helper did not see the 3 AI nodes within 30 s")
            time.sleep(0.05)

    def _stats(self) -> dict:
        from mesh import Client

        async def ask() -> dict:
            async with Client(self.ready["intake"]) as client:
                return await client.stats()

        return asyncio.run(ask())

    def publish_window(self, payloads: list[bytes]) -> None:
        from mesh import make_task

        self.client.submit_many([make_task("bench", p) for p in payloads])

    def close_producer(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None


def make() -> MeshSystem:
    return MeshSystem()


def make_early() -> MeshSystem:
    return MeshSystem(early=True)
