"""The leader -> follower record stream of a Helper group, as pure state machines.

No sockets, no files, no clock of its own: the transport (a ZeroMQ link, later) carries the
messages below, the Helper's journal makes entries durable, and `now` is passed in. The design
is in docs/decisions/009-helper-groups.md; in short:

- The leader gives every journal record an `Entry(epoch, index, ...)`: `index` grows by one per
  record across terms, `epoch` is the term's fencing token (mesh/leadership.py).
- A follower says `Hello(last_epoch, last_index)`; the leader answers `Start(truncate_after)`:
  the last index on which both logs agree (Kafka's leader-epoch rule: the end of the follower's
  last epoch in the leader's history), or `SnapshotNeeded` when the leader no longer holds the
  entries that follow it. Then `Append`s flow; the follower appends and fsyncs them and answers
  `Ack(durable_index)`.
- The leader's **commit index** is the highest index durable on the leader and on at least
  `min_replicas` followers, counting only entries of the current term (earlier entries commit
  with the first entry of the term after them, as in Raft: the wiring appends a no-op record at
  the start of each term). "Accepted" is answered once commit >= the record's index.
- Epoch fencing both ways: a follower refuses (`Refuse`) anything from an epoch older than the
  newest it has seen; a leader that sees a newer epoch (in a Hello, an Ack or a Refuse) is
  `fenced` and must stop answering "accepted".
- `recovery_quorum(group_size, min_replicas)`: before serving, a new leader hears the log ends
  of that many members (itself included) and catches up from the longest (`FailoverPlan`).
  A record committed on min_replicas + 1 members meets every such set (they add up to more
  than the group: flexible Paxos quorums), so no accepted record is lost by a failover.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from mesh.errors import ConfigError, MeshError, NotEnoughReplicas  # noqa: F401 - re-exported

# -- values on the wire ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Entry:
    """One journal record with its place in the group's log."""

    epoch: int
    index: int
    type: int
    key: bytes
    payload: bytes

    @property
    def size_bytes(self) -> int:
        return 24 + len(self.key) + len(self.payload)


@dataclass(frozen=True, slots=True)
class Hello:
    """Follower -> leader on (re)connect: the newest epoch it has seen and its durable log end.

    `reset`: the follower's log holds records past `last_index` that it cannot index (a crash
    between their append and their sync: a *dirty* log), so the stream must start it over
    from a snapshot. `last_index` is still what it durably holds: a new leader's
    `FailoverPlan` counts it, since every record the follower acked, and every record a
    leader committed before it crashed, is at or below it."""

    member_id: str
    epoch: int
    last_index: int
    last_epoch: int
    reset: bool = False


@dataclass(frozen=True, slots=True)
class Start:
    """Leader -> follower: drop entries after `truncate_after` (if any); appends follow."""

    epoch: int
    leader_id: str
    truncate_after: int


@dataclass(frozen=True, slots=True)
class Append:
    epoch: int
    leader_id: str
    prev_index: int
    prev_epoch: int
    entries: tuple[Entry, ...]
    commit_index: int


