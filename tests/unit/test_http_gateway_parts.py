"""The HTTP gateway's pure parts: ids from idempotency keys, status views, problems, tokens,
and the HelperPool's spread and failover with fake Helpers (no sockets)."""

from __future__ import annotations

import asyncio
import os

import pytest

from mesh import wire
from mesh.errors import ConfigError, MeshError, NotFound, QueueFull
from mesh.helper_pool import HelperPool, Unavailable
from mesh.http_problem import problem_for, submit_problem
from mesh.http_tokens import HttpRole, TokenTable, permits
from mesh.http_views import iso, status_json, task_id_for_key
from mesh.task import make_task


def test_an_idempotency_key_always_gives_the_same_task_id() -> None:
    assert task_id_for_key("order-17") == task_id_for_key("order-17")
    assert task_id_for_key("order-17") != task_id_for_key("order-18")
    assert len(task_id_for_key("k")) == 32


def test_status_view_inlines_json_results_and_gives_iso_times() -> None:
    status = wire.TaskStatus(task_id="t", state=wire.SUCCEEDED, attempts=1, kind="echo",
                             result=b'{"a": 1}', submitted_ns=1_700_000_000_123_456_789)
    view = status_json(status)
    assert view["result"] == {"a": 1} and view["state"] == "SUCCEEDED"
    assert view["submitted_at"] == "2023-11-14T22:13:20.123456Z" and view["finished_at"] is None
    raw = status_json(wire.TaskStatus(task_id="t", state=wire.SUCCEEDED, result=b"\xff"))
    assert "result" not in raw and raw["result_url"] == "/v1/tasks/t/result"
    assert iso(0) is None


def test_the_accepted_body_is_the_json_of_the_accepted_view_byte_for_byte() -> None:
    import json

    from mesh.http_views import accepted_body, accepted_json

    for task_id in ("0" * 32, task_id_for_key("k"), 'odd "id"/\\ é\n'):
        for duplicate in (False, True):
            assert accepted_body(task_id, duplicate) == \
                json.dumps(accepted_json(task_id, duplicate)).encode()


def test_new_task_ids_have_the_form_of_a_uuid4_hex() -> None:
    import uuid

    from mesh.task import new_task_id

    ids = {new_task_id() for _ in range(1000)}
    assert len(ids) == 1000
    for task_id in list(ids)[:100]:
        parsed = uuid.UUID(hex=task_id)
        assert parsed.hex == task_id and parsed.version == 4
        assert parsed.variant == uuid.RFC_4122


def test_mesh_errors_map_to_problem_statuses() -> None:
    full = problem_for(QueueFull(10, 10))
    assert (full.status, full.code, full.headers["Retry-After"]) == (429, "QUEUE_FULL", "1")
    assert problem_for(NotFound("x")).status == 404
    assert problem_for(Unavailable("down")).status == 503
    assert submit_problem(wire.PAYLOAD_TOO_LARGE, "big").status == 413
    body = submit_problem(None, "nobody").body()
    assert body["status"] == 503 and body["code"] == "UNAVAILABLE" and body["type"]


def test_token_file_gives_roles_and_must_be_private(tmp_path) -> None:  # noqa: ANN001
    path = tmp_path / "tokens"
    path.write_text("# comment\nclient " + "c" * 20 + "\noperator " + "o" * 20 + "\n")
    os.chmod(path, 0o600)
    table = TokenTable.load(path)
    assert table.role_of("Bearer " + "c" * 20) is HttpRole.CLIENT
    assert table.role_of("Bearer " + "o" * 20) is HttpRole.OPERATOR
    assert table.role_of("Bearer " + "x" * 20) is None and table.role_of(None) is None
    assert permits(HttpRole.OPERATOR, HttpRole.CLIENT)
    assert not permits(HttpRole.CLIENT, HttpRole.OPERATOR)
    path.write_text('[{"role": "client", "token": "' + "j" * 20 + '"}]')
    assert TokenTable.load(path).role_of("bearer " + "j" * 20) is HttpRole.CLIENT
    path.write_text("client short\n")
    with pytest.raises(ConfigError, match="too short"):
        TokenTable.load(path)
    os.chmod(path, 0o640)
    with pytest.raises(ConfigError, match="chmod 600"):
        TokenTable.load(path)


