"""The OpenAPI 3.1 document of the HTTP gateway, written by hand: every route, its parameters,
its answers and the problem+json it may give. tests/integration/test_http_gateway.py checks
that each route the app serves is in here."""

from __future__ import annotations

_PROBLEM = {"$ref": "#/components/schemas/Problem"}


def _problems(*statuses: int) -> dict:
    text = {400: "invalid request", 401: "no valid token", 403: "the token's role may not",
            404: "unknown id", 409: "not in a state for this", 413: "body or batch too large",
            429: "queue full or too many long-polls (Retry-After)", 501: "not supported yet",
            502: "the mesh refused the gateway", 503: "no Helper answered in time (Retry-After)",
            504: "the wait ended before the task did"}
    return {str(s): {"description": text[s],
                     "content": {"application/problem+json": {"schema": _PROBLEM}}}
            for s in statuses}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_TASK_ID = {"name": "task_id", "in": "path", "required": True, "schema": {"type": "string"}}
_WAIT = {"name": "wait", "in": "query", "required": False,
         "description": "long-poll up to this many seconds for a terminal state",
         "schema": {"type": "number", "minimum": 0}}
_AUTH = [{"bearer": []}]
_STATUS = {"$ref": "#/components/schemas/TaskStatus"}
_ACCEPTED = {"$ref": "#/components/schemas/Accepted"}
_DLQ_CHANGED = _json({"type": "object", "properties": {
    "op": {"type": "string"}, "affected": {"type": "integer"}, "errors": {"type": "object"}}},
    "how many dead letters were affected")


