"""The HTTP gateway (`mesh http`) against a running mesh: real Helper, AI node and gateway
processes on loopback, driven with httpx."""

from __future__ import annotations

import asyncio
import itertools
import os
import sys
import time
from pathlib import Path

import httpx
import pytest

from mesh.http_tokens import TokenTable
from mesh.errors import ConfigError
from tests.integration.http_procs import start_gateway, write_tokens
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(180)

PROBLEM = "application/problem+json"
#: extra flags for every Helper and gateway (empty: the default CURVE links)
HELPER_FLAGS: tuple[str, ...] = ()
GATEWAY_FLAGS: tuple[str, ...] = ()


def _nodes_seen(http: httpx.Client, count: int, timeout_s: float = 20.0) -> None:
    def enough() -> bool:
        return http.get("/v1/overview").json()["totals"].get("nodes", 0) >= count
    wait_until(enough, timeout_s, interval_s=0.1, what=f"{count} AI nodes seen by the Helpers")


def _mesh(cluster, *helper_flags: str, ai_nodes: int = 1, gateway_flags: tuple = (),  # noqa: ANN001
          tokens_file: str | None = None) -> str:
    cluster.start_helper(*HELPER_FLAGS, *helper_flags)
    for _ in range(ai_nodes):
        cluster.start_ai()
    gateway = start_gateway(cluster, [cluster.intake], *GATEWAY_FLAGS, *gateway_flags,
                            tokens_file=tokens_file)
    return gateway.ready["url"]


def test_submit_answers_202_and_location_and_a_retried_post_is_the_same_task(cluster) -> None:  # noqa: ANN001
    url = _mesh(cluster)
    with httpx.Client(base_url=url, timeout=30) as http:
        _nodes_seen(http, 1)
        first = http.post("/v1/tasks/echo", content=b'{"hello": "mesh"}',
                          headers={"Content-Type": "application/json",
                                   "Idempotency-Key": "order-17", "X-Mesh-Priority": "5",
                                   "X-Mesh-TTL": "60"})
        assert first.status_code == 202, first.text
        task_id = first.json()["id"]
        assert first.json()["state"] == "QUEUED"
        assert first.headers["location"] == f"/v1/tasks/{task_id}"
        again = http.post("/v1/tasks/echo", content=b'{"hello": "mesh"}',
                          headers={"Idempotency-Key": "order-17"})
        assert again.status_code == 202 and again.json()["id"] == task_id
        assert again.json()["duplicate"] is True

        done = http.get(first.headers["location"], params={"wait": 20})
        assert done.status_code == 200, done.text
        body = done.json()
        assert body["state"] == "SUCCEEDED" and body["attempts"] == 1
        assert body["result"] == {"hello": "mesh"}, "a JSON result is inline"
        assert body["priority"] == 5
        assert body["submitted_at"].endswith("Z") and body["finished_at"] >= body["submitted_at"]
        raw = http.get(f"/v1/tasks/{task_id}/result")
        assert raw.status_code == 200 and raw.content == b'{"hello": "mesh"}'

        binary = http.post("/v1/tasks/echo", content=b"\x00\xffraw")
        status = http.get(binary.headers["location"], params={"wait": 20}).json()
        assert "result" not in status and status["result_bytes"] == 5
        assert http.get(status["result_url"]).content == b"\x00\xffraw"

        unknown = http.get("/v1/tasks/no-such-task")
        assert unknown.status_code == 404
        assert unknown.headers["content-type"] == PROBLEM
        assert unknown.json()["code"] == "NOT_FOUND" and unknown.json()["status"] == 404
        cancel = http.delete(f"/v1/tasks/{task_id}")  # finished: nothing left to cancel
        assert cancel.status_code == 409 and cancel.headers["content-type"] == PROBLEM
        bad = http.post("/v1/tasks/echo", content=b"x", headers={"X-Mesh-TTL": "soon"})
        assert bad.status_code == 400 and bad.headers["content-type"] == PROBLEM

        batch = http.post("/v1/tasks", json=[
            {"kind": "echo", "payload": {"n": 1}, "idempotency_key": "batch-1"},
            {"kind": "echo", "payload_base64": "aGk=", "priority": 2},
            {"payload": "no kind"}])
        assert batch.status_code == 200, batch.text
        results = batch.json()["results"]
        assert [r["status"] for r in results] == [202, 202, 400]
        assert results[2]["problem"]["code"] == "INVALID_TASK"
        for r in results[:2]:
            assert http.get(r["location"], params={"wait": 20}).json()["state"] == "SUCCEEDED"
        assert http.get(f"{results[1]['location']}/result").content == b"hi"
        retry = http.post("/v1/tasks", json=[{"kind": "echo", "payload": {"n": 1},
                                              "idempotency_key": "batch-1"}])
        assert retry.json()["results"][0]["id"] == results[0]["id"]

        metrics = http.get("/metrics").text
        assert 'mesh_http_requests_total{method="POST",route="/v1/tasks/{kind}",status="202"}' \
            in metrics
        assert "mesh_http_request_seconds_bucket" in metrics
        assert http.get("/healthz").status_code == 200


