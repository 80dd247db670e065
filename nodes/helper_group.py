"""`mesh helper --group NAME`: a member of a replicated Helper group (mesh/group.py).

Wiring only: the lock backend (a lock file in embedded mode, a Consul session + KV lock in
Consul mode), the group member, and discovery: the intake is registered as the Helper service
only while this member leads, and deregistered the moment it stops leading.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os

from discovery import Discovery
from mesh.alerts import AlertPublisher, AlertPublisherSettings
from mesh.helper import Helper
from mesh.settings import HelperSettings
from nodes import config, keys, runtime

log = logging.getLogger("mesh.node.helper")


def add_group_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("Helper group (no single point of failure; decision 009)")
    g.add_argument("--group", default="", help="join the replicated Helper group NAME")
    g.add_argument("--group-size", type=int, default=2,
                   help="members of the group, this one included (default 2)")
    g.add_argument("--min-replicas", type=int, default=None,
                   help="followers that must have a record durable before 'accepted' "
                        "(default 1 when the group has followers; 0 accepts on the leader alone)")
    g.add_argument("--group-lock-dir", default="",
                   help="embedded mode: the directory of the group's lock file (shared by the "
                        "members on this host; default <data dir>/../groups)")
    g.add_argument("--repl", default="tcp://127.0.0.1:0",
                   help="the replication endpoint this member binds (followers connect to the leader's)")
    g.add_argument("--group-ttl", type=float, default=None,
                   help="the lock's TTL in seconds (Consul default 10, lock file 2)")
    g.add_argument("--group-lock-delay", type=float, default=15.0,
                   help="Consul mode: the session's lock-delay in seconds")


def lock_backend(args: argparse.Namespace, settings: HelperSettings, discovery: Discovery):  # noqa: ANN201
    from discovery.consul import ConsulDiscovery
    if isinstance(discovery, ConsulDiscovery):
        from discovery.leadership import ConsulLock
        return ConsulLock(discovery, args.group, ttl_s=args.group_ttl or 10.0,
                          lock_delay_s=args.group_lock_delay,
                          session_name=f"mesh-helper-{settings.helper_id}")
    from mesh.leadership import FileLock  # the group's modules: loaded with --group only
    directory = args.group_lock_dir or os.path.join(os.path.dirname(
        os.path.abspath(settings.data_dir)), "groups")
    return FileLock(directory, args.group, ttl_s=args.group_ttl or 2.0)


async def serve(settings: HelperSettings, args: argparse.Namespace, discovery: Discovery,
                register) -> int:  # noqa: ANN001 - nodes.helper.register_leader
    from mesh.group import GroupMember, GroupSettings
    trust = keys.trust_from_args(args)
    alerts = None
    if not args.no_alerts:
        alerts = AlertPublisher(AlertPublisherSettings(
            publisher_id=f"{settings.helper_id}-alerts",
            data_dir=os.path.join(settings.data_dir, "alerts"),
            pub_endpoint=args.alerts_bind, replay_endpoint=args.alerts_replay_bind),
            trust=trust)
        await alerts.start()
    member_settings = GroupSettings(
        group=args.group, member_id=settings.helper_id, data_dir=settings.data_dir,
        group_size=args.group_size, min_replicas=args.min_replicas,
        repl_endpoint=config.bindable(args.repl, config.advertise_host(args)),
        segment_size_bytes=settings.journal_segment_bytes,
        max_retained_results=settings.max_retained_results)
    registered: dict = {}

    async def on_lead(helper: Helper) -> None:
        registered["stop"] = await register(helper, alerts)
        runtime.announce_ready("helper-leader", group=args.group, intake=helper.intake_endpoint,
                               acks=helper.ack_endpoint, curve_key=helper.public_key)

    async def on_follow(helper: Helper) -> None:
        stop = registered.pop("stop", None)
        if stop is not None:
            await stop()

    member = GroupMember(member_settings, lock_backend(args, settings, discovery), trust=trust,
                         make_helper=lambda hooks: Helper(settings, alerts=alerts, trust=trust,
                                                          group=hooks),
                         on_lead=on_lead, on_follow=on_follow, alerts=alerts)
    running = asyncio.create_task(member.run(), name="group-member")
    while not member.repl_endpoint and not running.done():
        await asyncio.sleep(0.01)
    if running.done():
        running.result()
    runtime.announce_ready("helper", group=args.group, member=settings.helper_id,
                           repl=member.repl_endpoint)
    signalled = asyncio.create_task(runtime.until_signalled())
    await asyncio.wait({running, signalled}, return_when=asyncio.FIRST_COMPLETED)
    await member.stop()
    await running
    signalled.cancel()
    if alerts is not None:
        await alerts.stop()
    return 0