class FakeHelper:
    """Answers like a Helper's Client; `hang` never answers (a SIGKILLed Helper)."""

    def __init__(self, endpoint: str, hang: bool = False, full: bool = False) -> None:
        self.endpoint, self.hang, self.full = endpoint, hang, full
        self.received: list[str] = []
        self.requests = 0

    async def submit_results(self, tasks: list, *, wait_s: float = 0.0,
                             timeout_s: float | None = None) -> list:
        self.received += [t.task_id for t in tasks]
        self.requests += 1
        if self.hang:  # as a Client's reply timer: Unavailable once timeout_s has passed
            await asyncio.sleep(timeout_s)
            raise Unavailable(f"no reply from the Helper at {self.endpoint} within "
                              f"{timeout_s:g}s")
        code = wire.QUEUE_FULL if self.full else wire.OK
        return [wire.SubmitResult(task_id=t.task_id, code=code) for t in tasks]

    async def statuses(self, task_ids: list[str], *, timeout_s: float | None = None) -> list:
        if self.hang:
            if timeout_s is None:  # the pool's probe bounds it itself
                await asyncio.Event().wait()
            await asyncio.sleep(timeout_s)
            raise Unavailable(f"no reply from the Helper at {self.endpoint} within "
                              f"{timeout_s:g}s")
        return [wire.TaskStatus(task_id=t, state=wire.QUEUED if t in self.received else 0)
                for t in task_ids]

    async def close(self) -> None:
        pass


def _pool(helpers: dict[str, FakeHelper], timeout_s: float = 0.5) -> HelperPool:
    return HelperPool(list(helpers), lambda endpoint, role: helpers[endpoint],
                      timeout_s=timeout_s)


def test_pool_resends_the_same_ids_to_the_next_helper_within_one_deadline() -> None:
    async def scenario() -> None:
        helpers = {"a": FakeHelper("a", hang=True), "b": FakeHelper("b")}
        pool = _pool(helpers)
        task = make_task("echo", b"x")
        loop = asyncio.get_running_loop()
        started = loop.time()
        outcome = (await pool.submit([task]))[0]
        assert outcome.code == wire.OK and outcome.helper == "b"
        assert helpers["a"].received == helpers["b"].received == [task.task_id]
        assert loop.time() - started < 0.5 and pool.failovers == 1
        assert "a" in pool.suspects
        # The suspect is asked last: the next submits go to b first.
        for _ in range(3):
            assert (await pool.submit([make_task("echo", b"y")]))[0].helper == "b"
        found = await pool.find(task.task_id)
        assert found.holders == ["b"] and found.unreachable == ["a"]
        await pool.close()
    asyncio.run(scenario())


def test_pool_spreads_submits_and_reports_unavailable_and_full() -> None:
    async def scenario() -> None:
        helpers = {"a": FakeHelper("a"), "b": FakeHelper("b")}
        pool = _pool(helpers)
        used = {(await pool.submit([make_task("echo", b"")]))[0].helper for _ in range(4)}
        assert used == {"a", "b"}
        with pytest.raises(NotFound):
            await pool.find("unknown")
        down = _pool({"a": FakeHelper("a", hang=True)}, timeout_s=0.2)
        assert (await down.submit([make_task("echo", b"")]))[0].code is None
        with pytest.raises(Unavailable):
            await down.find("unknown")
        full = _pool({"a": FakeHelper("a", full=True), "b": FakeHelper("b", full=True)})
        outcome = (await full.submit([make_task("echo", b"")]))[0]
        assert outcome.code == wire.QUEUE_FULL
        assert len(full._clients) == 2, "a full queue is tried on every Helper"
    asyncio.run(scenario())


