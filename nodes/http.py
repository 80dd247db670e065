"""`mesh http`: the HTTP gateway (REST for submitters and operators) and the live page at `/`.

    mesh http --bind 127.0.0.1:8080 --intake tcp://10.0.0.5:7001 --tokens /etc/mesh/tokens

Routes only: the gateway is a Client of the mesh and keeps no state of its own. It follows the
Helpers in discovery (or the --intake ones) as a `mesh.Client(endpoints=...)` does, so a Helper
added or replaced later is used without a restart; submits spread over them and fail over
with the same task ids (mesh/helper_pool.py); errors are
problem+json (mesh/http_problem.py); callers show a bearer token (mesh/http_tokens.py). The
OpenAPI document (mesh/http_openapi.py) lists every route; docs/decisions/008-http-gateway.md
says why Starlette on uvicorn and how TLS is done (--tls-cert/--tls-key, or a reverse proxy).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import importlib.util
import json
import logging
import math
import time
from pathlib import Path

from mesh import Client, make_task, sockets, wire
from mesh.alert_recent import RecentAlerts
from mesh.alert_subscriber import AlertSubscriber, AlertSubscriberSettings
from mesh.errors import ConfigError, MeshError, Unavailable
from mesh.helper_pool import HelperPool, WaitTimedOut
from mesh.http_asgi import HotRoutes, JsonAnswer
from mesh.http_metrics import GatewayMetrics
from mesh.http_openapi import openapi_document
from mesh.http_problem import PROBLEM_JSON, Problem, problem_for, submit_problem
from mesh.http_tokens import HttpRole, TokenTable, permits
from mesh.http_views import (
    MAX_IDEMPOTENCY_KEY_CHARS, accepted_json, is_json, iso, status_json, task_id_for_key,
    task_location,
)
from nodes import config, keys, runtime

log = logging.getLogger("mesh.node.http")
WEB_DIR = Path(__file__).with_name("web")


@dataclasses.dataclass(frozen=True)
class GatewaySettings:
    timeout_s: float = 3.0               # for any one HTTP request's mesh side, all Helpers
    health_timeout_s: float = 1.0        # /healthz: a Helper must answer within this
    max_body_bytes: int = 1 * 2**20      # one task's payload (the Helper's default limit)
    max_batch_body_bytes: int = 16 * 2**20
    max_batch: int = 1000
    max_long_polls: int = 1000
    max_wait_s: float = 60.0


def register_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("http", help="run the HTTP gateway and the live page")
    p.add_argument("--bind", default="127.0.0.1:8080", help="HOST:PORT (port 0: any free one)")
    p.add_argument("--intake", action="append", default=[], metavar="ENDPOINT",
                   help="a Helper's intake endpoint (repeatable; default: the Helpers in "
                        "discovery, followed as they come and go)")
    p.add_argument("--helper-service", default="mesh-helper")
    p.add_argument("--no-alerts", action="store_true",
                   help="do not follow the alert lane (the page's recent alerts); it is followed "
                        "through discovery with this host's notifier key, unless only --intake "
                        "and no discovery is given")
    p.add_argument("--tokens", default=None, metavar="FILE",
                   help="bearer tokens, lines `ROLE TOKEN` or JSON; must be mode 0600")
    p.add_argument("--no-auth", action="store_true",
                   help="no HTTP authentication, every caller is operator (local experiments)")
    p.add_argument("--tls-cert", default=None, help="serve HTTPS with this certificate (PEM)")
    p.add_argument("--tls-key", default=None, help="the certificate's private key (PEM)")
    p.add_argument("--timeout", type=float, default=GatewaySettings.timeout_s,
                   help="seconds the Helpers get to answer one request (all of them)")
    p.add_argument("--max-body-bytes", type=int, default=GatewaySettings.max_body_bytes)
    p.add_argument("--max-batch", type=int, default=GatewaySettings.max_batch)
    p.add_argument("--max-long-polls", type=int, default=GatewaySettings.max_long_polls)
    p.add_argument("--max-wait", type=float, default=GatewaySettings.max_wait_s)
    keys.add_trust_arguments(p)
    config.add_common(p)
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    runtime.setup_logging(args.log_level)
    if args.no_auth:
        log.warning("--no-auth: the gateway takes any caller as operator; for local "
                    "experiments only")
        tokens = None
    elif args.tokens:
        tokens = TokenTable.load(args.tokens)
    else:
        raise ConfigError("mesh http needs --tokens FILE (lines `ROLE TOKEN`, mode 0600), or "
                          "--no-auth for a local experiment")
    if bool(args.tls_cert) != bool(args.tls_key):
        raise ConfigError("--tls-cert and --tls-key go together")
    settings = GatewaySettings(timeout_s=args.timeout, max_body_bytes=args.max_body_bytes,
                               max_batch=args.max_batch, max_long_polls=args.max_long_polls,
                               max_wait_s=args.max_wait)
    return runtime.run(_serve(args, settings, tokens))


def _helper_source(args: argparse.Namespace):  # noqa: ANN202 - mesh.client.EndpointSource
    """The Helpers the gateway follows: the --intake endpoints, else the Helpers in discovery
    now (asked again every few seconds by the Client, so one added or replaced later is used)."""
    if args.intake:
        endpoints = list(dict.fromkeys(args.intake))
        return lambda: endpoints
    from nodes.client_factory import DiscoverySource
    return DiscoverySource(config.discovery_url(args), consul=config.consul_settings(args),
                           service=args.helper_service)


async def _follow_alerts(args: argparse.Namespace, trust, ctx, recent: RecentAlerts):  # noqa: ANN001, ANN202
    """Subscribe to every alert publisher in discovery, as the Notifier does (notifier key, kept
    in memory only: the ring is for the page); a stop coroutine, or None when not followed."""
    url = config.discovery_url(args)
    if args.no_alerts or (args.intake and url is None):
        log.info("not following the alert lane (%s)", "--no-alerts" if args.no_alerts else
                 "--intake without --discovery")
        return None
    from discovery import open_discovery
    from nodes.notifier import ALERT_SERVICE, choose_publishers
    from nodes.registration import watch

    subscriber = AlertSubscriber(AlertSubscriberSettings(), recent, context=ctx, trust=trust)
    await subscriber.start()
    directory = open_discovery(url, consul=config.consul_settings(args))
    stopping = False

    def on_publishers(found: list) -> None:
        if stopping:
            return
        chosen = choose_publishers(found, set())
        for pid, (pub, replay, key, watched) in chosen.items():
            subscriber.add_publisher(pid, pub, replay, key, watch=watched)
        for pid in subscriber.publishers:
            if pid not in chosen:
                subscriber.remove_publisher(pid)

    publishers = watch(directory, ALERT_SERVICE, on_publishers, wait_s=2.0)

    async def stop() -> None:
        nonlocal stopping
        stopping = True
        publishers.stop(timeout_s=1.0)
        await subscriber.stop()
        directory.close()
    return stop


async def _serve(args: argparse.Namespace, settings: GatewaySettings,
                 tokens: TokenTable | None) -> int:
    import uvicorn

    trust = keys.trust_from_args(args)
    ctx = sockets.new_context()
    # role None: the pool asks with the client key, or the operator key for operator routes
    mesh = Client(endpoints=_helper_source(args), context=ctx, trust=trust,
                  timeout_s=settings.timeout_s)
    recent = RecentAlerts()
    stop_alerts = await _follow_alerts(args, trust, ctx, recent)
    host, _, port = args.bind.rpartition(":")
    server = uvicorn.Server(uvicorn.Config(
        build_app(mesh, settings, tokens, alerts=recent if stop_alerts else None), host=host or "127.0.0.1", port=int(port),
        loop="none", lifespan="on", access_log=False, log_level="warning",
        http="httptools" if importlib.util.find_spec("httptools") else "h11",
        ssl_certfile=args.tls_cert, ssl_keyfile=args.tls_key))
    serving = asyncio.ensure_future(server.serve())
    while not server.started and not serving.done():
        await asyncio.sleep(0.01)
    if serving.done():
        await serving
        if stop_alerts is not None:
            await stop_alerts()
        ctx.term()
        raise MeshError(f"the gateway could not serve on {args.bind} (see the log above)")
    bound = server.servers[0].sockets[0].getsockname()
    scheme = "https" if args.tls_cert else "http"
    try:
        helpers = (await mesh.helper_pool(look=False)).endpoints
    except Unavailable as exc:
        log.warning("%s; the gateway serves and keeps looking", exc)
        helpers = []
    runtime.announce_ready("http", url=f"{scheme}://{bound[0]}:{bound[1]}",
                           helpers=list(helpers), auth=tokens is not None)
    signalled = asyncio.ensure_future(runtime.until_signalled())
    await asyncio.wait([serving, signalled], return_when=asyncio.FIRST_COMPLETED)
    server.should_exit = True
    await serving
    signalled.cancel()
    if stop_alerts is not None:
        await stop_alerts()
    ctx.term()
    return 0


# ---- the app ----------------------------------------------------------------------------------


def build_app(pool: HelperPool | Client, settings: GatewaySettings, tokens: TokenTable | None,
              metrics: GatewayMetrics | None = None,
              alerts: RecentAlerts | None = None):  # noqa: ANN201 - a Starlette app
    """`pool`: a fixed HelperPool, or a `mesh.Client` following Helpers (its HelperPool, with
    the endpoints its source gives now, serves each request). `alerts`: the recent alerts of
    the alert lane, for /v1/overview (None: not followed, the page says so).

    Returns a `HotRoutes` (mesh/http_asgi.py) in front of the Starlette app: it serves the two
    hot routes (submit one task, a task's status) with the same endpoints, bare ASGI."""
    from starlette.applications import Starlette
    from starlette.responses import FileResponse, Response
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    metrics = metrics or GatewayMetrics()
    routes: list = []
    endpoints: dict[tuple[str, str], object] = {}  # (method, path) -> the wrapped endpoint

    async def helpers(look: bool = True) -> HelperPool:
        """The Helpers now; Unavailable (503) if there are none. `look`: a following Client
        keeps looking for up to its timeout when none is listed (a failover under way)."""
        return pool if isinstance(pool, HelperPool) else await pool.helper_pool(look=look)

    async def helpers_or_none() -> HelperPool | None:
        try:
            return await helpers(look=False)
        except Unavailable:
            return None
    long_polls = [0]

    def answer(body: object, status: int = 200, headers: dict | None = None) -> JsonAnswer:
        return JsonAnswer(json.dumps(body).encode(), status, headers)

    def route(path: str, method: str, role: HttpRole | None = HttpRole.CLIENT):  # noqa: ANN202
        """Register `fn` for `method path`; authorize, turn errors into problem+json, count."""
        def register(fn):  # noqa: ANN001, ANN202
            async def endpoint(request) -> Response:  # noqa: ANN001
                started = time.perf_counter()
                try:
                    if role is not None and tokens is not None:
                        _authorize(tokens, request.headers.get("authorization"), role)
                    response = await fn(request)
                except Problem as problem:
                    response = _problem_response(problem)
                except MeshError as exc:
                    response = _problem_response(problem_for(exc))
                except Exception:
                    log.exception("%s %s failed", method, path)
                    response = _problem_response(Problem(
                        500, "INTERNAL", "the gateway failed on this request; see its log"))
                metrics.observe(path, method, response.status_code,
                                time.perf_counter() - started)
                return response
            routes.append(Route(path, endpoint, methods=[method]))
            endpoints[(method, path)] = endpoint
            return fn
        return register

    # -- tasks --

    @route("/v1/tasks/{kind}", "POST")
    async def submit_one(request) -> Response:  # noqa: ANN001
        headers = request.headers
        key = headers.get("idempotency-key")
        if key is not None:
            _check_key(key)
        task = make_task(
            request.path_params["kind"],
            await _read_body(request, settings.max_body_bytes),
            task_id=task_id_for_key(key) if key else None, idempotency_key=key or "",
            priority=_header_int(headers.get("x-mesh-priority")),
            ttl_s=_header_ttl(headers.get("x-mesh-ttl")),
            headers={"content-type": headers["content-type"]}
            if "content-type" in headers else None)
        outcome = await (await helpers()).submit_one(task)
        if outcome.code != wire.OK:
            raise submit_problem(outcome.code, outcome.message)
        return answer(accepted_json(outcome.task_id, outcome.duplicate), 202,
                      {"Location": task_location(outcome.task_id)})

    @route("/v1/tasks", "POST")
    async def submit_batch(request) -> Response:  # noqa: ANN001
        items = _json(await _read_body(request, settings.max_batch_body_bytes))
        if isinstance(items, dict):
            items = items.get("tasks")
        if not isinstance(items, list) or not items:
            raise Problem(400, "INVALID_REQUEST", "the body must be a non-empty JSON list of "
                          "{kind, payload | payload_base64, priority, ttl_s, idempotency_key}")
        if len(items) > settings.max_batch:
            raise Problem(413, "BATCH_TOO_LARGE", f"a batch of {len(items)} tasks exceeds the "
                          f"limit of {settings.max_batch}; split it")
        results: list[dict | None] = [None] * len(items)
        tasks, where = [], []
        for i, item in enumerate(items):
            try:
                tasks.append(_batch_task(item))
                where.append(i)
            except Problem as problem:
                results[i] = {"index": i, "status": problem.status, "problem": problem.body()}
        for i, outcome in zip(where, await (await helpers()).submit(tasks) if tasks else [], strict=True):
            if outcome.code == wire.OK:
                results[i] = {"index": i, "status": 202,
                              **accepted_json(outcome.task_id, outcome.duplicate)}
            else:
                problem = submit_problem(outcome.code, outcome.message)
                results[i] = {"index": i, "status": problem.status, "problem": problem.body()}
        return answer({"results": results})

    async def current(request):  # noqa: ANN001, ANN202 - the status, long-polled if asked
        task_id = request.path_params["task_id"]
        wait_s = _wait_param(request.query_params.get("wait"), settings.max_wait_s)
        if not wait_s:
            return (await (await helpers()).find(task_id)).status
        if long_polls[0] >= settings.max_long_polls:
            raise Problem(429, "TOO_MANY_LONG_POLLS", f"{long_polls[0]} long-polls are held "
                          "(the gateway's bound); ask again shortly or without ?wait",
                          headers={"Retry-After": "1"})
        long_polls[0] += 1
        metrics.long_polls.set(long_polls[0])
        try:
            return await (await helpers()).wait(task_id, wait_s)
        except WaitTimedOut as exc:
            raise Problem(504, "WAIT_TIMEOUT", str(exc),
                          state=wire.state_name(exc.status.state)) from None
        finally:
            long_polls[0] -= 1
            metrics.long_polls.set(long_polls[0])

    @route("/v1/tasks/{task_id}", "GET")
    async def get_task(request) -> Response:  # noqa: ANN001
        return answer(status_json(await current(request)))

    @route("/v1/tasks/{task_id}/result", "GET")
    async def get_result(request) -> Response:  # noqa: ANN001
        status = await current(request)
        if status.state == wire.SUCCEEDED:
            return Response(status.result, 200,
                            media_type="application/json" if is_json(status.result) else
                            "application/octet-stream")
        if status.state == wire.DEAD:
            raise Problem(409, "TASK_DEAD", status.error or "the task is dead", state="DEAD",
                          dead_reason=wire.dead_reason_name(status.dead_reason))
        raise Problem(409, "NOT_FINISHED", f"task {status.task_id} is still "
                      f"{wire.state_name(status.state)}; ask with ?wait=SECONDS",
                      state=wire.state_name(status.state))

    @route("/v1/tasks/{task_id}", "DELETE")
    async def cancel_task(request) -> Response:  # noqa: ANN001
        task_id = request.path_params["task_id"]
        outcome = await (await helpers()).cancel(task_id)  # 404 unknown, 409 finished (problem_for)
        return answer({"id": task_id, "state": outcome.state.name,
                       "was_running": outcome.was_running,
                       "location": task_location(task_id)})

    # -- dead letters (operator) --

    async def dead_letters(op: str, task_ids: list[str], limit: int = 100) -> dict:
        pool_now = await helpers()
        answers = await pool_now.each(lambda c: c.dead_letters(op, task_ids, limit))
        tasks, affected, errors = [], 0, {}
        for endpoint, reply in answers.items():
            if isinstance(reply, BaseException):
                errors[endpoint] = str(reply) or type(reply).__name__
                continue
            affected += reply.affected
            tasks += [{**status_json(s), "helper": endpoint} for s in reply.tasks]
        if len(errors) == len(answers):
            exc = next(a for a in answers.values() if isinstance(a, BaseException))
            raise problem_for(exc) if isinstance(exc, MeshError) else Problem(
                503, "UNAVAILABLE", f"no Helper answered within {pool_now.timeout_s:g}s",
                headers={"Retry-After": "1"})
        return {"tasks": tasks, "affected": affected, "errors": errors}

    @route("/v1/dead-letters", "GET", HttpRole.OPERATOR)
    async def dlq_list(request) -> Response:  # noqa: ANN001
        limit = _int_param(request.query_params.get("limit"), 100, 1, 10_000, "limit")
        return answer(await dead_letters("list", [], limit))

    @route("/v1/dead-letters/{task_id}", "GET", HttpRole.OPERATOR)
    async def dlq_inspect(request) -> Response:  # noqa: ANN001
        task_id = request.path_params["task_id"]
        found = await dead_letters("inspect", [task_id])
        if not found["tasks"]:
            raise Problem(404, "NOT_FOUND", f"task {task_id!r} is not a dead letter here")
        return answer(found["tasks"][0])

    async def dlq_change(op: str, task_ids: list[str]) -> Response:
        done = await dead_letters(op, task_ids)
        if task_ids and not done["affected"]:
            raise Problem(404, "NOT_FOUND", f"none of {task_ids[:5]} is a dead letter here")
        return answer({"op": op, "affected": done["affected"], "errors": done["errors"]})

    for op in ("replay", "purge"):
        def bind(op: str = op) -> None:
            @route(f"/v1/dead-letters/{{task_id}}/{op}", "POST", HttpRole.OPERATOR)
            async def one(request) -> Response:  # noqa: ANN001
                return await dlq_change(op, [request.path_params["task_id"]])

            @route(f"/v1/dead-letters/{op}", "POST", HttpRole.OPERATOR)
            async def many(request) -> Response:  # noqa: ANN001
                body = _json(await _read_body(request, settings.max_body_bytes))
                ids = body.get("ids") if isinstance(body, dict) else None
                if body == {"all": True}:
                    ids = []
                elif not (isinstance(ids, list) and ids and all(isinstance(t, str) for t in ids)):
                    raise Problem(400, "INVALID_REQUEST",
                                  f'{op}: give {{"ids": [TASK_ID, ...]}} or {{"all": true}}')
                return await dlq_change(op, ids)
        bind()

    # -- operators' overview, health, metrics, the document, the page --

    @route("/v1/overview", "GET", HttpRole.OPERATOR)
    async def overview(request) -> Response:  # noqa: ANN001
        async def both(client):  # noqa: ANN001, ANN202 - a Helper's stats and nodes
            stats, nodes = await asyncio.gather(client.stats(), client.nodes())
            return stats, next(iter(nodes.values()))
        pool_now = await helpers_or_none()  # none: the page still shows the gateway's side
        answers = await pool_now.each(both) if pool_now is not None else {}
        helpers, totals, nodes, queues, limits, circuits = [], {}, [], {}, [], []
        for endpoint, reply in answers.items():
            if isinstance(reply, BaseException):
                helpers.append({"endpoint": endpoint, "up": False,
                                "error": str(reply) or "no answer in time"})
                continue
            stats, view = reply
            helpers.append({"endpoint": endpoint, "up": True, "stats": stats})
            for name, value in stats.items():
                totals[name] = totals.get(name, 0.0) + value
            nodes += [nodes_json(node, endpoint) for node in view.nodes]
            limits += [rate_limit_json(limit, endpoint) for limit in view.rate_limits]
            circuits += [circuit_json(circuit, endpoint) for circuit in view.circuits]
            for queue in view.queues:
                depth, oldest = queues.get(queue.kind, (0, 0))
                queues[queue.kind] = (depth + queue.depth, max(oldest, queue.oldest_age_ms))
        return answer({"generated_at": iso(time.time_ns()), "helpers": helpers,
                       "totals": totals, "nodes": nodes,
                       "queues": [{"kind": k, "depth": d, "oldest_age_s": round(o / 1000, 3)}
                                  for k, (d, o) in sorted(queues.items())],
                       "rate_limits": limits, "circuits": circuits,
                       "gateway": _gateway_figures(pool_now, long_polls[0]),
                       "alerts": alerts.json() if alerts is not None else [],
                       "missing": MISSING_FROM_STATS if alerts is not None
                       else [*MISSING_FROM_STATS, NO_ALERTS]})

    @route("/healthz", "GET", None)
    async def healthz(request) -> Response:  # noqa: ANN001
        probes = await (await helpers(look=False)).probe(settings.health_timeout_s)
        body = {e: {"answered": ok, "ms": round(s * 1000, 2), **({"why": why} if why else {})}
                for e, (ok, s, why) in probes.items()}
        if any(ok for ok, _, _ in probes.values()):
            return answer({"status": "ready", "helpers": body})
        raise Problem(503, "UNAVAILABLE", f"no Helper answered within "
                      f"{settings.health_timeout_s:g}s", headers={"Retry-After": "1"},
                      helpers=body)

    @route("/metrics", "GET", None)
    async def prometheus(request) -> Response:  # noqa: ANN001
        pool_now = await helpers_or_none()
        if pool_now is not None:
            metrics.failovers.set(pool_now.failovers)
            metrics.suspects.set(len(pool_now.suspects))
        return Response(metrics.exposition(), 200,
                        media_type="text/plain; version=0.0.4; charset=utf-8")

    @route("/openapi.json", "GET", None)
    async def openapi(request) -> Response:  # noqa: ANN001
        return answer(openapi_document(settings))

    @route("/", "GET", None)
    async def page(request) -> Response:  # noqa: ANN001
        return FileResponse(WEB_DIR / "index.html", media_type="text/html")

    routes.append(Mount("/web", StaticFiles(directory=WEB_DIR), name="web"))

    @contextlib.asynccontextmanager
    async def lifespan(app):  # noqa: ANN001, ANN202
        await pool.start()
        try:
            yield
        finally:
            await pool.close()

    return HotRoutes(Starlette(routes=routes, lifespan=lifespan),
                     submit=endpoints[("POST", "/v1/tasks/{kind}")],
                     status=endpoints[("GET", "/v1/tasks/{task_id}")])


#: what the live page would show but the gateway does not give yet
MISSING_FROM_STATS: list[str] = []
#: ... and when the gateway does not follow the alert lane
NO_ALERTS = ("recent alerts (the gateway does not follow the alert lane: --no-alerts, or "
             "--intake without --discovery)")


def nodes_json(node, helper: str) -> dict:  # noqa: ANN001 - wire.NodeInfo
    """One AI node as a Helper sees it, for /v1/overview and the page."""
    return {"id": node.node_id, "helper": helper, "endpoint": node.endpoint,
            "host": host_of(node.endpoint), "state": node.state, "credit": node.credit,
            "concurrency": node.concurrency, "held": node.held, "running": node.running,
            "inflight": node.inflight, "version": node.version or None,
            "last_beat_s": round(node.last_beat_age_ms / 1000, 3), "kinds": list(node.kinds)}


def rate_limit_json(limit, helper: str) -> dict:  # noqa: ANN001 - wire.RateLimitInfo
    """A kind's rate limit on one Helper (its share of the whole), and whether it holds tasks
    back now; for `mesh nodes` and /v1/overview."""
    return {"kind": limit.kind, "helper": helper, "per_s": round(limit.per_s, 6),
            "burst": round(limit.burst, 6), "limit_per_s": round(limit.limit_per_s, 6),
            "held": limit.held}


def circuit_json(circuit, helper: str) -> dict:  # noqa: ANN001 - wire.CircuitInfo
    """A circuit breaker on one Helper, for `mesh nodes` and /v1/overview."""
    return {"name": circuit.name, "scope": circuit.scope, "helper": helper,
            "state": circuit.state, "failures": circuit.failures, "calls": circuit.calls,
            "probe_in_s": round(circuit.probe_in_ms / 1000, 3) if circuit.probe_in_ms else None}


def host_of(endpoint: str) -> str:
    """The host of tcp://HOST:PORT ("" for ipc:// and the like)."""
    scheme, _, rest = endpoint.partition("://")
    return rest.rpartition(":")[0].strip("[]") if scheme == "tcp" else ""


def _gateway_figures(pool: HelperPool | None, long_polls: int) -> dict:
    return {"long_polls": long_polls, "failovers": pool.failovers if pool else 0,
            "suspect_helpers": pool.suspects if pool else {}, "version": config.mesh_version()}


# ---- request parsing (each raises a Problem naming what is wrong) ----------------------------


def _authorize(tokens: TokenTable, authorization: str | None, needed: HttpRole) -> None:
    role = tokens.role_of(authorization)
    if role is None:
        raise Problem(401, "UNAUTHORIZED", "give a valid token: Authorization: Bearer TOKEN",
                      headers={"WWW-Authenticate": 'Bearer realm="mesh"'})
    if not permits(role, needed):
        raise Problem(403, "FORBIDDEN", f"this route needs the {needed.value} role; the token "
                      f"given has the {role.value} role")


async def _read_body(request, limit_bytes: int) -> bytes:  # noqa: ANN001
    """The body, refused with 413 as soon as it is known to pass `limit_bytes` (from
    Content-Length before reading anything, else while streaming)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise Problem(400, "INVALID_REQUEST", f"Content-Length {declared[:20]!r} is not "
                          "a number")
        if int(declared) > limit_bytes:
            raise Problem(413, "PAYLOAD_TOO_LARGE", f"a body of {declared} bytes exceeds the "
                          f"limit of {limit_bytes} bytes; store large inputs elsewhere and "
                          "submit a reference")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit_bytes:
            raise Problem(413, "PAYLOAD_TOO_LARGE", f"the body exceeds the limit of "
                          f"{limit_bytes} bytes; store large inputs elsewhere and submit a "
                          "reference")
        chunks.append(chunk)
    return b"".join(chunks)


def _json(body: bytes) -> object:
    try:
        return json.loads(body)
    except ValueError as exc:
        raise Problem(400, "INVALID_REQUEST", f"the body is not valid JSON: {exc}") from None


def _check_key(key: str) -> None:
    if not key or len(key) > MAX_IDEMPOTENCY_KEY_CHARS or not key.isprintable():
        raise Problem(400, "INVALID_REQUEST", f"an idempotency key must be 1 to "
                      f"{MAX_IDEMPOTENCY_KEY_CHARS} printable characters")


def _header_int(value: str | None, name: str = "X-Mesh-Priority") -> int:
    if value is None:
        return 0
    try:
        number = int(value)
    except ValueError:
        raise Problem(400, "INVALID_REQUEST", f"{name} {value[:20]!r} is not an integer") \
            from None
    if not -2**31 <= number < 2**31:
        raise Problem(400, "INVALID_REQUEST", f"{name} {number} is out of the int32 range")
    return number


def _header_ttl(value: object, name: str = "X-Mesh-TTL") -> float | None:
    if value is None:
        return None
    try:
        ttl_s = float(value)
    except (TypeError, ValueError):
        raise Problem(400, "INVALID_REQUEST", f"{name} {str(value)[:20]!r} is not a number of "
                      "seconds") from None
    if not (0 < ttl_s < 10 * 365 * 86400) or math.isnan(ttl_s):
        raise Problem(400, "INVALID_REQUEST", f"{name} must be a positive number of seconds")
    return ttl_s


def _wait_param(value: str | None, max_wait_s: float) -> float:
    if value is None:
        return 0.0
    try:
        wait_s = float(value)
    except ValueError:
        raise Problem(400, "INVALID_REQUEST", f"wait={value[:20]!r} is not a number") from None
    if not 0 <= wait_s <= max_wait_s:
        raise Problem(400, "INVALID_REQUEST", f"wait must be 0 to {max_wait_s:g} seconds")
    return wait_s


def _int_param(value: str | None, default: int, low: int, high: int, name: str) -> int:
    if value is None:
        return default
    if not value.isdigit() or not low <= int(value) <= high:
        raise Problem(400, "INVALID_REQUEST", f"{name} must be an integer from {low} to {high}")
    return int(value)


def _batch_task(item: object):  # noqa: ANN202 - wire.Task
    if not isinstance(item, dict) or not isinstance(item.get("kind"), str) or not item["kind"]:
        raise Problem(400, "INVALID_TASK", "each item needs a kind (string)")
    if "payload_base64" in item:
        try:
            payload = base64.b64decode(item["payload_base64"], validate=True)
        except (TypeError, ValueError):
            raise Problem(400, "INVALID_TASK", "payload_base64 is not base64") from None
    elif "payload" in item:
        payload = json.dumps(item["payload"], separators=(",", ":")).encode()
    else:
        payload = b""
    key = item.get("idempotency_key")
    if key is not None:
        if not isinstance(key, str):
            raise Problem(400, "INVALID_TASK", "idempotency_key must be a string")
        _check_key(key)
    priority = item.get("priority", 0)
    if not isinstance(priority, int) or isinstance(priority, bool):
        raise Problem(400, "INVALID_TASK", "priority must be an integer")
    return make_task(item["kind"], payload, task_id=task_id_for_key(key) if key else None,
                     idempotency_key=key or "", priority=_header_int(str(priority), "priority"),
                     ttl_s=_header_ttl(item.get("ttl_s"), "ttl_s"))


def _problem_response(problem: Problem) -> JsonAnswer:
    return JsonAnswer(problem.encode(), problem.status, problem.headers, PROBLEM_JSON)
