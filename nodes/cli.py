"""The `mesh` command line.

    mesh helper                 run a Helper node
    mesh ai --app mod:app       run an AI node
    mesh demo                   a local mesh with a node killed mid-run, and its figures
    mesh submit KIND PAYLOAD    submit one task (and wait for its result with --wait);
                                PAYLOAD `-` reads stdin, `@FILE` reads a file
    mesh status TASK_ID...      the state of tasks (JSON, one line each)
    mesh cancel TASK_ID...      cancel tasks (queued or running)
    mesh dlq list|inspect|replay|purge [TASK_ID...]   (with the operator key)
    mesh nodes                  the AI nodes, the queue by kind, rate limits and circuit breakers
                                (with the operator key)
    mesh stats                  the Helper's counters (with the operator key)

Client commands find the Helpers with --intake, else $MESH_INTAKE, else discovery, and give
them --timeout seconds (default 3) to answer.
    mesh notifier               receive fault alerts
    mesh alert publish ...      publish a fault alert
    mesh keys new|local|allow   CURVE keys and the local key store
    mesh http --bind H:P        the HTTP gateway and the live page
    mesh config show --for CMD  the effective options of CMD and where each came from
    mesh --version

options: every node option is also $MESH_<NAME> and the key <name> of a TOML file given with
--config FILE (or $MESH_CONFIG), top level or in the command's table ([helper], [ai]); a flag
wins over the environment, which wins over the file. `mesh CMD --help` shows each default.

exit codes:
    0   done (submit --wait: the task SUCCEEDED)
    1   failed (the message says why); submit --wait: the task ended DEAD or CANCELLED; an
        unknown task id (status, cancel, dlq inspect) or one finished already (cancel)
    2   usage error (unknown flag, bad value in a flag, $MESH_* or the --config file, no --app)
    3   unavailable: no Helper answered within --timeout; discovery unreachable at start,
        unavailable or refused (e.g. a Consul ACL token refused, a registry directory another
        user owns)
    4   submit --wait: the wait ended before the task did (it goes on; ask again)
    5   a port to bind is in use (--intake, --acks, --bind, --metrics-port, ...): the message
        names the endpoint
    6   the --app cannot be loaded (an import error in it, or not module:attribute of a mesh.App)
    75  in use (EX_TEMPFAIL): another live Helper holds the --data-dir, or another live AI node
        has the --node-id; the message names its pid. Stop it or choose another.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from discovery import DiscoveryError
from mesh import MeshError, wire
from mesh.errors import (
    AddressInUse, AlreadyFinished, AppLoadError, HelperRefusedKey, InUse, NotFound,
    RequestTimeout, UsageError, WaitTimedOut,
)
from mesh.settings import DEFAULT_TIMEOUT_S
from mesh.trust import Role
from nodes import ai, config, demo, helper, keys, runtime, settings_spec

if TYPE_CHECKING:  # the client commands' modules: not loaded by the node commands
    from mesh.client import Client

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
EXIT_WAIT_TIMEOUT = 4  # submit --wait: the wait ended first
EXIT_ADDRESS_IN_USE = 5  # a port to bind is taken
EXIT_APP = 6  # the --app does not load
EXIT_IN_USE = 75  # EX_TEMPFAIL: another live process owns the data dir or node id


def _optional_commands(sub: argparse._SubParsersAction) -> None:
    """Commands whose modules may be absent in a trimmed install (alerts lane, HTTP gateway)."""
    for module in ("nodes.notifier", "nodes.alert_cli", "nodes.http"):
        try:
            importlib.import_module(module).register_commands(sub)
        except ModuleNotFoundError:
            continue


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The `mesh` parser. Given the `command` about to run, the optional commands' modules (the
    HTTP gateway, the notifier: Starlette, the alert subscriber, the Client) are loaded only if
    it is one of theirs, so a node does not carry them (bench/import_cost.py)."""
    parser = settings_spec.MeshParser(prog="mesh", description=__doc__,
                                      formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"mesh {config.mesh_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    helper.register_commands(sub)
    ai.register_commands(sub)
    demo.register_commands(sub)
    keys.register_commands(sub)
    _client_commands(sub)
    settings_spec.register_commands(sub, build_parser)
    if command is None or command not in sub.choices:
        _optional_commands(sub)
    return parser


def _client_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("submit", help="submit one task")
    p.add_argument("kind")
    p.add_argument("payload", nargs="?", default="",
                   help="the payload: text, `-` for stdin, `@FILE` for a file's bytes")
    p.add_argument("--priority", type=int, default=0)
    p.add_argument("--task-id", default=None)
    p.add_argument("--ttl", type=float, default=None, help="seconds to start within")
    p.add_argument("--wait", type=float, default=0.0, help="wait this long for the result")
    _helper_address(p)
    p.set_defaults(func=lambda a: asyncio.run(_submit(a)))

    p = sub.add_parser("status", help="show the state of tasks")
    p.add_argument("task_ids", nargs="+")
    _helper_address(p)
    p.set_defaults(func=lambda a: asyncio.run(_status(a)))

    p = sub.add_parser("cancel", help="cancel tasks (a running one's node is told to stop it)")
    p.add_argument("task_ids", nargs="+")
    _helper_address(p)
    p.set_defaults(func=lambda a: asyncio.run(_cancel(a)))

    p = sub.add_parser("nodes", help="the AI nodes each Helper sees, and its queue by kind "
                                     "(operator key)")
    p.add_argument("--json", action="store_true", help="one JSON document instead of a table")
    _helper_address(p)
    p.set_defaults(func=lambda a: asyncio.run(_nodes(a)))

    p = sub.add_parser("dlq", help="dead letters: list, inspect, replay, purge")
    p.add_argument("op", choices=["list", "inspect", "replay", "purge"])
    p.add_argument("task_ids", nargs="*")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--all", action="store_true", help="replay/purge every dead task")
    _helper_address(p)
    p.set_defaults(func=lambda a: asyncio.run(_dlq(a)))

    p = sub.add_parser("stats", help="the Helper's counters (operator key)")
    _helper_address(p)
    p.set_defaults(func=lambda a: asyncio.run(_stats(a)))


def _helper_address(p: argparse.ArgumentParser) -> None:
    p.add_argument("--intake", default=None, help="Helper intake endpoint (default: discover)")
    p.add_argument("--discovery", default=None)
    p.add_argument("--helper-service", default="mesh-helper",
                   help="service name Helpers register under")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S,
                   help="seconds the Helpers get to answer (default %(default)s); past it the "
                        "command exits 3")
    keys.add_trust_arguments(p)


