"""Retry with exponential backoff and full jitter (the AWS architecture blog's "full jitter").

Full jitter spreads a burst of failures (a dependency that went down for everyone) over the
whole window instead of retrying them in lock step.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from mesh import wire


def backoff_s(attempt: int, base_s: float, cap_s: float, rng: random.Random) -> float:
    """Delay before attempt `attempt + 1` after attempt `attempt` (1-based) failed."""
    ceiling = min(cap_s, base_s * (2 ** (attempt - 1)))
    return rng.uniform(0.0, ceiling)


@dataclass(frozen=True, slots=True)
class Decision:
    retry: bool
    delay_s: float = 0.0
    dead_reason: int = 0


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    base_s: float
    cap_s: float

    def decide(self, attempt: int, max_attempts: int, error_class: int, retry_after_ms: int,
               rng: random.Random) -> Decision:
        """What to do after attempt `attempt` failed with `error_class`."""
        if error_class == wire.FATAL:
            return Decision(retry=False, dead_reason=wire.FATAL_ERROR)
        if attempt >= max_attempts:
            return Decision(retry=False, dead_reason=wire.ATTEMPTS_EXHAUSTED)
        if error_class == wire.RETRY_LATER:
            return Decision(retry=True, delay_s=retry_after_ms / 1000.0)
        return Decision(retry=True, delay_s=backoff_s(attempt, self.base_s, self.cap_s, rng))
