"""The mesh rows of bench/compare.py, kept for the ROWS entries that name it: `peers.mesh`
now starts the Helper alone in `start()` and waits for the AI nodes in `consumers_ready()`,
so this is `peers.mesh.make` under its old name.

`helper_args` adds command-line flags to the Helper process and `insecure=True` runs every
link plain, so a mesh variant is one entry in compare.py's ROWS, e.g.
`"mesh-curve": ("peers.mesh:make", {"name": "mesh-curve"})`.
"""

from __future__ import annotations

from .mesh import MeshSystem


def make(**kwargs) -> MeshSystem:  # noqa: ANN003
    return MeshSystem(**kwargs)
