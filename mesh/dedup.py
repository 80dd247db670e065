"""A bounded window of finished tasks and their outcome, for answering redeliveries.

Delivery is at-least-once on the wire: a Helper that declared this node dead too early, lost
an ack, or restarted sends a task again. Within the window the node answers with the stored
outcome instead of running the handler twice. Pure: no clock, no I/O.
"""

from __future__ import annotations

from collections import OrderedDict


class DedupWindow:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._outcomes: OrderedDict[str, tuple[int, object]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._outcomes)

    def remember(self, task_id: str, attempt: int, outcome: object) -> None:
        self._outcomes[task_id] = (attempt, outcome)
        self._outcomes.move_to_end(task_id)
        while len(self._outcomes) > self.capacity:
            self._outcomes.popitem(last=False)

    def lookup(self, task_id: str, attempt: int, succeeded: "callable") -> object | None:  # noqa: F821
        """The stored outcome if it answers this delivery: a success answers any attempt; a
        failure answers only a redelivery of the same attempt (a new attempt runs again)."""
        found = self._outcomes.get(task_id)
        if found is None:
            return None
        stored_attempt, outcome = found
        if succeeded(outcome) or stored_attempt == attempt:
            return outcome
        return None
