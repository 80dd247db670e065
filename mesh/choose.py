"""Which AI node gets the next deliveries: least loaded first (pure, no clock, no I/O).

The Helper sends only against credit (free slots plus prefetch, as each node announces). When
the queue holds more than all nodes' credit, every node is filled and the choice does not
matter. When it holds less, filling the node with the most credit first gives one node all the
work: with long tasks (AI calls of seconds) the others sit idle while that node's prefetched
deliveries wait for its slots. So each delivery goes to the node whose free credit is highest
relative to its concurrency, and nodes that tie take turns (docs/decisions/005-failure-
semantics.md, "Fair dispatch").
"""

from __future__ import annotations

import heapq


def share_credit(nodes: list[tuple[int, int]], count: int, turn: int = 0) -> list[int]:
    """Split `count` deliveries over nodes given as (available credit, concurrency).

    Deliveries are handed out one at a time, each to the node with the highest
    `(available - given) / concurrency`; among equals, the node that comes first in the order
    rotated by `turn` (so successive calls with one delivery each go round the nodes). Never
    gives a node more than its available credit. Returns the share of each node, in order.
    """
    n = len(nodes)
    shares = [0] * n
    if n == 0 or count <= 0:
        return shares
    # heap of (-free ratio, tie rank, index); a node leaves the heap when its credit is given
    heap = [(-avail / max(conc, 1), (i - turn) % n, i)
            for i, (avail, conc) in enumerate(nodes) if avail > 0]
    heapq.heapify(heap)
    while count > 0 and heap:
        _, rank, i = heapq.heappop(heap)
        shares[i] += 1
        count -= 1
        avail, conc = nodes[i]
        left = avail - shares[i]
        if left > 0:
            # after its turn, a node ranks behind the others of its new ratio (round robin)
            heapq.heappush(heap, (-left / max(conc, 1), rank + n, i))
    return shares
