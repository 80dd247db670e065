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

Leftovers of the older reset (before branch group-fixes): it renamed ``D`` to
``D.aside-<time_ns>`` *first*, then built the snapshot's journal in a new ``D`` (its records
and, last, a POSITION record, appended together and fdatasynced in one round), and removed the
aside directory only after that sync. A member killed in between left an aside directory next
to a missing, empty or half-written ``D``. ``recover(D, complete)`` takes ``complete(path)``
from the caller, who knows the records (the group's log: "holds a POSITION record", which the
old ``D`` had only once its snapshot round reached the file; a snapshot's POSITION is its last
record), and:

- ``D`` missing: the newest complete aside directory (by its time suffix; the newest one if
  none is complete) is put back as ``D``.
- ``D`` not complete while an aside directory is: ``D`` is renamed ``D.incomplete-<time_ns>``
  (kept: nothing is deleted) and the newest complete aside directory put back.
- otherwise (``D`` complete: the old reset finished and only its removal of the aside was cut
  short, or nothing complete anywhere): every directory is left as it is, and one warning per
  call names the aside directories (an operator removes them once satisfied).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
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


def aside_dirs(directory: Path) -> list[Path]:
    """The ``D.aside-<time_ns>`` directories the older reset left, oldest first."""
    pattern = re.compile(re.escape(directory.name) + r"\.aside-(\d+)")
    found = []
    if directory.parent.is_dir():
        for path in directory.parent.iterdir():
            match = pattern.fullmatch(path.name)
            if match and path.is_dir():
                found.append((int(match.group(1)), path))
    return [path for _ns, path in sorted(found)]


def recover(directory: Path, complete: Callable[[Path], bool] | None = None) -> None:
    """Finish or undo a replacement a crash interrupted (nothing to do if none was under way):
    a complete ``D.ready`` is put in place of ``D``; an incomplete ``D.incoming`` is deleted;
    ``D.old`` is deleted once ``D`` exists, and put back if it is the only journal. Then the
    older reset's ``D.aside-*`` directories, judged by ``complete`` (module docstring; without
    it, an aside directory is put back only when ``D`` is missing)."""
    _recover_swap(directory)
    _recover_aside(directory, complete)


def _recover_swap(directory: Path) -> None:
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


def _recover_aside(directory: Path, complete: Callable[[Path], bool] | None) -> None:
    asides = aside_dirs(directory)
    if not asides:
        return
    if not directory.exists():
        restore = _newest_complete(asides, complete) or asides[-1]
        log.warning("journal %s: missing, and the set-aside journal %s of an interrupted reset "
                    "found; put back", directory, restore.name)
    elif complete is not None and not complete(directory) and (restore := _newest_complete(asides, complete)):
        keep = directory.with_name(f"{directory.name}.incomplete-{time.time_ns()}")
        log.warning("journal %s holds no complete log, the set-aside journal %s of an interrupted "
                    "reset does: put back; the incomplete one kept as %s", directory,
                    restore.name, keep.name)
        os.replace(directory, keep)
    else:
        log.warning("journal %s: set-aside journals of an earlier reset are left as they are (%s); "
                    "the journal in place is used, remove them once satisfied", directory,
                    ", ".join(path.name for path in asides))
        return
    os.replace(restore, directory)
    fsync_directory(directory.parent)
    left = [path.name for path in asides if path != restore]
    if left:
        log.warning("journal %s: older set-aside journals left as they are (%s)", directory,
                    ", ".join(left))


def _newest_complete(asides: list[Path], complete: Callable[[Path], bool] | None) -> Path | None:
    if complete is None:
        return None
    return next((path for path in reversed(asides) if complete(path)), None)


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
