"""The `mesh` command line.

    mesh helper                 run a Helper node
    mesh ai --app mod:app       run an AI node
    mesh demo                   a local mesh with a node killed mid-run, and its figures
    mesh submit KIND PAYLOAD    submit one task (and wait for its result with --wait)
    mesh status TASK_ID...      the state of tasks
    mesh dlq list|inspect|replay|purge [TASK_ID...]   (with the operator key)
    mesh stats                  the Helper's counters (with the operator key)
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
    0   done
    1   failed (the message says why)
    2   usage error (unknown flag, bad value in a flag, $MESH_* or the --config file, no --app)
    3   discovery unreachable at start, unavailable or refused (e.g. a Consul ACL token refused,
        a registry directory another user owns)
    4   the --app cannot be loaded (an import error in it, or not module:attribute of a mesh.App)
    5   a port to bind is in use (--intake, --acks, --bind, --metrics-port, ...): the message
        names the endpoint
    75  in use (EX_TEMPFAIL): another live Helper holds the --data-dir, or another live AI node
        has the --node-id; the message names its pid. Stop it or choose another.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import sys

from discovery import DiscoveryError, open_discovery
from mesh import Client, MeshError, wire
from mesh.errors import AddressInUse, AppLoadError, InUse, UsageError
from mesh.trust import Role
from nodes import ai, config, demo, helper, keys, runtime, settings_spec

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
EXIT_APP = 4  # the --app does not load
EXIT_ADDRESS_IN_USE = 5  # a port to bind is taken
EXIT_IN_USE = 75  # EX_TEMPFAIL: another live process owns the data dir or node id


def _optional_commands(sub: argparse._SubParsersAction) -> None:
    """Commands whose modules may be absent in a trimmed install (alerts lane, HTTP gateway)."""
    for module in ("nodes.notifier", "nodes.alert_cli", "nodes.http"):
        try:
            importlib.import_module(module).register_commands(sub)
        except ModuleNotFoundError:
            continue


def build_parser() -> argparse.ArgumentParser:
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
    _optional_commands(sub)
    return parser


def _client_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("submit", help="submit one task")
    p.add_argument("kind")
    p.add_argument("payload", nargs="?", default="")
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
    keys.add_trust_arguments(p)


def _intake(args: argparse.Namespace) -> tuple[str, str]:
    """The Helper's intake endpoint and the key it announced ("" when not announced)."""
    if args.intake:
        return args.intake, ""
    directory = open_discovery(config.discovery_url(args), consul=config.consul_settings(args))
    try:
        _, found = directory.instances(args.helper_service)
    finally:
        directory.close()
    for inst in found:
        endpoint = inst.meta.get("ep_intake") or inst.meta.get("intake_endpoint")
        if endpoint:
            return endpoint, inst.meta.get("curve_key", "")
    raise MeshError("no Helper found in discovery; start one with `mesh helper` or pass --intake")


def _client(args: argparse.Namespace, role: Role = Role.CLIENT) -> Client:
    """A Client acting as `role` with the key store of --keys/--insecure, pinning the key the
    Helper announced in discovery (if it is in allowed/helper/)."""
    endpoint, announced = _intake(args)
    return Client(endpoint, trust=keys.trust_from_args(args), role=role,
                  server_key=None if args.insecure else announced or None)


def _status_dict(status) -> dict:  # noqa: ANN001
    out = {"task_id": status.task_id, "state": wire.state_name(status.state),
           "kind": status.kind, "attempts": status.attempts, "node": status.node_id}
    if status.dead_reason:
        out["dead_reason"] = wire.dead_reason_name(status.dead_reason)
    if status.error:
        out["error"] = status.error
    if status.result:
        out["result"] = status.result.decode(errors="replace")
    return out


async def _submit(args: argparse.Namespace) -> int:
    async with _client(args) as client:
        task_id = await client.submit(args.kind, args.payload.encode(), priority=args.priority,
                                      task_id=args.task_id, ttl_s=args.ttl)
        print(json.dumps({"task_id": task_id, "accepted": True}))
        if args.wait:
            status = await client.wait(task_id, timeout=args.wait)
            print(json.dumps(_status_dict(status)))
            return EXIT_OK if status.state == wire.SUCCEEDED else EXIT_FAILED
    return EXIT_OK


async def _status(args: argparse.Namespace) -> int:
    async with _client(args) as client:
        for status in await client.statuses(args.task_ids):
            print(json.dumps(_status_dict(status)))
    return EXIT_OK


async def _dlq(args: argparse.Namespace) -> int:
    if args.op in ("replay", "purge") and not args.task_ids and not args.all:
        print(f"mesh dlq {args.op}: name task ids or pass --all", file=sys.stderr)
        return EXIT_USAGE
    async with _client(args, Role.OPERATOR) as client:
        reply = await client.dead_letters(args.op, args.task_ids, args.limit)
        for status in reply.tasks:
            print(json.dumps(_status_dict(status)))
        print(json.dumps({"op": args.op, "affected": reply.affected}))
    return EXIT_OK


async def _stats(args: argparse.Namespace) -> int:
    async with _client(args, Role.OPERATOR) as client:
        print(json.dumps(await client.stats(), sort_keys=True))
    return EXIT_OK


def exit_code(exc: BaseException) -> int:
    """The exit code of a command that failed with `exc` (the table in the module docstring)."""
    for kind, code in ((InUse, EXIT_IN_USE), (UsageError, EXIT_USAGE), (AppLoadError, EXIT_APP),
                       (AddressInUse, EXIT_ADDRESS_IN_USE), (DiscoveryError, EXIT_UNAVAILABLE)):
        if isinstance(exc, kind):
            return code
    return EXIT_FAILED


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if hasattr(args, "log_format"):  # a node command: its resolved logging options apply
        runtime.setup_logging(args.log_level, args.log_format)
    try:
        return args.func(args) or EXIT_OK
    except (MeshError, DiscoveryError) as exc:
        print(f"mesh {args.command}: {exc}", file=sys.stderr)
        return exit_code(exc)
    except KeyboardInterrupt:
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
