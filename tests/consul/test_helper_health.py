"""The Helper's health() drives its Consul TTL check: critical with the reason while it says
not ok (journal failed), passing again when it recovers. Observed on the fake agent."""

from __future__ import annotations

import asyncio

from discovery import Instance
from discovery.consul import ConsulDiscovery
from nodes.registration import Presence, service_health
from tests.support.waiting import async_wait_until


class FlippingHelper:
    def __init__(self) -> None:
        self.ok, self.reason = True, "serving"

    def health(self) -> tuple[bool, str]:
        return self.ok, self.reason


def test_ttl_check_goes_critical_with_the_reason_and_back_to_passing(agent):
    disco = ConsulDiscovery(agent.addr, timeout_s=2.0)
    fake = FlippingHelper()
    check_id = "service:helper-1:ttl"

    async def check_is(status: str, output: str) -> bool:
        chk = agent.checks().get(check_id) or {}
        return chk.get("Status") == status and chk.get("Output") == output

    async def scenario() -> None:
        inst = Instance(service="mesh-helper", instance_id="helper-1", address="127.0.0.1",
                        port=7001)
        presence = Presence(disco, inst, ttl_s=0.6, health=service_health(fake))
        await presence.start()
        try:
            await async_wait_until(lambda: check_is("passing", "serving"), what="passing")
            fake.ok, fake.reason = False, "journal failed: Input/output error"
            await async_wait_until(lambda: check_is("critical", "journal failed: Input/output error"),
                                   what="critical with the reason")
            assert disco.instances("mesh-helper", passing_only=True)[1] == []
            fake.ok, fake.reason = True, "serving"
            await async_wait_until(lambda: check_is("passing", "serving"), what="passing again")
            assert [i.instance_id for i in disco.instances("mesh-helper")[1]] == ["helper-1"]
        finally:
            await presence.stop()

    try:
        asyncio.run(scenario())
    finally:
        disco.close()
