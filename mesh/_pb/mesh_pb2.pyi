from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TaskState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_STATE_UNSPECIFIED: _ClassVar[TaskState]
    QUEUED: _ClassVar[TaskState]
    DISPATCHED: _ClassVar[TaskState]
    RUNNING: _ClassVar[TaskState]
    SUCCEEDED: _ClassVar[TaskState]
    DEAD: _ClassVar[TaskState]
    CANCELLED: _ClassVar[TaskState]

class DeadReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DEAD_REASON_UNSPECIFIED: _ClassVar[DeadReason]
    ATTEMPTS_EXHAUSTED: _ClassVar[DeadReason]
    FATAL_ERROR: _ClassVar[DeadReason]
    EXPIRED: _ClassVar[DeadReason]
    UNKNOWN_KIND: _ClassVar[DeadReason]
    DELIVERY_LIMIT: _ClassVar[DeadReason]
    PAYLOAD_REJECTED: _ClassVar[DeadReason]

class AckKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ACK_KIND_UNSPECIFIED: _ClassVar[AckKind]
    STARTED: _ClassVar[AckKind]
    DONE: _ClassVar[AckKind]
    FAILED: _ClassVar[AckKind]
    REJECTED: _ClassVar[AckKind]

class ErrorClass(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ERROR_CLASS_UNSPECIFIED: _ClassVar[ErrorClass]
    RETRYABLE: _ClassVar[ErrorClass]
    FATAL: _ClassVar[ErrorClass]
    RETRY_LATER: _ClassVar[ErrorClass]
    TIMEOUT: _ClassVar[ErrorClass]
    UNKNOWN_TASK_KIND: _ClassVar[ErrorClass]
    WRONG_INCARNATION: _ClassVar[ErrorClass]
    DRAINING: _ClassVar[ErrorClass]
    MALFORMED: _ClassVar[ErrorClass]
    CANCELLED_RUN: _ClassVar[ErrorClass]
    STALE_EPOCH: _ClassVar[ErrorClass]

class ErrorCode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ERROR_CODE_UNSPECIFIED: _ClassVar[ErrorCode]
    OK: _ClassVar[ErrorCode]
    QUEUE_FULL: _ClassVar[ErrorCode]
    PAYLOAD_TOO_LARGE: _ClassVar[ErrorCode]
    JOURNAL_FAILED: _ClassVar[ErrorCode]
    MALFORMED_REQUEST: _ClassVar[ErrorCode]
    NOT_FOUND: _ClassVar[ErrorCode]
    SHUTTING_DOWN: _ClassVar[ErrorCode]
    INVALID_TASK: _ClassVar[ErrorCode]
    UNSUPPORTED_VERSION: _ClassVar[ErrorCode]
    PERMISSION_DENIED: _ClassVar[ErrorCode]
    ALREADY_FINISHED: _ClassVar[ErrorCode]
    NOT_ENOUGH_REPLICAS: _ClassVar[ErrorCode]

class DeadLetterOp(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DEAD_LETTER_OP_UNSPECIFIED: _ClassVar[DeadLetterOp]
    LIST: _ClassVar[DeadLetterOp]
    INSPECT: _ClassVar[DeadLetterOp]
    REPLAY: _ClassVar[DeadLetterOp]
    PURGE: _ClassVar[DeadLetterOp]

class Severity(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SEVERITY_UNSPECIFIED: _ClassVar[Severity]
    INFO: _ClassVar[Severity]
    WARNING: _ClassVar[Severity]
    ERROR: _ClassVar[Severity]
    CRITICAL: _ClassVar[Severity]
TASK_STATE_UNSPECIFIED: TaskState
QUEUED: TaskState
DISPATCHED: TaskState
RUNNING: TaskState
SUCCEEDED: TaskState
DEAD: TaskState
CANCELLED: TaskState
DEAD_REASON_UNSPECIFIED: DeadReason
ATTEMPTS_EXHAUSTED: DeadReason
FATAL_ERROR: DeadReason
EXPIRED: DeadReason
UNKNOWN_KIND: DeadReason
DELIVERY_LIMIT: DeadReason
PAYLOAD_REJECTED: DeadReason
ACK_KIND_UNSPECIFIED: AckKind
STARTED: AckKind
DONE: AckKind
FAILED: AckKind
REJECTED: AckKind
ERROR_CLASS_UNSPECIFIED: ErrorClass
RETRYABLE: ErrorClass
FATAL: ErrorClass
RETRY_LATER: ErrorClass
TIMEOUT: ErrorClass
UNKNOWN_TASK_KIND: ErrorClass
WRONG_INCARNATION: ErrorClass
DRAINING: ErrorClass
MALFORMED: ErrorClass
CANCELLED_RUN: ErrorClass
STALE_EPOCH: ErrorClass
ERROR_CODE_UNSPECIFIED: ErrorCode
OK: ErrorCode
QUEUE_FULL: ErrorCode
PAYLOAD_TOO_LARGE: ErrorCode
JOURNAL_FAILED: ErrorCode
MALFORMED_REQUEST: ErrorCode
NOT_FOUND: ErrorCode
SHUTTING_DOWN: ErrorCode
INVALID_TASK: ErrorCode
UNSUPPORTED_VERSION: ErrorCode
PERMISSION_DENIED: ErrorCode
ALREADY_FINISHED: ErrorCode
NOT_ENOUGH_REPLICAS: ErrorCode
DEAD_LETTER_OP_UNSPECIFIED: DeadLetterOp
LIST: DeadLetterOp
INSPECT: DeadLetterOp
REPLAY: DeadLetterOp
PURGE: DeadLetterOp
SEVERITY_UNSPECIFIED: Severity
INFO: Severity
WARNING: Severity
ERROR: Severity
CRITICAL: Severity

class Task(_message.Message):
    __slots__ = ("task_id", "kind", "payload", "priority", "idempotency_key", "max_attempts", "deadline_ns", "run_timeout_ms", "submitted_ns", "headers")
    class HeadersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    MAX_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_NS_FIELD_NUMBER: _ClassVar[int]
    RUN_TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    SUBMITTED_NS_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    kind: str
    payload: bytes
    priority: int
    idempotency_key: str
    max_attempts: int
    deadline_ns: int
    run_timeout_ms: int
    submitted_ns: int
    headers: _containers.ScalarMap[str, str]
    def __init__(self, task_id: _Optional[str] = ..., kind: _Optional[str] = ..., payload: _Optional[bytes] = ..., priority: _Optional[int] = ..., idempotency_key: _Optional[str] = ..., max_attempts: _Optional[int] = ..., deadline_ns: _Optional[int] = ..., run_timeout_ms: _Optional[int] = ..., submitted_ns: _Optional[int] = ..., headers: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Dispatch(_message.Message):
    __slots__ = ("task", "attempt", "delivery", "incarnation", "reply_to", "helper_id", "helper_incarnation", "replays")
    TASK_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    DELIVERY_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    REPLY_TO_FIELD_NUMBER: _ClassVar[int]
    HELPER_ID_FIELD_NUMBER: _ClassVar[int]
    HELPER_INCARNATION_FIELD_NUMBER: _ClassVar[int]
    REPLAYS_FIELD_NUMBER: _ClassVar[int]
    task: Task
    attempt: int
    delivery: int
    incarnation: int
    reply_to: str
    helper_id: str
    helper_incarnation: int
    replays: int
    def __init__(self, task: _Optional[_Union[Task, _Mapping]] = ..., attempt: _Optional[int] = ..., delivery: _Optional[int] = ..., incarnation: _Optional[int] = ..., reply_to: _Optional[str] = ..., helper_id: _Optional[str] = ..., helper_incarnation: _Optional[int] = ..., replays: _Optional[int] = ...) -> None: ...

class DispatchBatch(_message.Message):
    __slots__ = ("version", "dispatches", "sent_ns", "seq", "reply_to", "helper_incarnation", "cancel_task_ids", "group", "group_epoch")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DISPATCHES_FIELD_NUMBER: _ClassVar[int]
    SENT_NS_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    REPLY_TO_FIELD_NUMBER: _ClassVar[int]
    HELPER_INCARNATION_FIELD_NUMBER: _ClassVar[int]
    CANCEL_TASK_IDS_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    GROUP_EPOCH_FIELD_NUMBER: _ClassVar[int]
    version: int
    dispatches: _containers.RepeatedCompositeFieldContainer[Dispatch]
    sent_ns: int
    seq: int
    reply_to: str
    helper_incarnation: int
    cancel_task_ids: _containers.RepeatedScalarFieldContainer[str]
    group: str
    group_epoch: int
    def __init__(self, version: _Optional[int] = ..., dispatches: _Optional[_Iterable[_Union[Dispatch, _Mapping]]] = ..., sent_ns: _Optional[int] = ..., seq: _Optional[int] = ..., reply_to: _Optional[str] = ..., helper_incarnation: _Optional[int] = ..., cancel_task_ids: _Optional[_Iterable[str]] = ..., group: _Optional[str] = ..., group_epoch: _Optional[int] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("task_id", "delivery", "kind", "result", "error", "error_class", "retry_after_ms", "started_ns", "finished_ns", "from_dedup", "attempt", "dependency", "lost")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    DELIVERY_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ERROR_CLASS_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    STARTED_NS_FIELD_NUMBER: _ClassVar[int]
    FINISHED_NS_FIELD_NUMBER: _ClassVar[int]
    FROM_DEDUP_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    DEPENDENCY_FIELD_NUMBER: _ClassVar[int]
    LOST_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    delivery: int
    kind: AckKind
    result: bytes
    error: str
    error_class: ErrorClass
    retry_after_ms: int
    started_ns: int
    finished_ns: int
    from_dedup: bool
    attempt: int
    dependency: str
    lost: bool
    def __init__(self, task_id: _Optional[str] = ..., delivery: _Optional[int] = ..., kind: _Optional[_Union[AckKind, str]] = ..., result: _Optional[bytes] = ..., error: _Optional[str] = ..., error_class: _Optional[_Union[ErrorClass, str]] = ..., retry_after_ms: _Optional[int] = ..., started_ns: _Optional[int] = ..., finished_ns: _Optional[int] = ..., from_dedup: _Optional[bool] = ..., attempt: _Optional[int] = ..., dependency: _Optional[str] = ..., lost: _Optional[bool] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("node_id", "incarnation", "task_endpoint", "concurrency", "credit", "running", "held_task_ids", "sent_ns", "draining", "kinds", "beat", "helper_incarnation", "received", "dispatch_seq", "max_message_bytes", "version", "kinds_full")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    TASK_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    CREDIT_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    HELD_TASK_IDS_FIELD_NUMBER: _ClassVar[int]
    SENT_NS_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    KINDS_FIELD_NUMBER: _ClassVar[int]
    BEAT_FIELD_NUMBER: _ClassVar[int]
    HELPER_INCARNATION_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_FIELD_NUMBER: _ClassVar[int]
    DISPATCH_SEQ_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    KINDS_FULL_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    incarnation: int
    task_endpoint: str
    concurrency: int
    credit: int
    running: int
    held_task_ids: _containers.RepeatedScalarFieldContainer[str]
    sent_ns: int
    draining: bool
    kinds: _containers.RepeatedScalarFieldContainer[str]
    beat: int
    helper_incarnation: int
    received: int
    dispatch_seq: int
    max_message_bytes: int
    version: str
    kinds_full: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, node_id: _Optional[str] = ..., incarnation: _Optional[int] = ..., task_endpoint: _Optional[str] = ..., concurrency: _Optional[int] = ..., credit: _Optional[int] = ..., running: _Optional[int] = ..., held_task_ids: _Optional[_Iterable[str]] = ..., sent_ns: _Optional[int] = ..., draining: _Optional[bool] = ..., kinds: _Optional[_Iterable[str]] = ..., beat: _Optional[int] = ..., helper_incarnation: _Optional[int] = ..., received: _Optional[int] = ..., dispatch_seq: _Optional[int] = ..., max_message_bytes: _Optional[int] = ..., version: _Optional[str] = ..., kinds_full: _Optional[_Iterable[str]] = ...) -> None: ...

class AckBatch(_message.Message):
    __slots__ = ("version", "heartbeat", "acks")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    ACKS_FIELD_NUMBER: _ClassVar[int]
    version: int
    heartbeat: Heartbeat
    acks: _containers.RepeatedCompositeFieldContainer[Ack]
    def __init__(self, version: _Optional[int] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., acks: _Optional[_Iterable[_Union[Ack, _Mapping]]] = ...) -> None: ...

class SubmitRequest(_message.Message):
    __slots__ = ("tasks", "wait_ms")
    TASKS_FIELD_NUMBER: _ClassVar[int]
    WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[Task]
    wait_ms: int
    def __init__(self, tasks: _Optional[_Iterable[_Union[Task, _Mapping]]] = ..., wait_ms: _Optional[int] = ...) -> None: ...

class SubmitResult(_message.Message):
    __slots__ = ("task_id", "code", "message", "duplicate")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    code: ErrorCode
    message: str
    duplicate: bool
    def __init__(self, task_id: _Optional[str] = ..., code: _Optional[_Union[ErrorCode, str]] = ..., message: _Optional[str] = ..., duplicate: _Optional[bool] = ...) -> None: ...

class SubmitReply(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[SubmitResult]
    def __init__(self, results: _Optional[_Iterable[_Union[SubmitResult, _Mapping]]] = ...) -> None: ...

class TaskStatus(_message.Message):
    __slots__ = ("task_id", "state", "attempts", "deliveries", "node_id", "result", "error", "dead_reason", "submitted_ns", "finished_ns", "kind", "priority", "payload", "payload_bytes", "history", "cancelled_ns")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    DELIVERIES_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    DEAD_REASON_FIELD_NUMBER: _ClassVar[int]
    SUBMITTED_NS_FIELD_NUMBER: _ClassVar[int]
    FINISHED_NS_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_BYTES_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    CANCELLED_NS_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    state: TaskState
    attempts: int
    deliveries: int
    node_id: str
    result: bytes
    error: str
    dead_reason: DeadReason
    submitted_ns: int
    finished_ns: int
    kind: str
    priority: int
    payload: bytes
    payload_bytes: int
    history: _containers.RepeatedCompositeFieldContainer[Attempt]
    cancelled_ns: int
    def __init__(self, task_id: _Optional[str] = ..., state: _Optional[_Union[TaskState, str]] = ..., attempts: _Optional[int] = ..., deliveries: _Optional[int] = ..., node_id: _Optional[str] = ..., result: _Optional[bytes] = ..., error: _Optional[str] = ..., dead_reason: _Optional[_Union[DeadReason, str]] = ..., submitted_ns: _Optional[int] = ..., finished_ns: _Optional[int] = ..., kind: _Optional[str] = ..., priority: _Optional[int] = ..., payload: _Optional[bytes] = ..., payload_bytes: _Optional[int] = ..., history: _Optional[_Iterable[_Union[Attempt, _Mapping]]] = ..., cancelled_ns: _Optional[int] = ...) -> None: ...

class Attempt(_message.Message):
    __slots__ = ("attempt", "node_id", "error", "at_ns", "outcome")
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    AT_NS_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    attempt: int
    node_id: str
    error: str
    at_ns: int
    outcome: str
    def __init__(self, attempt: _Optional[int] = ..., node_id: _Optional[str] = ..., error: _Optional[str] = ..., at_ns: _Optional[int] = ..., outcome: _Optional[str] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ("task_ids",)
    TASK_IDS_FIELD_NUMBER: _ClassVar[int]
    task_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, task_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class ResultRequest(_message.Message):
    __slots__ = ("task_id", "wait_ms")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    wait_ms: int
    def __init__(self, task_id: _Optional[str] = ..., wait_ms: _Optional[int] = ...) -> None: ...

class DeadLetterRequest(_message.Message):
    __slots__ = ("op", "task_ids", "limit")
    OP_FIELD_NUMBER: _ClassVar[int]
    TASK_IDS_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    op: DeadLetterOp
    task_ids: _containers.RepeatedScalarFieldContainer[str]
    limit: int
    def __init__(self, op: _Optional[_Union[DeadLetterOp, str]] = ..., task_ids: _Optional[_Iterable[str]] = ..., limit: _Optional[int] = ...) -> None: ...

class DeadLetterReply(_message.Message):
    __slots__ = ("tasks", "affected")
    TASKS_FIELD_NUMBER: _ClassVar[int]
    AFFECTED_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[TaskStatus]
    affected: int
    def __init__(self, tasks: _Optional[_Iterable[_Union[TaskStatus, _Mapping]]] = ..., affected: _Optional[int] = ...) -> None: ...

class StatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CancelRequest(_message.Message):
    __slots__ = ("task_ids",)
    TASK_IDS_FIELD_NUMBER: _ClassVar[int]
    task_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, task_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class CancelResult(_message.Message):
    __slots__ = ("task_id", "code", "state", "was_running")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    WAS_RUNNING_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    code: ErrorCode
    state: TaskState
    was_running: bool
    def __init__(self, task_id: _Optional[str] = ..., code: _Optional[_Union[ErrorCode, str]] = ..., state: _Optional[_Union[TaskState, str]] = ..., was_running: _Optional[bool] = ...) -> None: ...

class CancelReply(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[CancelResult]
    def __init__(self, results: _Optional[_Iterable[_Union[CancelResult, _Mapping]]] = ...) -> None: ...

class NodesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class NodeInfo(_message.Message):
    __slots__ = ("node_id", "endpoint", "state", "credit", "concurrency", "held", "running", "version", "last_beat_age_ms", "inflight", "kinds")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CREDIT_FIELD_NUMBER: _ClassVar[int]
    CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    LAST_BEAT_AGE_MS_FIELD_NUMBER: _ClassVar[int]
    INFLIGHT_FIELD_NUMBER: _ClassVar[int]
    KINDS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    endpoint: str
    state: str
    credit: int
    concurrency: int
    held: int
    running: int
    version: str
    last_beat_age_ms: int
    inflight: int
    kinds: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, node_id: _Optional[str] = ..., endpoint: _Optional[str] = ..., state: _Optional[str] = ..., credit: _Optional[int] = ..., concurrency: _Optional[int] = ..., held: _Optional[int] = ..., running: _Optional[int] = ..., version: _Optional[str] = ..., last_beat_age_ms: _Optional[int] = ..., inflight: _Optional[int] = ..., kinds: _Optional[_Iterable[str]] = ...) -> None: ...

class KindQueue(_message.Message):
    __slots__ = ("kind", "depth", "oldest_age_ms")
    KIND_FIELD_NUMBER: _ClassVar[int]
    DEPTH_FIELD_NUMBER: _ClassVar[int]
    OLDEST_AGE_MS_FIELD_NUMBER: _ClassVar[int]
    kind: str
    depth: int
    oldest_age_ms: int
    def __init__(self, kind: _Optional[str] = ..., depth: _Optional[int] = ..., oldest_age_ms: _Optional[int] = ...) -> None: ...

class RateLimitInfo(_message.Message):
    __slots__ = ("kind", "per_s", "burst", "limit_per_s", "held")
    KIND_FIELD_NUMBER: _ClassVar[int]
    PER_S_FIELD_NUMBER: _ClassVar[int]
    BURST_FIELD_NUMBER: _ClassVar[int]
    LIMIT_PER_S_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    kind: str
    per_s: float
    burst: float
    limit_per_s: float
    held: bool
    def __init__(self, kind: _Optional[str] = ..., per_s: _Optional[float] = ..., burst: _Optional[float] = ..., limit_per_s: _Optional[float] = ..., held: _Optional[bool] = ...) -> None: ...

class CircuitInfo(_message.Message):
    __slots__ = ("name", "scope", "state", "failures", "calls", "probe_in_ms")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    CALLS_FIELD_NUMBER: _ClassVar[int]
    PROBE_IN_MS_FIELD_NUMBER: _ClassVar[int]
    name: str
    scope: str
    state: str
    failures: int
    calls: int
    probe_in_ms: int
    def __init__(self, name: _Optional[str] = ..., scope: _Optional[str] = ..., state: _Optional[str] = ..., failures: _Optional[int] = ..., calls: _Optional[int] = ..., probe_in_ms: _Optional[int] = ...) -> None: ...

class NodesReply(_message.Message):
    __slots__ = ("nodes", "queues", "retry_waiting", "rate_limits", "circuits")
    NODES_FIELD_NUMBER: _ClassVar[int]
    QUEUES_FIELD_NUMBER: _ClassVar[int]
    RETRY_WAITING_FIELD_NUMBER: _ClassVar[int]
    RATE_LIMITS_FIELD_NUMBER: _ClassVar[int]
    CIRCUITS_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[NodeInfo]
    queues: _containers.RepeatedCompositeFieldContainer[KindQueue]
    retry_waiting: int
    rate_limits: _containers.RepeatedCompositeFieldContainer[RateLimitInfo]
    circuits: _containers.RepeatedCompositeFieldContainer[CircuitInfo]
    def __init__(self, nodes: _Optional[_Iterable[_Union[NodeInfo, _Mapping]]] = ..., queues: _Optional[_Iterable[_Union[KindQueue, _Mapping]]] = ..., retry_waiting: _Optional[int] = ..., rate_limits: _Optional[_Iterable[_Union[RateLimitInfo, _Mapping]]] = ..., circuits: _Optional[_Iterable[_Union[CircuitInfo, _Mapping]]] = ...) -> None: ...

class StatsReply(_message.Message):
    __slots__ = ("values",)
    class ValuesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.ScalarMap[str, float]
    def __init__(self, values: _Optional[_Mapping[str, float]] = ...) -> None: ...

class ClientRequest(_message.Message):
    __slots__ = ("version", "request_id", "submit", "status", "result", "dead_letter", "stats", "cancel", "nodes")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SUBMIT_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    DEAD_LETTER_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    version: int
    request_id: int
    submit: SubmitRequest
    status: StatusRequest
    result: ResultRequest
    dead_letter: DeadLetterRequest
    stats: StatsRequest
    cancel: CancelRequest
    nodes: NodesRequest
    def __init__(self, version: _Optional[int] = ..., request_id: _Optional[int] = ..., submit: _Optional[_Union[SubmitRequest, _Mapping]] = ..., status: _Optional[_Union[StatusRequest, _Mapping]] = ..., result: _Optional[_Union[ResultRequest, _Mapping]] = ..., dead_letter: _Optional[_Union[DeadLetterRequest, _Mapping]] = ..., stats: _Optional[_Union[StatsRequest, _Mapping]] = ..., cancel: _Optional[_Union[CancelRequest, _Mapping]] = ..., nodes: _Optional[_Union[NodesRequest, _Mapping]] = ...) -> None: ...

class ClientReply(_message.Message):
    __slots__ = ("version", "request_id", "code", "message", "submit", "status", "dead_letter", "stats", "cancel", "nodes")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    SUBMIT_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    DEAD_LETTER_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    version: int
    request_id: int
    code: ErrorCode
    message: str
    submit: SubmitReply
    status: StatusReply
    dead_letter: DeadLetterReply
    stats: StatsReply
    cancel: CancelReply
    nodes: NodesReply
    def __init__(self, version: _Optional[int] = ..., request_id: _Optional[int] = ..., code: _Optional[_Union[ErrorCode, str]] = ..., message: _Optional[str] = ..., submit: _Optional[_Union[SubmitReply, _Mapping]] = ..., status: _Optional[_Union[StatusReply, _Mapping]] = ..., dead_letter: _Optional[_Union[DeadLetterReply, _Mapping]] = ..., stats: _Optional[_Union[StatsReply, _Mapping]] = ..., cancel: _Optional[_Union[CancelReply, _Mapping]] = ..., nodes: _Optional[_Union[NodesReply, _Mapping]] = ...) -> None: ...

class StatusReply(_message.Message):
    __slots__ = ("statuses",)
    STATUSES_FIELD_NUMBER: _ClassVar[int]
    statuses: _containers.RepeatedCompositeFieldContainer[TaskStatus]
    def __init__(self, statuses: _Optional[_Iterable[_Union[TaskStatus, _Mapping]]] = ...) -> None: ...

class TaskRecord(_message.Message):
    __slots__ = ("task", "state", "attempts", "deliveries", "result", "error", "dead_reason", "finished_ns", "not_before_ns", "node_id", "history", "replays")
    TASK_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    DELIVERIES_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    DEAD_REASON_FIELD_NUMBER: _ClassVar[int]
    FINISHED_NS_FIELD_NUMBER: _ClassVar[int]
    NOT_BEFORE_NS_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    REPLAYS_FIELD_NUMBER: _ClassVar[int]
    task: Task
    state: TaskState
    attempts: int
    deliveries: int
    result: bytes
    error: str
    dead_reason: DeadReason
    finished_ns: int
    not_before_ns: int
    node_id: str
    history: _containers.RepeatedCompositeFieldContainer[Attempt]
    replays: int
    def __init__(self, task: _Optional[_Union[Task, _Mapping]] = ..., state: _Optional[_Union[TaskState, str]] = ..., attempts: _Optional[int] = ..., deliveries: _Optional[int] = ..., result: _Optional[bytes] = ..., error: _Optional[str] = ..., dead_reason: _Optional[_Union[DeadReason, str]] = ..., finished_ns: _Optional[int] = ..., not_before_ns: _Optional[int] = ..., node_id: _Optional[str] = ..., history: _Optional[_Iterable[_Union[Attempt, _Mapping]]] = ..., replays: _Optional[int] = ...) -> None: ...

class TransitionRecord(_message.Message):
    __slots__ = ("task_id", "state", "attempts", "deliveries", "result", "error", "dead_reason", "at_ns", "not_before_ns", "node_id")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    DELIVERIES_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    DEAD_REASON_FIELD_NUMBER: _ClassVar[int]
    AT_NS_FIELD_NUMBER: _ClassVar[int]
    NOT_BEFORE_NS_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    state: TaskState
    attempts: int
    deliveries: int
    result: bytes
    error: str
    dead_reason: DeadReason
    at_ns: int
    not_before_ns: int
    node_id: str
    def __init__(self, task_id: _Optional[str] = ..., state: _Optional[_Union[TaskState, str]] = ..., attempts: _Optional[int] = ..., deliveries: _Optional[int] = ..., result: _Optional[bytes] = ..., error: _Optional[str] = ..., dead_reason: _Optional[_Union[DeadReason, str]] = ..., at_ns: _Optional[int] = ..., not_before_ns: _Optional[int] = ..., node_id: _Optional[str] = ...) -> None: ...

class Alert(_message.Message):
    __slots__ = ("version", "publisher_id", "publisher_epoch", "seq", "kind", "severity", "source", "time_ns", "payload", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PUBLISHER_ID_FIELD_NUMBER: _ClassVar[int]
    PUBLISHER_EPOCH_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SEVERITY_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    TIME_NS_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    version: int
    publisher_id: str
    publisher_epoch: int
    seq: int
    kind: str
    severity: Severity
    source: str
    time_ns: int
    payload: bytes
    labels: _containers.ScalarMap[str, str]
    def __init__(self, version: _Optional[int] = ..., publisher_id: _Optional[str] = ..., publisher_epoch: _Optional[int] = ..., seq: _Optional[int] = ..., kind: _Optional[str] = ..., severity: _Optional[_Union[Severity, str]] = ..., source: _Optional[str] = ..., time_ns: _Optional[int] = ..., payload: _Optional[bytes] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ReplayRequest(_message.Message):
    __slots__ = ("version", "publisher_id", "from_seq", "to_seq")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PUBLISHER_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_SEQ_FIELD_NUMBER: _ClassVar[int]
    TO_SEQ_FIELD_NUMBER: _ClassVar[int]
    version: int
    publisher_id: str
    from_seq: int
    to_seq: int
    def __init__(self, version: _Optional[int] = ..., publisher_id: _Optional[str] = ..., from_seq: _Optional[int] = ..., to_seq: _Optional[int] = ...) -> None: ...

class ReplayReply(_message.Message):
    __slots__ = ("version", "alerts", "publisher_epoch", "first_available_seq", "last_seq")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ALERTS_FIELD_NUMBER: _ClassVar[int]
    PUBLISHER_EPOCH_FIELD_NUMBER: _ClassVar[int]
    FIRST_AVAILABLE_SEQ_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    version: int
    alerts: _containers.RepeatedCompositeFieldContainer[Alert]
    publisher_epoch: int
    first_available_seq: int
    last_seq: int
    def __init__(self, version: _Optional[int] = ..., alerts: _Optional[_Iterable[_Union[Alert, _Mapping]]] = ..., publisher_epoch: _Optional[int] = ..., first_available_seq: _Optional[int] = ..., last_seq: _Optional[int] = ...) -> None: ...
