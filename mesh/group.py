"""One member of a Helper group: follow the leader's record stream, campaign, and lead.

docs/decisions/009-helper-groups.md has the design. A member runs, until stopped:

1. **Follow.** Open its journal as a `FollowerLog`; find the leader through `Leadership.observe`
   (the term's advert names its `ep_repl` and key); connect a DEALER (CURVE, helper role);
   say Hello (again every second until a Start); append and fsync what comes, ack the durable
   index; ask for a snapshot (`ResetRequest`) when its log cannot be cut back to where the
   leader says. All the while it campaigns for the group's lock.
2. **Plan.** Having won a term, it hears the log ends of `recovery_quorum` members (itself
   included) through their Hellos. When another has a longer log it resigns and campaigns
   again `yield_s` later (the longer log then wins); otherwise it serves.
3. **Lead.** A `Helper` on the same data dir (its journal replayed), wrapped by `LeaderHooks`:
   every record gets its (epoch, index) and goes to the followers; a submit is answered only
   when the commit index covers it while the term is held; the intake refuses with
   NOT_ENOUGH_REPLICAS while fewer than --min-replicas followers are in sync (an alert,
   mesh.group.degraded, either way). When the term ends (the lock is lost, or a follower has
   seen a newer epoch) the Helper stops at once and the member follows again.

`on_lead(helper)` / `on_follow(helper)` let nodes/ register the intake in discovery only while
leading. The replication ROUTER stays bound for the member's whole life (its endpoint is in
every advert), and answers only while leading.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.asyncio

from mesh import records, replica_link, sockets
from mesh.errors import MeshError, NotEnoughReplicas, ShuttingDown, WireError
from mesh.group_log import NOOP_KEY, POSITION_KEY, FollowerLog, LeaderJournal, Position
from mesh.leadership import Leadership, LockBackend, Term
from mesh.replication import (
    Ack, Append, EpochHistory, FailoverPlan, FollowerState, Hello, LeaderState, Refuse, Snapshot,
    SnapshotNeeded, Start, recovery_quorum,
)
from mesh.trust import Domain, Role, Trust, inert, role_of

log = logging.getLogger("mesh.group")


@dataclass(frozen=True, slots=True)
class GroupSettings:
    group: str
    member_id: str
    data_dir: str
    group_size: int = 2
    #: None: 1 when the group has followers (decision 009)
    min_replicas: int | None = None
    repl_endpoint: str = "tcp://127.0.0.1:0"
    follower_timeout_s: float = 3.0
    heartbeat_interval_s: float = 0.5
    hello_interval_s: float = 1.0
    yield_s: float = 2.0
    plan_alert_s: float = 5.0
    #: a clean stop: how long the leader waits for its followers to have its whole log
    hand_over_s: float = 1.0
    segment_size_bytes: int = 64 * 2**20
    max_record_bytes: int = 8 * 2**20
    #: the leader Helper's retention of results, which a follower's compaction applies too
    max_retained_results: int = 100_000
    #: how often a follower compacts its journal (the leader's Helper: every second too)
    compact_interval_s: float = 1.0

    @property
    def replicas(self) -> int:
        if self.min_replicas is not None:
            return self.min_replicas
        return 1 if self.group_size > 1 else 0


class LeaderHooks:
    """What the leader's Helper asks of the group (mesh/helper.py `group=`)."""

    def __init__(self, member: GroupMember) -> None:
        self._member = member
        self.journal: LeaderJournal | None = None
        #: the group and the term's epoch, in every dispatch frame: nodes refuse older epochs
        self.name = member.settings.group
        self.epoch = member.state.epoch if member.state is not None else 0

    def wrap_journal(self, journal):  # noqa: ANN001, ANN201
        m = self._member
        self.journal = LeaderJournal(journal, m.state, holds=m.holds, send_now=m._pump,
                                     is_live=lambda key: m.helper.dispatcher.key_is_live(key))
        return self.journal

    def refusal(self) -> MeshError | None:
        return self._member.refusal()

    def rewrite(self, key: bytes) -> list[tuple[int, bytes]]:
        if key == POSITION_KEY and self.journal is not None:
            return self.journal.position_record()
        return []  # NOOP: needed by no replay


