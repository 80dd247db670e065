"""The compaction index: which segment each live key still needs (loop thread only, no I/O).

A key is live from its first record until ``release(key)``. For each live key the index keeps the
oldest segment holding one of its records, and per segment the live keys whose oldest segment it
is. A sealed segment whose set is empty holds nothing anyone needs.
"""

from __future__ import annotations

#: compaction keeps at most this many sealed segments that still hold live keys
KEEP_SEALED = 2
#: a sealed segment whose live keys are at most 1/LIVE_FRACTION of its records is rewritten early
LIVE_FRACTION = 10


class LiveKeys:
    def __init__(self) -> None:
        #: live key -> oldest segment holding one of its records
        self.oldest: dict[bytes, int] = {}
        #: segment -> the live keys whose oldest segment it is (every known segment has an entry)
        self.by_segment: dict[int, set[bytes]] = {}
        #: sealed segment -> [logical size in bytes, record count]
        self.sealed: dict[int, list[int]] = {}

    def open_segment(self, seq: int) -> None:
        self.by_segment.setdefault(seq, set())

    def seal(self, seq: int, size_bytes: int, records: int) -> None:
        self.sealed[seq] = [size_bytes, records]

    def add(self, key: bytes, seq: int) -> None:
        """The first record of ``key`` since it was last released went to segment ``seq``."""
        self.oldest[key] = seq
        self.by_segment[seq].add(key)

    def release(self, key: bytes) -> None:
        seq = self.oldest.pop(key, None)
        if seq is not None:
            self.by_segment[seq].discard(key)

    def plan(self, *, can_rewrite: bool) -> tuple[list[int], int | None]:
        """What compaction should do now: the oldest sealed segments without live keys (delete as
        they are) and the next one if it is worth rewriting (see docs/decisions/001)."""
        order = sorted(self.sealed)
        index = 0
        while index < len(order) and not self.by_segment[order[index]]:
            index += 1
        empty, rewrite = order[:index], None
        if can_rewrite and index < len(order):
            seq = order[index]
            live = len(self.by_segment[seq])
            if len(order) - index > KEEP_SEALED or live * LIVE_FRACTION <= self.sealed[seq][1]:
                rewrite = seq
        return empty, rewrite

    def detach(self, key: bytes, seq: int) -> None:
        """``key`` is being rewritten out of ``seq``: its next record makes it live again."""
        self.by_segment[seq].discard(key)
        del self.oldest[key]

    def forget(self, seqs: list[int]) -> dict[int, list[int]]:
        """Drop segments scheduled for deletion; returns their [size, records] for ``restore``."""
        infos = {}
        for seq in seqs:
            infos[seq] = self.sealed.pop(seq)
            del self.by_segment[seq]
        return infos

    def restore(self, infos: dict[int, list[int]], seq: int | None, keys: list[bytes]) -> None:
        """A compaction did not happen: its segments are back, and ``keys`` (rewritten out of
        ``seq``) point at ``seq`` again if still live."""
        for dropped, info in infos.items():
            self.sealed[dropped] = info
            self.by_segment.setdefault(dropped, set())
        if seq is None:
            return
        target = self.by_segment.setdefault(seq, set())
        for key in keys:
            current = self.oldest.get(key)
            if current is not None and current > seq:
                self.by_segment[current].discard(key)
                self.oldest[key] = seq
                target.add(key)
