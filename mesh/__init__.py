"""mesh: a brokerless, durable task mesh on ZeroMQ.

A Helper journals every task before it says "accepted", dispatches against credit to AI
nodes, and finishes every accepted task through node deaths and its own restarts.
"""

from mesh.app import App, TaskContext
from mesh.client import CancelOutcome, Client, SyncClient
from mesh.errors import (
    AlreadyFinished, ConfigError, FatalError, HelperRefusedKey, InvalidTask, JournalError, MeshError, NotFound,
    PayloadTooLarge, PermissionDenied, QueueFull, RequestTimeout, RetryLater, ShuttingDown, TaskCancelled, TaskFailed, TaskRejected,
    TooManyPending, Unavailable, UnknownTaskKind, WaitTimedOut, WireError,
)
from mesh.status import TaskState, TaskStatus
from mesh.settings import AINodeSettings, HelperSettings
from mesh.version import __version__
from mesh.task import make_task, new_task_id

__all__ = [
    # building nodes
    "App", "TaskContext", "HelperSettings", "AINodeSettings",
    # submitting
    "Client", "SyncClient", "make_task", "new_task_id", "TaskStatus", "TaskState",
    "CancelOutcome",
    # errors
    "MeshError", "ConfigError", "TaskRejected", "InvalidTask", "PayloadTooLarge", "QueueFull",
    "ShuttingDown", "JournalError", "UnknownTaskKind", "NotFound", "RequestTimeout",
    "TaskFailed", "WireError", "PermissionDenied", "HelperRefusedKey", "Unavailable",
    "WaitTimedOut", "AlreadyFinished", "TaskCancelled", "TooManyPending",
    # raised by handlers
    "RetryLater", "FatalError",
]


def __getattr__(name: str):  # noqa: ANN202 - the services import the journal: load on use
    if name == "Helper":
        from mesh.helper import Helper
        return Helper
    if name == "AINode":
        from mesh.ai_node import AINode
        return AINode
    raise AttributeError(name)
