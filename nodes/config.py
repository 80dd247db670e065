"""The one reader of flags and environment: turns them into mesh settings and a discovery URL."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import socket

from discovery import ConsulSettings, consul_settings_from_env, consul_url_from_env
from mesh.errors import ConfigError
from mesh.version import __version__
from nodes import settings_spec

log = logging.getLogger("mesh.node.config")

WILDCARD_HOSTS = ("0.0.0.0", "*", "::", "[::]")


def add_common(parser: argparse.ArgumentParser) -> None:
    """Discovery, metrics, logging and --config; the options are defined in settings_spec."""
    settings_spec.add_options(parser, settings_spec.COMMON)
    add_consul(parser)


def add_consul(parser: argparse.ArgumentParser) -> None:
    """Consul credentials and TLS files. There is deliberately no flag taking the token itself:
    a command line shows in `ps` to every user of the host."""
    group = parser.add_argument_group("Consul (also CONSUL_HTTP_TOKEN[_FILE], CONSUL_CACERT, "
                                      "CONSUL_CLIENT_CERT/KEY, CONSUL_HTTP_SSL[_VERIFY])")
    settings_spec.add_options(parser, settings_spec.CONSUL, group)


def consul_settings(args: argparse.Namespace) -> ConsulSettings:
    """Token and TLS for a consul:// discovery URL, from flags then Consul's variables (nothing is
    read for another backend). Raises DiscoveryError, as open_discovery does, for a missing file."""
    if not (discovery_url(args) or "").lower().startswith("consul://"):
        return ConsulSettings()
    return consul_settings_from_env(
        os.environ,
        token_file=getattr(args, "consul_token_file", None),
        ca_file=getattr(args, "consul_cacert", None),
        client_cert=getattr(args, "consul_client_cert", None),
        client_key=getattr(args, "consul_client_key", None),
    )


def add_registration(parser: argparse.ArgumentParser, *, watched: str) -> None:
    """Options naming how a node appears in discovery, and `watched`, the option naming the
    service of the other role it follows (ai_service, helper_service)."""
    settings_spec.add_options(parser, (*settings_spec.REGISTRATION, watched))


def advertise_host(args: argparse.Namespace) -> str | None:
    return getattr(args, "advertise", None) or os.environ.get("MESH_ADVERTISE_HOST") or None


def bindable(endpoint: str, advertise: str | None) -> str:
    """The endpoint to bind so that the endpoint mesh reports is one other hosts can reach.

    mesh puts the endpoint it bound into heartbeats and reply-to addresses, so a wildcard
    (tcp://0.0.0.0:7101, tcp://*:7101) would send peers to 0.0.0.0, i.e. to themselves. A
    wildcard host is narrowed to the IP of the advertised host (--advertise /
    $MESH_ADVERTISE_HOST, else this machine's hostname: in a container, its own address).
    """
    scheme, sep, rest = endpoint.partition("://")
    if scheme != "tcp" or not sep:
        return endpoint
    host, _, port = rest.rpartition(":")
    if host not in WILDCARD_HOSTS:
        return endpoint
    name = advertise or socket.gethostname()
    try:
        ip = socket.gethostbyname(name)
    except OSError as exc:
        raise ConfigError(f"cannot resolve the advertised host {name!r} ({exc}); pass --advertise "
                          "with an IP other nodes reach this one at") from None
    if ipaddress.ip_address(ip).is_loopback:
        log.warning("%s binds the wildcard but %r resolves to %s: only this host can reach it; "
                    "pass --advertise HOST", endpoint, name, ip)
    return f"tcp://{ip}:{port}"


def endpoint_host(endpoint: str) -> str:
    return endpoint.split("//", 1)[1].rsplit(":", 1)[0].strip("[]")


def metrics_endpoint(metrics_addr: str, advertised: str, port: int | None) -> str:
    """The URL of a node's /metrics for its registration ("" when metrics are off)."""
    if not port:
        return ""
    host = advertised if metrics_addr in WILDCARD_HOSTS or not metrics_addr else metrics_addr
    return f"http://{host}:{port}/metrics"


def mesh_version() -> str:
    """The installed version (mesh.version: the distribution is mesh-tasks on PyPI)."""
    return __version__


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


def private_state_dir(name: str, environ: dict[str, str] | None = None) -> str:
    """A per-user private directory for `name`'s small state (a notifier's positions), made
    0700: $MESH_DATA_DIR/name, else $XDG_STATE_HOME/mesh/name, else ~/.local/state/mesh/name.
    Never the current directory: runs started from one directory must not share positions."""
    env = os.environ if environ is None else environ
    if env.get("MESH_DATA_DIR"):
        base = env["MESH_DATA_DIR"]
    else:
        state_home = env.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"),
                                                               ".local", "state")
        base = os.path.join(state_home, "mesh")
    path = os.path.join(base, name)
    os.makedirs(path, mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def parse_kv(items: list[str] | None) -> dict[str, str]:
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"expected KEY=VALUE, got {item!r}")
        out[key] = value
    return out


def parse_int_kv(items: list[str] | None, flag: str) -> dict[str, int]:
    out = {}
    for key, value in parse_kv(items).items():
        try:
            out[key] = int(value)
        except ValueError:
            raise ConfigError(f"{flag} {key}={value!r}: the value must be an integer") from None
    return out


def parse_rate_limit_flags(items: list[str] | None) -> dict[str, str]:
    """`--rate-limit KIND=RATE` flags -> {kind: rate text}, each checked (ConfigError)."""
    from mesh.policies.rate_limit import parse_rate_limits
    parse_rate_limits(items or [])
    return {text.partition("=")[0].strip(): text.partition("=")[2].strip()
            for text in items or []}


def parse_bytes(text: str, flag: str) -> int:
    """`512M`, `2G`, `1048576` -> bytes (K, M, G: powers of 1024)."""
    units = {"K": 2**10, "M": 2**20, "G": 2**30}
    value = text.strip().upper().removesuffix("B").removesuffix("I")
    try:
        if value and value[-1] in units:
            return int(float(value[:-1]) * units[value[-1]])
        return int(value)
    except ValueError:
        raise ConfigError(f"{flag} {text!r}: expected bytes, e.g. 1073741824, 512M or 2G") from None
