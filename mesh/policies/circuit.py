"""Circuit breakers: stop dispatching a task kind while it, or a dependency it names, fails.

One breaker per task kind, and one per dependency a handler names by raising
`DependencyDown("ocr-api")` (`mesh.executors.errors`). A failure that names a dependency is
charged to that dependency's breaker, not to the kind's, and teaches the breakers that the
kind depends on it: from then on the kind is dispatched only while its own breaker and the
breakers of all its dependencies allow it. A success of the kind counts as a success for its
own breaker and for its dependencies' (it called them and they answered).

States (per breaker):
- CLOSED: outcomes go into a sliding window: the last `window_calls` outcomes that are at most
  `window_s` old. Once it holds at least `min_calls` outcomes and failures / outcomes reaches
  `failure_ratio`, the breaker OPENs.
- OPEN: `allow` says no until the cool-down has passed (`cool_down_s`, doubled after each
  failed probe up to `max_cool_down_s`). Outcomes of tasks dispatched before it opened are
  ignored.
- HALF_OPEN: after the cool-down, `allow` says yes once: that task is the probe; the others
  wait. The first outcome recorded then decides: a success CLOSEs the breaker (fresh window,
  base cool-down), a failure OPENs it again. A probe with no outcome for `probe_timeout_s`
  (its node died unnoticed) lets another probe go.

What counts (the dispatcher's side of the contract): a failure is a retryable failure, a run
timeout or a lost delivery (a node or child that died under it); a success is DONE. A
FatalError (bad input) or RetryLater (the handler's own pacing) is neither: don't record it.

Every change of state goes to `on_transition` (metrics; alerts `mesh.circuit.open` and
`mesh.circuit.closed`, see `Transition.alert`). Pure: the clock is a parameter (monotonic
seconds), nothing sleeps.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from mesh.errors import ConfigError


class State(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


KIND = "kind"
DEPENDENCY = "dependency"

#: The alert a transition into a state raises (none for HALF_OPEN).
ALERTS = {State.OPEN: "mesh.circuit.open", State.CLOSED: "mesh.circuit.closed"}


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    failure_ratio: float = 0.5
    min_calls: int = 10
    window_calls: int = 50
    window_s: float = 60.0
    cool_down_s: float = 30.0
    max_cool_down_s: float = 300.0
    probe_timeout_s: float = 120.0

    def __post_init__(self) -> None:
        if not 0.0 < self.failure_ratio <= 1.0:
            raise ConfigError(f"failure_ratio must be in (0, 1], got {self.failure_ratio}")
        if not 1 <= self.min_calls <= self.window_calls:
            raise ConfigError(f"need 1 <= min_calls ({self.min_calls}) <= window_calls "
                              f"({self.window_calls}): the window must be able to hold enough "
                              "calls to open")
        for name in ("window_s", "cool_down_s", "probe_timeout_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.max_cool_down_s < self.cool_down_s:
            raise ConfigError(f"max_cool_down_s ({self.max_cool_down_s}) must be at least "
                              f"cool_down_s ({self.cool_down_s})")


@dataclass(frozen=True, slots=True)
class Transition:
    name: str  # the kind or the dependency
    scope: str  # KIND or DEPENDENCY
    old: State
    new: State
    at: float
    failures: int  # in the window when it opened; 0 otherwise
    calls: int
    reopen_at: float  # OPEN: when a probe may go; 0 otherwise
    reason: str

    @property
    def alert(self) -> str:
        """`mesh.circuit.open` / `mesh.circuit.closed`, or "" (no alert for half-open)."""
        return ALERTS.get(self.new, "")


@dataclass(frozen=True, slots=True)
class BreakerInfo:
    """One breaker as `Breakers.snapshot()` shows it (for `mesh stats`)."""

    name: str
    scope: str
    state: State
    failures: int
    calls: int
    reopen_at: float


class Breaker:
    """One breaker's state machine (see the module docstring)."""

    __slots__ = ("name", "scope", "settings", "state", "_window", "_failures", "_open_until",
                 "_cool_down_s", "_probe_at")

    def __init__(self, name: str, scope: str, settings: BreakerSettings) -> None:
        self.name = name
        self.scope = scope
        self.settings = settings
        self.state = State.CLOSED
        self._window: deque[tuple[float, bool]] = deque()
        self._failures = 0
        self._open_until = 0.0
        self._cool_down_s = settings.cool_down_s
        self._probe_at: float | None = None  # when the outstanding probe went

    def would_allow(self, now: float) -> bool:
        """`allow` without taking the probe: for listing and for checking several breakers
        before taking any."""
        if self.state is State.CLOSED:
            return True
        if self.state is State.OPEN:
            return now >= self._open_until
        return self._probe_at is None or now >= self._probe_at + self.settings.probe_timeout_s

    def allow(self, now: float) -> tuple[bool, Transition | None]:
        """May a task go now? After the cool-down the first yes is the probe."""
        if self.state is State.CLOSED:
            return True, None
        if not self.would_allow(now):
            return False, None
        change = None
        if self.state is State.OPEN:
            change = self._move(State.HALF_OPEN, now, "cool-down over: one probe goes")
        self._probe_at = now
        return True, change

    def record(self, ok: bool, now: float) -> Transition | None:
        s = self.settings
        if ok and not self._failures and self.state is State.CLOSED:
            # The common case, once per finished task: with no failure in the window, a
            # success cannot open the breaker (0 < failure_ratio * calls).
            window = self._window
            window.append((now, True))
            if len(window) > s.window_calls or window[0][0] < now - s.window_s:
                self._prune(now)
            return None
        if self.state is State.OPEN:
            return None  # a task dispatched before it opened
        if self.state is State.HALF_OPEN:
            self._probe_at = None
            if ok:
                self._cool_down_s = s.cool_down_s
                return self._move(State.CLOSED, now, "the probe succeeded")
            self._cool_down_s = min(s.max_cool_down_s, self._cool_down_s * 2)
            return self._open(now, "the probe failed")
        window = self._window
        window.append((now, ok))
        if not ok:
            self._failures += 1
        self._prune(now)
        calls = len(window)
        if calls >= s.min_calls and self._failures >= s.failure_ratio * calls:
            return self._open(now, f"{self._failures} of the last {calls} calls failed")
        return None

    def next_allowed(self, now: float) -> float:
        if self.state is State.OPEN:
            return max(now, self._open_until)
        if self.state is State.HALF_OPEN and self._probe_at is not None:
            return max(now, self._probe_at + self.settings.probe_timeout_s)
        return now

    def info(self, now: float) -> BreakerInfo:
        self._prune(now)
        return BreakerInfo(self.name, self.scope, self.state, self._failures,
                           len(self._window),
                           self._open_until if self.state is State.OPEN else 0.0)

    def _prune(self, now: float) -> None:
        s = self.settings
        window = self._window
        oldest = now - s.window_s
        while window and (len(window) > s.window_calls or window[0][0] < oldest):
            if not window.popleft()[1]:
                self._failures -= 1

    def _open(self, now: float, reason: str) -> Transition:
        self._open_until = now + self._cool_down_s
        return self._move(State.OPEN, now, reason)

    def _move(self, new: State, now: float, reason: str) -> Transition:
        change = Transition(
            name=self.name, scope=self.scope, old=self.state, new=new, at=now,
            failures=self._failures if new is State.OPEN else 0,
            calls=len(self._window) if new is State.OPEN else 0,
            reopen_at=self._open_until if new is State.OPEN else 0.0, reason=reason)
        self.state = new
        if new is not State.HALF_OPEN:
            self._window.clear()
            self._failures = 0
        return change


