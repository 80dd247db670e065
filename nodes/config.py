"""The one reader of flags and environment: turns them into mesh settings and a discovery URL."""

from __future__ import annotations

import argparse
import os
import socket

from discovery import consul_url_from_env
from mesh.errors import ConfigError


def add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--discovery", default=None,
                        help="embedded:///dir | static://svc=h:p,... | consul://host:port "
                             "(default: $MESH_DISCOVERY, then Consul if CONSUL_HTTP_ADDR is set, "
                             "else the embedded registry)")
    parser.add_argument("--metrics-port", type=int, default=None,
                        help="serve Prometheus /metrics here (0 = any free port; default: off "
                             "unless $MESH_METRICS_PORT)")
    parser.add_argument("--metrics-addr", default="127.0.0.1")
    parser.add_argument("--log-level", default=None)


def discovery_url(args: argparse.Namespace) -> str | None:
    if args.discovery:
        return args.discovery
    if os.environ.get("MESH_DISCOVERY"):
        return os.environ["MESH_DISCOVERY"]
    return consul_url_from_env(os.environ)


def metrics_port(args: argparse.Namespace) -> int | None:
    if args.metrics_port is not None:
        return args.metrics_port
    value = os.environ.get("MESH_METRICS_PORT")
    return int(value) if value else None


def default_node_id(role: str) -> str:
    return f"{role}-{socket.gethostname()}-{os.getpid()}"


def default_data_dir(helper_id: str) -> str:
    base = os.environ.get("MESH_DATA_DIR") or os.path.join(os.getcwd(), "mesh-data")
    return os.path.join(base, helper_id)


def parse_kv(items: list[str] | None) -> dict[str, str]:
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"expected KEY=VALUE, got {item!r}")
        out[key] = value
    return out
