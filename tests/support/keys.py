"""One local key store per test session, shared by the test process and every node it starts.

Set as $MESH_KEY_DIR for the whole session (tests/conftest.py), so a `Client()` made in a test
and the Helper and AI node processes of `Cluster` trust each other with no setup, as on one
user's host; nothing touches the user's own ~/.local/share/mesh/keys.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from mesh.trust import KeyStore


@contextlib.contextmanager
def session_store(parent: Path) -> Iterator[Path]:
    root = parent / "store"
    KeyStore.ensure_local(root)
    before = os.environ.get("MESH_KEY_DIR")
    os.environ["MESH_KEY_DIR"] = str(root)
    try:
        yield root
    finally:
        if before is None:
            os.environ.pop("MESH_KEY_DIR", None)
        else:
            os.environ["MESH_KEY_DIR"] = before