class Breakers:
    """The dispatcher's breakers: one per kind and per named dependency, made on first use.

    `max_breakers` bounds them (names come from handlers, and kinds from the network): past
    it, new names get no breaker (always allowed) and are counted in `untracked`.
    """

    def __init__(self, settings: BreakerSettings = BreakerSettings(),
                 on_transition: Callable[[Transition], None] | None = None, *,
                 overrides: Mapping[str, BreakerSettings] | None = None,
                 max_breakers: int = 10_000) -> None:
        """`overrides`: settings by kind or dependency name, for the few that need others."""
        self.settings = settings
        self.on_transition = on_transition
        self._overrides = dict(overrides or {})
        self._max = max_breakers
        self._breakers: dict[tuple[str, str], Breaker] = {}
        self._depends: dict[str, set[str]] = {}  # kind -> dependencies it was seen to name
        self.untracked = 0
        self._not_closed = 0  # breakers open or half-open now

    @property
    def all_closed(self) -> bool:
        """No breaker is open or half-open: every kind may go (the dispatcher's fast path)."""
        return self._not_closed == 0

    def allow(self, kind: str, now: float) -> bool:
        """May a task of `kind` be dispatched now? Takes the probe of every half-open breaker
        involved only when all of them allow it."""
        breakers = self._involved(kind)
        if not breakers:
            return True
        if not all(b.would_allow(now) for b in breakers):
            return False
        for breaker in breakers:
            _, change = breaker.allow(now)
            self._report(change)
        return True

    def would_allow(self, kind: str, now: float) -> bool:
        """`allow` without taking any probe (the dispatcher asks this before the rate limit,
        and `allow` once the task surely goes)."""
        return all(b.would_allow(now) for b in self._involved(kind))

    def next_allowed(self, kind: str, now: float) -> float:
        """The earliest time `allow(kind)` may say yes (now when it does): a wake-up hint; an
        outcome recorded earlier can change it."""
        return max((b.next_allowed(now) for b in self._involved(kind)), default=now)

    def record_success(self, kind: str, now: float) -> None:
        # Once per finished task: the kind's breaker and its dependencies' without building
        # the list `_involved` makes (same breakers, same order).
        own = self._breakers.get((KIND, kind))
        if own is None:
            own = self._get(KIND, kind)  # successes count in the window before the first failure
        if own is not None:
            change = own.record(True, now)
            if change is not None:
                self._report(change)
        dependencies = self._depends.get(kind)
        if dependencies:
            for dependency in dependencies:
                breaker = self._breakers.get((DEPENDENCY, dependency))
                if breaker is not None:
                    self._report(breaker.record(True, now))

    def record_failure(self, kind: str, now: float, dependency: str = "") -> None:
        """A failure of a `kind` task; `dependency` when the handler raised DependencyDown."""
        if dependency:
            self._depends.setdefault(kind, set()).add(dependency)
            breaker = self._get(DEPENDENCY, dependency)
        else:
            breaker = self._get(KIND, kind)
        if breaker is not None:
            self._report(breaker.record(False, now))

    def dependencies(self, kind: str) -> list[str]:
        return sorted(self._depends.get(kind, ()))

    def state(self, name: str, scope: str = KIND) -> State:
        breaker = self._breakers.get((scope, name))
        return State.CLOSED if breaker is None else breaker.state

    def blocked(self, now: float) -> list[str]:
        """Kinds `allow` would refuse now (for listing; takes no probe)."""
        kinds = {k for (scope, k) in self._breakers if scope == KIND} | set(self._depends)
        return sorted(k for k in kinds
                      if not all(b.would_allow(now) for b in self._involved(k)))

    def snapshot(self, now: float) -> list[BreakerInfo]:
        return [b.info(now) for _, b in sorted(self._breakers.items())]

    def _involved(self, kind: str) -> list[Breaker]:
        found = []
        own = self._breakers.get((KIND, kind))
        if own is not None:
            found.append(own)
        for dependency in self._depends.get(kind, ()):
            breaker = self._breakers.get((DEPENDENCY, dependency))
            if breaker is not None:
                found.append(breaker)
        return found

    def _get(self, scope: str, name: str) -> Breaker | None:
        key = (scope, name)
        breaker = self._breakers.get(key)
        if breaker is None:
            if len(self._breakers) >= self._max:
                self.untracked += 1
                return None
            breaker = Breaker(name, scope, self._overrides.get(name, self.settings))
            self._breakers[key] = breaker
        return breaker

    def _report(self, change: Transition | None) -> None:
        if change is None:
            return
        if change.old is State.CLOSED:
            self._not_closed += 1
        elif change.new is State.CLOSED:
            self._not_closed -= 1
        if self.on_transition is not None:
            self.on_transition(change)
