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

from discovery import Discovery, DiscoveryError, Health, Instance, open_discovery
from mesh import App, sockets, wire
from mesh.ai_node import AINode
from mesh.errors import ConfigError
from mesh.metrics import serve
from mesh.settings import AINodeSettings
from mesh.trust import Role, Trust
from nodes import config, keys, runtime
from nodes.registration import GoneNodes, Presence, claim_node, watch_nodes

log = logging.getLogger("mesh.node.ai")


def register_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ai", help="run an AI node")
    p.add_argument("--app", default="nodes.sample_app:app", help="module:attribute of an App")
    p.add_argument("--node-id", default=None)
    p.add_argument("--bind", default="tcp://127.0.0.1:0", help="task endpoint to bind")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--prefetch", type=int, default=0,
                   help="deliveries waiting for a slot beyond --concurrency (default 0: work "
                        "goes to free slots, see docs/decisions/005-failure-semantics.md)")
    p.add_argument("--helper", action="append", default=[],
                   help="a Helper's ack endpoint (repeatable; discovery adds the rest)")
    p.add_argument("--drain-grace", type=float, default=30.0)
    p.add_argument("--run-timeout", type=float, default=300.0,
                   help="run timeout of a task that carries none and whose handler sets none")
    p.add_argument("--max-result-bytes", type=int, default=1 * 2**20,
                   help="largest result sent; a larger one fails the attempt (FATAL). Keep it "
                        "at or below the Helpers' --max-payload-bytes")
    p.add_argument("--max-helpers", type=int, default=64,
                   help="Helper links at most; deliveries needing one more are refused")
    config.add_common(p)
    keys.add_trust_arguments(p)
    config.add_registration(p, service="mesh-ai", watched_flag="helper-service",
                            watched="mesh-helper")
    p.set_defaults(func=main)


def load_app(spec: str) -> App:
    module_name, sep, attr = spec.partition(":")
    if not sep:
        raise ConfigError(f"--app must be module:attribute, got {spec!r}")
    app = getattr(importlib.import_module(module_name), attr, None)
    if not isinstance(app, App):
        raise ConfigError(f"{spec} is not a mesh.App (got {type(app).__name__})")
    return app


def main(args: argparse.Namespace) -> int:
    runtime.setup_logging(args.log_level)
    settings = AINodeSettings(
        node_id=args.node_id or config.default_node_id("ai"),
        task_endpoint=config.bindable(args.bind, config.advertise_host(args)),
        concurrency=args.concurrency, prefetch=args.prefetch, drain_grace_s=args.drain_grace,
        run_timeout_s=args.run_timeout, max_result_bytes=args.max_result_bytes,
        max_helpers=args.max_helpers)
    # A key of its own: a Helper binds a node id to the key its heartbeats come with.
    if not args.node_id:  # generated ids (ai-HOST-PID): drop the keys of runs that are gone
        keys.prune_generated_node_keys(args, socket.gethostname())
    trust = keys.trust_from_args(args, identity=keys.ai_node_identity(settings.node_id))
    app = load_app(args.app)
    discovery = open_discovery(config.discovery_url(args), consul=config.consul_settings(args))
    try:
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
    node = AINode(settings, app, helpers=args.helper, trust=trust)
    await node.start()
    server = None
    metrics_port = None
    port = config.metrics_port(args)
    if port is not None:
        server, _, metrics_port = serve(node.metrics.registry, port, args.metrics_addr)
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
