"""The mesh's error tree.

Every error names what happened, with which value, and what to do about it. Errors that cross
the wire carry the numeric `code` of `ErrorCode` in proto/mesh.proto, so a client can rebuild
the same typed error from a reply and tests can assert on it.
"""

from __future__ import annotations


class MeshError(Exception):
    """Base of every error the mesh raises on purpose."""

    #: the wire ErrorCode value this error travels as (see proto/mesh.proto)
    code: int = 0


class ConfigError(MeshError):
    """A setting is out of range or inconsistent; raised once, at construction."""


class InUse(MeshError):
    """Another live process owns what this one was asked to own (a Helper's data dir, an AI
    node's id). `holder_pid` is the owner's pid when it is known, else None."""

    def __init__(self, message: str, *, resource: str, holder_pid: int | None = None) -> None:
        super().__init__(message)
        self.resource = resource
        self.holder_pid = holder_pid


class UsageError(ConfigError):
    """A command was started without something it needs (e.g. `mesh ai` without --app)."""


class AppLoadError(ConfigError):
    """The user's App could not be loaded: its module does not import, or the name is not an
    App. The message is one line naming the spec and the cause."""


class AddressInUse(MeshError):
    """An endpoint to bind is taken by another process."""

    def __init__(self, endpoint: str, message: str | None = None) -> None:
        super().__init__(message or f"{endpoint} is in use by another process; stop it or "
                                    "choose another port")
        self.endpoint = endpoint


class WireError(MeshError):
    """A frame could not be read: malformed, oversized or of an unsupported protocol version."""

    code = 5  # MALFORMED_REQUEST


class UnsupportedVersion(WireError):
    code = 9

    def __init__(self, got: int, supported: int) -> None:
        super().__init__(
            f"protocol version {got} is not supported (this node speaks {supported}); "
            "upgrade the older side"
        )
        self.got = got
        self.supported = supported


class TaskRejected(MeshError):
    """The Helper refused a task; nothing was stored."""

    code = 8  # INVALID_TASK


class InvalidTask(TaskRejected):
    code = 8


class KindNotServed(InvalidTask):
    """A submit for a kind no AI node has announced since the Helper started, refused with
    --refuse-unknown-kinds (instead of waiting unroutable_grace_s to go DEAD)."""

    def __init__(self, kind: str, announced: set[str] | frozenset[str] = frozenset()) -> None:
        listed = ", ".join(sorted(announced)[:20]) or "none yet"
        super().__init__(f"no AI node has served task kind {kind[:100]!r} since this Helper "
                         f"started (kinds announced: {listed}); check the kind, or start a node "
                         "whose app has a handler for it")
        self.kind = kind


class PayloadTooLarge(TaskRejected):
    code = 3

    def __init__(self, size_bytes: int, limit_bytes: int, message: str | None = None) -> None:
        super().__init__(
            message or f"payload of {size_bytes} bytes exceeds the limit of {limit_bytes} bytes; "
            "store large inputs elsewhere and pass a reference"
        )
        self.size_bytes = size_bytes
        self.limit_bytes = limit_bytes


class QueueFull(TaskRejected):
    """The Helper's pending queue is at its bound; retry later or submit with a wait."""

    code = 2

    def __init__(self, depth: int, limit: int, what: str = "tasks") -> None:
        super().__init__(
            f"pending queue is full ({depth} of {limit} {what}); slow down, add AI nodes, "
            "or submit with wait_s to wait for room"
        )
        self.depth = depth
        self.limit = limit


class ShuttingDown(TaskRejected):
    code = 7

    def __init__(self) -> None:
        super().__init__("the Helper is shutting down and takes no new tasks; submit to another")


class StoppedLeading(ShuttingDown):
    """A Helper group's leader ended its term (a clean stop, a lost lock, a newer epoch) while
    the task waited for its followers: it was not accepted here. On the wire it is SHUTTING_DOWN
    (nothing stored, send it elsewhere): the client resends the same id to the new leader. Not a
    journal failure: nothing went wrong with a disk."""

    def __init__(self, reason: str) -> None:
        TaskRejected.__init__(
            self, f"not accepted: this Helper stopped leading its group ({reason}); submit "
                  "again with the same task id (to the group's leader)")
        self.reason = reason


