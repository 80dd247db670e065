"""A node's presence in discovery, driven from its event loop.

The heartbeat is triggered by the node's own event loop (so a wedged loop stops it and the
node goes critical), and performed in a thread (a Consul HTTP call must never block the loop).
Membership changes from a discovery Watch thread are handed to the loop with
call_soon_threadsafe.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from discovery import Discovery, DiscoveryError, Health, Instance, Watch

log = logging.getLogger("mesh.registration")


class Presence:
    def __init__(self, discovery: Discovery, instance: Instance, *, ttl_s: float = 3.0,
                 deregister_after_s: float = 60.0,
                 health: Callable[[], tuple[Health, str]] | None = None) -> None:
        self.discovery = discovery
        self.instance = instance
        self.ttl_s = ttl_s
        self.deregister_after_s = deregister_after_s
        self._health = health or (lambda: (Health.PASSING, ""))
        self._registration = None
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            self._registration = await loop.run_in_executor(
                None, lambda: self.discovery.register(
                    self.instance, ttl_s=self.ttl_s, deregister_after_s=self.deregister_after_s))
        except DiscoveryError as exc:
            # Keep working without discovery; the heartbeat loop retries the registration.
            log.error("could not register %s: %s", self.instance.instance_id, exc)
        self._task = loop.create_task(self._beat())

    async def _beat(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.ttl_s / 3)
            health, note = self._health()
            try:
                if self._registration is None:
                    self._registration = await loop.run_in_executor(
                        None, lambda: self.discovery.register(
                            self.instance, ttl_s=self.ttl_s,
                            deregister_after_s=self.deregister_after_s))
                    log.info("registered %s", self.instance.instance_id)
                await loop.run_in_executor(None, self._registration.heartbeat, health, note)
            except DiscoveryError as exc:
                log.warning("discovery heartbeat failed: %s", exc)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._registration is not None:
            registration, self._registration = self._registration, None
            try:
                await asyncio.get_running_loop().run_in_executor(None, registration.deregister)
            except DiscoveryError as exc:
                log.warning("could not deregister: %s", exc)


def watch(discovery: Discovery, service: str,
          on_change: Callable[[list[Instance]], None], *, wait_s: float = 5.0) -> Watch:
    """Watch a service; `on_change` runs on the calling event loop."""
    loop = asyncio.get_running_loop()
    # Every instance, critical ones included: a saturated node is WARNING and must stay in use.
    w = Watch(discovery, service, lambda found: loop.call_soon_threadsafe(on_change, found),
              wait_s=wait_s, passing_only=False)
    w.start()
    return w