@dataclass(frozen=True, slots=True)
class SnapshotNeeded:
    """The leader no longer holds the entries after `from_index` - 1: send a snapshot."""

    member_id: str
    from_index: int


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The leader's live records as of `as_of_index` (one message or a run of chunks: `first`
    on the first, `last` on the last). The follower replaces its log with them."""

    epoch: int
    leader_id: str
    as_of_index: int
    as_of_epoch: int
    records: tuple[tuple[int, bytes, bytes], ...]  # (type, key, payload)
    first: bool = True
    last: bool = True


@dataclass(frozen=True, slots=True)
class Ack:
    member_id: str
    epoch: int
    durable_index: int


@dataclass(frozen=True, slots=True)
class Refuse:
    """Follower -> leader: your epoch is older than `epoch`, the newest I have seen."""

    member_id: str
    epoch: int
    reason: str


# -- errors ------------------------------------------------------------------------------------------


class StaleEpoch(MeshError):
    """A peer has seen a newer term: this leader is deposed and must stop answering 'accepted'."""

    def __init__(self, mine: int, newer: int) -> None:
        super().__init__(f"epoch {mine} is stale: a newer term ({newer}) exists; stop serving and follow it")
        self.mine = mine
        self.newer = newer


# -- epoch history -----------------------------------------------------------------------------------


class EpochHistory:
    """(epoch, first index) of every term in a log, ascending; persisted with the log."""

    def __init__(self, starts: Iterable[tuple[int, int]] = ()) -> None:
        self._starts: list[tuple[int, int]] = []
        for epoch, first in starts:
            self.begin(epoch, first)

    def begin(self, epoch: int, first_index: int) -> None:
        """Record that `epoch` writes from `first_index` on (a later term must start later)."""
        if self._starts:
            last_epoch, last_first = self._starts[-1]
            if epoch < last_epoch:
                raise ConfigError(f"epoch {epoch} begins after epoch {last_epoch}: epochs only grow")
            if epoch == last_epoch:
                return
            if first_index <= last_first:  # the earlier term wrote nothing: it leaves no trace
                self._starts.pop()
                return self.begin(epoch, first_index)
        self._starts.append((epoch, first_index))

    def truncate_after(self, index: int) -> None:
        while self._starts and self._starts[-1][1] > index:
            self._starts.pop()

    def first_index_of(self, epoch: int) -> int | None:
        for e, first in self._starts:
            if e == epoch:
                return first
        return None

    def epoch_at(self, index: int) -> int:
        """The epoch of the entry at `index` (0 before the first term)."""
        pos = bisect.bisect_right([first for _, first in self._starts], index) - 1
        return self._starts[pos][0] if pos >= 0 else 0

    def end_of(self, epoch: int, last_index: int) -> int:
        """The last index written in `epoch` or before, in a log that ends at `last_index`."""
        for e, first in self._starts:
            if e > epoch:
                return min(first - 1, last_index)
        return last_index

    def as_list(self) -> list[tuple[int, int]]:
        return list(self._starts)


# -- the leader ----------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Follower:
    member_id: str
    next_index: int = 0  # 0: no Start sent yet (waits for its Hello)
    acked: int = 0
    last_seen_s: float | None = None
    last_sent_s: float = float("-inf")
    in_flight_until: int = 0  # highest index sent and not yet acked


class LeaderState:
    """The leader's side: indexes, the backlog for catch-up, per-follower progress, the commit
    index and the min-replicas check. One per term (a new term builds a new one)."""

    def __init__(
        self,
        *,
        group: str,
        leader_id: str,
        epoch: int,
        followers: Iterable[str],
        min_replicas: int,
        last_index: int = 0,
        history: EpochHistory | None = None,
        backlog_bytes: int = 64 * 1024 * 1024,
        max_batch_bytes: int = 1024 * 1024,
        follower_timeout_s: float = 3.0,
        heartbeat_interval_s: float = 0.5,
        group_size: int | None = None,
        ship_on_sync: bool = False,
    ) -> None:
        self.followers = {m: _Follower(m) for m in followers if m != leader_id}
        # With group_size, followers need not be named up front: a member's first Hello adds it.
        self.max_followers = group_size - 1 if group_size is not None else len(self.followers)
        if min_replicas < 0 or min_replicas > self.max_followers:
            raise ConfigError(f"--min-replicas {min_replicas} needs that many followers; group {group!r} has "
                              f"{len(self.followers)}")
        self.group = group
        self.leader_id = leader_id
        self.epoch = epoch
        self.min_replicas = min_replicas
        self.last_index = last_index
        self.history = history or EpochHistory()
        self.history.begin(epoch, last_index + 1)
        self.term_first_index = last_index + 1
        self.leader_durable = last_index
        self.commit_index = 0
        self.backlog: deque[Entry] = deque()
        self.backlog_bytes = 0
        self.max_backlog_bytes = backlog_bytes
        self.max_batch_bytes = max_batch_bytes
        self.follower_timeout_s = follower_timeout_s
        self.heartbeat_interval_s = heartbeat_interval_s
        self.fenced_by: int | None = None
        #: with ship_on_sync, followers get entries only up to `syncing_through` (see `syncing`)
        self.ship_on_sync = ship_on_sync
        self.syncing_through = last_index

    # -- the leader's own writes --------------------------------------------------------------------

    def append(self, type: int, key: bytes, payload: bytes) -> Entry:
        """Give the next record its (epoch, index) and keep it for followers."""
        self._check_not_fenced()
        self.last_index += 1
        entry = Entry(self.epoch, self.last_index, type, key, payload)
        self.backlog.append(entry)
        self.backlog_bytes += entry.size_bytes
        while self.backlog_bytes > self.max_backlog_bytes and len(self.backlog) > 1:
            self.backlog_bytes -= self.backlog.popleft().size_bytes
        return entry

    def syncing(self, index: int) -> None:
        """The leader is making entries up to `index` durable: with ship_on_sync, followers get
        them now (and no later entry before the leader syncs it). So a follower fsyncs when the
        leader does, not once per append: records nobody waits for (results) ride along with
        the next submit's sync instead of costing the follower an fsync of their own in front
        of it."""
        self.syncing_through = max(self.syncing_through, min(index, self.last_index))

    def restore_backlog(self, entries: Iterable[Entry]) -> int:
        """Entries of earlier terms that this leader's log still holds (they must end right
        before the backlog, or at `last_index` when it is empty): followers that are behind
        catch up from them instead of a snapshot. Keeps the newest backlog_bytes. Returns how
        many were taken (0 when they do not join up)."""
        older = list(entries)
        if not older or older[-1].index != self.backlog_first_index - 1:
            return 0
        if any(b.index != a.index + 1 for a, b in zip(older, older[1:])):
            return 0
        taken = 0
        for entry in reversed(older):
            if self.backlog_bytes + entry.size_bytes > self.max_backlog_bytes and self.backlog:
                break
            self.backlog.appendleft(entry)
            self.backlog_bytes += entry.size_bytes
            taken += 1
        return taken

    def durable(self, index: int) -> int:
        """The leader's own fsync reached `index`; returns the commit index."""
        self.leader_durable = max(self.leader_durable, min(index, self.last_index))
        return self._advance()

    def check_accepting(self, now: float) -> None:
        """Raise NotEnoughReplicas when fewer than min_replicas followers are alive and in the
        stream (before journaling a submit: refuse fast rather than wait for acks that will not
        come); raise StaleEpoch once fenced."""
        self._check_not_fenced()
        alive = len(self.alive_followers(now))
        if alive < self.min_replicas:
            raise NotEnoughReplicas(alive, self.min_replicas, self.group)

    def alive_followers(self, now: float) -> list[str]:
        return [f.member_id for f in self.followers.values()
                if f.next_index > 0 and f.last_seen_s is not None and now - f.last_seen_s < self.follower_timeout_s]

    def committed(self, index: int) -> bool:
        return index <= self.commit_index

    @property
    def backlog_first_index(self) -> int:
        return self.backlog[0].index if self.backlog else self.last_index + 1

    # -- follower messages ----------------------------------------------------------------------------

    def on_hello(self, hello: Hello, now: float) -> Start | SnapshotNeeded:
        """Where the follower's log agrees with ours; it gets a Start, or needs a snapshot."""
        follower = self._follower(hello.member_id)
        self._see_epoch(hello.epoch)
        follower.last_seen_s = now
        # A follower that needs a reset holds nothing the stream can build on: from index 0.
        last_index, last_epoch = (0, 0) if hello.reset else (hello.last_index, hello.last_epoch)
        match = min(last_index, self.history.end_of(last_epoch, self.last_index))
        if match < self.backlog_first_index - 1 and match < self.last_index:
            follower.next_index = 0
            return SnapshotNeeded(hello.member_id, match + 1)
        follower.next_index = match + 1
        follower.acked = match  # durable there (a Hello reports durable entries) and agreed
        follower.in_flight_until = match
        self._advance()
        return Start(self.epoch, self.leader_id, match)

    def snapshot_sent(self, member_id: str, as_of_index: int) -> None:
        """The wiring sent a snapshot as of `as_of_index`; appends continue after it."""
        follower = self._follower(member_id)
        follower.next_index = as_of_index + 1
        follower.in_flight_until = as_of_index

    def on_ack(self, ack: Ack, now: float) -> int:
        """A follower made entries durable; returns the (maybe advanced) commit index."""
        follower = self._follower(ack.member_id)
        self._see_epoch(ack.epoch)
        if ack.epoch < self.epoch:
            return self.commit_index  # from an earlier term's stream: ignore
        follower.last_seen_s = now
        follower.acked = max(follower.acked, min(ack.durable_index, self.last_index))
        self._trim_acked()
        return self._advance()

    def on_refuse(self, refuse: Refuse) -> None:
        self._see_epoch(refuse.epoch)

    # -- what to send ---------------------------------------------------------------------------------

    def to_send(self, member_id: str, now: float) -> Append | SnapshotNeeded | None:
        """The next batch for a follower (sent entries are not sent again until it says Hello;
        with ship_on_sync only entries the leader is syncing), a heartbeat when nothing was sent
        for heartbeat_interval_s, or None."""
        follower = self._follower(member_id)
        if follower.next_index == 0 or self.fenced_by is not None:
            return None
        start = max(follower.next_index, follower.in_flight_until + 1)
        if start <= self.last_index and start < self.backlog_first_index:
            follower.next_index = 0
            return SnapshotNeeded(member_id, start)
        batch: list[Entry] = []
        size = 0
        end = self.syncing_through if self.ship_on_sync else self.last_index
        if start <= end:
            for entry in self._backlog_from(start):
                if entry.index > end or (batch and size + entry.size_bytes > self.max_batch_bytes):
                    break
                batch.append(entry)
                size += entry.size_bytes
        if not batch and now - follower.last_sent_s < self.heartbeat_interval_s:
            return None
        prev_index = start - 1
        follower.last_sent_s = now
        if batch:
            follower.in_flight_until = batch[-1].index
        return Append(self.epoch, self.leader_id, prev_index, self._epoch_at(prev_index), tuple(batch),
                      self.commit_index)

    def not_sent(self, member_id: str, append: Append) -> None:
        """The transport could not queue `append`, the last `to_send` for this follower (its
        queue is full): it was not sent. Its entries go again, from its `prev_index` on, with the
        next `to_send`; before, they counted as sent and the follower got nothing more until
        it said Hello again."""
        follower = self._follower(member_id)
        if append.entries and follower.in_flight_until == append.entries[-1].index:
            follower.in_flight_until = append.prev_index
        follower.last_sent_s = float("-inf")  # a heartbeat that did not go is due at once

    # -- internals ----------------------------------------------------------------------------------------

    def _trim_acked(self) -> None:
        """Drop the backlog's entries that every follower of the group holds durably. No
        follower needs them: one that says Hello again reports at least what it acked, and one
        that reports less has lost its log and gets a snapshot (a reset Hello, a wiped data
        directory; a wiped follower of a young group, whose backlog still began at index 1, was
        caught up from it before). Without this the backlog held up to backlog_bytes of records
        long applied everywhere (and long compacted away in the journal) for the whole term.
        Entries of compacted segments are kept while a follower lacks them: an Append must be
        contiguous, so a follower that is behind needs them, or a snapshot."""
        if not self.followers or len(self.followers) < self.max_followers:
            return  # a member not heard from in this term may be anywhere
        floor = min(f.acked for f in self.followers.values())
        backlog = self.backlog
        while backlog and backlog[0].index <= floor:
            self.backlog_bytes -= backlog.popleft().size_bytes

    def _backlog_from(self, index: int) -> Iterable[Entry]:
        offset = index - self.backlog_first_index
        for n in range(max(0, offset), len(self.backlog)):
            yield self.backlog[n]

    def _epoch_at(self, index: int) -> int:
        if self.backlog and self.backlog_first_index <= index <= self.last_index:
            return self.backlog[index - self.backlog_first_index].epoch
        return self.history.epoch_at(index)

    def _follower(self, member_id: str) -> _Follower:
        try:
            return self.followers[member_id]
        except KeyError:
            if member_id != self.leader_id and len(self.followers) < self.max_followers:
                follower = self.followers[member_id] = _Follower(member_id)
                return follower
            raise ConfigError(f"{member_id!r} is not a member of group {self.group!r}") from None

    def _see_epoch(self, epoch: int) -> None:
        if epoch > self.epoch:
            self.fenced_by = max(epoch, self.fenced_by or 0)

    def _check_not_fenced(self) -> None:
        if self.fenced_by is not None:
            raise StaleEpoch(self.epoch, self.fenced_by)

    def _advance(self) -> int:
        if self.fenced_by is not None:
            return self.commit_index
        if self.min_replicas == 0:
            candidate = self.leader_durable
        else:
            acked = sorted((f.acked for f in self.followers.values()), reverse=True)
            if len(acked) < self.min_replicas:
                return self.commit_index
            candidate = min(self.leader_durable, acked[self.min_replicas - 1])
        # Only an entry of this term commits by counting copies (earlier ones commit with it).
        if candidate >= self.term_first_index and candidate > self.commit_index:
            self.commit_index = candidate
        return self.commit_index


