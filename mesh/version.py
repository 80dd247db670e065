"""The installed version of the mesh, read once from the distribution's metadata (`mesh-tasks`
on PyPI; the import name is `mesh`): announced in heartbeats, discovery meta and `--version`.

Read from the name of the distribution's `.dist-info` directory on `sys.path` (the packaging
spec puts the version there: `mesh_tasks-0.1.0.dist-info`), as `importlib.metadata` would find
it first: `importlib.metadata` itself (with zipfile, csv and the email parser) costs every node
~1 MiB of memory for this one string (bench/import_cost.py). It is the fallback when no such
directory is found (an egg-info install, a zip)."""

from __future__ import annotations

import os
import sys

DISTRIBUTION = "mesh-tasks"
_DIST_INFO_PREFIX = DISTRIBUTION.replace("-", "_") + "-"


def installed_version() -> str:
    for entry in sys.path:
        try:
            names = os.listdir(entry or ".")
        except OSError:  # not a directory (a zip, a missing path)
            continue
        for name in names:
            if name.startswith(_DIST_INFO_PREFIX) and name.endswith(".dist-info"):
                return name[len(_DIST_INFO_PREFIX):-len(".dist-info")]
    from importlib import metadata
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"


__version__ = installed_version()
