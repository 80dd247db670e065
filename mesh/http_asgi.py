"""The HTTP gateway's hot routes served as bare ASGI, in front of its Starlette app.

`POST /v1/tasks/{kind}` and `GET /v1/tasks/{id}` are most of a gateway's traffic. Through
Starlette each paid its middleware stack, route matching over every route, a `Request` and a
`Response` with their header machinery: about as much CPU as the mesh side of the request
(issue 12's bench). `HotRoutes` answers just those two (a method and a one-segment path after
`/v1/tasks/`) itself, with the same endpoint functions the Starlette routes call, so the auth,
problem+json answers and metrics are the same code; every other request, and any scope with a
`root_path`, goes to Starlette unchanged.

The endpoints take a request object and return an ASGI response: `HotRequest` has what they
read of a Starlette `Request` (`headers`, `path_params`, `query_params`, `stream()`), and
`JsonAnswer` sends what Starlette's `Response` would (status, content-length, content-type,
the given headers, the body) and is served by either path.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from urllib.parse import parse_qsl

#: the prefix of the hot paths; what follows it is one path segment
TASKS_PREFIX = "/v1/tasks/"

Endpoint = Callable[["HotRequest"], Awaitable[object]]


class JsonAnswer:
    """A complete response as a bare ASGI app: one `http.response.start`, one body."""

    __slots__ = ("status_code", "body", "raw_headers")

    def __init__(self, body: bytes, status: int = 200, headers: dict[str, str] | None = None,
                 media_type: str = "application/json") -> None:
        self.status_code = status
        self.body = body
        raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()] \
            if headers else []
        raw.append((b"content-length", b"%d" % len(body)))
        raw.append((b"content-type", media_type.encode("latin-1")))
        self.raw_headers = raw

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        await send({"type": "http.response.start", "status": self.status_code,
                    "headers": self.raw_headers})
        await send({"type": "http.response.body", "body": self.body})


class HotRequest:
    """What the gateway's endpoints read of a request, built straight from the ASGI scope.

    Header names are lower case (ASGI), values latin-1 and, as in Starlette, the first of a
    repeated header wins; in the query the last value of a repeated name wins, as in
    Starlette's `QueryParams.get`."""

    __slots__ = ("scope", "_receive", "path_params", "headers", "_query")

    def __init__(self, scope: dict, receive: Callable, path_params: dict[str, str]) -> None:
        self.scope = scope
        self._receive = receive
        self.path_params = path_params
        headers: dict[str, str] = {}
        for name, value in scope["headers"]:
            key = name.decode("latin-1")
            if key not in headers:
                headers[key] = value.decode("latin-1")
        self.headers = headers
        self._query: dict[str, str] | None = None

    @property
    def query_params(self) -> dict[str, str]:
        if self._query is None:
            raw = self.scope.get("query_string", b"")
            self._query = dict(parse_qsl(raw.decode("latin-1"), keep_blank_values=True)) \
                if raw else {}
        return self._query

    async def stream(self):  # noqa: ANN201 - AsyncIterator[bytes], as Starlette's Request
        """The body's chunks; Starlette's ClientDisconnect if the caller went away first."""
        while True:
            message = await self._receive()
            if message["type"] == "http.request":
                body = message.get("body", b"")
                if body:
                    yield body
                if not message.get("more_body", False):
                    return
            elif message["type"] == "http.disconnect":
                from starlette.requests import ClientDisconnect
                raise ClientDisconnect()


class HotRoutes:
    """The ASGI app the server runs: `POST`/`GET` `/v1/tasks/{one segment}` go to `submit` /
    `status` (path parameter `kind` / `task_id`), everything else to `app` (Starlette, which
    serves the same two routes too, for scopes this class passes on). `routes` is `app`'s."""

    def __init__(self, app: Callable, submit: Endpoint, status: Endpoint) -> None:
        self.app = app
        self._submit = submit
        self._status = status

    @property
    def routes(self) -> list:
        return self.app.routes

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "http" and not scope.get("root_path"):
            path = scope["path"]
            if path.startswith(TASKS_PREFIX):
                segment = path[len(TASKS_PREFIX):]
                if segment and "/" not in segment:
                    method = scope["method"]
                    if method == "POST":
                        response = await self._submit(HotRequest(scope, receive,
                                                                 {"kind": segment}))
                        await response(scope, receive, send)
                        return
                    if method == "GET":
                        response = await self._status(HotRequest(scope, receive,
                                                                 {"task_id": segment}))
                        await response(scope, receive, send)
                        return
        await self.app(scope, receive, send)
