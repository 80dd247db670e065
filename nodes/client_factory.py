"""Clients built from the environment: the Helpers in discovery (or $MESH_INTAKE) as the
endpoint source a `mesh.Client` follows.

    from nodes.client_factory import connect
    async with connect() as client:          # the same Helpers `mesh submit` finds
        task_id = await client.submit("vision", b"...")

`mesh.Client()` with no endpoint calls `env_source` itself (see `mesh.client.default_endpoints`
for why that one import goes up a layer). Wiring: the reading of variables and the choice of
backend live here, next to the command line's (nodes/config.py).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping

from discovery import consul_url_from_env, open_discovery
from discovery.consul_settings import consul_settings_from_env

#: the service name Helpers register under (nodes/helper.py)
HELPER_SERVICE = "mesh-helper"


class DiscoverySource:
    """Callable: the intake endpoints of the passing Helpers now, endpoint -> the key each
    announced (`curve_key`, "" if none). The directory is opened on first use and kept."""

    def __init__(self, url: str | None, consul=None, service: str = HELPER_SERVICE) -> None:  # noqa: ANN001
        self.url = url
        self.consul = consul
        self.service = service
        self._directory = None
        self._lock = threading.Lock()  # called from a worker thread; close from the loop's

    def __call__(self) -> dict[str, str]:
        with self._lock:
            if self._directory is None:
                self._directory = open_discovery(self.url, consul=self.consul)
            _, found = self._directory.instances(self.service)
        return {inst.meta.get("ep_intake") or inst.meta.get("intake_endpoint"):
                inst.meta.get("curve_key", "")
                for inst in found
                if inst.meta.get("ep_intake") or inst.meta.get("intake_endpoint")}

    def close(self) -> None:
        with self._lock:
            if self._directory is not None:
                self._directory.close()
                self._directory = None


def env_source(environ: Mapping[str, str] | None = None, *, discovery: str | None = None,
               service: str = HELPER_SERVICE):  # noqa: ANN201 - mesh.client.EndpointSource
    """$MESH_INTAKE (comma-separated) if set, else discovery: `discovery` or $MESH_DISCOVERY,
    else Consul when $CONSUL_HTTP_ADDR is set, else the embedded registry's default place."""
    env = os.environ if environ is None else environ
    if env.get("MESH_INTAKE") and discovery is None:
        endpoints = [e.strip() for e in env["MESH_INTAKE"].split(",") if e.strip()]
        return lambda: endpoints
    url = discovery or env.get("MESH_DISCOVERY") or consul_url_from_env(env)
    consul = None
    if (url or "").lower().startswith("consul://"):
        consul = consul_settings_from_env(env)
    return DiscoverySource(url, consul, service)


def connect(*, discovery: str | None = None, **client_options):  # noqa: ANN003, ANN201
    """A `mesh.Client` following the Helpers of the environment (see `env_source`)."""
    from mesh import Client
    return Client(endpoints=env_source(discovery=discovery), **client_options)
