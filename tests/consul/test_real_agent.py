"""The Consul backend against a real agent at CONSUL_HTTP_ADDR (and CONSUL_HTTP_TOKEN if set).

Skipped unless CONSUL_HTTP_ADDR is set, e.g.:
    consul agent -dev &  CONSUL_HTTP_ADDR=127.0.0.1:8500 python -m pytest tests/consul/test_real_agent.py
"""

from __future__ import annotations

import os
import time
import uuid

import pytest

from discovery import Health, Instance, consul_url_from_env, open_discovery

pytestmark = pytest.mark.consul_real

URL = consul_url_from_env(os.environ)
if URL is None:
    pytest.skip("CONSUL_HTTP_ADDR is not set: no real Consul agent to test against", allow_module_level=True)


def wait_until(cond, timeout_s: float, interval_s: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)


@pytest.fixture
def disco():
    d = open_discovery(URL)
    yield d
    d.close()


def test_register_passing_ttl_expiry_and_deregister(disco):
    service = f"mesh-test-{uuid.uuid4().hex[:8]}"
    inst = Instance(service, f"{service}-1", "127.0.0.1", 5999, ("test",), {"ep_task": "tcp://127.0.0.1:5999"})
    reg = disco.register(inst, ttl_s=2, deregister_after_s=60)
    try:
        index, found = disco.instances(service)
        assert [i.instance_id for i in found] == [inst.instance_id]
        assert found[0].meta["ep_task"] == "tcp://127.0.0.1:5999" and found[0].health == Health.PASSING

        reg.heartbeat(Health.WARNING, "saturated 16/16")
        wait_until(lambda: disco.instances(service)[1] == [], 10, what="warning leaves the passing set")
        reg.heartbeat()
        wait_until(lambda: len(disco.instances(service)[1]) == 1, 10, what="passing again")

        # no heartbeat for the TTL: critical, out of the passing set, still listed otherwise
        def critical():
            _, all_found = disco.instances(service, passing_only=False)
            return all_found and all_found[0].health == Health.CRITICAL

        wait_until(critical, 15, what="TTL expiry")
        assert disco.instances(service)[1] == []
    finally:
        reg.deregister()
    wait_until(lambda: disco.instances(service, passing_only=False)[1] == [], 10, what="deregistered")
