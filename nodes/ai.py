"""`mesh ai --app module:app`: an AI node running the handlers of a user's App."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import socket
import sys
import threading
import time
from typing import TYPE_CHECKING

from discovery import Discovery, DiscoveryError, Health, Instance, open_discovery
from mesh import sockets, wire
from mesh.errors import AppLoadError, UsageError
from mesh.settings import AINodeSettings
from mesh.trust import Role, Trust
from nodes import config, keys, logs, runtime, settings_spec
from nodes.registration import GoneNodes, Presence, check_reachable, claim_node, watch_nodes

if TYPE_CHECKING:  # loaded by `mesh ai` only: `mesh helper` imports this module for its flags
    from mesh.app import App

log = logging.getLogger("mesh.node.ai")


def register_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ai", help="run an AI node")
    settings_spec.add_options(p, settings_spec.AI)
    config.add_common(p)
    keys.add_trust_arguments(p)
    config.add_registration(p, watched="helper_service")
    p.set_defaults(func=main)


def load_app(spec: str) -> App:
    """The App named `module:attribute`, imported with the current directory on the import path
    (as `python -m` has it). Raises AppLoadError with one line naming the cause."""
    from mesh.app import App
    module_name, sep, attr = spec.partition(":")
    if not (sep and module_name and attr):
        raise AppLoadError(f"--app must be module:attribute, e.g. myservice.tasks:app; got {spec!r}")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - whatever the import raised, said in one line
        raise AppLoadError(f"--app {spec}: importing {module_name} failed{_where(exc)}: "
                           f"{type(exc).__name__}: {' '.join(str(exc).split())}") from None
    app = getattr(module, attr, None)
    if not isinstance(app, App):
        raise AppLoadError(f"--app {spec}: {module_name}.{attr} is not a mesh.App "
                           f"(got {type(app).__name__})")
    return app


def _where(exc: BaseException) -> str:
    """' at FILE:LINE' of the innermost frame of an exception raised inside the user's module
    ('' for a module that is not found at all)."""
    if isinstance(exc, ModuleNotFoundError):
        return ""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if isinstance(exc, SyntaxError) and exc.filename:
        return f" at {exc.filename}:{exc.lineno}"
    return f" at {tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}" if tb is not None else ""


def main(args: argparse.Namespace) -> int:
    runtime.setup_logging(args.log_level, args.log_format)
    if not args.app:
        raise UsageError("--app MODULE:APP is required: the mesh.App whose handlers this node "
                         "runs, e.g. --app myservice.tasks:app (or app = ... in --config's [ai])")
    app = load_app(args.app)  # before anything binds or registers
    settings = AINodeSettings(
        node_id=args.node_id or config.default_node_id("ai"),
        task_endpoint=config.bindable(args.bind, config.advertise_host(args)),
        concurrency=args.concurrency, prefetch=args.prefetch, drain_grace_s=args.drain_grace,
        run_timeout_s=args.run_timeout, max_result_bytes=args.max_result_bytes,
        max_helpers=args.max_helpers, executor=args.executor,
        max_tasks_per_child=args.max_tasks_per_child,
        max_memory_per_child_bytes=config.parse_bytes(args.max_memory_per_child,
                                                      "--max-memory-per-child"),
        child_kill_grace_s=args.child_kill_grace)
    logs.set_node_id(settings.node_id)
    # A key of its own: a Helper binds a node id to the key its heartbeats come with.
    if not args.node_id:  # generated ids (ai-HOST-PID): drop the keys of runs that are gone
        keys.prune_generated_node_keys(args, socket.gethostname())
    trust = keys.trust_from_args(args, identity=keys.ai_node_identity(settings.node_id))
    discovery = open_discovery(config.discovery_url(args), consul=config.consul_settings(args))
    try:
        check_reachable(discovery, args.helper_service, args.discovery_wait,
                        config.discovery_url(args))
        # One live AI node per explicit id, refused before anything binds. A generated id
        # (host and pid) is unique already.
        owner = claim_node(discovery, args.service_name, settings.node_id) if args.node_id else None
        try:
            code = runtime.run(_serve(settings, app, args, discovery, trust))
        finally:
            if owner is not None:
                owner.release()
    finally:
        discovery.close()
    _exit_past_hung_handlers(code)
    return code


def _exit_past_hung_handlers(code: int) -> None:
    """A sync handler past its run timeout may still sleep in its thread (threads cannot be
    killed); its task was failed or handed back already. Python would join that thread at exit,
    so a hung handler would keep a SIGTERMed node alive forever: leave without waiting."""
    hung = [t.name for t in threading.enumerate() if t.name.startswith("mesh-handler")]
    if hung:
        log.warning("exiting with %d handler threads still running: %s", len(hung), hung)
        logging.shutdown()
        sys.stdout.flush()
        os._exit(code)


async def _serve(settings: AINodeSettings, app: App, args: argparse.Namespace,
                 discovery: Discovery, trust: Trust) -> int:
    from mesh.ai_node import AINode
    from mesh.metrics import serve
    node = AINode(settings, app, helpers=args.helper, trust=trust, app_path=args.app)
    server = None
    metrics_port = None
    port = config.metrics_port(args)
    if port is not None:  # a taken port is refused before the node says it is up
        server, _, metrics_port = serve(node.metrics.registry, port, args.metrics_addr)
    try:
        await node.start()
    except BaseException:
        if server is not None:
            server.shutdown()
        raise
    host = config.endpoint_host(node.task_endpoint)
    pool_tags = (f"pool={args.pool}",) if args.pool else ()
    instance = Instance(
        service=args.service_name, instance_id=f"{settings.node_id}-{node.incarnation:x}",
        address=host, port=sockets.port_of(node.task_endpoint),
        tags=(*(f"kind={k}" for k in app.kinds), *pool_tags),
        meta={"node_id": settings.node_id, "incarnation": f"{node.incarnation:x}",
              "concurrency": str(settings.concurrency), "version": config.mesh_version(),
              "protocol": str(wire.PROTOCOL_VERSION), "app": app.name, "pool": args.pool or "",
              "ep_task": node.task_endpoint,
              # the key this node's task endpoint answers with (Helpers pin it if allowed)
              "curve_key": trust.public_key(Role.AI_NODE),
              "ep_metrics": config.metrics_endpoint(args.metrics_addr, host, metrics_port),
              "task_endpoint": node.task_endpoint,  # the name older readers use
              "metrics_port": str(metrics_port or ""),
              # who registered it: a restart on this host after a SIGKILL is not refused for
              # the dead run's registration (nodes.registration.claim_node)
              "host": socket.gethostname(), "pid": str(os.getpid())})

    def health() -> tuple[Health, str]:
        if node.draining:
            return Health.WARNING, "draining"
        if node.running >= settings.concurrency:
            return Health.WARNING, f"saturated {node.running}/{settings.concurrency}"
        return Health.PASSING, f"running {node.running}/{settings.concurrency}"

    presence = Presence(discovery, instance, ttl_s=args.discovery_ttl,
                        deregister_after_s=args.deregister_after, health=health)
    try:
        await presence.start()
    except DiscoveryError:  # refused (wrong ACL token, invalid registration): fail at startup
        await node.stop()
        if server is not None:
            server.shutdown()
        raise

    # A Helper that left discovery is dropped (absence only, after the same grace the Helper
    # gives AI nodes when the registry may have lost registrations; never a --helper endpoint).
    # A CRITICAL Helper is kept: it may only be slow, and heartbeats to it cost nothing.
    gone_helpers = GoneNodes(grace_s=presence.max_backoff_s + 2 * args.discovery_ttl)
    loop = asyncio.get_running_loop()

    def drop(runs: list[tuple[str, int]]) -> None:
        for endpoint, _ in runs:
            if endpoint not in args.helper:
                log.info("Helper at %s left discovery; dropping the link unless it holds our work",
                         endpoint)
                node.remove_helper(endpoint)

    def on_helpers(found: list[Instance], registry_suspect: bool) -> None:
        listed = []
        for inst in found:
            if args.pool and f"pool={args.pool}" not in inst.tags:
                continue
            endpoint = inst.meta.get("ep_ack") or inst.meta.get("ack_endpoint")
            if not endpoint:
                continue
            listed.append((endpoint, 0))
            if inst.health != Health.CRITICAL:
                # pinned to the key it announces, if that key is allowed as helper here
                node.add_helper(endpoint, inst.meta.get("curve_key") or None)
        if registry_suspect:
            loop.call_later(gone_helpers.grace_s + 0.1,
                            lambda: drop(gone_helpers.expire(time.monotonic())))
        drop(gone_helpers.update(listed, [], registry_restarted=registry_suspect,
                                 now=time.monotonic()))

    helper_watch = watch_nodes(discovery, args.helper_service, on_helpers)
    runtime.announce_ready("ai", node_id=settings.node_id, tasks=node.task_endpoint,
                           incarnation=f"{node.incarnation:x}", metrics_port=metrics_port)
    name = await runtime.until_signalled()
    log.info("%s: draining (grace %.1fs)", name, settings.drain_grace_s)
    helper_watch.stop(timeout_s=1.0)
    # Drain while still registered (WARNING "draining"): a Helper treats a node that leaves
    # discovery as dead and would re-queue the tasks this node is still finishing.
    await node.drain()
    await presence.stop()
    await node.stop()
    if server is not None:
        server.shutdown()
    return 0
