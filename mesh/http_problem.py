"""HTTP problem details (RFC 9457) for the gateway, and the one table from mesh errors to them.

Every error the gateway answers is `application/problem+json` with `type`, `title`, `status`,
`detail` and a `code` member: the wire `ErrorCode` name when the Helper said it (QUEUE_FULL,
PAYLOAD_TOO_LARGE, NOT_FOUND, ...), else a gateway name (UNAVAILABLE, WAIT_TIMEOUT,
UNAUTHORIZED, ...). Clients branch on `status` and `code`, never on the text.
"""

from __future__ import annotations

import json

from mesh.errors import (
    AlreadyFinished, HelperRefusedKey, InvalidTask, JournalError, MeshError, NotFound, PayloadTooLarge,
    PermissionDenied, QueueFull, RequestTimeout, ShuttingDown, TaskRejected, UnsupportedVersion,
    WireError,
)

PROBLEM_JSON = "application/problem+json"

_TITLES = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
           405: "Method Not Allowed", 409: "Conflict", 413: "Content Too Large",
           429: "Too Many Requests", 500: "Internal Server Error", 501: "Not Implemented",
           502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}


class Problem(Exception):
    """An HTTP error answer. `extra` members are added to the body (e.g. the task's state);
    `headers` to the response (Retry-After, WWW-Authenticate)."""

    def __init__(self, status: int, code: str, detail: str, *,
                 headers: dict[str, str] | None = None, **extra: object) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = headers or {}
        self.extra = extra

    def body(self) -> dict:
        return {"type": f"urn:mesh:problem:{self.code.lower().replace('_', '-')}",
                "title": _TITLES.get(self.status, "Error"), "status": self.status,
                "detail": self.detail, "code": self.code, **self.extra}

    def encode(self) -> bytes:
        return json.dumps(self.body()).encode()


def retry_later(status: int, code: str, detail: str, retry_after_s: int = 1,
                **extra: object) -> Problem:
    return Problem(status, code, detail, headers={"Retry-After": str(retry_after_s)}, **extra)


def problem_for(exc: MeshError) -> Problem:
    """The HTTP answer for an error a Helper (or the Client) raised."""
    detail = str(exc)
    # Order matters: subclasses before their bases.
    if isinstance(exc, QueueFull):
        return retry_later(429, "QUEUE_FULL", detail)
    if isinstance(exc, PayloadTooLarge):
        return Problem(413, "PAYLOAD_TOO_LARGE", detail)
    if isinstance(exc, ShuttingDown):
        return retry_later(503, "SHUTTING_DOWN", detail)
    if isinstance(exc, InvalidTask | TaskRejected):
        return Problem(400, "INVALID_TASK", detail)
    if isinstance(exc, NotFound):
        return Problem(404, "NOT_FOUND", detail)
    if isinstance(exc, AlreadyFinished):
        state = getattr(exc, "state", None)
        return Problem(409, "ALREADY_FINISHED", detail,
                       **({"state": state.name} if state is not None else {}))
    if isinstance(exc, JournalError):
        return retry_later(503, "JOURNAL_FAILED", detail)
    if isinstance(exc, HelperRefusedKey):
        return retry_later(503, "HELPER_REFUSED_KEY", detail)
    if isinstance(exc, RequestTimeout):
        return retry_later(503, "UNAVAILABLE", detail)
    if isinstance(exc, PermissionDenied):
        # The gateway's own mesh key lacks the role: the operator of the gateway must fix it.
        return Problem(502, "PERMISSION_DENIED", detail)
    if isinstance(exc, UnsupportedVersion):
        return Problem(502, "UNSUPPORTED_VERSION", detail)
    if isinstance(exc, WireError):
        return Problem(502, "MALFORMED_REQUEST", detail)
    return Problem(502, "MESH_ERROR", detail)


#: wire ErrorCode value -> (HTTP status, code name) for a per-task submit result
SUBMIT_CODES: dict[int, tuple[int, str]] = {
    2: (429, "QUEUE_FULL"), 3: (413, "PAYLOAD_TOO_LARGE"), 4: (503, "JOURNAL_FAILED"),
    5: (400, "MALFORMED_REQUEST"), 7: (503, "SHUTTING_DOWN"), 8: (400, "INVALID_TASK"),
    9: (502, "UNSUPPORTED_VERSION"), 10: (502, "PERMISSION_DENIED"),
}


def submit_problem(code: int | None, message: str) -> Problem:
    """The answer for one task a submit did not accept; `code` None: no Helper answered."""
    if code is None:
        return retry_later(503, "UNAVAILABLE", message)
    status, name = SUBMIT_CODES.get(code, (502, "MESH_ERROR"))
    if status in (429, 503):
        return retry_later(status, name, message)
    return Problem(status, name, message)