# -- the follower ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FollowerStep:
    """What the wiring must do for one message, in this order: persist `epoch` when
    `epoch_changed` (before any ack), drop entries after `truncate_after` (or the whole log
    when `reset`), append `records`/`entries` and fsync, then send `reply` if any (an Ack comes
    from `durable()` once the fsync is done)."""

    entries: tuple[Entry, ...] = ()
    truncate_after: int | None = None
    reset: bool = False
    snapshot_records: tuple[tuple[int, bytes, bytes], ...] = ()
    epoch_changed: bool = False
    reply: Hello | Refuse | None = None


@dataclass(slots=True)
class FollowerState:
    """A follower's side: the newest epoch seen, its log end, the leader's commit index."""

    member_id: str
    known_epoch: int = 0
    last_index: int = 0
    last_epoch: int = 0
    history: EpochHistory = field(default_factory=EpochHistory)
    commit_index: int = 0
    following: int = 0  # the epoch whose Start we took (appends of other epochs need a Hello first)
    durable_index: int = 0

    def __post_init__(self) -> None:
        self.durable_index = self.last_index

    def hello(self) -> Hello:
        return Hello(self.member_id, self.known_epoch, self.durable_index, self.history.epoch_at(self.durable_index))

    def on_start(self, start: Start) -> FollowerStep:
        if start.epoch < self.known_epoch:
            return FollowerStep(reply=self._refuse(start.epoch))
        changed = start.epoch > self.known_epoch
        self.known_epoch = start.epoch
        self.following = start.epoch
        truncate = None
        if start.truncate_after < self.last_index:
            truncate = start.truncate_after
            self.last_index = self.durable_index = start.truncate_after
            self.history.truncate_after(start.truncate_after)
            self.last_epoch = self.history.epoch_at(self.last_index)
        return FollowerStep(truncate_after=truncate, epoch_changed=changed)

    def on_append(self, append: Append) -> FollowerStep:
        if append.epoch < self.known_epoch:
            return FollowerStep(reply=self._refuse(append.epoch))
        if append.epoch != self.following:  # a new leader we have not said Hello to
            return FollowerStep(reply=self.hello())
        if append.prev_index > self.last_index:  # a gap: something was lost on the way
            return FollowerStep(reply=self.hello())
        if append.prev_index == self.last_index and append.prev_index > 0 and append.prev_epoch != self.last_epoch:
            return FollowerStep(reply=self.hello())  # logs disagree: let the leader say where
        fresh = tuple(e for e in append.entries if e.index > self.last_index)
        expected = self.last_index + 1
        for entry in fresh:
            if entry.index != expected or entry.epoch > append.epoch:
                return FollowerStep(reply=self.hello())
            expected += 1
        for entry in fresh:
            self.history.begin(entry.epoch, entry.index)
        if fresh:
            self.last_index = fresh[-1].index
            self.last_epoch = fresh[-1].epoch
        self.commit_index = max(self.commit_index, min(append.commit_index, self.last_index))
        return FollowerStep(entries=fresh)

    def on_snapshot(self, snap: Snapshot) -> FollowerStep:
        if snap.epoch < self.known_epoch:
            return FollowerStep(reply=self._refuse(snap.epoch))
        changed = snap.epoch > self.known_epoch
        self.known_epoch = max(self.known_epoch, snap.epoch)
        self.following = snap.epoch
        if snap.last:
            self.last_index = self.durable_index = snap.as_of_index
            self.last_epoch = snap.as_of_epoch
            self.history = EpochHistory([(snap.as_of_epoch, snap.as_of_index)])
        return FollowerStep(reset=snap.first, snapshot_records=snap.records, epoch_changed=changed)

    def durable(self, index: int) -> Ack:
        """Entries up to `index` are fsynced: the Ack to send."""
        self.durable_index = max(self.durable_index, min(index, self.last_index))
        return Ack(self.member_id, self.known_epoch, self.durable_index)

    def _refuse(self, epoch: int) -> Refuse:
        return Refuse(self.member_id, self.known_epoch,
                      f"epoch {epoch} is older than epoch {self.known_epoch}, the newest this follower has seen")


