"""The result long-polls a Helper holds: bounded in all and per client, each with a deadline.

A long-poll (`ResultRequest` with `wait_ms`) is answered when its task ends, when its deadline
passes, or never, if its client is gone: then it is dropped as soon as the Helper learns that
(a reply or a probe to that client's identity finds no route). Bounds: at most `max_total`
held at once, at most `max_per_client` for one client identity; past either, a new long-poll
is refused at once (the caller may poll, or wait for fewer tasks at once). Pure bookkeeping:
the Helper owns the socket and the clock.
"""

from __future__ import annotations

import heapq
import itertools


class Waiter:
    __slots__ = ("identity", "request_id", "task_id", "deadline", "live")

    def __init__(self, identity: bytes, request_id: int, task_id: str, deadline: float) -> None:
        self.identity = identity
        self.request_id = request_id
        self.task_id = task_id
        self.deadline = deadline
        self.live = True


class ResultWaiters:
    def __init__(self, max_total: int, max_per_client: int) -> None:
        self.max_total = max_total
        self.max_per_client = max_per_client
        self._by_task: dict[str, dict[Waiter, None]] = {}  # an ordered set per task
        self._by_client: dict[bytes, set[Waiter]] = {}
        self._deadlines: list[tuple[float, int, Waiter]] = []
        self._order = itertools.count()
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def clients(self) -> list[bytes]:
        return list(self._by_client)

    def has_task(self, task_id: str) -> bool:
        return task_id in self._by_task

    def refusal(self, identity: bytes) -> str | None:
        """Why one more long-poll from this client cannot be held now (None: it can)."""
        if self._count >= self.max_total:
            return (f"the Helper holds {self._count} result waits, its limit "
                    f"(max_result_waiters={self.max_total}); poll the status, or retry later")
        mine = len(self._by_client.get(identity, ()))
        if mine >= self.max_per_client:
            return (f"this client holds {mine} result waits, the limit per client "
                    f"(max_result_waiters_per_client={self.max_per_client}); wait for fewer "
                    "tasks at once")
        return None

    def add(self, identity: bytes, request_id: int, task_id: str, deadline: float) -> bool:
        """Hold one long-poll (the caller checked `refusal`). True if it is the task's first."""
        waiter = Waiter(identity, request_id, task_id, deadline)
        waiters = self._by_task.get(task_id)
        first = waiters is None
        if first:
            waiters = self._by_task[task_id] = {}
        waiters[waiter] = None
        self._by_client.setdefault(identity, set()).add(waiter)
        heapq.heappush(self._deadlines, (deadline, next(self._order), waiter))
        self._count += 1
        return first

    def take_task(self, task_id: str) -> list[Waiter]:
        """Every long-poll on this task, no longer held (the task ended)."""
        waiters = list(self._by_task.pop(task_id, None) or ())
        for waiter in waiters:
            self._release(waiter)
        self._compact()
        return waiters

    def expired(self, now: float) -> list[Waiter]:
        """The long-polls whose deadline passed, no longer held."""
        out = []
        heap = self._deadlines
        while heap and heap[0][0] <= now:
            waiter = heapq.heappop(heap)[2]
            if waiter.live:
                self._unlink(waiter)
                out.append(waiter)
        return out

    def drop_client(self, identity: bytes) -> list[Waiter]:
        """Every long-poll of a client that is gone, no longer held."""
        waiters = list(self._by_client.get(identity, ()))
        for waiter in waiters:
            self._unlink(waiter)
        self._compact()
        return waiters

    def clear(self) -> list[Waiter]:
        out = [w for ws in self._by_task.values() for w in ws]
        self._by_task.clear()
        self._by_client.clear()
        self._deadlines.clear()
        self._count = 0
        return out

    def _unlink(self, waiter: Waiter) -> None:
        waiters = self._by_task.get(waiter.task_id)
        if waiters is not None:
            waiters.pop(waiter, None)
            if not waiters:
                del self._by_task[waiter.task_id]
        self._release(waiter)

    def _release(self, waiter: Waiter) -> None:
        waiter.live = False
        self._count -= 1
        mine = self._by_client.get(waiter.identity)
        if mine is not None:
            mine.discard(waiter)
            if not mine:
                del self._by_client[waiter.identity]

    def _compact(self) -> None:
        """Answered waiters stay in the deadline heap until their deadline; rebuild it when
        they outnumber the live ones, so the heap stays within twice the bound."""
        heap = self._deadlines
        if len(heap) > 2 * self._count + 1024:
            self._deadlines = [item for item in heap if item[2].live]
            heapq.heapify(self._deadlines)
