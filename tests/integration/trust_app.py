"""The App the trust tests run on a real `mesh ai`: handlers that leave a trace on disk.

- "mark": creates `$MESH_TEST_MARK_DIR/<task id>`, so a test can tell whether a delivery ran.
- "big": returns as many bytes as its payload says (ASCII digits): a result over the node's
  max_result_bytes.
"""

from __future__ import annotations

import os
from pathlib import Path

from mesh import App, TaskContext

app = App("trust-tests")


@app.task("mark")
async def mark(payload: bytes, ctx: TaskContext) -> bytes:
    Path(os.environ["MESH_TEST_MARK_DIR"], ctx.task_id).touch()
    return b"marked"


@app.task("big")
async def big(payload: bytes) -> bytes:
    return b"x" * int(payload)
