"""Handler failures in an AI node's log: every failure a line, the same traceback not again.

An operator must find each failed task in the log (task id, kind, attempt, error, whether it
will be retried), and needs the traceback to fix the cause. In a failure storm (a dependency
down, a bad deploy: thousands of tasks failing the same way a minute) a traceback per task is
most of the log's bytes and says the same thing thousands of times, burying everything else.

So every failure is logged at ERROR as before, and its traceback goes with it only the first
time its *signature* (kind, exception type, the innermost frame's file and line) is seen in
`interval_s`; the later ones of that interval say so instead ("traceback as at HH:MM:SS"), and
the next shown one says how many were held back. Signatures are bounded in number (`max_keys`,
least recently shown forgotten first), so a flood of distinct failures cannot grow memory;
a forgotten signature just shows its traceback again.
"""

from __future__ import annotations

import logging
import re
import time
import traceback as tb
from collections.abc import Callable

#: how long a signature's traceback is not repeated
TRACEBACK_INTERVAL_S = 60.0
#: signatures remembered at most
MAX_SIGNATURES = 256
_FRAME = re.compile(r'File "([^"]*)", line (\d+)')


def signature_of(kind: str, exc: BaseException) -> tuple[str, str, str]:
    """(kind, exception type, innermost file:line) of an exception raised in this process."""
    where = ""
    frames = tb.extract_tb(exc.__traceback__) if exc.__traceback__ is not None else []
    if frames:
        last = frames[-1]
        where = f"{last.filename}:{last.lineno}"
    return kind, type(exc).__qualname__, where


def signature_of_text(kind: str, type_name: str, traceback_text: str) -> tuple[str, str, str]:
    """The same for a failure reported from a child process: its formatted traceback's last
    `File "...", line N` entry is the innermost frame."""
    frames = _FRAME.findall(traceback_text)
    where = f"{frames[-1][0]}:{frames[-1][1]}" if frames else ""
    return kind, type_name, where


class FailureLog:
    """Logs handler failures; `log_failure` decides whether this one carries its traceback."""

    def __init__(self, logger: logging.Logger, *, interval_s: float = TRACEBACK_INTERVAL_S,
                 max_keys: int = MAX_SIGNATURES,
                 clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self._max_keys = max_keys
        self._clock = clock
        self._wall = wall_clock
        #: signature -> (monotonic time shown, wall time shown), least recently shown first
        self._shown: dict[tuple, tuple[float, float]] = {}
        self._held: dict[tuple, int] = {}

    def show_traceback(self, signature: tuple) -> tuple[bool, str]:
        """(show it?, what to add to the line). Counts a held-back one."""
        now = self._clock()
        shown = self._shown.get(signature)
        if shown is not None and now - shown[0] < self.interval_s:
            self._held[signature] = self._held.get(signature, 0) + 1
            at = time.strftime("%H:%M:%S", time.localtime(shown[1]))
            return False, f" (traceback as logged at {at} for the same failure)"
        held = self._held.pop(signature, 0)
        if shown is None and len(self._shown) >= self._max_keys:
            oldest = next(iter(self._shown))
            del self._shown[oldest]
            self._held.pop(oldest, None)
        self._shown.pop(signature, None)
        self._shown[signature] = (now, self._wall())
        note = (f" ({held} more with this traceback held back in the last "
                f"{self.interval_s:g}s)") if held else ""
        return True, note

    def log_failure(self, msg: str, args: tuple, signature: tuple, *,
                    exc: BaseException | None = None, traceback_text: str = "",
                    extra: dict | None = None) -> bool:
        """Log `msg % args` at ERROR, with the traceback (`exc`'s, or `traceback_text` from a
        child) if this signature's was not shown within the interval. True if it was shown."""
        show, note = self.show_traceback(signature)
        if not show:
            self.logger.error(msg + note, *args, extra=extra)
        elif exc is not None:
            self.logger.error(msg + note, *args, exc_info=exc, extra=extra)
        else:
            self.logger.error(msg + note + "\n%s", *args, traceback_text, extra=extra)
        return show
