"""`mesh helper`: a Helper node, registered in discovery, watching the AI nodes."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import time

from discovery import Discovery, DiscoveryError, Health, Instance, open_discovery
from mesh import sockets, wire
from mesh.alerts import AlertPublisher, AlertPublisherSettings
from mesh.helper import Helper
from mesh.metrics import register_alert_publisher, serve
from mesh.ownership import claim_data_dir
from mesh.settings import HelperSettings
from nodes import config, helper_group, keys, logs, runtime, settings_spec
from nodes.alert_cli import alert_instance
from nodes.registration import GoneNodes, Presence, check_reachable, service_health, watch_nodes

log = logging.getLogger("mesh.node.helper")


def register_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("helper", help="run a Helper node")
    settings_spec.add_options(p, settings_spec.HELPER)
    keys.add_trust_arguments(p)
    config.add_common(p)
    config.add_registration(p, watched="ai_service")
    helper_group.add_group_arguments(p)
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    runtime.setup_logging(args.log_level, args.log_format)
    logs.set_node_id(args.helper_id)
    # Whatever the Helper writes (journal, state, alert journal) is its own: 0600 files, 0700 dirs.
    os.umask(0o077)
    settings = HelperSettings(
        helper_id=args.helper_id,
        data_dir=args.data_dir or config.default_data_dir(args.helper_id),
        intake_endpoint=config.bindable(args.intake, config.advertise_host(args)),
        ack_endpoint=config.bindable(args.acks, config.advertise_host(args)),
        fsync_policy=args.fsync,
        max_attempts=args.max_attempts, max_pending_tasks=args.max_pending,
        node_dead_after_s=args.node_dead_after,
        dispatch_before_sync=args.dispatch_before_sync,
        unroutable_grace_s=args.unroutable_grace, ack_timeout_s=args.ack_timeout,
        refuse_unknown_kinds=args.refuse_unknown_kinds,
        kind_max_attempts=config.parse_int_kv(args.kind_max_attempts, "--kind-max-attempts"),
        retry_base_s=args.retry_base, retry_cap_s=args.retry_cap,
        max_lost_deliveries=args.max_lost_deliveries, max_pending_bytes=args.max_pending_bytes,
        journal_segment_bytes=args.journal_segment_bytes,
        max_dead_letters=args.max_dead_letters, max_dead_letter_bytes=args.max_dead_letter_bytes,
        max_result_waiters=args.max_result_waiters,
        max_result_waiters_per_client=args.max_result_waiters_per_client,
        max_reply_bytes=args.max_reply_bytes,
        max_unread_reply_bytes=args.max_unread_reply_bytes,
        max_nodes=args.max_nodes, max_node_ids_per_key=args.max_node_ids_per_key,
        rate_limits=config.parse_rate_limit_flags(args.rate_limit), breakers=args.breakers,
        breaker_failure_ratio=args.breaker_failure_ratio,
        breaker_min_calls=args.breaker_min_calls,
        breaker_window_calls=args.breaker_window_calls, breaker_window_s=args.breaker_window,
        breaker_cool_down_s=args.breaker_cool_down,
        breaker_max_cool_down_s=max(args.breaker_max_cool_down, args.breaker_cool_down))
    # One Helper per data dir, refused before the journal is opened; the kernel releases the
    # lock when this process dies, however it dies.
    with claim_data_dir(settings.data_dir, advice="stop it or choose another --data-dir"):
        discovery = open_discovery(config.discovery_url(args), consul=config.consul_settings(args))
        try:
            # before the journal opens or anything binds: an unreachable registry is one line
            check_reachable(discovery, args.ai_service, args.discovery_wait,
                            config.discovery_url(args))
            if args.group:
                return runtime.run(helper_group.serve(
                    settings, args, discovery,
                    lambda helper, alerts: _register_leader(settings, args, discovery, helper, alerts)))
            return runtime.run(_serve(settings, args, discovery))
        finally:
            discovery.close()


async def _serve(settings: HelperSettings, args: argparse.Namespace, discovery: Discovery) -> int:
    trust = keys.trust_from_args(args)  # --insecure warns here, at every start
    # The Helper publishes its own fault alerts (node down/back, task dead, journal error,
    # queue over threshold) on a lane of its own, journaled beside the task journal.
    alerts = None
    if not args.no_alerts:
        alerts = AlertPublisher(AlertPublisherSettings(
            publisher_id=f"{settings.helper_id}-alerts",
            data_dir=os.path.join(settings.data_dir, "alerts"),
            pub_endpoint=args.alerts_bind, replay_endpoint=args.alerts_replay_bind),
            trust=trust)
        await alerts.start()
    helper = Helper(settings, alerts=alerts, trust=trust)
    if alerts is not None:
        register_alert_publisher(helper.metrics.registry, alerts.stats)
    metrics_port = None
    port = config.metrics_port(args)
    server = None
    try:
        if port is not None:  # a taken port is refused before the Helper says it is up
            server, _, metrics_port = serve(helper.metrics.registry, port, args.metrics_addr)
        await helper.start()
    except BaseException:
        if server is not None:
            server.shutdown()
        if alerts is not None:
            await alerts.stop()
        raise
    host = config.endpoint_host(helper.intake_endpoint)
    pool_tags = (f"pool={args.pool}",) if args.pool else ()
    metrics_ep = config.metrics_endpoint(args.metrics_addr, host, metrics_port)
    instance = Instance(
        service=args.service_name, instance_id=settings.helper_id, address=host,
        port=sockets.port_of(helper.intake_endpoint), tags=("helper", *pool_tags),
        meta={"helper_id": settings.helper_id, "version": config.mesh_version(),
              "protocol": str(wire.PROTOCOL_VERSION), "pool": args.pool or "",
              "ep_intake": helper.intake_endpoint, "ep_ack": helper.ack_endpoint,
              "ep_metrics": metrics_ep,
              # the key clients and AI nodes pin (only if it is in their allowed/helper/)
              "curve_key": helper.public_key,
              # the names nodes/cli.py and mesh ai read
              "intake_endpoint": helper.intake_endpoint, "ack_endpoint": helper.ack_endpoint,
              "metrics_port": str(metrics_port or "")})
    # CRITICAL, with the reason, while the Helper says it cannot serve (its journal failed):
    # clients pick passing Helpers only, so they go elsewhere until it recovers.
    presence = Presence(discovery, instance, ttl_s=args.discovery_ttl,
                        deregister_after_s=args.deregister_after,
                        health=service_health(helper))
    try:
        await presence.start()
    except DiscoveryError:  # refused (wrong ACL token, invalid registration): fail at startup
        await helper.stop()
        if server is not None:
            server.shutdown()
        raise

    # After a registry restart, nodes re-register within a heartbeat plus the Presence backoff.
    gone_nodes = GoneNodes(grace_s=presence.max_backoff_s + 2 * args.discovery_ttl)
    loop = asyncio.get_running_loop()

    def declare(runs: list[tuple[str, int]]) -> None:
        for node_id, incarnation in runs:
            log.info("discovery reports AI node %s (incarnation %x) gone", node_id, incarnation)
            helper.dispatcher.node_gone(node_id, "discovery", incarnation)

    def on_ai_nodes(found: list[Instance], registry_suspect: bool) -> None:
        alive, critical = [], []
        for inst in found:
            if args.pool and f"pool={args.pool}" not in inst.tags:
                continue
            try:
                run = (inst.meta["node_id"], int(inst.meta.get("incarnation", "0"), 16))
            except (KeyError, ValueError):
                continue  # not a mesh AI node
            (critical if inst.health == Health.CRITICAL else alive).append(run)
        if registry_suspect:
            log.info("discovery was unreachable or restarted: AI nodes not listed yet get %.1fs "
                     "to re-register before they count as gone", gone_nodes.grace_s)
            loop.call_later(gone_nodes.grace_s + 0.1,
                            lambda: declare(gone_nodes.expire(time.monotonic())))
        declare(gone_nodes.update(alive, critical, registry_restarted=registry_suspect,
                                  now=time.monotonic()))

    ai_watch = watch_nodes(discovery, args.ai_service, on_ai_nodes)

    def on_helpers(found: list[Instance], registry_suspect: bool) -> None:
        # Rate limits are split among the Helpers dispatching (this one counts while listed).
        if not registry_suspect:
            helper.set_helper_count(sum(
                1 for inst in found if inst.health != Health.CRITICAL
                and (not args.pool or f"pool={args.pool}" in inst.tags)))

    helper_watch = watch_nodes(discovery, args.service_name, on_helpers) if (
        settings.rate_limits) else None
    alert_presence = None
    if alerts is not None:
        alert_presence = Presence(discovery, alert_instance(alerts, watch=True), ttl_s=args.discovery_ttl,
                                  deregister_after_s=args.deregister_after)
        await alert_presence.start()
    runtime.announce_ready("helper", intake=helper.intake_endpoint, acks=helper.ack_endpoint,
                           curve_key=helper.public_key, metrics_port=metrics_port, recovered=helper.recovered,
                           alerts=alerts.pub_endpoint if alerts else None,
                           alerts_replay=alerts.replay_endpoint if alerts else None)
    name = await runtime.until_signalled()
    log.info("%s: stopping", name)
    if alerts is not None:
        # Subscribers take the silence that follows for a clean stop, not a Helper down.
        alerts.publish("mesh.helper.left", "info", settings.helper_id,
                       json.dumps({"helper_id": settings.helper_id, "signal": name}).encode())
    ai_watch.stop(timeout_s=1.0)
    if helper_watch is not None:
        helper_watch.stop(timeout_s=1.0)
    await presence.stop()
    await helper.stop()
    if alerts is not None:
        await alert_presence.stop()
        await alerts.stop()
    if server is not None:
        server.shutdown()
    return 0


async def _register_leader(settings: HelperSettings, args: argparse.Namespace, discovery: Discovery,
                           helper: Helper, alerts):  # noqa: ANN001, ANN202
    """A group's leader: its intake in discovery and its watch of the AI nodes, while it leads.
    Returns the coroutine function that undoes both."""
    host = config.endpoint_host(helper.intake_endpoint)
    instance = Instance(
        service=args.service_name, instance_id=settings.helper_id, address=host,
        port=sockets.port_of(helper.intake_endpoint), tags=("helper", f"group={args.group}"),
        meta={"helper_id": settings.helper_id, "version": config.mesh_version(),
              "protocol": str(wire.PROTOCOL_VERSION), "pool": args.pool or "", "group": args.group,
              "ep_intake": helper.intake_endpoint, "ep_ack": helper.ack_endpoint,
              "curve_key": helper.public_key,
              "intake_endpoint": helper.intake_endpoint, "ack_endpoint": helper.ack_endpoint})
    presence = Presence(discovery, instance, ttl_s=args.discovery_ttl,
                        deregister_after_s=args.deregister_after, health=service_health(helper))
    await presence.start()

    def on_ai_nodes(found: list[Instance], registry_suspect: bool) -> None:
        for inst in found:  # a node critical in discovery is gone (heartbeats say the rest)
            if inst.health == Health.CRITICAL and "node_id" in inst.meta:
                helper.dispatcher.node_gone(inst.meta["node_id"], "discovery",
                                            int(inst.meta.get("incarnation", "0") or "0", 16))

    ai_watch = watch_nodes(discovery, args.ai_service, on_ai_nodes)

    async def stop() -> None:
        # Not joined: the watch thread may sit in a blocking query for seconds, and this runs on
        # the loop at every term's end, before the lock is released (a join held the hand-over
        # and the loop for 1 s). Stopped, it reports nothing more and ends with its query.
        ai_watch.stop(timeout_s=0.0)
        await presence.stop()

    return stop
