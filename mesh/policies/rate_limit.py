"""Rate limits per task kind: a token bucket each, with a rate and a burst.

A Helper asks `take(kind, now)` before it dispatches a task of a limited kind; no token means
the task stays queued and the kind is skipped until `next_ready(kind, now)`. A kind with no
limit is never held back. Pure: the clock is a parameter (monotonic seconds), nothing sleeps.

Spelling (`mesh helper --rate-limit vision=50/s`, once per kind): `KIND=COUNT/UNIT` with UNIT
`s`, `m` or `h` and COUNT a positive number (`0.5/s`, `600/m`, `1000/h`), optionally
`,burst=N`: at most N tasks at once after an idle spell. The default burst is one second's
worth of the rate, at least 1 (`50/s` -> 50, `600/m` -> 10, `100/h` -> 1).

Several Helpers (the split rule). Each Helper dispatches on its own, so a limit is split
evenly: with H Helpers dispatching (the leaders of Helper groups, each group counted once, as
discovery lists them), each enforces rate / H and burst / H, the burst at least one token
(`set_helpers(H, now)` when discovery's count changes). The sum over Helpers is then never
above the limit in the long run, but it is below it when the work is unevenly spread (a
Helper with no backlog of a kind leaves its share unused); while the count changes, the limit
can be passed by at most one burst per Helper. With more Helpers than the burst, the floor
of one token each lets H tasks start at once.

Throttled time: the time a kind had a task ready but no token, from the first refused
`take` to the next successful one. `drain_throttled_s()` hands the seconds accumulated since
the last call to the metrics (`mesh_rate_limited_seconds_total{kind}`), once per batch.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from mesh.errors import ConfigError

_UNIT_S = {"s": 1.0, "m": 60.0, "h": 3600.0}
_SPEC = re.compile(r"^(?P<count>[0-9]*\.?[0-9]+)/(?P<unit>[smh])(?:,burst=(?P<burst>[0-9]*\.?[0-9]+))?$")


@dataclass(frozen=True, slots=True)
class Rate:
    per_s: float  # tokens added per second
    burst: float  # the bucket's size

    def __post_init__(self) -> None:
        if not (self.per_s > 0 and math.isfinite(self.per_s)):
            raise ConfigError(f"a rate must be a positive number per second, got {self.per_s}")
        if not (self.burst >= 1 and math.isfinite(self.burst)):
            raise ConfigError(f"a burst must be at least 1 task, got {self.burst}")


def parse_rate(text: str) -> Rate:
    """`50/s`, `600/m`, `1000/h`, `50/s,burst=100` -> Rate; ConfigError naming what is wrong."""
    spec = text.strip().replace(" ", "")
    match = _SPEC.match(spec)
    if match is None:
        raise ConfigError(
            f"rate {text!r} is not COUNT/UNIT[,burst=N] with UNIT s, m or h "
            "(e.g. 50/s, 600/m, 1000/h, 50/s,burst=100)")
    count = float(match["count"])
    if count <= 0:
        raise ConfigError(f"rate {text!r}: the count must be above 0 (to stop a kind, do not "
                          "serve it)")
    per_s = count / _UNIT_S[match["unit"]]
    burst = float(match["burst"]) if match["burst"] else max(1.0, per_s)
    if burst < 1:
        raise ConfigError(f"rate {text!r}: the burst must be at least 1 task")
    return Rate(per_s=per_s, burst=burst)


def parse_rate_limit(text: str) -> tuple[str, Rate]:
    """`vision=50/s` (the `--rate-limit` flag's value) -> ("vision", Rate)."""
    kind, sep, rate = text.partition("=")
    kind = kind.strip()
    if not sep or not kind:
        raise ConfigError(f"rate limit {text!r} is not KIND=COUNT/UNIT (e.g. vision=50/s)")
    return kind, parse_rate(rate)


def parse_rate_limits(texts: list[str] | tuple[str, ...]) -> dict[str, Rate]:
    """Every `--rate-limit` flag's value; a kind given twice is an error."""
    limits: dict[str, Rate] = {}
    for text in texts:
        kind, rate = parse_rate_limit(text)
        if kind in limits:
            raise ConfigError(f"rate limit for kind {kind!r} is given twice")
        limits[kind] = rate
    return limits


#: a shortfall this small is the rounding of clock arithmetic (now + 0.1 - now is not 0.1 on a
#: large monotonic reading), not a missing token: a dispatcher woken at next_ready() must find
#: the token there, not reschedule itself a nanosecond later
_ROUNDING = 1e-9


class TokenBucket:
    """Holds up to `burst` tokens, gains `per_s` a second; a task takes one."""

    __slots__ = ("per_s", "burst", "tokens", "updated")

    def __init__(self, rate: Rate, now: float) -> None:
        self.per_s = rate.per_s
        self.burst = rate.burst
        self.tokens = rate.burst  # full at start: a fresh Helper may start a burst at once
        self.updated = now

    def _refill(self, now: float) -> None:
        if now > self.updated:
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.per_s)
            self.updated = now

    def take(self, now: float, n: float = 1.0) -> bool:
        self._refill(now)
        if self.tokens >= n - _ROUNDING:
            self.tokens = max(0.0, self.tokens - n)
            return True
        return False

    def next_ready(self, now: float, n: float = 1.0) -> float:
        """When `take(n)` will succeed (now, if it would now)."""
        self._refill(now)
        missing = n - self.tokens
        return now if missing <= _ROUNDING else now + missing / self.per_s

    def reshape(self, rate: Rate, now: float) -> None:
        """New rate and burst from `now` on; tokens kept, up to the new burst."""
        self._refill(now)
        self.per_s = rate.per_s
        self.burst = rate.burst
        self.tokens = min(self.tokens, rate.burst)