def test_pool_sends_the_single_submits_of_one_loop_turn_as_one_request() -> None:
    async def scenario() -> None:
        helpers = {"a": FakeHelper("a"), "b": FakeHelper("b")}
        pool = _pool(helpers)
        tasks = [make_task("echo", b"%d" % i) for i in range(5)]
        outcomes = await asyncio.gather(*(pool.submit_one(t) for t in tasks))
        assert [o.task_id for o in outcomes] == [t.task_id for t in tasks]
        assert all(o.code == wire.OK for o in outcomes)
        assert helpers["a"].requests + helpers["b"].requests == 1, "one request for the turn"
        alone = await pool.submit_one(make_task("echo", b"alone"))
        assert alone.code == wire.OK
        assert helpers["a"].requests + helpers["b"].requests == 2
        # A batch still fails over as a whole, with the same ids, and each task hears its own
        # outcome; the last Helper's refusal reaches every caller of the turn.
        down = _pool({"a": FakeHelper("a", hang=True), "b": FakeHelper("b", full=True)},
                     timeout_s=0.3)
        refused = await asyncio.gather(*(down.submit_one(make_task("echo", b"")) for _ in range(3)))
        assert [o.code for o in refused] == [wire.QUEUE_FULL] * 3
        await pool.close()
        await down.close()
    asyncio.run(scenario())


def test_pool_keeps_a_turns_batch_open_while_the_turns_after_it_bring_more() -> None:
    """Requests of an HTTP gateway under load reach submit_one a turn or two apart (their
    bytes came during the turn before): they join the open batch while it grows, up to
    JOIN_TURNS turns; once a turn brings nothing the batch leaves."""
    from mesh.helper_pool import JOIN_TURNS

    async def scenario() -> None:
        helpers = {"a": FakeHelper("a")}
        pool = _pool(helpers)

        async def staggered(turns: int) -> list:
            started = []
            for _ in range(turns):
                started.append(asyncio.ensure_future(pool.submit_one(make_task("echo", b""))))
                await asyncio.sleep(0)
            return await asyncio.gather(*started)

        outcomes = await staggered(JOIN_TURNS)
        assert all(o.code == wire.OK for o in outcomes)
        assert helpers["a"].requests == 1, "submits a turn apart travel in one request"
        outcomes = await staggered(JOIN_TURNS + 3)
        assert all(o.code == wire.OK for o in outcomes)
        assert helpers["a"].requests == 3, "the batch is held at most JOIN_TURNS more turns"
        await pool.close()
    asyncio.run(scenario())


def test_a_clients_submit_gives_up_after_the_timeout_given_for_that_call() -> None:
    """The pool bounds each Helper's share of its deadline with the member Client's own reply
    timer (`submit_results(timeout_s=)`), so that timer must hold even when the Client's
    default is longer."""
    import time

    from mesh import Client
    from mesh.trust import Trust

    async def scenario() -> None:
        # nothing listens there: the request waits in the socket's queue, no reply comes
        async with Client("tcp://127.0.0.1:1", trust=Trust.plain(), timeout_s=60) as client:
            started = time.monotonic()
            with pytest.raises(Unavailable, match="within 0.2s"):
                await asyncio.wait_for(client.submit_results([make_task("echo", b"")],
                                                             timeout_s=0.2), 10)
            with pytest.raises(Unavailable, match="within 0.3s"):
                await asyncio.wait_for(client.statuses(["t"], timeout_s=0.3), 10)
            assert time.monotonic() - started < 5
        following = Client(endpoints=lambda: ["tcp://127.0.0.1:1"], trust=Trust.plain())
        with pytest.raises(ValueError, match="follows Helpers"):
            await following.submit_results([make_task("echo", b"")], timeout_s=1)
        with pytest.raises(ValueError, match="follows Helpers"):
            await following.statuses(["t"], timeout_s=1)
        await following.close()
    asyncio.run(scenario())


