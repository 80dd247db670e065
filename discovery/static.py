"""A fixed list of instances from a URL: `static://svc=host:port,host:port;svc2=host:port`.

For tests, demos and hosts where nothing registers. register() is accepted and does nothing;
instances() always returns the configured list as PASSING, with an index that never changes
(so a Watch reports it once). Instance ids are `<service>@<host>:<port>`; meta is empty, so a
caller that needs an endpoint derives it from address and port.
"""

from __future__ import annotations

import threading

from discovery.base import DiscoveryError, Health, Instance, NoopRegistration, validate_instance

_INDEX = 1


def parse_host_port(text: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` -> (host, port)."""
    text = text.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise DiscoveryError(f"{text!r} is not host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise DiscoveryError(f"{text!r}: write an IPv6 address in brackets, e.g. [::1]:5555")
    port = int(port_text)
    if not 0 < port <= 65535:
        raise DiscoveryError(f"{text!r}: port {port} is out of range 1..65535")
    return host, port


def parse_static_spec(spec: str) -> dict[str, list[Instance]]:
    """Parse `svc=host:port,host:port;svc2=host:port` (the part after `static://`)."""
    services: dict[str, list[Instance]] = {}
    for part in spec.split(";"):
        part = part.strip()
        if not part:
            continue
        name, sep, addrs = part.partition("=")
        name = name.strip()
        if not sep or not name:
            raise DiscoveryError(f"static discovery: {part!r} is not service=host:port[,host:port...]")
        found = services.setdefault(name, [])
        for addr in addrs.split(","):
            if not addr.strip():
                continue
            host, port = parse_host_port(addr)
            inst = Instance(service=name, instance_id=f"{name}@{host}:{port}", address=host, port=port)
            validate_instance(inst)
            if all(i.instance_id != inst.instance_id for i in found):
                found.append(inst)
    return services


class StaticDiscovery:
    def __init__(self, services: dict[str, list[Instance]]) -> None:
        self._services = {name: list(found) for name, found in services.items()}
        self._closed = threading.Event()

    @classmethod
    def from_spec(cls, spec: str) -> StaticDiscovery:
        return cls(parse_static_spec(spec))

    def __repr__(self) -> str:
        return f"StaticDiscovery({sorted(self._services)})"

    def register(self, instance: Instance, *, ttl_s: float = 10.0, deregister_after_s: float = 60.0) -> NoopRegistration:
        validate_instance(instance)
        return NoopRegistration()

    def instances(
        self, service: str, *, index: int = 0, wait_s: float = 0.0, passing_only: bool = True
    ) -> tuple[int, list[Instance]]:
        if index == _INDEX and wait_s > 0:
            # Nothing ever changes: a blocking query simply waits out its time.
            self._closed.wait(wait_s)
        return _INDEX, [i for i in self._services.get(service, []) if not passing_only or i.health == Health.PASSING]

    def close(self) -> None:
        self._closed.set()