class NotEnoughReplicas(TaskRejected):
    """Fewer followers of the Helper group are in sync than --min-replicas: the task was not
    accepted (nothing of it counts as durable); retry later, or start/repair a follower."""

    code = 20  # NOT_ENOUGH_REPLICAS

    def __init__(self, alive: int, needed: int, group: str = "") -> None:
        where = f" of group {group!r}" if group else ""
        super().__init__(
            f"only {alive} follower(s){where} are in sync, {needed} needed (--min-replicas {needed}): "
            "the task was not accepted; start or repair a follower, or run with --min-replicas 0 "
            "to accept on the leader alone"
        )
        self.alive = alive
        self.needed = needed


class JournalError(MeshError):
    """The journal could not make a record durable (disk full, I/O error, corrupt state).

    A submit that gets this error was NOT accepted: nothing of it is on disk and the submitter
    must retry. Nothing accepted before is lost.
    """

    code = 4


class UnknownTaskKind(MeshError):
    def __init__(self, kind: str, known: list[str] | tuple[str, ...] = ()) -> None:
        listed = ", ".join(sorted(known)) or "none"
        super().__init__(f"no handler for task kind {kind!r} (known kinds: {listed})")
        self.kind = kind


class NotFound(MeshError):
    code = 6

    def __init__(self, task_id: str) -> None:
        super().__init__(f"task {task_id!r} is not known to this Helper")
        self.task_id = task_id


class PermissionDenied(MeshError):
    """The Helper refused a request: the key it came with has no role that may do it (e.g. a
    client key asking to purge dead letters). The message names the operation and the role
    that would allow it."""

    code = 10  # PERMISSION_DENIED


class HelperRefusedKey(MeshError):
    """The Helper refused this client's key at the CURVE handshake: it is not in the Helper's
    allow-list for the role, or the Helper is not the server the client pinned. Nothing was
    sent. The message names the public key file to copy."""


class RequestTimeout(MeshError):
    """No reply within the caller's deadline. For a submit this means: outcome unknown, resubmit
    with the same task id (it is idempotent)."""


class TooManyPending(MeshError):
    """`Client.submit_nowait` with `max_pending` submits already waiting for their answers.
    Nothing was sent: await `Client.submit_async` (it waits for room) or `Client.flush()`."""


class Unavailable(RequestTimeout):
    """No Helper answered within the deadline (or none could take the request); the message
    names each Helper tried and why. Like any RequestTimeout of a submit: outcome unknown,
    submit again with the same task id."""


class WaitTimedOut(RequestTimeout):
    """A wait for a task's end passed with the task not terminal; `status` is the last one
    seen (None when unknown). The task goes on: ask again."""

    def __init__(self, task_id: str, wait_s: float, status=None) -> None:  # noqa: ANN001
        from mesh import wire
        state = wire.state_name(status.state) if status is not None else "not finished"
        super().__init__(f"task {task_id} is still {state} after {wait_s:g}s; ask again")
        self.task_id = task_id
        self.status = status


class AlreadyFinished(MeshError):
    """Cancel of a task that is terminal already (SUCCEEDED, DEAD or CANCELLED)."""

    code = 11  # ALREADY_FINISHED


class TaskFailed(MeshError):
    """`Client.result()` of a task that ended DEAD."""

    def __init__(self, task_id: str, reason: str, error: str) -> None:
        super().__init__(f"task {task_id} is dead ({reason}): {error or 'no error text'}")
        self.task_id = task_id
        self.reason = reason
        self.error = error


class TaskCancelled(TaskFailed):
    """`Client.result()` of a task that was cancelled."""

    def __init__(self, task_id: str) -> None:
        MeshError.__init__(self, f"task {task_id} was cancelled")
        self.task_id = task_id
        self.reason = "CANCELLED"
        self.error = ""


# Handler-side signals: raised by user handlers to steer the retry policy.


class RetryLater(Exception):
    """Raise from a handler to retry after `delay_s`, not after the policy's backoff."""

    def __init__(self, delay_s: float, message: str = "") -> None:
        super().__init__(message or f"retry requested in {delay_s}s")
        self.delay_s = delay_s


class FatalError(Exception):
    """Raise from a handler to fail the task at once: no retry, straight to the dead letters."""


_BY_CODE: dict[int, type[MeshError]] = {
    2: QueueFull,
    3: PayloadTooLarge,
    4: JournalError,
    5: WireError,
    6: NotFound,
    7: ShuttingDown,
    8: InvalidTask,
    9: UnsupportedVersion,
    10: PermissionDenied,
    11: AlreadyFinished,
    20: NotEnoughReplicas,
}


def error_from_code(code: int, message: str) -> MeshError:
    """Rebuild a typed error from a wire reply (the message is the Helper's own text)."""
    cls = _BY_CODE.get(code, MeshError)
    err = cls.__new__(cls)
    MeshError.__init__(err, message)
    return err