def openapi_document(settings) -> dict:  # noqa: ANN001 - nodes.http.GatewaySettings
    paths = {
        "/v1/tasks/{kind}": {"post": {
            "summary": "Submit one task; the body is the payload (any content type)",
            "security": _AUTH,
            "parameters": [
                {"name": "kind", "in": "path", "required": True, "schema": {"type": "string"}},
                {"name": "Idempotency-Key", "in": "header", "schema": {"type": "string"},
                 "description": "the task id derives from it: a retried POST is a duplicate"},
                {"name": "X-Mesh-Priority", "in": "header", "schema": {"type": "integer"}},
                {"name": "X-Mesh-TTL", "in": "header", "schema": {"type": "number"},
                 "description": "seconds the task may wait to start; then DEAD (EXPIRED)"}],
            "requestBody": {"content": {"*/*": {"schema": {
                "type": "string", "format": "binary",
                "maxLength": settings.max_body_bytes}}}},
            "responses": {"202": {**_json(_ACCEPTED, "durable on a Helper's disk"),
                                  "headers": {"Location": {"schema": {"type": "string"}}}},
                          **_problems(400, 401, 403, 413, 429, 502, 503)}}},
        "/v1/tasks": {"post": {
            "summary": "Submit a batch; one result per item", "security": _AUTH,
            "requestBody": {"content": {"application/json": {"schema": {
                "type": "array", "maxItems": settings.max_batch,
                "items": {"$ref": "#/components/schemas/BatchItem"}}}}},
            "responses": {"200": _json({"type": "object", "properties": {"results": {
                "type": "array", "items": {"type": "object", "description":
                                           "index, status (202 or the problem's), and the "
                                           "Accepted fields or `problem`"}}}},
                "per-item results"), **_problems(400, 401, 403, 413)}}},
        "/v1/tasks/{task_id}": {
            "get": {"summary": "The task's state, attempts, timestamps, error and result",
                    "security": _AUTH, "parameters": [_TASK_ID, _WAIT],
                    "responses": {"200": _json(_STATUS, "the status"),
                                  **_problems(400, 401, 403, 404, 429, 503, 504)}},
            "delete": {"summary": "Cancel the task: a queued or running one becomes CANCELLED "
                                  "(a running one's node is told to stop it); a finished one "
                                  "answers 409", "security": _AUTH, "parameters": [_TASK_ID],
                       "responses": {"200": _json({"type": "object"}, "cancelled: id, state, "
                                                  "was_running"),
                                     **_problems(401, 403, 404, 409, 503)}}},
        "/v1/tasks/{task_id}/result": {"get": {
            "summary": "The raw result bytes of a SUCCEEDED task", "security": _AUTH,
            "parameters": [_TASK_ID, _WAIT],
            "responses": {"200": {"description": "the result", "content": {
                "application/octet-stream": {}, "application/json": {}}},
                **_problems(401, 403, 404, 409, 429, 503, 504)}}},
        "/v1/dead-letters": {"get": {
            "summary": "List dead letters (operator)", "security": _AUTH,
            "parameters": [{"name": "limit", "in": "query", "schema": {"type": "integer"}}],
            "responses": {"200": _json({"type": "object", "properties": {
                "tasks": {"type": "array", "items": _STATUS}, "errors": {"type": "object"}}},
                "dead tasks of every Helper"), **_problems(401, 403, 503)}}},
        "/v1/dead-letters/{task_id}": {"get": {
            "summary": "Inspect one dead letter (operator)", "security": _AUTH,
            "parameters": [_TASK_ID],
            "responses": {"200": _json(_STATUS, "the dead task"),
                          **_problems(401, 403, 404, 503)}}},
        "/v1/overview": {"get": {
            "summary": "What the live page shows: each Helper's stats and nodes, totals, the "
                       "queue by kind, gateway figures, and what is not available yet "
                       "(operator)", "security": _AUTH,
            "responses": {"200": _json({"type": "object"}, "the overview"),
                          **_problems(401, 403)}}},
        "/healthz": {"get": {
            "summary": "Ready when a Helper answers a cheap request in time",
            "responses": {"200": _json({"type": "object"}, "ready"), **_problems(503)}}},
        "/metrics": {"get": {"summary": "The gateway's Prometheus metrics",
                             "responses": {"200": {"description": "text exposition format"}}}},
        "/openapi.json": {"get": {"summary": "This document",
                                  "responses": {"200": {"description": "OpenAPI 3.1"}}}},
        "/": {"get": {"summary": "The live page for operators (token in the page, #token=...)",
                      "responses": {"200": {"description": "HTML"}}}},
    }
    for op in ("replay", "purge"):
        paths[f"/v1/dead-letters/{{task_id}}/{op}"] = {"post": {
            "summary": f"{op.capitalize()} one dead letter (operator)", "security": _AUTH,
            "parameters": [_TASK_ID],
            "responses": {"200": _DLQ_CHANGED, **_problems(401, 403, 404, 503)}}}
        paths[f"/v1/dead-letters/{op}"] = {"post": {
            "summary": f"{op.capitalize()} dead letters by id, or all (operator)",
            "security": _AUTH,
            "requestBody": {"content": {"application/json": {"schema": {"oneOf": [
                {"type": "object", "properties": {"ids": {"type": "array",
                                                          "items": {"type": "string"}}}},
                {"type": "object", "properties": {"all": {"const": True}}}]}}}},
            "responses": {"200": _DLQ_CHANGED, **_problems(400, 401, 403, 404, 503)}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "mesh HTTP gateway", "version": "1",
                 "description": "Submit tasks to a mesh and follow them. Errors are "
                                "application/problem+json (RFC 9457) with a `code` member."},
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Problem": {"type": "object", "required": ["type", "title", "status", "code"],
                            "properties": {"type": {"type": "string"},
                                           "title": {"type": "string"},
                                           "status": {"type": "integer"},
                                           "detail": {"type": "string"},
                                           "code": {"type": "string"}}},
                "Accepted": {"type": "object", "properties": {
                    "id": {"type": "string"}, "state": {"const": "QUEUED"},
                    "location": {"type": "string"}, "duplicate": {"type": "boolean"}}},
                "BatchItem": {"type": "object", "required": ["kind"], "properties": {
                    "kind": {"type": "string"}, "payload": {"description": "any JSON value"},
                    "payload_base64": {"type": "string"}, "priority": {"type": "integer"},
                    "ttl_s": {"type": "number"}, "idempotency_key": {"type": "string"}}},
                "TaskStatus": {"type": "object", "properties": {
                    "id": {"type": "string"}, "kind": {"type": "string"},
                    "state": {"enum": ["QUEUED", "DISPATCHED", "RUNNING", "SUCCEEDED",
                                       "DEAD"]},
                    "attempts": {"type": "integer"}, "deliveries": {"type": "integer"},
                    "priority": {"type": "integer"}, "node": {"type": ["string", "null"]},
                    "submitted_at": {"type": ["string", "null"], "format": "date-time"},
                    "finished_at": {"type": ["string", "null"], "format": "date-time"},
                    "error": {"type": "string"}, "dead_reason": {"type": "string"},
                    "result": {"description": "inline when the result is JSON"},
                    "result_url": {"type": "string"}, "result_bytes": {"type": "integer"}}},
            },
        },
    }
