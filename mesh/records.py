"""What the Helper writes to its journal, and how a replay rebuilds its task table.

Record types (the journal's `type` byte):
- TASK: a task's full state (`TaskRecord`). Written at submit and when compaction rewrites a
  live task forward. A later TASK record of the same id replaces the earlier state.
- TRANSITION: one change of a known task (`TransitionRecord`): retry scheduled, delivery lost
  with a dead node, SUCCEEDED with its result, DEAD with its reason, replayed from the DLQ.
- FORGET: the task is no longer needed (its result fell out of retention, or it was purged).

Not journaled, on purpose: DISPATCHED and RUNNING. After a restart every task that is not
terminal is queued again (the node that still holds it reports so in its heartbeat and keeps
it; otherwise it is sent again and the node's de-duplication window answers a duplicate).
Writing them would double the records per task for no recovery value.
"""

from __future__ import annotations

TASK = 1
TRANSITION = 2
FORGET = 3

# A Helper group's own records (mesh/group_log.py); a replay of the task table skips them.
POSITION = 4  # where this member's log stands: (known epoch, last index, epoch history); not replicated
NOOP = 5  # the first record of a leader's term: commits what earlier terms left (replicated)
