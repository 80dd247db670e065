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

from mesh.trust import RateLimitedLog

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
    """Logs handler failures; `log_failure` decides whether this one carries its traceback.
    Which traceback is shown is `mesh.trust.RateLimitedLog`'s rule, keyed by signature."""

    def __init__(self, logger: logging.Logger, *, interval_s: float = TRACEBACK_INTERVAL_S,
                 max_keys: int = MAX_SIGNATURES,
                 clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self._clock = clock
        self._wall = wall_clock
        self._tracebacks = RateLimitedLog(logger, interval_s, clock=clock, max_keys=max_keys)
        #: signature -> when its traceback was last shown (clock time), least recent first
        self._shown = self._tracebacks.last_logged
        #: signature -> tracebacks held back since
        self._held = self._tracebacks.suppressed

    def show_traceback(self, signature: tuple) -> tuple[bool, str]:
        """(show it?, what to add to the line). Counts a held-back one."""
        held = self._tracebacks.admit(signature)
        if held is None:
            shown_at = self._wall() - (self._clock() - self._shown[signature])
            at = time.strftime("%H:%M:%S", time.localtime(shown_at))
            return False, f" (traceback as logged at {at} for the same failure)"
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