def test_gateway_metrics_count_a_turns_requests_at_its_end_and_a_scrape_sees_all() -> None:
    from mesh.http_metrics import GatewayMetrics

    def count(metrics: GatewayMetrics, status: str) -> float:
        return metrics.registry.get_sample_value(
            "mesh_http_requests_total", {"route": "/v1/tasks/{kind}", "method": "POST",
                                         "status": status}) or 0.0

    async def scenario() -> None:
        metrics = GatewayMetrics()
        for seconds in (0.0001, 0.0003, 0.003):
            metrics.observe("/v1/tasks/{kind}", "POST", 202, seconds)
        metrics.observe("/v1/tasks/{kind}", "POST", 429, 0.001)
        assert count(metrics, "202") == 0, "counted at the end of the turn"
        await asyncio.sleep(0)
        assert count(metrics, "202") == 3 and count(metrics, "429") == 1
        sample = metrics.registry.get_sample_value
        labels = {"route": "/v1/tasks/{kind}"}
        assert sample("mesh_http_request_seconds_bucket", {**labels, "le": "0.0002"}) == 1
        assert sample("mesh_http_request_seconds_bucket", {**labels, "le": "0.0005"}) == 2
        assert sample("mesh_http_request_seconds_count", labels) == 4
        assert abs(sample("mesh_http_request_seconds_sum", labels) - 0.0044) < 1e-9
        metrics.observe("/v1/tasks/{kind}", "POST", 202, 0.0001)
        text = metrics.exposition().decode()
        assert 'mesh_http_requests_total{method="POST",route="/v1/tasks/{kind}",status="202"} ' \
               '4.0' in text, "a scrape counts what is pending"
    asyncio.run(scenario())
    outside = GatewayMetrics()
    outside.observe("/healthz", "GET", 200, 0.001)  # no loop running: counted at once
    assert outside.registry.get_sample_value(
        "mesh_http_requests_total", {"route": "/healthz", "method": "GET", "status": "200"}) == 1


def test_recent_alerts_keep_the_last_100_newest_first_with_fields_bounded() -> None:
    from mesh import wire
    from mesh.alert_recent import RecentAlerts

    recent = RecentAlerts()

    async def feed() -> None:
        for seq in range(1, 151):
            await recent(wire.Alert(publisher_id="helper-1-alerts", seq=seq, kind="mesh.node.down",
                                    severity=wire.severity_value("error"), source="x" * 500,
                                    time_ns=1_700_000_000_000_000_000 + seq))
    asyncio.run(feed())
    kept = recent.json()
    assert len(kept) == 100 and recent.seen == 150
    assert [a["seq"] for a in kept[:2]] == [150, 149] and kept[-1]["seq"] == 51
    assert kept[0]["severity"] == "error" and kept[0]["kind"] == "mesh.node.down"
    assert len(kept[0]["source"]) == 200 and kept[0]["time"].endswith("Z")


