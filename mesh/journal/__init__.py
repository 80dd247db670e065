"""The write-ahead journal: durable, checksummed, compacted records of task state.

Only this package calls os.fsync / os.fdatasync in mesh.
"""

from .journal import FsyncPolicy, Journal
from .record import Record

__all__ = ["FsyncPolicy", "Journal", "Record"]
