"""`mesh ai --app module:app`: an AI node running the handlers of a user's App."""

from __future__ import annotations

import argparse
import importlib
import logging

from discovery import Health, Instance, open_discovery
from mesh import App, sockets, wire
from mesh.ai_node import AINode
from mesh.errors import ConfigError
from mesh.metrics import serve
from mesh.settings import AINodeSettings
from nodes import config, runtime
from nodes.registration import Presence, watch

log = logging.getLogger("mesh.node.ai")


def register_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ai", help="run an AI node")
    p.add_argument("--app", default="nodes.sample_app:app", help="module:attribute of an App")
    p.add_argument("--node-id", default=None)
    p.add_argument("--bind", default="tcp://127.0.0.1:0", help="task endpoint to bind")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--prefetch", type=int, default=16)
    p.add_argument("--helper", action="append", default=[],
                   help="a Helper's ack endpoint (repeatable; discovery adds the rest)")
    p.add_argument("--drain-grace", type=float, default=30.0)
    config.add_common(p)
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
        node_id=args.node_id or config.default_node_id("ai"), task_endpoint=args.bind,
        concurrency=args.concurrency, prefetch=args.prefetch, drain_grace_s=args.drain_grace)
    return runtime.run(_serve(settings, load_app(args.app), args))


async def _serve(settings: AINodeSettings, app: App, args: argparse.Namespace) -> int:
    node = AINode(settings, app, helpers=args.helper)
    await node.start()
    server = None
    metrics_port = None
    port = config.metrics_port(args)
    if port is not None:
        server, _, metrics_port = serve(node.metrics.registry, port, args.metrics_addr)
    discovery = open_discovery(config.discovery_url(args))
    host = node.task_endpoint.split("//", 1)[1].rsplit(":", 1)[0]
    instance = Instance(
        service="mesh-ai", instance_id=f"{settings.node_id}-{node.incarnation:x}", address=host,
        port=sockets.port_of(node.task_endpoint), tags=tuple(f"kind={k}" for k in app.kinds),
        meta={"node_id": settings.node_id, "incarnation": f"{node.incarnation:x}",
              "task_endpoint": node.task_endpoint, "concurrency": str(settings.concurrency),
              "protocol": str(wire.PROTOCOL_VERSION), "app": app.name,
              "metrics_port": str(metrics_port or "")})

    def health() -> tuple[Health, str]:
        if node.draining:
            return Health.WARNING, "draining"
        if node.running >= settings.concurrency:
            return Health.WARNING, f"saturated {node.running}/{settings.concurrency}"
        return Health.PASSING, f"running {node.running}/{settings.concurrency}"

    presence = Presence(discovery, instance, health=health)
    await presence.start()

    def on_helpers(found: list[Instance]) -> None:
        for inst in found:
            endpoint = inst.meta.get("ack_endpoint")
            if endpoint and inst.health != Health.CRITICAL:
                node.add_helper(endpoint)

    helper_watch = watch(discovery, "mesh-helper", on_helpers)
    runtime.announce_ready("ai", node_id=settings.node_id, tasks=node.task_endpoint,
                           incarnation=f"{node.incarnation:x}", metrics_port=metrics_port)
    name = await runtime.until_signalled()
    log.info("%s: draining (grace %.1fs)", name, settings.drain_grace_s)
    helper_watch.stop(timeout_s=1.0)
    await presence.stop()  # leave discovery first: no Helper should count on us any more
    await node.drain()
    await node.stop()
    discovery.close()
    if server is not None:
        server.shutdown()
    return 0
