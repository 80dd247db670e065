"""A node's discovery health follows its mesh object's health(): CRITICAL with the reason while
it says not ok (a Helper whose journal failed), PASSING again when it recovers."""

from __future__ import annotations

import asyncio
import json

from discovery import EmbeddedDiscovery, Health, Instance
from nodes.registration import Presence, service_health
from tests.support.waiting import async_wait_until


class FlippingHelper:
    """Stands in for mesh.Helper: only health() matters here."""

    def __init__(self) -> None:
        self.ok, self.reason = True, "serving"

    def health(self) -> tuple[bool, str]:
        return self.ok, self.reason


def helper_instance() -> Instance:
    return Instance(service="mesh-helper", instance_id="helper-1", address="127.0.0.1", port=7001)


def test_service_health_maps_ok_and_reason_and_passes_without_health():
    fake = FlippingHelper()
    health = service_health(fake)
    assert health() == (Health.PASSING, "serving")
    fake.ok, fake.reason = False, "journal failed: No space left on device"
    assert health() == (Health.CRITICAL, "journal failed: No space left on device")
    assert service_health(object())() == (Health.PASSING, "serving")  # a Helper without health()

    class Broken:
        def health(self):
            raise RuntimeError("bug")

    status, note = service_health(Broken())()
    assert status == Health.CRITICAL and "RuntimeError: bug" in note


def test_embedded_lease_turns_critical_with_the_reason_then_passing_again(tmp_path):
    disco = EmbeddedDiscovery(tmp_path / "registry", poll_s=0.02)
    fake = FlippingHelper()

    async def health_and_note() -> tuple[Health, str]:
        _, found = disco.instances("mesh-helper", passing_only=False)
        lease = disco.lease_path("mesh-helper", "helper-1")
        note = json.loads(lease.read_text())["note"] if lease.exists() else ""
        return (found[0].health if found else None), note

    async def scenario() -> None:
        presence = Presence(disco, helper_instance(), ttl_s=0.3, health=service_health(fake))
        await presence.start()
        try:
            async def is_(status: Health, note: str) -> bool:
                return await health_and_note() == (status, note)

            await async_wait_until(lambda: is_(Health.PASSING, "serving"), what="passing")
            fake.ok, fake.reason = False, "journal failed: No space left on device"
            await async_wait_until(
                lambda: is_(Health.CRITICAL, "journal failed: No space left on device"),
                what="critical with the reason")
            assert disco.instances("mesh-helper", passing_only=True)[1] == []
            fake.ok, fake.reason = True, "serving"
            await async_wait_until(lambda: is_(Health.PASSING, "serving"), what="passing again")
        finally:
            await presence.stop()

    try:
        asyncio.run(scenario())
    finally:
        disco.close()
