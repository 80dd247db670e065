"""The mesh rows of bench/compare.py: `peers.mesh.MeshSystem` in the harness's order of calls.

`bench/peers/mesh.py` (owned by the mesh team) waits in `start()` until the Helper sees its 3
AI nodes; the harness now measures submit latency before any consumer exists, so this row
starts the Helper alone and waits for the nodes in `consumers_ready()`. When mesh.py moves
that wait into its own `consumers_ready()`, compare.py can point at `peers.mesh` directly.

`helper_args` adds command-line flags to the Helper process, so a mesh variant is one entry
in compare.py's ROWS, e.g. `"mesh-insecure": ("peers.mesh_row:make", {"helper_args": ["--insecure"]})`.
"""

from __future__ import annotations

import time
from pathlib import Path

from . import mesh as _mesh
from .base import BaseSystem, NotAvailable


class MeshRow(_mesh.MeshSystem):
    def __init__(self, *, name: str = "", helper_args: list[str] | None = None, **kwargs) -> None:  # noqa: ANN003
        super().__init__(**kwargs)
        if name:
            self.name = name
        self.helper_args = list(helper_args or [])
        self.client = "mesh SyncClient: one submit request per task one at a time; batches of 1,000 for throughput"
        self.notes.append(f"{self.name}: {self.client}" + (f"; Helper flags {' '.join(self.helper_args)}"
                                                            if self.helper_args else ""))

    def start(self, workdir: Path) -> None:
        BaseSystem.start(self, workdir)  # the Helper and the client; the AI nodes come later

    def start_servers(self, workdir: Path) -> None:
        if not self.helper_args:
            return super().start_servers(workdir)
        real, extra = _mesh.Server, self.helper_args

        def server(argv, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
            return real(list(argv) + extra, *args, **kwargs)

        _mesh.Server = server  # the harness is single-threaded; restored below
        try:
            super().start_servers(workdir)
        finally:
            _mesh.Server = real

    def consumers_ready(self) -> None:
        deadline = time.monotonic() + 30
        while self._stats()["nodes"] < 3:  # every AI node has announced its credit
            if time.monotonic() > deadline:
                raise NotAvailable("the Helper did not see the 3 AI nodes within 30 s")
            time.sleep(0.05)


def make(**kwargs) -> MeshRow:  # noqa: ANN003
    return MeshRow(**kwargs)
