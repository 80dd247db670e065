"""Replace a journal directory with a new one so that a crash at any moment leaves one whole
journal: the old one, or the new one once it is complete and durable, never neither and never
a half-written one (a Helper group's follower reset from its leader's snapshot,
docs/decisions/009-helper-groups.md).

Three siblings of the journal directory ``D`` (all in D's parent, so every rename is atomic):

- ``D.incoming``: the new journal being built. Incomplete by definition: recovery deletes it.
- ``D.ready``: the new journal, complete: its records fdatasynced, the directory fsynced, and
  then renamed from ``D.incoming`` (the parent fsynced). Recovery puts it in place.
- ``D.old``: the old journal, set aside by the swap once ``D.ready`` exists. Recovery deletes
  it once ``D`` is the new journal (and puts it back if, against the order below, it is the
  only journal left).

The order: build ``D.incoming`` -> ``seal`` (fsync it, rename to ``D.ready``, fsync the parent)
-> ``swap_in`` (``D`` -> ``D.old``, ``D.ready`` -> ``D``, fsync the parent; remove ``D.old``,
fsync the parent). ``recover`` (before a journal opens ``D``) finishes or undoes whatever a
crash interrupted. ``step(name)`` is called after each durable step, for crash tests.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from .segment import DIR_MODE, fsync_directory

log = logging.getLogger("mesh.journal")

#: the steps ``step`` is told of, in order (after ``incoming``, the caller builds the journal)
STEPS = ("incoming", "sealed", "old-aside", "in-place", "old-removed")


def _no_step(name: str) -> None:
    pass


def incoming(directory: Path) -> Path:
    return directory.with_name(directory.name + ".incoming")


def ready(directory: Path) -> Path:
    return directory.with_name(directory.name + ".ready")


def old(directory: Path) -> Path:
    return directory.with_name(directory.name + ".old")


def prepare(directory: Path, step: Callable[[str], None] = _no_step) -> Path:
    """Clear any earlier attempt and return the empty ``D.incoming`` (mode 0700) to build the
    new journal in. ``D`` is not touched."""
    recover(directory)
    target = incoming(directory)
    target.mkdir(mode=DIR_MODE)
    os.chmod(target, DIR_MODE)  # whatever the umask
    fsync_directory(directory.parent)
    step("incoming")
    return target


def seal(directory: Path, step: Callable[[str], None] = _no_step) -> None:
    """``D.incoming`` is complete (its journal closed: every record fdatasynced): make its
    directory durable and mark it complete by renaming it to ``D.ready``."""
    fsync_directory(incoming(directory))
    os.replace(incoming(directory), ready(directory))
    fsync_directory(directory.parent)
    step("sealed")


def swap_in(directory: Path, step: Callable[[str], None] = _no_step) -> None:
    """Put ``D.ready`` in the place of ``D``; the old journal is removed only once the new one
    is in place durably."""
    parent = directory.parent
    if old(directory).exists():  # a removal that did not finish, long ago
        _remove(old(directory))
    if directory.exists():
        os.replace(directory, old(directory))
        step("old-aside")
    os.replace(ready(directory), directory)
    fsync_directory(parent)
    step("in-place")
    if old(directory).exists() and _remove_quietly(old(directory)):
        fsync_directory(parent)
    step("old-removed")


def recover(directory: Path) -> None:
    """Finish or undo a replacement a crash interrupted (nothing to do if none was under way):
    a complete ``D.ready`` is put in place of ``D``; an incomplete ``D.incoming`` is deleted;
    ``D.old`` is deleted once ``D`` exists, and put back if it is the only journal."""
    parent = directory.parent
    changed = False
    if incoming(directory).exists():
        log.warning("journal %s: an incomplete replacement (%s) found; deleted, the journal "
                    "stays as it was", directory, incoming(directory).name)
        _remove(incoming(directory))
        changed = True
    if ready(directory).exists():
        log.warning("journal %s: a complete replacement (%s) found; put in place",
                    directory, ready(directory).name)
        if directory.exists():
            if old(directory).exists():
                _remove(old(directory))
            os.replace(directory, old(directory))
        os.replace(ready(directory), directory)
        fsync_directory(parent)
        changed = True
    if old(directory).exists():
        if directory.exists():
            _remove(old(directory))
        else:  # not by this module's order; still, never come up with no journal
            log.warning("journal %s: only the set-aside journal is left; put back", directory)
            os.replace(old(directory), directory)
        changed = True
    if changed:
        fsync_directory(parent)


def _remove(path: Path) -> None:
    shutil.rmtree(path)


def _remove_quietly(path: Path) -> bool:
    """Remove a set-aside journal that is no longer needed; a failure is only logged (the
    next `recover` removes it)."""
    try:
        shutil.rmtree(path)
    except OSError as exc:
        log.warning("could not remove the replaced journal %s (removed at the next start): %s",
                    path, exc)
        return False
    return True
