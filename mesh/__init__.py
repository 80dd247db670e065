"""mesh: a brokerless, durable task mesh on ZeroMQ.

A Helper journals every task before it says "accepted", dispatches against credit to AI
nodes, and finishes every accepted task through node deaths and its own restarts.
"""

from typing import TYPE_CHECKING

from mesh.errors import (
    AlreadyFinished, ConfigError, FatalError, HelperRefusedKey, InvalidTask, JournalError, MeshError, NotFound,
    PayloadTooLarge, PermissionDenied, QueueFull, RequestTimeout, RetryLater, ShuttingDown, TaskCancelled, TaskFailed, TaskRejected,
    TooManyPending, Unavailable, UnknownTaskKind, WaitTimedOut, WireError,
)
from mesh.status import TaskState, TaskStatus

if TYPE_CHECKING:
    from mesh.ai_node import AINode
    from mesh.app import App, TaskContext
    from mesh.client import CancelOutcome, Client, SyncClient
    from mesh.helper import Helper
    from mesh.settings import AINodeSettings, HelperSettings
    from mesh.task import make_task, new_task_id
    from mesh.version import __version__

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


#: names loaded on first use: a process imports only what its role needs (a Helper no Client,
#: no App; an AI node no journal), which is most of a node's memory at idle
#: (bench/import_cost.py; docs/decisions/012-helper-memory.md)
_LAZY = {
    "App": "mesh.app", "TaskContext": "mesh.app",
    "Client": "mesh.client", "SyncClient": "mesh.client", "CancelOutcome": "mesh.client",
    "HelperSettings": "mesh.settings", "AINodeSettings": "mesh.settings",
    "make_task": "mesh.task", "new_task_id": "mesh.task",
    "__version__": "mesh.version",
    "Helper": "mesh.helper", "AINode": "mesh.ai_node",
}


def __getattr__(name: str):  # noqa: ANN202
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mesh' has no attribute {name!r}")
    import importlib
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