def _client(args: argparse.Namespace, role: Role = Role.CLIENT) -> Client:
    """A Client acting as `role` with the key store of --keys/--insecure: the Helper at
    --intake, else those of $MESH_INTAKE or discovery (each pinned to the key it announced,
    if that key is in allowed/helper/), spread and failed over."""
    from mesh.client import Client
    from nodes.client_factory import env_source
    options = {"trust": keys.trust_from_args(args), "role": role, "timeout_s": args.timeout}
    if args.intake:
        return Client(args.intake, **options)
    source = env_source(discovery=args.discovery, service=args.helper_service)
    if args.insecure:
        inner = source
        source = lambda: list(inner())  # noqa: E731 - plain links: pin no key
        source.close = getattr(inner, "close", lambda: None)
    return Client(endpoints=source, **options)


def _payload(spec: str) -> bytes:
    """`-`: stdin's bytes; `@FILE`: the file's; anything else: the text itself."""
    if spec == "-":
        return sys.stdin.buffer.read()
    if spec.startswith("@"):
        try:
            return Path(spec[1:]).read_bytes()
        except OSError as exc:
            raise _Usage(f"cannot read the payload file {spec[1:]!r}: {exc.strerror}") from None
    return spec.encode()


class _Usage(Exception):
    """A usage error found after parsing (exit 2)."""


def _print(value: object) -> None:
    print(json.dumps(value, ensure_ascii=False))


async def _submit(args: argparse.Namespace) -> int:
    payload = _payload(args.payload)
    async with _client(args) as client:
        task_id = await client.submit(args.kind, payload, priority=args.priority,
                                      task_id=args.task_id, ttl_s=args.ttl)
        if not args.wait:
            _print({"task_id": task_id, "accepted": True})
            return EXIT_OK
        try:
            status = await client.wait(task_id, timeout=args.wait)
        except WaitTimedOut as exc:
            out = exc.status.json() if exc.status is not None else {"task_id": task_id}
            _print({**out, "accepted": True, "wait_timed_out": True})
            return EXIT_WAIT_TIMEOUT
        _print({**status.json(), "accepted": True})
        return EXIT_OK if status.state == wire.SUCCEEDED else EXIT_FAILED


async def _status(args: argparse.Namespace) -> int:
    code = EXIT_OK
    async with _client(args) as client:
        for status in await client.statuses(args.task_ids):
            _print(status.json())
            if not status.state:
                code = EXIT_FAILED
    return code


async def _cancel(args: argparse.Namespace) -> int:
    code = EXIT_OK
    async with _client(args) as client:
        for task_id in args.task_ids:
            try:
                outcome = await client.cancel(task_id)
            except (NotFound, AlreadyFinished) as exc:
                state = getattr(exc, "state", None)
                _print({"task_id": task_id, "cancelled": False,
                        "state": state.name if state is not None else "UNKNOWN",
                        "error": str(exc)})
                code = EXIT_FAILED
                continue
            _print({"task_id": task_id, "cancelled": True, "state": outcome.state.name,
                    "was_running": outcome.was_running})
    return code


