"""The installed version of the mesh, read once from the distribution's metadata (`mesh-tasks`
on PyPI; the import name is `mesh`): announced in heartbeats, discovery meta and `--version`."""

from __future__ import annotations

from importlib import metadata

DISTRIBUTION = "mesh-tasks"


def installed_version() -> str:
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"


__version__ = installed_version()
