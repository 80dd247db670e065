"""The mesh as a row of the comparison: one Helper process (journal at its default policy,
`batch` group commit, fdatasync before "accepted") and 3 AI nodes with 16 slots each.

- The Helper runs as a server process (`mesh helper`); its READY line gives the endpoints.
- Each consumer process runs an AI node (the library's AINode, as `mesh ai` does) whose one
  handler reports the task to the harness the moment it starts: "submit to consumer" is
  submit to handler start. The DONE ack goes back to the Helper after the handler returns.
- The producer is a `mesh.Client` on the harness's uvloop loop, used as README "Submitting
  fast" says: one at a time `await client.submit(...)`; throughput and paced
  `await client.submit_async(...)` (a future per task, at most 1,000 pending, the tasks of
  one loop turn coalesced into one request), like nats-py's `publish_async`.

Trust: `insecure=True` runs every link plain (`--insecure` on the Helper, `Trust.plain()` in
the client and the AI nodes), as the peers have no TLS; otherwise every link is CURVE with a
key store private to the run (made in the work dir, handed to the Helper as $MESH_KEY_DIR).

`early=True` is the same mesh with `--dispatch-before-sync`: a task is sent to a node while
its journal record is still being synced; the submitter still hears "accepted" only after the
sync (see docs/decisions/004-dispatch-during-sync.md for what that means on a Helper crash).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

from .base import (
    IN_FLIGHT_PER_CONSUMER, PIPELINE_WINDOW, AsyncSystem, NotAvailable, Reporter, Server,
    loop_name, wait_until,
)

ROOT = Path(__file__).resolve().parents[2]


def _trust(key_dir: str | None, identity: str | None = None):  # noqa: ANN202
    """Plain links (key_dir None), or the run's key store; `identity`: a key of this process's
    own (each AI node needs one: the Helper binds a node id to its key, as `mesh ai` does)."""
    from mesh.trust import Trust

    if key_dir is None:
        return Trust.plain()
    return Trust.local(key_dir, identity=identity)


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
                      helpers=[args["acks"]],
                      trust=_trust(args["key_dir"], f"ai-node-bench-ai-{index}"))
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


class MeshSystem(AsyncSystem):
    name = "mesh"
    consumer_target = staticmethod(consume)

    def __init__(self, *, early: bool = False, insecure: bool = False, name: str = "",
                 helper_args: list[str] | None = None) -> None:
        super().__init__()
        self.early = early
        self.insecure = insecure
        self.name = name or ("mesh-early" if early else "mesh")
        self.helper_args = list(helper_args or [])
        self.durability = "fsynced (group commit)"
        self.ready: dict = {}
        self.key_dir: str | None = None
        self.mesh_client = None
        self.futures: list[asyncio.Future] = []

    def helper_argv(self, workdir: Path) -> list[str]:
        argv = [sys.executable, "-m", "nodes.cli", "helper", "--data-dir",
                str(workdir / "helper"), "--discovery", f"embedded://{workdir / 'registry'}"]
        if self.early:
            argv.append("--dispatch-before-sync")
        if self.insecure:
            argv.append("--insecure")
        return argv + self.helper_args

    def start_servers(self, workdir: Path) -> None:
        sys.path.insert(0, str(ROOT))
        import mesh.wire as wire

        self.server_version = f"mesh protocol {wire.PROTOCOL_VERSION}"
        env = {"MESH_LOG_LEVEL": "WARNING"}
        if not self.insecure:
            from mesh.trust import KeyStore

            self.key_dir = str(workdir / "keys")
            KeyStore.ensure_local(self.key_dir)
            env["MESH_KEY_DIR"] = self.key_dir
        log_path = workdir / "helper.log"
        srv = Server(self.helper_argv(workdir), log_path, env=env, cwd=ROOT)
        self.servers.append(srv)

        def ready() -> bool:
            for line in log_path.read_text(errors="replace").splitlines():
                if line.startswith("READY "):
                    self.ready = json.loads(line[6:])
                    return True
            return False

        wait_until(ready, 30, "mesh helper", server=srv)

    async def setup_async(self) -> None:
        from mesh import Client

        # timeout as nats-py's publish here (10 s): a loaded machine must not fail a phase
        self.mesh_client = Client(self.ready["intake"], trust=_trust(self.key_dir),
                                  max_pending=PIPELINE_WINDOW, timeout_s=10.0)
        await self.mesh_client.start()
        links = "plain links (--insecure)" if self.insecure else "CURVE links"
        flags = " ".join((["--dispatch-before-sync"] if self.early else [])
                         + (["--insecure"] if self.insecure else []) + self.helper_args)
        self.client = (f"mesh Client: submit one at a time; submit_async, window {PIPELINE_WINDOW}"
                       f", coalesced per loop turn; {links}; {loop_name(self.loop)}")
        self.notes.append(f"{self.name}: {self.client}" + (f"; Helper flags {flags}" if flags else ""))
        if self.early:
            self.notes.append(f"{self.name} dispatches a task while its journal record is being "
                              "synced; the submitter is still answered after the sync")

    def consumer_args(self) -> dict:
        return {"acks": self.ready["acks"], "key_dir": self.key_dir}

    def consumers_ready(self) -> None:
        deadline = time.monotonic() + 30
        while self.run(self.mesh_client.stats(), 10.0)["nodes"] < 3:  # each node's credit is in
            if time.monotonic() > deadline:
                raise NotAvailable("the Helper did not see the 3 AI nodes within 30 s")
            time.sleep(0.05)

    async def publish_wait(self, payload: bytes) -> None:
        await self.mesh_client.submit("bench", payload)

    async def publish_nowait(self, payload: bytes) -> None:
        self.futures.append(await self.mesh_client.submit_async("bench", payload))

    async def flush(self) -> None:
        await self.mesh_client.flush()
        futures, self.futures = self.futures, []
        for fut in futures:
            fut.result()  # raises if the Helper refused the task

    async def close_async(self) -> None:
        if self.mesh_client is not None:
            await self.mesh_client.close()
            self.mesh_client = None


def make(**kwargs) -> MeshSystem:  # noqa: ANN003
    return MeshSystem(**kwargs)


def make_early(**kwargs) -> MeshSystem:  # noqa: ANN003
    return MeshSystem(early=True, **kwargs)