class GroupMember:
    def __init__(self, settings: GroupSettings, lock: LockBackend, *, trust: Trust,
                 make_helper: Callable[[LeaderHooks], object],
                 on_lead: Callable[[object], Awaitable[None]] | None = None,
                 on_follow: Callable[[object], Awaitable[None]] | None = None,
                 alerts=None) -> None:  # noqa: ANN001
        recovery_quorum(settings.group_size, settings.replicas)  # ConfigError when impossible
        self.settings = settings
        self._lock = lock
        self.trust = trust
        self._make_helper = make_helper
        self._on_lead = on_lead
        self._on_follow = on_follow
        self._alerts = alerts
        self._ctx: zmq.asyncio.Context | None = None
        self._sync_ctx: zmq.Context | None = None
        self._router = None
        self._reader = None
        self.repl_endpoint = ""
        self.leadership: Leadership | None = None
        self.state: LeaderState | None = None
        self.helper = None
        self._hooks: LeaderHooks | None = None
        self._ids: dict[str, bytes] = {}
        #: followers whose queue was full (an Append not queued): skipped until the next tick,
        #: which ships from where the queued batches ended (not on every sync meanwhile)
        self._full: set[str] = set()
        self._plan: FailoverPlan | None = None
        #: the Hellos heard while planning (member -> (router identity, Hello)): answered as
        #: the term begins, so those followers are in its stream at once
        self._heard: dict[str, tuple[bytes, Hello]] = {}
        #: after the term's Helper stopped (a clean stop): acks are still taken, nothing else
        self._handing_over = False
        #: the term's first moments (monotonic deadline): followers not heard while planning
        #: say Hello within a hello interval, so no "degraded" alert before then
        self._settling_until = 0.0
        self._stepdown = asyncio.Event()
        self._stop = asyncio.Event()
        self._degraded = False
        self.role = "starting"
        self.terms_led = 0
        #: followers brought up to date while leading, by path: "log" or "snapshot"
        self.catchups: dict[str, int] = {}

    # -- lifecycle --------------------------------------------------------------------------

    async def run(self) -> None:
        """Follow, campaign, lead, follow again... until `stop()`."""
        s = self.settings
        self._ctx = sockets.new_context()
        self._sync_ctx = sockets.sync_view(self._ctx)
        link = self.trust.server(self._ctx, Role.HELPER, Domain.REPLICATION)
        self._router, self.repl_endpoint = sockets.repl_router(
            self._sync_ctx, s.repl_endpoint, replica_link.MAX_FRAME_BYTES, link=link)
        self._reader = sockets.FrameReader(self._router, self._on_router_frames, multipart=True,
                                           batch_max=2000, on_batch_end=self._pump,
                                           with_user_id=True)
        self._reader.start(asyncio.get_running_loop())
        advert = {"ep_repl": self.repl_endpoint, "helper_id": s.member_id,
                  "curve_key": self.trust.public_key(Role.HELPER)}
        self.leadership = Leadership(self._lock, group=s.group, candidate_id=s.member_id,
                                     advert=advert, on_lost=lambda term, reason: self._stepdown.set())
        try:
            while not self._stop.is_set():
                got = await self._follow_until_elected()
                if got is None:
                    break
                term, position = got
                if not await self._plan_serve(term, position):
                    await self.leadership.resign()
                    if await _wait(self._stop, s.yield_s):
                        break
                    continue
                await self._lead(term, position)
        finally:
            await self._close()

    async def stop(self) -> None:
        self._stop.set()
        self._stepdown.set()

    async def _close(self) -> None:
        if self.leadership is not None:
            await self.leadership.close()
        if self._reader is not None:
            self._reader.stop()
        if self._router is not None:
            self._router.close(linger=0)
        if self._ctx is not None:
            self.trust.release(self._ctx)
            self._ctx.term()
            self._ctx = None

    def holds(self) -> bool:
        return (self.leadership is not None and self.leadership.holds() and self.state is not None
                and self.state.fenced_by is None and not self._stepdown.is_set())

    # -- following ----------------------------------------------------------------------------

    async def _follow_until_elected(self) -> tuple[Term, Position] | None:
        s = self.settings
        self.role = "follower"
        flog = FollowerLog(Path(s.data_dir) / "journal", segment_size_bytes=s.segment_size_bytes,
                           max_record_bytes=s.max_record_bytes,
                           max_retained_results=s.max_retained_results)
        position = flog.open()
        log.info("group %s: %s follows (log at index %d, epoch %d%s)", s.group, s.member_id,
                 position.last_index, position.known_epoch, ", dirty" if position.dirty else "")
        follower = _Follower(self, flog, position)
        stream = asyncio.create_task(follower.run(), name="group-follow")
        # Our own resign of the last term (a yield, or the end of a term) set the step-down
        # signal through `on_lost`: it belongs to that term. Left set, it ended every later
        # term before it served (each such end a resign that set it again): a member that had
        # yielded once never led again, and a group whose members all had, had no leader.
        self._stepdown.clear()
        campaign = asyncio.create_task(self.leadership.campaign(), name="group-campaign")
        stopped = asyncio.create_task(self._stop.wait())
        try:
            await asyncio.wait({campaign, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (stream, stopped):
                task.cancel()
            await asyncio.gather(stream, stopped, return_exceptions=True)
            await follower.close()
            await flog.close()
        if not campaign.done():
            campaign.cancel()
            await asyncio.gather(campaign, return_exceptions=True)
            return None
        term = campaign.result()
        position = flog.position
        if self._stop.is_set():
            return None
        return term, position

    # -- planning --------------------------------------------------------------------------------

    async def _plan_serve(self, term: Term, position: Position) -> bool:
        s = self.settings
        self.role = "planning"
        plan = FailoverPlan(s.member_id, position.last_epoch, position.last_index,
                            group_size=s.group_size, min_replicas=s.replicas)
        self._heard.clear()
        self._plan = plan
        started = time.monotonic()
        alerted = False
        try:
            while not plan.ready:
                if self._stepdown.is_set() or self._stop.is_set():
                    self._stepdown.clear()
                    return False
                if not alerted and time.monotonic() - started > s.plan_alert_s:
                    alerted = True
                    if s.replicas == 0:  # the operator chose records that live on one host
                        self._alert("mesh.group.degraded", "warning", {
                            "group": s.group, "epoch": term.epoch, "heard": sorted(plan.reports),
                            "reason": "serving without hearing every member (--min-replicas 0)"})
                        log.warning("group %s: serving epoch %d without hearing every member's "
                                    "log (--min-replicas 0)", s.group, term.epoch)
                        break
                    self._alert("mesh.group.waiting", "error", {
                        "group": s.group, "epoch": term.epoch, "heard": sorted(plan.reports),
                        "needed": plan.needed})
                    log.error("group %s: leading epoch %d, waiting to hear %d members' logs "
                              "(have %s) before serving", s.group, term.epoch, plan.needed,
                              sorted(plan.reports))
                await asyncio.sleep(0.05)
            source = plan.source()
        finally:
            self._plan = None
        # what a failover decided from: (epoch, index) of each log end heard
        log.info("group %s: %s planned epoch %d from log ends %s", s.group, s.member_id,
                 term.epoch, ", ".join(f"{m} {e}/{i}" for m, (e, i) in sorted(plan.reports.items())))
        if source is not None:
            log.warning("group %s: %s has a longer log than %s; yielding the term", s.group,
                        source, s.member_id)
            return False
        return True

    # -- leading ----------------------------------------------------------------------------------

    async def _lead(self, term: Term, position: Position) -> None:
        s = self.settings
        self.role = "leader"
        self._stepdown.clear()
        self._ids.clear()
        self._full.clear()
        self.state = LeaderState(
            group=s.group, leader_id=s.member_id, epoch=term.epoch, followers=(),
            min_replicas=s.replicas, last_index=position.last_index,
            history=EpochHistory(position.history), group_size=s.group_size,
            follower_timeout_s=s.follower_timeout_s, heartbeat_interval_s=s.heartbeat_interval_s,
            ship_on_sync=True)
        self._hooks = LeaderHooks(self)
        helper = self._make_helper(self._hooks)
        self.helper = helper
        try:
            await helper.start()
        except BaseException:
            self.state = None
            await helper.stop()
            raise
        journal = self._hooks.journal
        journal.append(records.NOOP, NOOP_KEY, b"")
        journal.sync_future().add_done_callback(_quiet)
        self.terms_led += 1
        log.info("group %s: %s serves epoch %d from index %d", s.group, s.member_id, term.epoch,
                 position.last_index)
        self._alert("mesh.group.leader", "info", {"group": s.group, "leader": s.member_id,
                                                   "epoch": term.epoch})
        heard, self._heard = self._heard, {}
        for identity, hello in heard.values():
            self._answer_hello(identity, hello, time.monotonic())
        self._pump()
        self._settling_until = time.monotonic() + 1.5 * s.hello_interval_s
        ticker = asyncio.create_task(self._tick(), name="group-tick")
        try:
            if self._on_lead is not None:
                await self._on_lead(helper)
            await self._stepdown.wait()
        finally:
            self._settling_until = 0.0
            reason = (self.leadership.lost_reason
                      or (f"a newer epoch ({self.state.fenced_by}) exists"
                          if self.state.fenced_by else "stopping"))
            log.warning("group %s: %s stops leading epoch %d: %s", s.group, s.member_id,
                        term.epoch, reason)
            ticker.cancel()
            await asyncio.gather(ticker, return_exceptions=True)
            journal.fail_waiters(reason)
            if self._on_follow is not None:
                await self._on_follow(helper)
            await helper.stop()
            if self._stop.is_set() and self.state.fenced_by is None:
                await self._hand_over()
            self.helper = None
            self.state = None
            self._hooks = None
            self._stepdown.clear()
            await self.leadership.resign()

    async def _hand_over(self) -> None:
        """A clean stop, the Helper stopped (nothing more is appended): send the followers in
        the stream what they lack and wait, `hand_over_s` at most, until they have acked the
        whole log. The next leader then holds every record of this term (results included, so
        nothing finished runs again) and need not yield to a member with a longer log."""
        s, state = self.settings, self.state
        deadline = time.monotonic() + s.hand_over_s
        self._handing_over = True
        state.syncing(state.last_index)  # the Helper's close made everything durable here
        try:
            while True:
                now = time.monotonic()
                behind = [m for m in state.alive_followers(now)
                          if state.followers[m].acked < state.last_index]
                if not behind or now >= deadline:
                    break
                self._pump(tick=True)
                await asyncio.sleep(0.01)
            if behind:
                log.warning("group %s: %s stops with %s behind index %d", s.group, s.member_id,
                            ", ".join(behind), state.last_index)
        finally:
            self._handing_over = False

    def refusal(self) -> MeshError | None:
        state = self.state
        if state is None or not self.holds():
            return ShuttingDown()
        try:
            state.check_accepting(time.monotonic())
        except NotEnoughReplicas as exc:
            if time.monotonic() >= self._settling_until:
                self._set_degraded(True, len(state.alive_followers(time.monotonic())))
            return exc
        except MeshError:
            return ShuttingDown()
        return None

    async def _tick(self) -> None:
        s = self.settings
        appended_by_last_tick = 0
        while True:
            await asyncio.sleep(0.05)
            state = self.state
            if state is None:
                return
            if state.fenced_by is not None or not self.leadership.holds():
                self._stepdown.set()
                return
            # Records no sync has shipped for a whole tick (a retry or an expiry the timer
            # wrote while no submit or result came) go to the followers anyway.
            state.syncing(appended_by_last_tick)
            appended_by_last_tick = state.last_index
            self._pump(tick=True)
            if time.monotonic() < self._settling_until:
                continue  # the followers' first Hellos may be on their way
            alive = len(state.alive_followers(time.monotonic()))
            self._set_degraded(alive < max(s.replicas, 1) and s.group_size > 1, alive)
            if alive < s.replicas and self._hooks is not None and self._hooks.journal is not None:
                self._hooks.journal.fail_pending(NotEnoughReplicas(alive, s.replicas, s.group))

    def _set_degraded(self, degraded: bool, alive: int) -> None:
        if degraded == self._degraded:
            return
        self._degraded = degraded
        s = self.settings
        info = {"group": s.group, "leader": s.member_id, "followers_in_sync": alive,
                "min_replicas": s.replicas, "group_size": s.group_size}
        if degraded:
            refusing = alive < s.replicas
            log.error("group %s degraded: %d follower(s) in sync, --min-replicas %d: %s", s.group,
                      alive, s.replicas, "submits are refused" if refusing
                      else "accepting on the leader alone")
            info["refusing"] = refusing
            self._alert("mesh.group.degraded", "error" if refusing else "warning", info)
        else:
            log.warning("group %s: %d follower(s) in sync again", s.group, alive)
            self._alert("mesh.group.recovered", "info", info)

    # -- the replication ROUTER --------------------------------------------------------------------

    def _on_router_frames(self, frames: list[bytes], user_id: str = "") -> None:
        if len(frames) != 2:
            return
        if not self.trust.insecure and role_of(user_id) is not Role.HELPER:
            log.warning("replication frame from a non-helper key dropped")
            return
        identity, body = frames
        try:
            msg = replica_link.decode(body)
        except WireError as exc:
            log.warning("bad replication frame dropped: %s", inert(str(exc), 200))
            return
        plan, state = self._plan, self.state
        if isinstance(msg, Hello) and plan is not None:
            plan.report(msg.member_id, _hello_epoch(msg), msg.last_index)
            self._heard[msg.member_id] = (identity, msg)
            return
        if self._handing_over and state is not None and isinstance(msg, Ack):
            try:
                state.on_ack(msg, time.monotonic())
            except MeshError:
                pass
            return
        if state is None or self._stepdown.is_set():
            return  # not leading: the follower's Hello is repeated to whoever leads
        now = time.monotonic()
        try:
            if isinstance(msg, Hello):
                self._answer_hello(identity, msg, now)
            elif isinstance(msg, Ack):
                self._ids.setdefault(msg.member_id, identity)
                state.on_ack(msg, now)
                self._hooks.journal.commit_advanced()
            elif isinstance(msg, Refuse):
                state.on_refuse(msg)
            elif isinstance(msg, replica_link.ResetRequest):
                self._ids[msg.member_id] = identity
                if msg.epoch <= state.epoch:
                    self._send_snapshot(msg.member_id)
                else:
                    state.on_refuse(Refuse(msg.member_id, msg.epoch, "newer epoch"))
        except MeshError as exc:  # a member beyond the group's size, or a stale message
            log.warning("replication message from %s refused: %s", inert(getattr(msg, "member_id", "?"), 60), exc)
        if state.fenced_by is not None:
            self._stepdown.set()

    def _answer_hello(self, identity: bytes, msg: Hello, now: float) -> None:
        state = self.state
        try:
            self._ids[msg.member_id] = identity
            self._full.discard(msg.member_id)
            answer = state.on_hello(msg, now)
            if isinstance(answer, Start):
                self._send(msg.member_id, answer)
                if answer.truncate_after < state.last_index:
                    self._count_catchup("log")
                    log.info("group %s: %s catches up from the log: %d records from index %d",
                             self.settings.group, msg.member_id,
                             state.last_index - answer.truncate_after, answer.truncate_after + 1)
            else:
                self._send_snapshot(msg.member_id)
        except MeshError as exc:  # a member beyond the group's size, or a stale message
            log.warning("replication message from %s refused: %s", inert(msg.member_id, 60), exc)
        if state.fenced_by is not None:
            self._stepdown.set()

    def _pump(self, *, tick: bool = False) -> None:
        """Send each follower what it has not had (and heartbeats when due). A follower whose
        queue was full is tried again on a `tick` only (the 50 ms tick, the hand-over's loop)."""
        state = self.state
        if state is None or (self._stepdown.is_set() and not self._handing_over):
            return
        if tick:
            self._full.clear()
        now = time.monotonic()
        for member in list(state.followers):
            if member not in self._ids or member in self._full:
                continue
            for _ in range(64):
                msg = state.to_send(member, now)
                if msg is None:
                    break
                if isinstance(msg, SnapshotNeeded):
                    self._send_snapshot(member)
                    break
                if not self._send(member, msg, full_ok=True):
                    state.not_sent(member, msg)  # again from there on the next tick
                    if member in self._ids:
                        self._full.add(member)
                    break
                if not msg.entries:
                    break
        self._reader.wake()

    def _send(self, member: str, msg: object, *, full_ok: bool = False) -> bool:
        """Queue `msg` for a follower; False if it was not. A follower that is gone is
        dropped from the stream (it says Hello again); one whose queue is full (EAGAIN at the
        HWM) stays in it when `full_ok` (an Append: `LeaderState.not_sent` and it goes again)."""
        identity = self._ids.get(member)
        if identity is None:
            return False
        try:
            self._router.send_multipart([identity, replica_link.encode(msg)], zmq.NOBLOCK)
            return True
        except zmq.Again:
            if not full_ok:
                self._ids.pop(member, None)
            return False
        except zmq.ZMQError:
            self._ids.pop(member, None)  # gone or not reading: it says Hello again
            return False

    def _send_snapshot(self, member: str) -> None:
        state, helper = self.state, self.helper
        recs = helper.dispatcher.snapshot_records()  # retained results and dead letters too
        as_of = state.last_index
        chunks = replica_link.snapshot_chunks(state.epoch, state.leader_id, as_of,
                                              state.history.epoch_at(as_of), recs)
        for chunk in chunks:
            if not self._send(member, chunk):
                return
        state.snapshot_sent(member, as_of)
        self._count_catchup("snapshot")
        log.info("group %s: snapshot of %d records as of index %d sent to %s", self.settings.group,
                 len(recs), as_of, member)

    def _count_catchup(self, path: str) -> None:
        self.catchups[path] = self.catchups.get(path, 0) + 1
        metrics = getattr(self.helper, "metrics", None)
        if metrics is not None:
            metrics.group_catchups.labels(path).inc()

    def _alert(self, kind: str, severity: str, info: dict) -> None:
        if self._alerts is None:
            return
        try:
            self._alerts.publish(kind, severity, self.settings.member_id, json.dumps(info).encode())
        except Exception:
            log.exception("could not publish the %s alert", kind)


class _Follower:
    """The follower's stream: one DEALER, read by a `FrameReader` straight from the loop.

    Appends, nearly all of the traffic, are handled where they are read: append, fsync on the
    loop thread when the journal's flusher is idle, ack. No task switch and no zmq.asyncio
    poll per message: on one host those hops were a large part of a group's accept latency.
    A step that must wait (a sync the flusher has to do, a Start, a snapshot) goes on in one
    task; frames read meanwhile queue behind it, so messages are always handled in order."""

    def __init__(self, member: GroupMember, flog: FollowerLog, position: Position) -> None:
        self.member = member
        self.flog = flog
        self.dirty = position.dirty
        self.state = FollowerState(member.settings.member_id, known_epoch=position.known_epoch,
                                   last_index=position.last_index, last_epoch=position.last_epoch,
                                   history=EpochHistory(position.history))
        self.sock = None
        self.leader: tuple[str, str] | None = None  # (endpoint, key)
        self.started = False  # the current leader answered our Hello with a Start
        self._reader: sockets.FrameReader | None = None
        self._inbox: deque[bytes] = deque()
        self._worker: asyncio.Task | None = None
        self._leader_changed = asyncio.Event()
        self._snapshot: list = []
        self._awaiting_snapshot = False

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
            self._worker = None
        self._disconnect()

    def _disconnect(self) -> None:
        if self._reader is not None:
            self._reader.stop()
            self._reader = None
        if self.sock is not None:
            self.sock.close(linger=0)
            self.sock = None
        self._inbox.clear()

    async def run(self) -> None:
        watcher = asyncio.create_task(self._watch())
        try:
            await self._link()
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)

    async def _watch(self) -> None:
        m = self.member
        index = 0
        while True:
            try:
                index, term = await m.leadership.observe(index)
            except Exception as exc:  # noqa: BLE001 - the lock engine is away: try again
                log.warning("group %s: cannot read the leader: %s", m.settings.group, exc)
                await asyncio.sleep(1.0)
                continue
            if term is None or term.leader_id == m.settings.member_id:
                continue
            target = (term.advert.get("ep_repl", ""), term.advert.get("curve_key", ""))
            if target[0] and target != self.leader:
                log.info("group %s: following %s (epoch %d) at %s", m.settings.group,
                         term.leader_id, term.epoch, target[0])
                self.leader = target
                self._leader_changed.set()

    def _send(self, msg: object) -> None:
        if self.sock is None:
            return
        try:
            self.sock.send(replica_link.encode(msg), zmq.NOBLOCK)
        except zmq.Again:
            pass
        self._reader.wake()  # a send can take the edge of a frame that just arrived

    async def _link(self) -> None:
        """Connect to the leader (again when it changes) and say Hello until it answers."""
        m = self.member
        connected_to = None
        hello_at = 0.0
        compact_at = time.monotonic() + m.settings.compact_interval_s
        while True:
            if self.leader != connected_to:
                if self._worker is not None:  # finish what the old leader sent, in order
                    await asyncio.gather(self._worker, return_exceptions=True)
                self._disconnect()
                connected_to = self.leader
                endpoint, key = connected_to
                link = m.trust.client(Role.HELPER, Role.HELPER, key or None)
                self.sock = sockets.repl_dealer(m._sync_ctx, endpoint, replica_link.MAX_FRAME_BYTES,
                                                link=link)
                self._reader = sockets.FrameReader(self.sock, self._inbox.append, batch_max=1000,
                                                   on_batch_end=self._on_frames)
                self._reader.start(asyncio.get_running_loop())
                self.started = False
                hello_at = 0.0
            now = time.monotonic()
            if self.sock is not None and not self.started and now - hello_at >= m.settings.hello_interval_s:
                hello_at = now
                self._send(self._hello())
            if now >= compact_at and self._worker is None:
                compact_at = now + m.settings.compact_interval_s
                self._compact()
            self._leader_changed.clear()
            await _wait(self._leader_changed, 0.1)

    def _compact(self) -> None:
        try:
            self.flog.compact()
        except Exception:  # noqa: BLE001 - a bug or a failed journal: the stream goes on
            log.exception("group %s: compacting the follower's journal failed",
                          self.member.settings.group)

    def _in_stream(self, leader_id: str, how: str) -> None:
        """The leader's stream reaches this follower now (what an operator, or a rolling
        restart, waits for before stopping the next member)."""
        fs = self.state
        log.info("group %s: %s replicates epoch %d of %s from index %d (%s)",
                 self.member.settings.group, fs.member_id, fs.known_epoch, inert(leader_id, 60),
                 fs.last_index, how)

    def _hello(self) -> Hello:
        hello = self.state.hello()
        if self.dirty:
            # Records past our last position cannot be indexed: the stream starts us over
            # from a snapshot (`reset`). The log end we report is still the true one, for a new
            # leader's FailoverPlan: reported as 0, a restarted old leader (dirty after its
            # SIGKILL) hid records it had committed from a plan that counted on hearing them.
            return Hello(hello.member_id, hello.epoch, hello.last_index, hello.last_epoch, reset=True)
        return hello

    def _on_frames(self) -> None:
        """The reader's batch ended: handle the inbox now, unless a task is handling it."""
        if self._worker is not None:
            return  # it takes these too, after what it has
        messages = self._decode_inbox()
        if not messages:
            return
        if self._awaiting_snapshot or not all(isinstance(msg, Append) for msg in messages):
            self._start_worker(messages, wait_sync=False)
            return
        try:
            if not self._appends_now(messages):
                self._start_worker([], wait_sync=True)
        except Exception:  # noqa: BLE001 - a failed journal (or a bug): never ack past it
            self._resync()

    def _decode_inbox(self) -> list:
        messages = []
        inbox = self._inbox
        while inbox:
            frame = inbox.popleft()
            try:
                messages.append(replica_link.decode(frame))
            except WireError as exc:
                log.warning("bad replication frame dropped: %s", inert(str(exc), 200))
        return messages

    def _appends_now(self, appends: list[Append]) -> bool:
        """Apply Appends, append their entries, fsync here and ack. False: the journal's
        flusher is busy, the entries are appended and the sync and the ack are left to
        `_start_worker(wait_sync=True)`."""
        fs = self.state
        entries = []
        saw_append = False
        for msg in appends:
            step = fs.on_append(msg)
            if step.reply is not None:
                if isinstance(step.reply, Hello):
                    self.started = False  # a gap or a new leader: Hello again (now)
                    self._send(self._hello())
                else:
                    self._send(step.reply)
                continue
            saw_append = True
            entries.extend(step.entries)
        if entries and not self.flog.append_now(entries, fs.known_epoch, fs.last_index, fs.history):
            return False
        if saw_append:
            self._send(fs.durable(fs.last_index))
        self.flog.track()
        return True

    def _start_worker(self, messages: list, *, wait_sync: bool) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._work(messages, wait_sync),
                                                              name="group-follow-step")

    async def _work(self, messages: list, wait_sync: bool) -> None:
        fs = self.state
        try:
            if wait_sync:
                await self.flog.synced(fs.known_epoch, fs.last_index, fs.history)
                self._send(fs.durable(fs.last_index))
                self.flog.track()
            messages += self._decode_inbox()  # what was read while this waited
            while messages:
                await self._handle(messages)
                messages = self._decode_inbox()
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - a failed journal (or a bug): never ack past it
            self._resync()
        finally:
            self._worker = None

    def _resync(self) -> None:
        """A step failed part-way (the journal refused a record or its sync): what the state
        took in may not be in the log. Go back to the log's durable position and say Hello, so
        nothing is acked that the log does not hold; the leader says where to go on from."""
        log.exception("group %s: handling the leader's stream failed; starting again from "
                      "the log's durable position", self.member.settings.group)
        position, known = self.flog.position, self.state.known_epoch
        self.state = FollowerState(self.state.member_id, known_epoch=max(known, position.known_epoch),
                                   last_index=position.last_index, last_epoch=position.last_epoch,
                                   history=EpochHistory(position.history))
        self._awaiting_snapshot = False
        self._snapshot = []
        self.started = False
        self._send(self._hello())

    async def _handle(self, messages: list) -> None:
        fs = self.state
        entries = []
        saw_append = False
        for msg in messages:
            if isinstance(msg, Start):
                step = fs.on_start(msg)
                if step.reply is not None:
                    self._send(step.reply)
                    continue
                self.started = True
                if self.dirty or step.truncate_after is not None:
                    self._awaiting_snapshot = True
                    self._snapshot = []
                    self._send(replica_link.ResetRequest(fs.member_id, fs.known_epoch))
                else:
                    if step.epoch_changed:
                        await self.flog.append((), fs.known_epoch, fs.last_index, fs.history)
                        self._send(fs.durable(fs.last_index))
                    self._in_stream(msg.leader_id, "its log agrees")
            elif isinstance(msg, Append):
                if self._awaiting_snapshot:
                    continue
                step = fs.on_append(msg)
                if step.reply is not None:
                    if isinstance(step.reply, Hello):
                        self.started = False  # a gap or a new leader: Hello again (now)
                    self._send(step.reply if not isinstance(step.reply, Hello) else self._hello())
                    continue
                saw_append = True
                entries.extend(step.entries)
            elif isinstance(msg, Snapshot):
                if msg.first:
                    self._snapshot = []
                self._snapshot.extend(msg.records)
                if not msg.last:
                    continue
                step = fs.on_snapshot(msg)
                if step.reply is not None:
                    self._send(step.reply)
                    continue
                if entries:  # appends read before the snapshot are superseded by it
                    entries = []
                await self.flog.reset(self._snapshot, fs.known_epoch, fs.last_index, fs.history)
                self._snapshot = []
                self._awaiting_snapshot = False
                self.dirty = False
                self.started = True
                self._send(fs.durable(fs.last_index))
                self._in_stream(msg.leader_id, "from a snapshot")
        if entries or saw_append:
            if entries:
                await self.flog.append(entries, fs.known_epoch, fs.last_index, fs.history)
            self._send(fs.durable(fs.last_index))
            self.flog.track()


def _hello_epoch(hello: Hello) -> int:
    return hello.last_epoch


def _quiet(future: asyncio.Future) -> None:
    if not future.cancelled():
        future.exception()


async def _wait(event: asyncio.Event, timeout_s: float) -> bool:
    try:
        await asyncio.wait_for(event.wait(), timeout_s)
        return True
    except TimeoutError:
        return False
