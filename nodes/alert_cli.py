"""`mesh alert publish`: publish one alert from a shell, and make sure someone has it.

A PUB send from a process that exits at once reaches nobody (no subscriber can have connected
to a port that did not exist a moment ago). So the one-shot publisher:
1. opens its publisher (journal in --data-dir, so the next run with the same --publisher-id
   continues the sequence and still serves anything not yet fetched), binds, publishes;
2. only then registers in discovery (service "mesh-alerts"): every notifier that finds it asks
   the replay endpoint for what it has not seen, which includes this alert;
3. stays until a replay reply carrying the alert went out (a notifier has fetched it), or
   --wait-s passes; then deregisters and exits.
Exit status: 0 when a notifier fetched the alert, 3 when nobody did within --wait-s (the alert
stays journaled and is served by the next run of the same publisher id), 2 on bad arguments.

It publishes with this host's alert-publishing key (the local store, `--keys`; see
`PUBLISH_ROLE`): only notifier keys can read it, and it announces its key in discovery
(`curve_key`) for notifiers to pin. `--insecure` for plain links.
"""

from __future__ import annotations

import argparse
import json
import logging
import socket
import sys

from discovery import Instance, open_discovery
from mesh import sockets
from mesh.alerts import AlertPublisher, AlertPublisherSettings
from mesh.errors import ConfigError
from mesh.trust import Role
from nodes import config, keys, runtime, settings_spec
from nodes.registration import Presence

log = logging.getLogger("mesh.node.alert")

ALERT_SERVICE = "mesh-alerts"

#: the role whose key a one-shot publisher publishes with: a monitor key may publish alerts and
#: nothing else (a helper key could also send AI nodes deliveries)
PUBLISH_ROLE = Role.MONITOR


def register_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("alert", help="fault alerts")
    alert_sub = p.add_subparsers(dest="alert_command", required=True)
    pub = alert_sub.add_parser("publish", help="publish one alert and wait until it is fetched")
    pub.add_argument("--kind", required=True, help="e.g. equipment.fault")
    pub.add_argument("--severity", default="error", choices=("info", "warning", "error", "critical"))
    pub.add_argument("--source", required=True, help="what the alert is about, e.g. press-7")
    pub.add_argument("--payload", default="", help="text payload (UTF-8)")
    pub.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
    pub.add_argument("--publisher-id", default=None,
                     help="stable publisher name (default: alert-cli-<host>)")
    pub.add_argument("--data-dir", default=None,
                     help="journal directory (default: $MESH_DATA_DIR or ./mesh-data, "
                          "<publisher-id>)")
    pub.add_argument("--bind", default="tcp://127.0.0.1:0", help="PUB endpoint")
    pub.add_argument("--replay-bind", default="tcp://127.0.0.1:0", help="replay endpoint")
    pub.add_argument("--wait-s", type=float, default=15.0,
                     help="how long to wait for a notifier to fetch the alert")
    pub.add_argument("--no-discovery", action="store_true",
                     help="do not register (a notifier must know the endpoints)")
    config.add_common(pub)
    keys.add_trust_arguments(pub)
    pub.set_defaults(func=main)


build_parser = register_commands


def alert_instance(publisher: AlertPublisher, *, watch: bool = False) -> Instance:
    """The discovery entry of a started publisher (service "mesh-alerts"), for any node that
    runs one (the Helper too): register it with `nodes.registration.Presence`. Its meta
    `curve_key` is the key subscribers pin ("" on plain links); `watch` ("1" in meta `watch`):
    a long-lived publisher (a Helper's) whose silence subscribers report as mesh.helper.down."""
    pid = publisher.settings.publisher_id
    host = publisher.pub_endpoint.split("//", 1)[1].rsplit(":", 1)[0]
    meta = {"publisher_id": pid, "pub_endpoint": publisher.pub_endpoint,
            "replay_endpoint": publisher.replay_endpoint, "curve_key": publisher.public_key}
    if watch:
        meta["watch"] = "1"
    return Instance(
        service=ALERT_SERVICE, instance_id=pid, address=host,
        port=sockets.port_of(publisher.pub_endpoint), meta=meta)


def main(args: argparse.Namespace) -> int:
    runtime.setup_logging(args.log_level)
    try:
        labels = config.parse_kv(args.label)
    except ConfigError as exc:
        print(f"mesh alert publish: {exc}", file=sys.stderr)
        return 2
    return runtime.run(run(args, labels))


async def run(args: argparse.Namespace, labels: dict[str, str] | None = None) -> int:
    publisher_id = args.publisher_id or f"alert-cli-{socket.gethostname()}"
    data_dir = args.data_dir or config.default_data_dir(publisher_id)
    publisher = AlertPublisher(AlertPublisherSettings(
        publisher_id=publisher_id, data_dir=data_dir, pub_endpoint=args.bind,
        replay_endpoint=args.replay_bind), trust=keys.trust_from_args(args), role=PUBLISH_ROLE)
    await publisher.start()
    presence = None
    discovery = None
    try:
        seq = publisher.publish(args.kind, args.severity, args.source,
                                args.payload.encode(), labels or None)
        if not args.no_discovery:
            discovery = open_discovery(config.discovery_url(args), consul=config.consul_settings(args))
            presence = Presence(discovery, alert_instance(publisher))
            await presence.start()
        print(json.dumps({"published": {"publisher_id": publisher_id, "seq": seq,
                                        "epoch": f"{publisher.epoch:016x}",
                                        "pub_endpoint": publisher.pub_endpoint,
                                        "replay_endpoint": publisher.replay_endpoint}}),
              flush=True)
        fetched = await publisher.wait_served(seq, args.wait_s)
    finally:
        if presence is not None:
            await presence.stop()
        if discovery is not None:
            discovery.close()
        await publisher.stop()
    if fetched:
        print(json.dumps({"fetched": True, "seq": seq}), flush=True)
        return 0
    print(f"mesh alert publish: no notifier fetched alert {publisher_id} seq {seq} within "
          f"{args.wait_s:g} s; it stays journaled in {data_dir} and is served by the next run "
          f"of publisher {publisher_id}", file=sys.stderr)
    return 3


def _standalone() -> int:
    parser = settings_spec.MeshParser(prog="mesh")  # resolves env, --config and defaults
    register_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["alert", *sys.argv[1:]])
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(_standalone())
