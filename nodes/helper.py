"""`mesh helper`: a Helper node, registered in discovery, watching the AI nodes."""

from __future__ import annotations

import argparse
import asyncio
import logging

from discovery import Health, Instance, open_discovery
from mesh import sockets, wire
from mesh.helper import Helper
from mesh.metrics import serve
from mesh.settings import HelperSettings
from nodes import config, runtime
from nodes.registration import Presence, watch

log = logging.getLogger("mesh.node.helper")


def register_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("helper", help="run a Helper node")
    p.add_argument("--helper-id", default="helper-1", help="stable id; owns the data dir")
    p.add_argument("--data-dir", default=None, help="journal directory (default ./mesh-data/ID)")
    p.add_argument("--intake", default="tcp://127.0.0.1:0", help="client endpoint to bind")
    p.add_argument("--acks", default="tcp://127.0.0.1:0", help="ack endpoint to bind")
    p.add_argument("--fsync", default="batch", choices=["always", "batch", "interval", "none"])
    p.add_argument("--max-attempts", type=int, default=3)
    p.add_argument("--max-pending", type=int, default=200_000)
    p.add_argument("--node-dead-after", type=float, default=2.0)
    p.add_argument("--dispatch-before-sync", action="store_true")
    p.add_argument("--unroutable-grace", type=float, default=30.0,
                   help="seconds a task kind no live node serves waits before DEAD")
    p.add_argument("--ack-timeout", type=float, default=10.0)
    config.add_common(p)
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    runtime.setup_logging(args.log_level)
    settings = HelperSettings(
        helper_id=args.helper_id,
        data_dir=args.data_dir or config.default_data_dir(args.helper_id),
        intake_endpoint=args.intake, ack_endpoint=args.acks, fsync_policy=args.fsync,
        max_attempts=args.max_attempts, max_pending_tasks=args.max_pending,
        node_dead_after_s=args.node_dead_after,
        dispatch_before_sync=args.dispatch_before_sync,
        unroutable_grace_s=args.unroutable_grace, ack_timeout_s=args.ack_timeout)
    return runtime.run(_serve(settings, args))


async def _serve(settings: HelperSettings, args: argparse.Namespace) -> int:
    helper = Helper(settings)
    await helper.start()
    metrics_port = None
    port = config.metrics_port(args)
    server = None
    if port is not None:
        server, _, metrics_port = serve(helper.metrics.registry, port, args.metrics_addr)
    discovery = open_discovery(config.discovery_url(args))
    host = helper.intake_endpoint.split("//", 1)[1].rsplit(":", 1)[0]
    instance = Instance(
        service="mesh-helper", instance_id=settings.helper_id, address=host,
        port=sockets.port_of(helper.intake_endpoint), tags=("helper",),
        meta={"helper_id": settings.helper_id, "intake_endpoint": helper.intake_endpoint,
              "ack_endpoint": helper.ack_endpoint, "protocol": str(wire.PROTOCOL_VERSION),
              "metrics_port": str(metrics_port or "")})
    presence = Presence(discovery, instance, health=lambda: (Health.PASSING, ""))
    await presence.start()

    listed: set[tuple[str, int]] = set()

    def on_ai_nodes(found: list[Instance]) -> None:
        # Only a node discovery listed before and lists no more (or as critical) is gone: a
        # node whose first heartbeat beat its registration is not.
        alive = {(i.meta.get("node_id", ""), int(i.meta.get("incarnation", "0"), 16))
                 for i in found if i.health != Health.CRITICAL}
        for node_id, incarnation in listed - alive:
            helper.dispatcher.node_gone(node_id, "discovery", incarnation)
        listed.clear()
        listed.update(alive)

    ai_watch = watch(discovery, "mesh-ai", on_ai_nodes)
    runtime.announce_ready("helper", intake=helper.intake_endpoint, acks=helper.ack_endpoint,
                           metrics_port=metrics_port, recovered=helper.recovered)
    name = await runtime.until_signalled()
    log.info("%s: stopping", name)
    ai_watch.stop(timeout_s=1.0)
    await presence.stop()
    await helper.stop()
    discovery.close()
    if server is not None:
        server.shutdown()
    return 0
