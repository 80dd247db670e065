"""The write-ahead journal: durable, checksummed, compacted records of task state.

Only this package calls os.fsync / os.fdatasync in mesh. `replace` swaps a journal directory
for a new one so that a crash leaves one whole journal (a group follower's reset).
"""

from . import replace
from .journal import FsyncPolicy, Journal
from .record import Record
from .recovery import DamagedRange, RecoveryReport

__all__ = ["DamagedRange", "FsyncPolicy", "Journal", "Record", "RecoveryReport", "replace"]