def test_hot_routes_answer_as_the_starlette_routes_do() -> None:
    """The bare-ASGI path (mesh/http_asgi.py) in front of Starlette gives the same status,
    headers and body as Starlette's own routes for the same requests: accepted, refused by
    auth, invalid headers, unknown task, a status with its result."""
    from mesh.http_tokens import TokenTable
    from nodes.http import GatewaySettings, build_app

    class Holder(FakeHelper):
        async def statuses(self, task_ids: list[str], **_: object) -> list:
            return [wire.TaskStatus(task_id=t, kind="echo", attempts=1, result=b'{"a": 1}',
                                    state=wire.SUCCEEDED if t == "known" else 0,
                                    submitted_ns=1_700_000_000_000_000_000)
                    for t in task_ids]

    token = "c" * 20
    app = build_app(_pool({"a": Holder("a")}), GatewaySettings(),
                    TokenTable([(HttpRole.CLIENT, token)]))

    async def call(asgi, method: str, path: str, headers: dict[str, str],
                   query: bytes = b"") -> tuple:
        sent: list[dict] = []
        body = [{"type": "http.request", "body": b"{}", "more_body": False}]

        async def receive() -> dict:
            return body.pop() if body else {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            sent.append(message)
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                 "method": method, "scheme": "http", "path": path, "raw_path": path.encode(),
                 "root_path": "", "query_string": query, "client": ("127.0.0.1", 1),
                 "server": ("127.0.0.1", 8080),
                 "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]}
        await asgi(scope, receive, send)
        return sent[0]["status"], sorted(sent[0]["headers"]), sent[1]["body"]

    auth = {"Authorization": f"Bearer {token}"}
    cases = [
        ("POST", "/v1/tasks/echo", {**auth, "Idempotency-Key": "k-1",
                                    "Content-Type": "application/json"}, b""),
        ("POST", "/v1/tasks/echo", {"Idempotency-Key": "k-1"}, b""),
        ("POST", "/v1/tasks/echo", {"Authorization": "Bearer " + "x" * 20}, b""),
        ("POST", "/v1/tasks/echo", {**auth, "X-Mesh-Priority": "high"}, b""),
        ("POST", "/v1/tasks/echo", {**auth, "X-Mesh-TTL": "-1"}, b""),
        ("POST", "/v1/tasks/echo", {**auth, "Content-Length": "99999999"}, b""),
        ("GET", "/v1/tasks/known", auth, b""),
        ("GET", "/v1/tasks/unknown", auth, b""),
        ("GET", "/v1/tasks/known", auth, b"wait=abc"),
        ("GET", "/v1/tasks/known", {}, b""),
    ]

    async def scenario() -> None:
        for method, path, headers, query in cases:
            hot = await call(app, method, path, headers, query)
            starlette = await call(app.app, method, path, headers, query)
            assert hot == starlette, (method, path, headers, query)
        assert (await call(app, "POST", "/v1/tasks/echo", auth))[0] == 202
        assert (await call(app, "GET", "/v1/tasks/known", auth))[0] == 200
    asyncio.run(scenario())


class ClosableHelper(FakeHelper):
    """A hanging Helper whose client, closed by the pool, fails what waits (as mesh.Client)."""

    def __init__(self, endpoint: str) -> None:
        super().__init__(endpoint, hang=True)
        self._closed = asyncio.Event()

    async def submit_results(self, tasks: list, *, wait_s: float = 0.0,
                             timeout_s: float | None = None) -> list:
        self.received += [t.task_id for t in tasks]
        await self._closed.wait()  # closed long before timeout_s (30 s) here
        raise MeshError("client closed")

    async def close(self) -> None:
        self._closed.set()


def test_pool_gives_up_at_once_on_a_helper_that_left_discovery_while_a_submit_waited() -> None:
    """A SIGKILLed Helper answers nothing; when discovery drops it (`set_endpoints`) the submit
    waiting on it goes on at once (to no one here: not answered), not at its deadline."""
    async def scenario() -> None:
        helpers = {"a": ClosableHelper("a"), "b": FakeHelper("b")}
        pool = HelperPool(["a"], lambda endpoint, role: helpers[endpoint], timeout_s=30.0)
        loop = asyncio.get_running_loop()
        started = loop.time()
        waiting = asyncio.ensure_future(pool.submit([make_task("echo", b"x", task_id="x")]))
        await asyncio.sleep(0)
        assert helpers["a"].received == ["x"]
        await pool.set_endpoints(["b"])
        outcome = (await waiting)[0]
        assert outcome.code is None and "left discovery" in outcome.message
        assert loop.time() - started < 1.0
        assert (await pool.submit([make_task("echo", b"x", task_id="x")]))[0].helper == "b"
        await pool.close()
    asyncio.run(scenario())