def test_long_poll_answers_when_done_and_504_when_the_wait_ends_first(cluster) -> None:  # noqa: ANN001
    url = _mesh(cluster, gateway_flags=("--max-wait", "30"))
    with httpx.Client(base_url=url, timeout=30) as http:
        _nodes_seen(http, 1)
        slow = http.post("/v1/tasks/simulate", json={"ms": 1500}).json()["id"]
        started = time.monotonic()
        early = http.get(f"/v1/tasks/{slow}", params={"wait": 0.3})
        assert early.status_code == 504 and early.json()["code"] == "WAIT_TIMEOUT"
        assert early.json()["state"] in ("QUEUED", "DISPATCHED", "RUNNING")
        assert time.monotonic() - started < 3
        done = http.get(f"/v1/tasks/{slow}", params={"wait": 20})
        assert done.status_code == 200 and done.json()["state"] == "SUCCEEDED"
        assert http.get(f"/v1/tasks/{slow}", params={"wait": 31}).status_code == 400


def test_oversized_body_is_refused_with_413(cluster) -> None:  # noqa: ANN001
    url = _mesh(cluster, ai_nodes=0, gateway_flags=("--max-body-bytes", "1000"))
    with httpx.Client(base_url=url, timeout=30) as http:
        declared = http.post("/v1/tasks/echo", content=b"x" * 1001)
        assert declared.status_code == 413 and declared.headers["content-type"] == PROBLEM
        assert declared.json()["code"] == "PAYLOAD_TOO_LARGE"

        sent = [0]

        def chunks():  # no Content-Length: refused while streaming, past the limit
            for _ in range(64):
                sent[0] += 1
                yield b"y" * 512
        streamed = http.post("/v1/tasks/echo", content=chunks())
        assert streamed.status_code == 413
        assert http.post("/v1/tasks/echo", content=b"x" * 1000).status_code == 202
        too_many = http.post("/v1/tasks", json=[{"kind": "echo"}] * 1001)
        assert too_many.status_code == 413 and too_many.json()["code"] == "BATCH_TOO_LARGE"


def test_full_queue_answers_429_with_retry_after(cluster) -> None:  # noqa: ANN001
    url = _mesh(cluster, "--max-pending", "3", ai_nodes=0)
    with httpx.Client(base_url=url, timeout=30) as http:
        answers = [http.post("/v1/tasks/echo", content=b"x") for _ in range(5)]
        assert [a.status_code for a in answers] == [202, 202, 202, 429, 429]
        full = answers[-1]
        assert full.headers["content-type"] == PROBLEM
        assert full.json()["code"] == "QUEUE_FULL" and int(full.headers["retry-after"]) >= 1


def test_every_helper_down_answers_503_within_3_s(cluster) -> None:  # noqa: ANN001
    helper = cluster.start_helper(*HELPER_FLAGS)
    second = cluster.start_helper(*HELPER_FLAGS, helper_id="helper-2")
    gateway = start_gateway(cluster, [helper.ready["intake"], second.ready["intake"]],
                            *GATEWAY_FLAGS)
    with httpx.Client(base_url=gateway.ready["url"], timeout=30) as http:
        assert http.get("/healthz").status_code == 200
        helper.kill()
        second.kill()
        for attempt in range(3):
            started = time.monotonic()
            answer = http.post("/v1/tasks/echo", content=b"x")
            elapsed = time.monotonic() - started
            assert answer.status_code == 503, answer.text
            assert answer.json()["code"] == "UNAVAILABLE" and "retry-after" in answer.headers
            assert elapsed < 3.5, f"503 after {elapsed:.2f}s (attempt {attempt})"
        started = time.monotonic()
        health = http.get("/healthz")
        assert health.status_code == 503 and time.monotonic() - started < 3.5
        assert http.get("/v1/tasks/some-id").status_code == 503