async def _nodes(args: argparse.Namespace) -> int:
    from nodes.http import circuit_json, host_of, nodes_json, rate_limit_json
    async with _client(args, Role.OPERATOR) as client:
        views = await client.nodes()
    nodes = [nodes_json(n, helper) for helper, view in views.items() for n in view.nodes]
    queues = [{"helper": helper, "kind": q.kind, "depth": q.depth,
               "oldest_age_s": q.oldest_age_ms / 1000} for helper, view in views.items()
              for q in view.queues]
    limits = [rate_limit_json(r, helper) for helper, view in views.items()
              for r in view.rate_limits]
    circuits = [circuit_json(c, helper) for helper, view in views.items()
                for c in view.circuits]
    if args.json:
        _print({"nodes": nodes, "queues": queues, "rate_limits": limits, "circuits": circuits})
        return EXIT_OK
    columns = ("id", "host", "state", "credit", "held", "version", "last beat", "helper")
    rows = [(n["id"], n["host"] or n["endpoint"], n["state"], str(n["credit"]), str(n["held"]),
             n["version"] or "?", f"{n['last_beat_s']:.1f}s ago", host_of(n["helper"]) or
             n["helper"]) for n in nodes]
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c)
              for i, c in enumerate(columns)]
    for line in (columns, *rows):
        print("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip())
    if not rows:
        print("(no AI node is connected to the Helpers)")
    for q in queues:
        print(f"queue {q['kind']}: {q['depth']} waiting, oldest {q['oldest_age_s']:.1f}s")
    several = len(views) > 1
    for r in limits:
        where = f" on {host_of(r['helper']) or r['helper']}" if several else ""
        share = (f" (this Helper's share {r['per_s']:g}/s)"
                 if r["per_s"] != r["limit_per_s"] else "")
        print(f"rate limit {r['kind']}{where}: {r['limit_per_s']:g}/s{share}, burst "
              f"{r['burst']:g}, {'held back now' if r['held'] else 'not holding tasks back'}")
    for c in circuits:
        where = f" on {host_of(c['helper']) or c['helper']}" if several else ""
        if c["state"] == "closed":
            how = f"{c['failures']} failures in the last {c['calls']} calls"
        elif c["state"] == "open":
            how = f"probe in {c['probe_in_s'] or 0:.1f}s"
        else:
            how = "a probe runs"
        print(f"circuit {c['scope']} {c['name']}{where}: {c['state']} ({how})")
    return EXIT_OK


async def _dlq(args: argparse.Namespace) -> int:
    from mesh.status import TaskStatus
    if args.op in ("replay", "purge") and not args.task_ids and not args.all:
        print(f"mesh dlq {args.op}: name task ids or pass --all", file=sys.stderr)
        return EXIT_USAGE
    async with _client(args, Role.OPERATOR) as client:
        reply = await client.dead_letters(args.op, args.task_ids, args.limit)
    found = {status.task_id for status in reply.tasks}
    for status in reply.tasks:
        _print(TaskStatus.of(status).json())
    _print({"op": args.op, "affected": reply.affected})
    unknown = [t for t in args.task_ids if t not in found] if args.op == "inspect" else []
    if unknown or (args.task_ids and not reply.affected):
        print(f"mesh dlq {args.op}: not a dead letter on any Helper that answered: "
              f"{', '.join(unknown or args.task_ids)}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


async def _stats(args: argparse.Namespace) -> int:
    async with _client(args, Role.OPERATOR) as client:
        print(json.dumps(await client.stats(), sort_keys=True))
    return EXIT_OK


def exit_code(exc: BaseException) -> int:
    """The exit code of a command that failed with `exc` (the table in the module docstring)."""
    for kind, code in ((InUse, EXIT_IN_USE), (UsageError, EXIT_USAGE), (AppLoadError, EXIT_APP),
                       (AddressInUse, EXIT_ADDRESS_IN_USE), (WaitTimedOut, EXIT_WAIT_TIMEOUT),
                       (DiscoveryError | RequestTimeout | HelperRefusedKey, EXIT_UNAVAILABLE)):
        if isinstance(exc, kind):
            return code
    return EXIT_FAILED


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(next((a for a in argv if not a.startswith("-")), None))
    args = parser.parse_args(argv)
    if hasattr(args, "log_format"):  # a node command: its resolved logging options apply
        runtime.setup_logging(args.log_level, args.log_format)
    try:
        return args.func(args) or EXIT_OK
    except _Usage as exc:
        print(f"mesh {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (MeshError, DiscoveryError) as exc:
        print(f"mesh {args.command}: {exc}", file=sys.stderr)
        return exit_code(exc)
    except KeyboardInterrupt:
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
