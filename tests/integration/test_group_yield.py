"""A member that yielded a term (another had a longer log) leads later terms normally.

Found by the chaos test's group mode: a yield is a resign, and the resign's `on_lost` set the
member's step-down signal, which nothing cleared before its next term; that term then ended
before it served, with another resign that set the signal again. Once every member of the
group had yielded once (the killed leader came back with a longer or dirty log), the group had
no leader for good: no intake registered, the client found no Helper."""

from __future__ import annotations

import asyncio

from mesh import HelperSettings, make_task
from mesh.group import GroupMember, GroupSettings
from mesh.helper import Helper
from mesh.leadership import FileLock
from mesh.trust import Trust
from tests.support.waiting import async_wait_until


def _now(predicate):  # noqa: ANN001, ANN202 - a plain predicate, for async_wait_until
    async def check() -> object:
        return predicate()
    return check


def test_a_member_that_yielded_a_term_leads_the_next_one(tmp_path) -> None:  # noqa: ANN001
    trust = Trust.local(tmp_path / "keys")

    def member(name: str, plan_alert_s: float) -> GroupMember:
        hs = HelperSettings(helper_id=name, data_dir=str(tmp_path / name))
        # min-replicas 0: a member serves alone after plan_alert_s without hearing the other
        # (long enough here for the other's Hello, when it runs)
        gs = GroupSettings(group="g", member_id=name, data_dir=hs.data_dir, group_size=2,
                           min_replicas=0, plan_alert_s=plan_alert_s, yield_s=1.0, hand_over_s=0.2)
        return GroupMember(gs, FileLock(tmp_path / "groups", "g"), trust=trust,
                           make_helper=lambda hooks: Helper(hs, trust=trust, group=hooks))

    def serving(m: GroupMember) -> bool:
        return m.role == "leader" and m.helper is not None

    async def scenario() -> None:
        runs: list[asyncio.Task] = []
        members: list[GroupMember] = []

        def start(name: str, plan_alert_s: float = 3.0) -> GroupMember:
            m = member(name, plan_alert_s)
            members.append(m)
            runs.append(asyncio.create_task(m.run()))
            return m

        try:
            # m1 alone: serves (min-replicas 0), takes tasks, stops: its log is the longer
            m1 = start("m1", plan_alert_s=0.2)
            await async_wait_until(_now(lambda: serving(m1)), 20, what="m1 serves alone")
            ids = await m1.helper.submit_many([make_task("k", b"x") for _ in range(5)])
            await m1.stop()
            await runs[-1]
            # m2 (empty log) wins; m1 comes back and says Hello with its longer log: m2 yields
            m2 = start("m2")
            await async_wait_until(_now(lambda: m2.role == "planning"), 20, what="m2 plans")
            m1 = start("m1")
            await async_wait_until(_now(lambda: serving(m1)), 20, what="m1 leads after m2 yields")
            assert m2.terms_led == 0
            # m1 stops cleanly: m2, the member that yielded, must lead now
            await m1.stop()
            await runs[-1]
            await async_wait_until(_now(lambda: serving(m2)), 20,
                                   what="m2, which yielded a term, leads the next")
            known = [m2.helper.dispatcher.find(task_id) for task_id in ids]
            assert all(entry is not None for entry in known)
        finally:
            for m in members:
                await m.stop()
            await asyncio.gather(*runs, return_exceptions=True)

    try:
        asyncio.run(scenario())
    finally:
        trust.close()