def test_tokens_carry_roles_and_a_loose_token_file_is_refused(cluster, tmp_path) -> None:  # noqa: ANN001
    tokens = write_tokens(tmp_path)
    url = _mesh(cluster, ai_nodes=0, tokens_file=tokens["file"])
    client = {"Authorization": f"Bearer {tokens['client']}"}
    operator = {"Authorization": f"Bearer {tokens['operator']}"}
    with httpx.Client(base_url=url, timeout=30) as http:
        anonymous = http.post("/v1/tasks/echo", content=b"x")
        assert anonymous.status_code == 401 and anonymous.json()["code"] == "UNAUTHORIZED"
        assert anonymous.headers["www-authenticate"].startswith("Bearer")
        wrong = http.post("/v1/tasks/echo", content=b"x",
                          headers={"Authorization": "Bearer " + "z" * 32})
        assert wrong.status_code == 401
        assert http.post("/v1/tasks/echo", content=b"x", headers=client).status_code == 202
        denied = http.get("/v1/dead-letters", headers=client)
        assert denied.status_code == 403 and denied.json()["code"] == "FORBIDDEN"
        assert http.get("/v1/dead-letters", headers=operator).status_code == 200
        assert http.get("/v1/overview", headers=operator).json()["totals"]["queued"] == 1
        assert http.post("/v1/tasks/echo", content=b"x", headers=operator).status_code == 202
        assert http.get("/healthz").status_code == 200, "health needs no token"

    loose = tmp_path / "loose"
    loose.write_text(f"client {'a' * 32}\n")
    os.chmod(loose, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        TokenTable.load(loose)


def test_dead_letters_list_inspect_replay_purge_for_operators(cluster, tmp_path) -> None:  # noqa: ANN001
    url = _mesh(cluster)
    blocker = tmp_path / "blocker"
    blocker.write_text("fail while this exists")
    with httpx.Client(base_url=url, timeout=30) as http:
        _nodes_seen(http, 1)
        fatal = http.post("/v1/tasks/simulate", json={"fatal": True}).json()["id"]
        blocked = http.post("/v1/tasks/simulate", json={"fail_while_exists": str(blocker)},
                            headers={"X-Mesh-Priority": "1"}).json()["id"]
        for task_id in (fatal, blocked):
            wait_until(lambda t=task_id: http.get(f"/v1/tasks/{t}").json()["state"] == "DEAD",
                       60, interval_s=0.1, what=f"{task_id} dead")
        listed = http.get("/v1/dead-letters").json()
        assert {t["id"] for t in listed["tasks"]} == {fatal, blocked}
        inspected = http.get(f"/v1/dead-letters/{fatal}").json()
        assert inspected["dead_reason"] == "FATAL_ERROR" and inspected["error"]
        blocker.unlink()
        replayed = http.post(f"/v1/dead-letters/{blocked}/replay")
        assert replayed.status_code == 200 and replayed.json()["affected"] == 1
        assert http.get(f"/v1/tasks/{blocked}", params={"wait": 30}).json()["state"] == \
            "SUCCEEDED"
        purged = http.post("/v1/dead-letters/purge", json={"ids": [fatal]})
        assert purged.json()["affected"] == 1
        assert http.get(f"/v1/dead-letters/{fatal}").status_code == 404
        assert http.post("/v1/dead-letters/purge", json={}).status_code == 400


def test_openapi_document_covers_every_route(cluster) -> None:  # noqa: ANN001
    from starlette.routing import Route

    from nodes.http import GatewaySettings, build_app
    url = _mesh(cluster, ai_nodes=0)
    with httpx.Client(base_url=url, timeout=30) as http:
        document = http.get("/openapi.json").json()
    assert document["openapi"].startswith("3.")
    app = build_app(pool=None, settings=GatewaySettings(), tokens=None)
    served = {(r.path, m.lower()) for r in app.routes if isinstance(r, Route)
              for m in r.methods if m != "HEAD"}
    documented = {(p, m) for p, ops in document["paths"].items() for m in ops}
    assert served <= documented, f"undocumented: {sorted(served - documented)}"
    assert documented <= served, f"documented but not served: {sorted(documented - served)}"


def test_sigkill_of_one_of_two_helpers_under_http_load_loses_no_accepted_task(cluster) -> None:  # noqa: ANN001
    first = cluster.start_helper(*HELPER_FLAGS)
    second = cluster.start_helper(*HELPER_FLAGS, helper_id="helper-2")
    for _ in range(2):
        cluster.start_ai()
    gateway = start_gateway(cluster, [first.ready["intake"], second.ready["intake"]],
                            *GATEWAY_FLAGS, "--timeout", "2")
    url = gateway.ready["url"]
    accepted: dict[str, str] = {}   # idempotency key -> task id, for every 202
    answered: list[int] = []
    keys = (f"upload-{n}" for n in itertools.count())

    async def poster(http: httpx.AsyncClient, stop: asyncio.Event) -> None:
        while not stop.is_set():
            key = next(keys)
            for _ in range(5):  # a caller retries a 503 with the same key: still one task
                answer = await http.post("/v1/tasks/simulate", json={"ms": 5},
                                         headers={"Idempotency-Key": key})
                answered.append(answer.status_code)
                if answer.status_code == 202:
                    accepted[key] = answer.json()["id"]
                    break
                assert answer.status_code == 503, answer.text

    async def scenario() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            await _async_nodes_seen(http, 4)  # two nodes on each Helper
            stop = asyncio.Event()
            posters = [asyncio.create_task(poster(http, stop)) for _ in range(8)]
            await _async_until(lambda: len(accepted) >= 300, 60, "300 accepted")
            first.kill()  # SIGKILL mid-load
            killed_at = len(accepted)
            await _async_until(lambda: len(accepted) >= killed_at + 300, 60,
                               "300 more accepted after the kill")
            stop.set()
            await asyncio.gather(*posters)
        assert answered.count(202) == len(accepted)

    asyncio.run(scenario())
    # The killed Helper comes back on its port with its journal: what it accepted finishes.
    restarted = cluster.start_helper(*HELPER_FLAGS)
    assert restarted.ready["intake"] == first.ready["intake"]

    async def all_terminal() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            ids = list(accepted.values())
            for start in range(0, len(ids), 100):
                answers = await asyncio.gather(*(http.get(f"/v1/tasks/{t}", params={"wait": 50})
                                                 for t in ids[start:start + 100]))
                states = [a.json().get("state") for a in answers]
                assert states == ["SUCCEEDED"] * len(states), \
                    [(t, a.status_code, a.text[:200]) for t, a in zip(ids, answers)
                     if a.json().get("state") != "SUCCEEDED"][:3]

    asyncio.run(all_terminal())
    effects = cluster.applied_effects()
    missing = [t for t in accepted.values() if effects[t] == 0]
    assert not missing, f"{len(missing)} accepted tasks never applied their effect"
    twice = {t: n for t, n in effects.items() if n > 1}
    assert not twice, f"effects applied twice: {list(twice.items())[:5]}"


async def _async_until(predicate, timeout_s: float, what: str) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not met within {timeout_s}s")
        await asyncio.sleep(0.05)


async def _async_nodes_seen(http: httpx.AsyncClient, count: int) -> None:
    deadline = time.monotonic() + 30
    while (await http.get("/v1/overview")).json()["totals"].get("nodes", 0) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{count} AI node links not seen within 30s")
        await asyncio.sleep(0.1)


def test_gateway_follows_discovery_to_a_helper_started_later_and_fails_over_to_it(
        cluster) -> None:  # noqa: ANN001
    """Issue 13: no --intake, so the gateway follows discovery; a Helper started after it is
    used, and once the first is SIGKILLed every submit still gets its 202 and completes."""
    first = cluster.start_helper(*HELPER_FLAGS)
    cluster.start_ai()
    gateway = start_gateway(cluster, [], "--discovery", cluster.discovery, *GATEWAY_FLAGS)
    assert gateway.ready["helpers"] == [first.ready["intake"]]
    url = gateway.ready["url"]

    def submit(http: httpx.Client, key: str) -> str:
        for _ in range(5):  # a caller retries a 503 with the same key: still one task
            answer = http.post("/v1/tasks/echo", content=key.encode(),
                               headers={"Idempotency-Key": key})
            if answer.status_code == 202:
                return answer.json()["id"]
            assert answer.status_code == 503, answer.text
        raise AssertionError(f"{key}: no 202 in 5 tries")

    with httpx.Client(base_url=url, timeout=30) as http:
        _nodes_seen(http, 1)
        for n in range(3):
            task_id = submit(http, f"before-{n}")
            assert http.get(f"/v1/tasks/{task_id}", params={"wait": 30}).json()["state"] == \
                "SUCCEEDED"
        second = cluster.start_helper(*HELPER_FLAGS, helper_id="helper-2")

        def both_up() -> bool:
            helpers = http.get("/v1/overview").json()["helpers"]
            return {h["endpoint"] for h in helpers if h["up"]} == \
                {first.ready["intake"], second.ready["intake"]}
        wait_until(both_up, 30, interval_s=0.1, what="the gateway following the second Helper")
        _nodes_seen(http, 2)  # the AI node on both Helpers
        first.kill()  # SIGKILL; discovery may list it a while longer
        after = [submit(http, f"after-{n}") for n in range(10)]
        for task_id in after:  # all on the second Helper, which the gateway found by itself
            done = http.get(f"/v1/tasks/{task_id}", params={"wait": 30})
            assert done.status_code == 200 and done.json()["state"] == "SUCCEEDED", done.text


def test_upload_service_example_stores_a_file_and_follows_its_task(cluster, tmp_path) -> None:  # noqa: ANN001
    example = Path(__file__).resolve().parents[2] / "examples" / "upload_service"
    cluster.env["PYTHONPATH"] = os.pathsep.join([str(example), *sys.path])
    cluster.env["UPLOAD_DIR"] = str(tmp_path / "uploads")
    cluster.start_helper(*HELPER_FLAGS)
    cluster.start_ai("--app", "handlers:app")
    gateway = start_gateway(cluster, [cluster.intake], *GATEWAY_FLAGS)
    sys.path.insert(0, str(example))
    try:
        import upload_app
    finally:
        sys.path.remove(str(example))
    app = upload_app.build(gateway.ready["url"], tmp_path / "uploads")
    data = b"line one\nline two\nline three\n" * 100

    async def scenario() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://upload") as http:
            answer = await http.post("/uploads", content=data,
                                     headers={"Content-Type": "text/plain"})
            assert answer.status_code == 202, answer.text
            task = answer.json()
            again = await http.post("/uploads", content=data)
            assert again.json()["id"] == task["id"], "the same file is the same task"
            status = await upload_app.follow(gateway.ready["url"], task["id"], timeout_s=60)
        assert status["state"] == "SUCCEEDED", status
        assert status["result"]["lines"] == 300 and status["result"]["bytes"] == len(data)
        assert status["result"]["sha256"] == task["sha256"]

    with httpx.Client(base_url=gateway.ready["url"], timeout=30) as http:
        _nodes_seen(http, 1)
    asyncio.run(scenario())


def test_delete_cancels_a_queued_task_and_answers_409_for_a_finished_one(cluster) -> None:  # noqa: ANN001
    url = _mesh(cluster)
    with httpx.Client(base_url=url, timeout=30) as http:
        _nodes_seen(http, 1)
        running = http.post("/v1/tasks/wait", content=b"60").json()["id"]
        wait_until(lambda: http.get(f"/v1/tasks/{running}").json()["state"] == "RUNNING", 20,
                   interval_s=0.05, what="the task running")
        cancelled = http.delete(f"/v1/tasks/{running}")
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["state"] == "CANCELLED" and cancelled.json()["was_running"]
        assert http.get(f"/v1/tasks/{running}").json()["state"] == "CANCELLED"
        again = http.delete(f"/v1/tasks/{running}")
        assert again.status_code == 409 and again.headers["content-type"] == PROBLEM
        assert again.json()["code"] == "ALREADY_FINISHED" and again.json()["state"] == "CANCELLED"

        done = http.post("/v1/tasks/echo", content=b"1").json()["id"]
        assert http.get(f"/v1/tasks/{done}", params={"wait": 30}).json()["state"] == "SUCCEEDED"
        finished = http.delete(f"/v1/tasks/{done}")
        assert finished.status_code == 409 and finished.json()["state"] == "SUCCEEDED"
        assert http.delete("/v1/tasks/no-such-task").status_code == 404

        overview = http.get("/v1/overview").json()
        node = overview["nodes"][0]
        assert node["id"] == "ai-1" and node["state"] == "alive" and node["version"]
        assert overview["totals"]["cancelled"] == 1
