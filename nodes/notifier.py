"""`mesh notifier`: follow every alert publisher, call the alert handlers.

Publishers come from discovery (service "mesh-alerts", meta publisher_id / pub_endpoint /
replay_endpoint / curve_key) and from `--publisher ID=PUB_ENDPOINT,REPLAY_ENDPOINT[,KEY]` flags.
It subscribes with this host's notifier key (the local store, `--keys`), pinning each
publisher's announced key if the store allows it; `--insecure` for plain links. Positions are
kept in `--state-file`, so a restarted notifier misses nothing and starts where it was.
Prints `READY {"role": "notifier", ...}` once subscribed to the static publishers and watching
discovery; SIGTERM/SIGINT stop it cleanly (positions written, sockets closed).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from prometheus_client import CollectorRegistry

from discovery import Instance, open_discovery
from mesh.alert_handlers import HandlerSet, load_handler, log_handler
from mesh.alert_subscriber import AlertSubscriber, AlertSubscriberSettings
from mesh.errors import ConfigError
from mesh.alert_webhook import WebhookHandler
from mesh.metrics import register_alert_subscriber, register_alert_webhook, serve
from nodes import config, keys, runtime, settings_spec
from nodes.registration import watch

log = logging.getLogger("mesh.node.notifier")

ALERT_SERVICE = "mesh-alerts"
HEALTH_RANK = {"passing": 0, "warning": 1, "critical": 2}


def register_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("notifier", help="receive fault alerts from every publisher and handle them")
    p.add_argument("--notifier-id", default=None, help="stable name (names the default state file)")
    p.add_argument("--publisher", action="append", default=[], metavar="ID=PUB,REPLAY[,KEY]",
                   help="a publisher to follow besides discovery (repeatable); KEY: its Z85 "
                        "public key, needed when the store allows more than one helper key")
    p.add_argument("--no-discovery", action="store_true",
                   help="follow only the --publisher flags")
    p.add_argument("--topic", action="append", default=[], metavar="PREFIX",
                   help="topic prefix 'kind|severity', e.g. 'equipment.' (repeatable; default all)")
    p.add_argument("--handler", action="append", default=[], metavar="MODULE:FUNCTION",
                   help="an alert handler, async or sync (repeatable); the log handler always runs "
                        "unless --no-log")
    p.add_argument("--no-log", action="store_true", help="do not log one line per alert")
    p.add_argument("--webhook", action="append", default=[], metavar="URL",
                   help="POST each alert as JSON to URL (repeatable), retried with backoff")
    p.add_argument("--webhook-max-queued", type=int, default=1000,
                   help="alerts waiting for a webhook at most (then the lane waits)")
    p.add_argument("--state-file", default=None,
                   help="positions file (default: <notifier-id>/alert-positions.json under "
                        "$MESH_DATA_DIR, else $XDG_STATE_HOME/mesh or ~/.local/state/mesh; "
                        "0700)")
    p.add_argument("--start-from", choices=("earliest", "latest"), default="earliest",
                   help="for a publisher never seen: all it still has, or only new alerts")
    p.add_argument("--rt-priority", type=int, default=0, metavar="PRIO",
                   help="run the notifier SCHED_FIFO at this priority (1-99; needs CAP_SYS_NICE) so "
                        "a saturated machine does not delay alerts; 0 = normal scheduling")
    p.add_argument("--silence", type=float, default=5.0, metavar="SECONDS",
                   help="a Helper's alert publisher not heard for this long (it beats every "
                        "second) or gone from discovery raises a synthetic mesh.helper.down "
                        "(critical), and mesh.helper.up when it is heard again")
    p.add_argument("--retry-cap", type=float, default=30.0,
                   help="longest backoff between two calls of a failing handler, seconds")
    config.add_common(p)
    keys.add_trust_arguments(p)
    p.set_defaults(func=main)


build_parser = register_commands


def parse_publisher(spec: str) -> tuple[str, str, str, str | None]:
    pid, sep, rest = spec.partition("=")
    pub, sep2, rest = rest.partition(",")
    replay, _, key = rest.partition(",")
    if not (sep and sep2 and pid and pub and replay):
        raise ConfigError(f"--publisher takes ID=PUB_ENDPOINT,REPLAY_ENDPOINT[,KEY], got {spec!r}")
    return pid, pub, replay, key or None


def choose_publishers(found: list[Instance],
                      static_ids: set[str]) -> dict[str, tuple[str, str, str | None, bool]]:
    """publisher_id -> (pub, replay endpoints, announced key, watched) from the "mesh-alerts"
    entries of discovery. Watched (meta watch=1, a Helper's): its silence or its entry's
    removal is reported as mesh.helper.down.

    A publisher is followed whatever its health (an overloaded node may miss its discovery
    heartbeat exactly when it has alerts to send) until it is deregistered. When one id is
    registered twice (a restart before the old entry expired), the healthiest entry wins, then
    the lowest instance id, so the choice does not flap. --publisher flags take precedence.
    """
    chosen: dict[str, tuple[str, str]] = {}
    for inst in sorted(found, key=lambda i: (HEALTH_RANK.get(str(i.health), 3), i.instance_id)):
        pid = inst.meta.get("publisher_id")
        pub, replay = inst.meta.get("pub_endpoint"), inst.meta.get("replay_endpoint")
        if pid and pub and replay and pid not in static_ids and pid not in chosen:
            chosen[pid] = (pub, replay, inst.meta.get("curve_key") or None,
                           inst.meta.get("watch") == "1")
    return chosen


def main(args: argparse.Namespace) -> int:
    runtime.setup_logging(args.log_level)
    if args.rt_priority:
        use_realtime_priority(args.rt_priority)
    return runtime.run(run(args))


def use_realtime_priority(priority: int) -> None:
    """SCHED_FIFO for this process, set before the ZeroMQ context exists so its I/O thread
    inherits it: on a machine whose CPUs are saturated (the task lane at full load) a woken
    notifier runs at once instead of waiting for a time slice (docs/decisions/003-alert-lane.md).
    """
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
    except (PermissionError, OSError, ValueError) as exc:
        log.warning("cannot use SCHED_FIFO priority %d (%s); running with normal scheduling "
                    "(grant CAP_SYS_NICE, e.g. a systemd unit with CPUSchedulingPolicy=fifo)",
                    priority, exc)


async def run(args: argparse.Namespace) -> int:
    notifier_id = args.notifier_id or "notifier"
    state_file = args.state_file or os.path.join(config.private_state_dir(notifier_id),
                                                 "alert-positions.json")
    os.makedirs(os.path.dirname(os.path.abspath(state_file)), exist_ok=True)
    handlers = [] if args.no_log else [("log", log_handler)]
    handlers += [(spec, load_handler(spec)) for spec in args.handler]
    webhooks = [WebhookHandler(url, max_queued=args.webhook_max_queued,
                               retry_cap_s=args.retry_cap) for url in args.webhook]
    for webhook in webhooks:
        await webhook.start()
        handlers.append((f"webhook {webhook.url}", webhook))
    statics = [parse_publisher(spec) for spec in args.publisher]
    settings = AlertSubscriberSettings(
        topics=tuple(args.topic) or ("",), state_path=state_file, start_from=args.start_from,
        silence_s=args.silence)
    trust = keys.trust_from_args(args)
    subscriber = AlertSubscriber(settings, HandlerSet(handlers, retry_cap_s=args.retry_cap),
                                 trust=trust)
    await subscriber.start()
    for pid, pub, replay, key in statics:
        subscriber.add_publisher(pid, pub, replay, key, watch=True)
    static_ids = {pid for pid, *_ in statics}

    discovery = None
    alert_watch = None
    stopping = False
    if not args.no_discovery:
        discovery = open_discovery(config.discovery_url(args), consul=config.consul_settings(args))

        def on_publishers(found: list[Instance]) -> None:
            if stopping:
                return  # a change reported while we shut down
            chosen = choose_publishers(found, static_ids)
            for pid, (pub, replay, key, watched) in chosen.items():
                subscriber.add_publisher(pid, pub, replay, key, watch=watched)
            for pid in subscriber.publishers:
                if pid not in chosen and pid not in static_ids:
                    subscriber.remove_publisher(pid)

        alert_watch = watch(discovery, ALERT_SERVICE, on_publishers, wait_s=2.0)

    metrics_port = None
    metrics_server = None
    port = config.metrics_port(args)
    if port is not None:
        registry = CollectorRegistry()
        register_alert_subscriber(registry, subscriber.stats)
        for webhook in webhooks:  # one webhook's counters (the first) when there are several
            register_alert_webhook(registry, webhook.stats)
            break
        metrics_server, _, metrics_port = serve(registry, port, args.metrics_addr)
    runtime.announce_ready("notifier", metrics_port=metrics_port, notifier_id=notifier_id,
                           state_file=state_file,
                           publishers=sorted(static_ids))
    name = await runtime.until_signalled()
    log.info("%s: stopping the notifier", name)
    stopping = True
    if alert_watch is not None:
        alert_watch.stop(timeout_s=1.0)
    await subscriber.stop()
    for webhook in webhooks:
        await webhook.stop()
    if discovery is not None:
        discovery.close()
    if metrics_server is not None:
        metrics_server.shutdown()
    return 0


def _standalone() -> int:
    parser = settings_spec.MeshParser(prog="mesh")  # resolves env, --config and defaults
    register_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["notifier", *sys.argv[1:]])
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(_standalone())