class RateLimits:
    """The Helper's rate limits, one bucket per limited kind, split among `helpers`."""

    def __init__(self, limits: Mapping[str, Rate], now: float, *, helpers: int = 1) -> None:
        if helpers < 1:
            raise ConfigError(f"the number of Helpers must be at least 1, got {helpers}")
        self._limits = dict(limits)
        self._helpers = helpers
        self._buckets = {kind: TokenBucket(self._share(rate), now)
                         for kind, rate in self._limits.items()}
        self._throttled_since: dict[str, float] = {}
        self._throttled_s: dict[str, float] = {}  # accumulated, not yet drained
        self._refused: dict[str, int] = {}

    @property
    def kinds(self) -> list[str]:
        return sorted(self._limits)

    def limited(self, kind: str) -> bool:
        return kind in self._buckets

    def take(self, kind: str, now: float) -> bool:
        """True when a task of `kind` may be dispatched now (and takes its token)."""
        bucket = self._buckets.get(kind)
        if bucket is None:
            return True
        if bucket.take(now):
            since = self._throttled_since.pop(kind, None)
            if since is not None:
                self._throttled_s[kind] = self._throttled_s.get(kind, 0.0) + (now - since)
            return True
        self._throttled_since.setdefault(kind, now)
        self._refused[kind] = self._refused.get(kind, 0) + 1
        return False

    def next_ready(self, kind: str, now: float) -> float:
        """When a `take(kind)` will next succeed: `now` for a kind with a token or no limit.
        The dispatcher sleeps until the earliest of its throttled kinds'."""
        bucket = self._buckets.get(kind)
        return now if bucket is None else bucket.next_ready(now)

    def idle(self, kind: str, now: float) -> None:
        """The kind has no task waiting any more (its queue emptied, or it was cancelled):
        stop counting throttled time for it."""
        since = self._throttled_since.pop(kind, None)
        if since is not None:
            self._throttled_s[kind] = self._throttled_s.get(kind, 0.0) + (now - since)

    def throttled(self) -> list[str]:
        """Kinds held back now (refused a take and not served since)."""
        return sorted(self._throttled_since)

    def drain_throttled_s(self, now: float) -> dict[str, float]:
        """Seconds each kind spent throttled since the last call (spans still going count up
        to `now`); for a counter metric."""
        out = self._throttled_s
        self._throttled_s = {}
        for kind, since in self._throttled_since.items():
            out[kind] = out.get(kind, 0.0) + (now - since)
            self._throttled_since[kind] = now
        return out

    def drain_refused(self) -> dict[str, int]:
        """Refused takes per kind since the last call."""
        out, self._refused = self._refused, {}
        return out

    def set_limit(self, kind: str, rate: Rate | None, now: float) -> None:
        """Add, change (tokens kept up to the new burst) or remove (None) a kind's limit."""
        if rate is None:
            self._limits.pop(kind, None)
            self._buckets.pop(kind, None)
            self.idle(kind, now)
            return
        self._limits[kind] = rate
        bucket = self._buckets.get(kind)
        if bucket is None:
            self._buckets[kind] = TokenBucket(self._share(rate), now)
        else:
            bucket.reshape(self._share(rate), now)

    def set_helpers(self, helpers: int, now: float) -> None:
        """Discovery counts `helpers` dispatching Helpers (this one included): each now takes
        1/helpers of every limit (see the module docstring)."""
        helpers = max(1, helpers)
        if helpers == self._helpers:
            return
        self._helpers = helpers
        for kind, rate in self._limits.items():
            self._buckets[kind].reshape(self._share(rate), now)

    def limit(self, kind: str) -> Rate | None:
        """`kind`'s whole limit, as configured (None when unlimited)."""
        return self._limits.get(kind)

    def share(self, kind: str) -> Rate | None:
        """This Helper's part of `kind`'s limit (None when unlimited)."""
        rate = self._limits.get(kind)
        return None if rate is None else self._share(rate)

    def _share(self, rate: Rate) -> Rate:
        h = self._helpers
        return Rate(per_s=rate.per_s / h, burst=max(1.0, rate.burst / h))
