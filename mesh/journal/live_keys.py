"""The compaction index: which segment each live key still needs, and how many bytes of it
(loop thread only, no I/O).

A key is live from its first record until ``release(key)``. For each live key the index keeps the
oldest segment holding one of its records and the bytes of its records in that segment; per
segment, the live keys whose oldest segment it is and the sum of those bytes (its *live bytes*:
about what a rewrite of the segment costs). A sealed segment whose key set is empty holds
nothing anyone needs.

Compaction rule (docs/decisions/001): segments are deleted only from the oldest end. A prefix
of sealed segments is rewritten only when the live bytes it holds are at most
``REWRITE_LIVE_FRACTION`` of the bytes its deletion frees (the prefix itself plus the run of
segments without live keys right after it). So every byte a rewrite writes frees at least
1/REWRITE_LIVE_FRACTION bytes, which bounds the write amplification to
1 / (1 - REWRITE_LIVE_FRACTION), and a journal where nothing is released never rewrites anything.
"""

from __future__ import annotations

#: a prefix of sealed segments is rewritten only if its live bytes are at most this fraction
#: of the bytes its deletion frees
REWRITE_LIVE_FRACTION = 0.5


class LiveKeys:
    def __init__(self) -> None:
        #: live key -> oldest segment holding one of its records
        self.oldest: dict[bytes, int] = {}
        #: live key -> bytes of its records in its oldest segment
        self.key_bytes: dict[bytes, int] = {}
        #: segment -> the live keys whose oldest segment it is (every known segment has an entry)
        self.by_segment: dict[int, set[bytes]] = {}
        #: segment -> sum of key_bytes of the keys in by_segment[seq]
        self.live_bytes: dict[int, int] = {}
        #: sealed segment -> [logical size in bytes, record count]
        self.sealed: dict[int, list[int]] = {}
        #: a rewrite plan in progress: rewrite every sealed segment up to this one (see plan)
        self.rewrite_through: int | None = None

    def open_segment(self, seq: int) -> None:
        self.by_segment.setdefault(seq, set())
        self.live_bytes.setdefault(seq, 0)

    def seal(self, seq: int, size_bytes: int, records: int) -> None:
        self.sealed[seq] = [size_bytes, records]

    def add(self, key: bytes, seq: int, size: int = 0) -> None:
        """The first record of ``key`` since it was last released (``size`` bytes) went to ``seq``."""
        self.oldest[key] = seq
        self.key_bytes[key] = size
        self.by_segment[seq].add(key)
        self.live_bytes[seq] += size

    def grow(self, key: bytes, seq: int, size: int) -> None:
        """Another record of ``key`` (``size`` bytes) went to ``seq``, its oldest segment."""
        self.key_bytes[key] += size
        self.live_bytes[seq] += size

    def release(self, key: bytes) -> None:
        seq = self.oldest.pop(key, None)
        if seq is not None:
            self.by_segment[seq].discard(key)
            self.live_bytes[seq] -= self.key_bytes.pop(key)

    def plan(self, *, can_rewrite: bool) -> tuple[list[int], int | None]:
        """What compaction should do now: the oldest sealed segments without live keys (delete
        as they are) and the next one to rewrite, if any.

        A rewrite is planned for the shortest prefix of the remaining sealed segments whose live
        bytes are at most REWRITE_LIVE_FRACTION of what deleting it frees (its size plus the run
        of key-less segments right after it); the plan is kept (``rewrite_through``) until every
        segment of the prefix is rewritten, one per call, so the bound holds for the whole of it.
        """
        order = sorted(self.sealed)
        index = 0
        while index < len(order) and not self.by_segment[order[index]]:
            index += 1
        empty, rewrite = order[:index], None
        if not can_rewrite or index == len(order):
            if index == len(order):
                self.rewrite_through = None
            return empty, None
        first = order[index]
        if self.rewrite_through is not None and first <= self.rewrite_through:
            return empty, first
        self.rewrite_through = None
        cost = freed = 0
        i = index
        while i < len(order):
            seq = order[i]
            cost += self.live_bytes[seq]
            freed += self.sealed[seq][0]
            i += 1
            while i < len(order) and not self.by_segment[order[i]]:
                freed += self.sealed[order[i]][0]
                i += 1
            if cost <= REWRITE_LIVE_FRACTION * freed:
                self.rewrite_through = seq
                rewrite = first
                break
        return empty, rewrite

    def detach(self, key: bytes, seq: int) -> int:
        """``key`` is being rewritten out of ``seq``: its next record makes it live again.
        Returns its bytes in ``seq`` (for ``restore``)."""
        self.by_segment[seq].discard(key)
        del self.oldest[key]
        size = self.key_bytes.pop(key)
        self.live_bytes[seq] -= size
        return size

    def forget(self, seqs: list[int]) -> dict[int, list[int]]:
        """Drop segments scheduled for deletion; returns their [size, records] for ``restore``."""
        infos = {}
        for seq in seqs:
            infos[seq] = self.sealed.pop(seq)
            del self.by_segment[seq]
            del self.live_bytes[seq]
        return infos

    def restore(self, infos: dict[int, list[int]], seq: int | None, keys: list[tuple[bytes, int]]) -> None:
        """A compaction did not happen: its segments are back, and ``keys`` (rewritten out of
        ``seq``, with their bytes there) point at ``seq`` again if still live."""
        for dropped, info in infos.items():
            self.sealed[dropped] = info
            self.by_segment.setdefault(dropped, set())
            self.live_bytes.setdefault(dropped, 0)
        self.rewrite_through = None
        if seq is None:
            return
        target = self.by_segment.setdefault(seq, set())
        self.live_bytes.setdefault(seq, 0)
        for key, size in keys:
            current = self.oldest.get(key)
            if current is not None and current > seq:
                self.by_segment[current].discard(key)
                self.live_bytes[current] -= self.key_bytes[key]
                self.oldest[key] = seq
                self.key_bytes[key] = size
                target.add(key)
                self.live_bytes[seq] += size
