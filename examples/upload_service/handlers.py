"""The upload service's handler: digest an uploaded file, given a reference (path + sha256).

    mesh ai --app handlers:app          (with this directory on PYTHONPATH)

The task carries a reference, never the file: the Helper journals every payload, and files
are better kept where they were stored. The handler checks the file is the one referenced
(sha256) and inside the upload directory ($UPLOAD_DIR), so a forged reference reads nothing else.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from mesh import App, FatalError, TaskContext

app = App("uploads")


@app.task("upload.digest")
def digest(payload: bytes, ctx: TaskContext) -> bytes:
    """A sync handler (file I/O): runs in the AI node's thread pool, never on its loop."""
    ref = json.loads(payload)
    root = Path(os.environ.get("UPLOAD_DIR", "uploads")).resolve()
    path = Path(ref["path"]).resolve()
    if root not in path.parents:
        raise FatalError(f"{path} is outside the upload directory {root}")
    data = path.read_bytes()
    sha256 = hashlib.sha256(data).hexdigest()
    if sha256 != ref["sha256"]:
        raise FatalError(f"{path} has sha256 {sha256}, the task expected {ref['sha256']}")
    return json.dumps({"sha256": sha256, "bytes": len(data), "lines": data.count(b"\n"),
                       "attempt": ctx.attempt}).encode()
