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
        #: task id -> ((replays, attempt) of the run that made the outcome, the outcome)
        self._outcomes: OrderedDict[str, tuple[tuple[int, int], object]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._outcomes)

    def remember(self, task_id: str, attempt: int, outcome: object, replays: int = 0) -> None:
        self._outcomes[task_id] = ((replays, attempt), outcome)
        self._outcomes.move_to_end(task_id)
        while len(self._outcomes) > self.capacity:
            self._outcomes.popitem(last=False)

    def lookup(self, task_id: str, attempt: int, succeeded: "callable",  # noqa: F821
               replays: int = 0) -> object | None:
        """The stored outcome if it answers this delivery: a success answers any attempt; a
        failure answers only a redelivery of the same attempt of the same replay (a new
        attempt runs again, and so does an operator's replay of a dead letter, whose attempts
        start again at 1)."""
        found = self._outcomes.get(task_id)
        if found is None:
            return None
        run, outcome = found
        if succeeded(outcome) or run == (replays, attempt):
            return outcome
        return None