# -- failover ---------------------------------------------------------------------------------------------


def recovery_quorum(group_size: int, min_replicas: int) -> int:
    """How many members (the new leader included) must report their log end before it serves:
    group_size - min_replicas, so that it meets every set of min_replicas + 1 members that
    holds a committed record."""
    if group_size < 1 or not 0 <= min_replicas < group_size:
        raise ConfigError(f"--min-replicas {min_replicas} must be below the group size {group_size}")
    return group_size - min_replicas


class FailoverPlan:
    """A new leader's catch-up before it serves: collect (last_epoch, last_index) reports until
    the recovery quorum is met, then catch up from the member with the longest log."""

    def __init__(self, self_id: str, last_epoch: int, last_index: int, *, group_size: int,
                 min_replicas: int) -> None:
        self.needed = recovery_quorum(group_size, min_replicas)
        self.reports: dict[str, tuple[int, int]] = {self_id: (last_epoch, last_index)}
        self.self_id = self_id

    def report(self, member_id: str, last_epoch: int, last_index: int) -> None:
        self.reports[member_id] = (last_epoch, last_index)

    @property
    def ready(self) -> bool:
        return len(self.reports) >= self.needed

    def source(self) -> str | None:
        """The member to catch up from, or None when our own log is the longest reported."""
        best = max(self.reports.items(), key=lambda item: (item[1], item[0] == self.self_id))
        return None if best[0] == self.self_id or best[1] <= self.reports[self.self_id] else best[0]
