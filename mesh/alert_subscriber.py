"""Alert subscriber: every publisher's alerts, complete and in order, each delivered once per run.

Per publisher it keeps the epoch and the next expected seq (the Clone pattern of the ZeroMQ
Guide, with the publisher's replay endpoint as the snapshot):
- On first contact it subscribes, then asks the replay endpoint for everything after its
  position (from seq 1 when it has none, or only what comes next with start_from="latest");
  live alerts that arrive meanwhile wait in a buffer.
- A gap in the seqs, or a publisher-state beat announcing a later seq than it has, makes it
  ask the replay endpoint for the missing range; it delivers in order once the gap is filled.
  Seqs the publisher no longer has (out of its bounded history, or lost in its crash) are
  reported through `on_loss` and skipped, never waited for.
- A duplicate (seq below the next expected) is dropped.
- A different epoch is a new history (the publisher restarted after a crash, or lost its
  journal), not a gap. After a crash the publisher keeps its journal and numbers on above the
  seqs it had reserved: its replies still hold the old epoch's alerts, which are delivered, and
  the numbers between the old epoch's last alert and the new epoch's first are skipped
  silently; only seqs known to have been used (announced by the old epoch) and not available
  are reported lost. A publisher that lost its journal is read again from seq 1.
- Liveness: a publisher followed with `watch=True` (a Helper: it beats every second) that is
  not heard of for `silence_s`, or is removed (its discovery lease is gone), is reported to
  `on_alert` once as a synthetic critical `mesh.helper.down` (seq 0, label synthetic=true),
  and with an info `mesh.helper.up` when it is heard again. A publisher that announced its
  clean stop with a `mesh.helper.left` alert is not reported down.
- Delivery: `on_alert(alert)` is awaited, one alert at a time per publisher (publishers run in
  parallel). The position (epoch, seq) advances when it returns; when it raises, the same
  alert is offered again after a backoff (handle errors in the callback to avoid stalling).
- With `state_path`, positions are written there (atomic replace, at most every
  `state_flush_interval_s`, and at stop) and read at start: a subscriber killed and restarted
  resumes where it was. A kill can make it deliver again the last alerts delivered before it
  (at least once across a crash, never a loss while the publisher still has them).

Trust: with a secure `Trust` both sockets of a publisher connect with this process's notifier
key and pin the publisher's key: the `curve_key` it announced, taken only if the store allows
it as a publisher (a helper or monitor key), else the one helper key of a single-host store.
A publisher whose key is not allowed is not followed (counted, warned). Everything this module
logs of what came over the wire goes through `inert`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable

import msgspec
import zmq
import zmq.asyncio

from mesh import sockets, wire
from mesh.errors import ConfigError, MeshError, WireError
from mesh.trust import Role, Trust, TrustError, inert

#: roles whose keys may publish alerts (Operation.ALERT_PUBLISH), in the order a subscriber
#: tries to pin an announced key with
PUBLISHER_ROLES: tuple[Role, ...] = (Role.HELPER, Role.MONITOR)

log = logging.getLogger(__name__)

#: the alert a Helper publishes as it stops cleanly: its silence after it is no fault
LEFT_KIND = "mesh.helper.left"

#: on_loss(publisher_id, epoch, first_seq, last_seq, reason): seqs that will never be delivered
LossCallback = Callable[[str, int, int, int, str], None]


class AlertSubscriberSettings(msgspec.Struct, frozen=True, kw_only=True):
    #: topic prefixes (a topic is "kind|severity", e.g. "equipment." or "equipment.fault|crit")
    topics: tuple[str, ...] = ("",)
    #: file of the per-publisher positions; None keeps them in memory only
    state_path: str | None = None
    #: where to start with a publisher never seen before: "earliest" (all it still has) or "latest"
    start_from: str = "earliest"
    #: a replay request unanswered for this long is sent again on a fresh socket
    replay_timeout_s: float = 2.0
    #: positions are written at most this often
    state_flush_interval_s: float = 0.05
    #: alerts buffered per publisher while a gap is filled (beyond: dropped, replayed later)
    max_buffered: int = 200_000
    #: backoff cap when on_alert raises
    retry_cap_s: float = 5.0
    #: a watched publisher heard of for this long (it beats every second) is reported down
    silence_s: float = 5.0

    def __post_init__(self) -> None:
        if self.start_from not in ("earliest", "latest"):
            raise ConfigError(f"start_from must be 'earliest' or 'latest', got {self.start_from!r}")
        for name in ("replay_timeout_s", "state_flush_interval_s", "max_buffered", "retry_cap_s",
                     "silence_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)!r}")


class AlertSubscriberStats:
    __slots__ = ("live", "replayed", "delivered", "filtered", "duplicates", "malformed", "lost",
                 "epoch_resets", "replay_requests", "replay_timeouts", "callback_errors",
                 "overflow", "link_restarts", "untrusted_publishers", "publishers_down",
                 "crash_holes")

    def __init__(self) -> None:
        for name in self.__slots__:
            setattr(self, name, 0)


class AlertSubscriber:
    """Subscribes to many publishers; see the module docstring for the guarantees.

    Lifecycle: `await start()`, `add_publisher` / `remove_publisher` from the loop (plain values,
    e.g. from discovery), `await stop()` (idempotent).
    """

    def __init__(self, settings: AlertSubscriberSettings,
                 on_alert: Callable[[wire.Alert], Awaitable[None]], *,
                 on_loss: LossCallback | None = None,
                 context: zmq.asyncio.Context | None = None,
                 trust: Trust | None = None) -> None:
        """`trust`: the process's keys; None: the local key store (`Trust.default()`);
        `Trust.plain()` for plain links."""
        self.settings = settings
        self.trust = trust if trust is not None else Trust.default()
        self.stats = AlertSubscriberStats()
        self._on_alert = on_alert
        self._on_loss = on_loss
        self._own_context = context is None
        self._ctx = context
        self._links: dict[str, _Link] = {}
        self._positions: dict[str, tuple[int, int]] = {}  # publisher_id -> (epoch, last seq)
        self._dirty = False
        self._flush_task: asyncio.Task | None = None
        self._closing: set[asyncio.Task] = set()
        self._state = "new"
        self._log_limit: dict[str, float] = {}
        self._all_topics = settings.topics == ("",) or "" in settings.topics
        #: watched publishers reported down (synthetic mesh.helper.down), until heard again
        self._down: set[str] = set()
        #: watched publishers that announced a clean stop (mesh.helper.left)
        self._left: set[str] = set()
        self._watched: set[str] = set()
        self._synthetic: asyncio.Queue | None = None
        self._synthetic_task: asyncio.Task | None = None
        self._topics = tuple(t.encode() for t in settings.topics)

    # ---- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        if self._state != "new":
            raise MeshError("the alert subscriber was already started")
        if self._ctx is None:
            self._ctx = sockets.new_context()
        self._positions = _load_positions(self.settings.state_path)
        self._flush_task = asyncio.get_running_loop().create_task(
            self._flush_loop(), name="alert-positions")
        self._synthetic = asyncio.Queue()
        self._synthetic_task = asyncio.get_running_loop().create_task(
            self._deliver_synthetic(), name="alert-liveness")
        self._state = "running"

    async def stop(self) -> None:
        if self._state != "running":
            self._state = "stopped"
            return
        self._state = "stopping"
        links = list(self._links.values())
        self._links.clear()
        await asyncio.gather(*(link.close() for link in links), *self._closing,
                             return_exceptions=True)
        for task in (self._flush_task, self._synthetic_task):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._write_positions()
        if self._own_context and self._ctx is not None:
            self._ctx.term()
        self._ctx = None
        self._state = "stopped"

    async def __aenter__(self) -> AlertSubscriber:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ---- membership ------------------------------------------------------------------------

    def add_publisher(self, publisher_id: str, pub_endpoint: str, replay_endpoint: str,
                      curve_key: str | None = None, *, watch: bool = False) -> bool:
        """Follow a publisher; again with new endpoints (a restart elsewhere) keeps its position.
        `curve_key`: the key it announced. `watch`: report it down when it goes silent or is
        removed (a long-lived publisher such as a Helper's; not a one-shot `mesh alert
        publish`). False (warned, counted) when its key is not one this subscriber may pin."""
        if self._state != "running":
            raise MeshError(f"the alert subscriber is {self._state}; start() it first")
        if watch:
            self._watched.add(publisher_id)
        else:
            self._watched.discard(publisher_id)
        try:
            client_link = self._publisher_link(curve_key)
        except TrustError as exc:
            self.stats.untrusted_publishers += 1
            self._log_limited("untrusted", "not following alert publisher %s at %s: %s",
                              inert(publisher_id, 100), inert(pub_endpoint, 100), exc)
            return False
        link = self._links.get(publisher_id)
        if link is not None:
            if (link.pub_endpoint, link.replay_endpoint, link.client_link) == (
                    pub_endpoint, replay_endpoint, client_link):
                return True
            self._links.pop(publisher_id)
            self._close_later(link)
        link = _Link(self, publisher_id, pub_endpoint, replay_endpoint, client_link)
        self._links[publisher_id] = link
        link.start()
        return True

    def _publisher_link(self, curve_key: str | None):  # noqa: ANN202 - a ClientLink or None
        """The link pinning a publisher's key; TrustError when no publisher role allows it."""
        error: TrustError | None = None
        for role in PUBLISHER_ROLES:
            try:
                return self.trust.client(Role.NOTIFIER, role, curve_key or None)
            except TrustError as exc:
                error = error or exc
        raise error

    def remove_publisher(self, publisher_id: str) -> None:
        """Stop following a publisher (its position is kept, for when it comes back)."""
        link = self._links.pop(publisher_id, None)
        if link is not None:
            self._close_later(link)
            self._publisher_down(publisher_id, "its discovery entry is gone")

    def _close_later(self, link: _Link) -> None:
        task = asyncio.get_running_loop().create_task(link.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    @property
    def publishers(self) -> list[str]:
        return sorted(self._links)

    def positions(self) -> dict[str, tuple[int, int]]:
        """publisher_id -> (epoch, last delivered seq)."""
        return dict(self._positions)

    # ---- liveness ----------------------------------------------------------------------------

    def _publisher_down(self, publisher_id: str, reason: str) -> None:
        if (publisher_id not in self._watched or publisher_id in self._down
                or publisher_id in self._left or self._synthetic is None):
            return
        self._down.add(publisher_id)
        self.stats.publishers_down += 1
        log.error("alert publisher %s is down: %s", inert(publisher_id, 100), reason)
        self._synthetic.put_nowait(_synthetic(publisher_id, "mesh.helper.down", wire.CRITICAL,
                                              reason))

    def _publisher_heard(self, publisher_id: str) -> None:
        self._left.discard(publisher_id)
        if publisher_id in self._down and self._synthetic is not None:
            self._down.discard(publisher_id)
            log.info("alert publisher %s is back", inert(publisher_id, 100))
            self._synthetic.put_nowait(_synthetic(publisher_id, "mesh.helper.up", wire.INFO,
                                                  "heard again"))

    async def _deliver_synthetic(self) -> None:
        """Synthetic alerts go to on_alert in order, retried like real ones (not positioned:
        they are this subscriber's observations, not the publisher's history)."""
        while True:
            alert = await self._synthetic.get()
            if not self._matches(alert):
                continue
            backoff_s = 0.05
            while True:
                try:
                    await self._on_alert(alert)
                    break
                except asyncio.CancelledError:
                    raise
                except Exception:  # noqa: BLE001 - offered again after a backoff
                    self.stats.callback_errors += 1
                    log.exception("alert callback failed for the synthetic %s of %s", alert.kind,
                                  inert(alert.publisher_id, 100))
                    await asyncio.sleep(backoff_s)
                    backoff_s = min(backoff_s * 2, self.settings.retry_cap_s)

    # ---- shared by links -------------------------------------------------------------------

    def _matches(self, alert: wire.Alert) -> bool:
        if self._all_topics:
            return True
        topic = wire.alert_topic(alert.kind, alert.severity)
        return topic.startswith(self._topics)

    def _delivered(self, publisher_id: str, epoch: int, seq: int) -> None:
        self._positions[publisher_id] = (epoch, seq)
        self._dirty = True

    def _report_loss(self, publisher_id: str, epoch: int, first: int, last: int,
                     reason: str) -> None:
        self.stats.lost += last - first + 1
        log.warning("alerts %d..%d of publisher %s (epoch %016x) are lost: %s",
                    first, last, inert(publisher_id, 100), epoch, reason)
        if self._on_loss is not None:
            try:
                self._on_loss(publisher_id, epoch, first, last, reason)
            except Exception:  # noqa: BLE001
                log.exception("on_loss callback raised")

    def _malformed(self, publisher_id: str, what: str) -> None:
        self.stats.malformed += 1
        self._log_limited("malformed", "alert subscriber dropped a malformed frame from %s: %s",
                          inert(publisher_id, 100), inert(what))

    def _log_limited(self, what: str, msg: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._log_limit.get(what, -1e9) >= 10.0:
            self._log_limit[what] = now
            log.warning(msg, *args)

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.state_flush_interval_s)
            if self._dirty:
                self._write_positions()

    def _write_positions(self) -> None:
        """Atomic replace, no fsync: a position that goes back after a power loss only means
        alerts delivered again, never one missed."""
        self._dirty = False
        path = self.settings.state_path
        if path is None:
            return
        data = {pid: {"epoch": f"{e:016x}", "seq": s} for pid, (e, s) in self._positions.items()}
        tmp = f"{path}.tmp"
        try:
            with open(tmp, "w") as fh:
                json.dump(data, fh)
            os.replace(tmp, path)
        except OSError as exc:
            self._dirty = True
            self._log_limited("state", "cannot write alert positions to %s: %s", path, exc)


def _synthetic(publisher_id: str, kind: str, severity: int, reason: str) -> wire.Alert:
    alert = wire.Alert(version=wire.PROTOCOL_VERSION, publisher_id=publisher_id,
                       publisher_epoch=0, seq=0, kind=kind, severity=severity,
                       source=publisher_id, time_ns=time.time_ns(),
                       payload=json.dumps({"publisher_id": publisher_id,
                                           "reason": reason}).encode())
    alert.labels.update({"synthetic": "true", "reason": reason})
    return alert


def _load_positions(path: str | None) -> dict[str, tuple[int, int]]:
    if path is None or not os.path.exists(path):
        return {}
    try:
        with open(path) as fh:
            data = json.load(fh)
        return {pid: (int(v["epoch"], 16), int(v["seq"])) for pid, v in data.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        # Starting over from each publisher's first available alert: duplicates, not losses.
        log.warning("alert positions in %s are unreadable (%s); starting from each publisher's "
                    "earliest alert", path, exc)
        return {}


class _Link:
    """One publisher: its SUB and DEALER sockets, owned by one task, and its ordering state."""

    def __init__(self, owner: AlertSubscriber, publisher_id: str, pub_endpoint: str,
                 replay_endpoint: str, client_link) -> None:  # noqa: ANN001 - ClientLink | None
        self.owner = owner
        self.publisher_id = publisher_id
        self.pub_endpoint = pub_endpoint
        self.replay_endpoint = replay_endpoint
        self.client_link = client_link
        position = owner._positions.get(publisher_id)
        self.epoch, self.next_seq = (position[0], position[1] + 1) if position else (0, 1)
        #: epoch of the alert at next_seq - 1 (0: none, or a history read from its start)
        self.last_epoch = self.epoch
        self.old_epochs: set[int] = set()      # histories lost: their frames are dropped
        self.continued: set[int] = set()       # earlier epochs of the current history
        self.known_last_of: dict[int, int] = {}  # epoch -> highest seq known to be used
        self.probing = 0  # a new epoch seen: does it continue our history? (a reply tells)
        self.last_heard = time.monotonic()
        self.heard_once = False
        self.wait_latest = position is None and owner.settings.start_from == "latest"
        self.pending: dict[int, wire.Alert] = {}
        self.ready: deque[wire.Alert] = deque()
        self.known_last = 0
        self.inflight: tuple[int, int, float] | None = None  # (from, to, sent at)
        self.sub: zmq.asyncio.Socket | None = None
        self.dealer: zmq.asyncio.Socket | None = None
        self.task: asyncio.Task | None = None
        self._wake: asyncio.Event | None = None

    def start(self) -> None:
        ctx = self.owner._ctx
        self.sub = sockets.alert_sub(ctx)
        # Subscribe before connecting and before asking for the replay (Clone: no window).
        for topic in self.owner._topics:
            self.sub.setsockopt(zmq.SUBSCRIBE, topic)
        self.sub.setsockopt(zmq.SUBSCRIBE, wire.ALERT_STATE_TOPIC)
        sockets.connect(self.sub, self.pub_endpoint, self.client_link)
        self.task = asyncio.get_running_loop().create_task(
            self._supervise(), name=f"alert-sub-{self.publisher_id}")

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
            self.task = None
        for sock in (self.sub, self.dealer):
            if sock is not None:
                sock.close(linger=0)
        self.sub = self.dealer = None

    # ---- the loop --------------------------------------------------------------------------

    async def _supervise(self) -> None:
        """A bug in the loop must not leave a publisher unfollowed: log it, start over (the
        ordering state is kept; the replay request in flight is sent again)."""
        while True:
            try:
                await self._run()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001
                self.owner.stats.link_restarts += 1
                log.exception("alert subscriber link to %s failed; restarting it in 1 s",
                              inert(self.publisher_id, 100))
                await asyncio.sleep(1.0)

    async def _run(self) -> None:
        """Drain both sockets, deliver, ask for replays; sleep until one of them is readable.

        The sockets' ZMQ_FDs are watched with add_reader for the life of the link (cheaper per
        alert than a Poller, which re-registers them at every wait). A ZMQ_FD only signals a
        change, so every pass drains until EAGAIN and checks ZMQ_EVENTS before sleeping."""
        loop = asyncio.get_running_loop()
        wake = self._wake = asyncio.Event()
        sub = zmq.Socket.shadow(self.sub.underlying)
        sub_fd = sub.getsockopt(zmq.FD)
        loop.add_reader(sub_fd, wake.set)
        self._request(self.next_seq if not self.wait_latest else 2**63, 0)
        try:
            while True:
                dealer = self.dealer
                dealer_sync = zmq.Socket.shadow(dealer.underlying)
                dealer_fd = dealer_sync.getsockopt(zmq.FD)
                loop.add_reader(dealer_fd, wake.set)
                try:
                    while self.dealer is dealer:
                        wake.clear()
                        self._drain_sub(sub)
                        self._drain_dealer(dealer, dealer_sync)
                        if self.ready:
                            await self._deliver()
                        self._maybe_request()
                        self._check_silence()
                        if self.dealer is not dealer or wake.is_set():
                            continue
                        if (sub.getsockopt(zmq.EVENTS) | dealer_sync.getsockopt(zmq.EVENTS)) \
                                & zmq.POLLIN:
                            continue
                        timeout_s = 1.0
                        if self.inflight is not None:
                            timeout_s = max(0.001, self.inflight[2] - time.monotonic()
                                            + self.owner.settings.replay_timeout_s)
                        timer = loop.call_later(timeout_s, wake.set)
                        try:
                            await wake.wait()
                        finally:
                            timer.cancel()
                finally:
                    loop.remove_reader(dealer_fd)
        finally:
            loop.remove_reader(sub_fd)

    def _drain_sub(self, sock: zmq.Socket) -> None:
        for _ in range(1024):
            try:
                parts = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            if _ == 0:
                self._heard()
            if _ == 1023:
                self._wake.set()  # more may be waiting: deliver this batch, then come back
            if len(parts) != 2:
                self.owner._malformed(self.publisher_id, f"message of {len(parts)} frames on SUB")
                continue
            topic, frame = parts
            try:
                if topic == wire.ALERT_STATE_TOPIC:
                    state = wire.decode_publisher_state(frame)
                    if self._epoch_ok(state.publisher_epoch):
                        self._known(state.publisher_epoch, state.last_seq)
                    continue
                alert = wire.decode_alert(frame)
            except WireError as exc:
                self.owner._malformed(self.publisher_id, str(exc))
                continue
            self.owner.stats.live += 1
            self._accept(alert)
        self._advance()

    def _drain_dealer(self, dealer: zmq.asyncio.Socket, sock: zmq.Socket) -> None:
        while self.dealer is dealer:  # a reply may have made us replace the socket
            try:
                frame = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                reply = wire.decode_replay_reply(frame)
            except WireError as exc:
                self.owner._malformed(self.publisher_id, f"replay reply: {exc}")
                continue
            self._heard()
            self._on_reply(reply)

    # ---- ordering --------------------------------------------------------------------------

    # ---- liveness ----------------------------------------------------------------------------

    def _heard(self) -> None:
        now = time.monotonic()
        if not self.heard_once or now - self.last_heard >= 2.0:
            # first word of this link, or after a silence: the publisher (re)started
            self.owner._publisher_heard(self.publisher_id)
        elif self.publisher_id in self.owner._down:
            self.owner._publisher_heard(self.publisher_id)
        self.heard_once = True
        self.last_heard = now

    def _check_silence(self) -> None:
        silent_s = time.monotonic() - self.last_heard
        if silent_s >= self.owner.settings.silence_s:
            self.owner._publisher_down(self.publisher_id, f"not heard for {silent_s:.1f} s")

    # ---- epochs ----------------------------------------------------------------------------

    def _known(self, epoch: int, seq: int) -> None:
        if seq > self.known_last:
            self.known_last = seq
        if seq > self.known_last_of.get(epoch, 0):
            self.known_last_of[epoch] = seq

    def _epoch_ok(self, epoch: int) -> bool:
        if epoch == self.epoch or epoch in self.continued:
            return True
        if self.epoch == 0:
            self.epoch = epoch
            return True
        if epoch in self.old_epochs or epoch == self.probing:
            return False  # a late frame of a previous life, or one we are asking about
        # A new history: the publisher restarted after a crash (its journal kept: the reply
        # holds our last delivered alert) or lost its journal. Ask, and wait for the answer.
        self.probing = epoch
        self._request(max(1, self.next_seq - 1), 0)
        return False

    def _settle_probe(self, reply: wire.ReplayReply) -> None:
        new, self.probing = self.probing, 0
        from_seq, to_seq, _ = self.inflight
        self.inflight = None
        last = self.next_seq - 1
        kept = any(a.publisher_epoch == self.epoch and (a.seq == last or last == 0)
                   for a in reply.alerts)
        if not kept:
            self._reset_epoch(new)
            return
        log.info("alert publisher %s restarted with a new epoch %016x (was %016x) and kept its "
                 "history: reading on from seq %d", inert(self.publisher_id, 100), new,
                 self.epoch, self.next_seq)
        self.continued.add(self.epoch)
        self.epoch = new
        self._take_reply(reply, from_seq, to_seq)

    def _reset_epoch(self, epoch: int) -> None:
        """The publisher lost its journal (or a new one took its id): its numbering restarts."""
        old = self.epoch
        self.owner.stats.epoch_resets += 1
        self.old_epochs.add(old)
        held = sorted(self.pending)
        expect = self.next_seq
        for seq in held:   # what we hold of the old life is delivered, its holes reported
            if seq > expect:
                self.owner._report_loss(self.publisher_id, old, expect, seq - 1,
                                        "the publisher restarted without its history")
            self.ready.append(self.pending[seq])
            expect = seq + 1
        if self.known_last >= expect:
            self.owner._report_loss(self.publisher_id, old, expect, self.known_last,
                                    f"the publisher restarted without its history (new epoch "
                                    f"{epoch:016x})")
        log.warning("alert publisher %s has a new epoch %016x (was %016x) without its history: "
                    "reading it from seq 1", inert(self.publisher_id, 100), epoch, old)
        self.old_epochs |= self.continued
        self.continued.clear()
        self.pending.clear()
        self.epoch = epoch
        self.next_seq = 1
        self.last_epoch = 0
        self.known_last = 0
        self.known_last_of.clear()
        self.wait_latest = False
        self._request(1, 0)

    def _accept(self, alert: wire.Alert, live: bool = True) -> None:
        if alert.publisher_id != self.publisher_id:
            self.owner._malformed(self.publisher_id,
                                  f"alert of publisher {alert.publisher_id!r} on this link")
            return
        if not self._epoch_ok(alert.publisher_epoch):
            return
        seq = alert.seq
        self._known(alert.publisher_epoch, seq)
        if self.wait_latest:
            return  # first contact with start_from="latest": the replay reply sets the start
        if seq < self.next_seq or seq in self.pending:
            self.owner.stats.duplicates += 1
            return
        if live and len(self.pending) >= self.owner.settings.max_buffered:
            # Not lost: the gap makes us replay it. (Replayed alerts are always kept: a reply
            # is bounded, and one dropped here would be taken for unavailable.)
            self.owner.stats.overflow += 1
            return
        self.pending[seq] = alert

    def _advance(self) -> None:
        pending = self.pending
        while pending:
            alert = pending.pop(self.next_seq, None)
            if alert is None:
                break
            self.ready.append(alert)
            self.next_seq += 1
            self.last_epoch = alert.publisher_epoch

    def _skip_unavailable(self, through: int, reason: str, evicted: bool = False) -> None:
        """Seqs up to `through` that we do not hold will never come: report them and move on.

        Between two epochs of one history lie the seqs the crashed run had reserved: of
        those, only the ones its epoch announced (known_last_of) were used and are lost; the
        rest were never used and are skipped silently."""
        while self.next_seq <= through:
            if self.next_seq in self.pending:
                self._advance()
                continue
            nxt = min((s for s in self.pending if s > self.next_seq), default=through + 1)
            end = min(nxt - 1, through)
            after = self.pending[nxt].publisher_epoch if nxt in self.pending else self.epoch
            lost_end = end
            if not evicted and after != self.last_epoch:
                lost_end = min(end, self.known_last_of.get(self.last_epoch, 0)
                               if self.last_epoch else 0)
                if lost_end < end:
                    self.owner.stats.crash_holes += 1
            if lost_end >= self.next_seq:
                self.owner._report_loss(self.publisher_id, self.last_epoch or self.epoch,
                                        self.next_seq, lost_end, reason)
            self.next_seq = end + 1
            self._advance()

    # ---- replay ----------------------------------------------------------------------------

    def _request(self, from_seq: int, to_seq: int) -> None:
        """Ask the replay endpoint; a fresh DEALER each time a request timed out (Lazy Pirate),
        so a reply on the current socket always answers the one request in flight."""
        if self.dealer is None or self.inflight is not None:
            if self.dealer is not None:
                self.dealer.close(linger=0)
            self.dealer = sockets.replay_dealer(self.owner._ctx, self.replay_endpoint,
                                                link=self.client_link)
        req = wire.ReplayRequest(version=wire.PROTOCOL_VERSION, publisher_id=self.publisher_id,
                                 from_seq=from_seq, to_seq=to_seq)
        try:
            zmq.Socket.shadow(self.dealer.underlying).send(wire.encode(req), zmq.NOBLOCK)
        except zmq.Again:
            pass  # not connected yet and nothing queued: the timeout sends it again
        self.inflight = (from_seq, to_seq, time.monotonic())
        self.owner.stats.replay_requests += 1

    def _maybe_request(self) -> None:
        if self.inflight is not None:
            if time.monotonic() - self.inflight[2] >= self.owner.settings.replay_timeout_s:
                self.owner.stats.replay_timeouts += 1
                self._request(self.inflight[0] if self.wait_latest or self.probing
                              else self.next_seq,
                              self.inflight[1] if self.wait_latest else 0)
            return
        if self.known_last >= self.next_seq and not self.wait_latest:
            self._request(self.next_seq, self.known_last)

    def _on_reply(self, reply: wire.ReplayReply) -> None:
        request = self.inflight
        if request is None:
            return
        if self.probing and reply.publisher_epoch == self.probing:
            self._settle_probe(reply)  # on a fresh socket: it answers the probe
            return
        if not self._epoch_ok(reply.publisher_epoch) or self.inflight is not request:
            return  # stale, or the epoch changed and a new request went out
        from_seq, to_seq, _ = request
        self.inflight = None
        self._take_reply(reply, from_seq, to_seq)

    def _take_reply(self, reply: wire.ReplayReply, from_seq: int, to_seq: int) -> None:
        # Alerts of other epochs in a reply are of the publisher's own history: earlier runs
        # it continued after a crash.
        for alert in reply.alerts:
            e = alert.publisher_epoch
            if e != reply.publisher_epoch and e not in self.old_epochs:
                self.continued.add(e)
        self._known(reply.publisher_epoch, reply.last_seq)
        if self.wait_latest:
            self.wait_latest = False
            self.next_seq = reply.last_seq + 1
            self.pending = {s: a for s, a in self.pending.items() if s >= self.next_seq}
            self._advance()
            return
        self.owner.stats.replayed += len(reply.alerts)
        for alert in reply.alerts:
            self._accept(alert, live=False)
        if reply.alerts:
            through = reply.alerts[-1].seq
        else:
            through = reply.last_seq if to_seq == 0 else min(to_seq, reply.last_seq)
        evicted = self.next_seq < reply.first_available_seq
        reason = ("no longer in the publisher's history (first available is "
                  f"{reply.first_available_seq})" if evicted
                  else "not in the publisher's history (sent before its crash, not journaled)")
        if through >= from_seq:
            self._skip_unavailable(through, reason, evicted)
        self._advance()

    # ---- delivery --------------------------------------------------------------------------

    async def _deliver(self) -> None:
        owner = self.owner
        backoff_s = 0.05
        while self.ready:
            alert = self.ready[0]
            if owner._matches(alert):
                try:
                    await owner._on_alert(alert)
                except asyncio.CancelledError:
                    raise
                except Exception:  # noqa: BLE001 - offered again after a backoff
                    owner.stats.callback_errors += 1
                    log.exception("alert callback failed for %s seq %d; retrying in %.2f s",
                                  inert(self.publisher_id, 100), alert.seq, backoff_s)
                    await asyncio.sleep(backoff_s)
                    backoff_s = min(backoff_s * 2, owner.settings.retry_cap_s)
                    continue
                owner.stats.delivered += 1
                if alert.kind == LEFT_KIND:
                    owner._left.add(self.publisher_id)  # a clean stop: not reported down
            else:
                owner.stats.filtered += 1
            self.ready.popleft()
            owner._delivered(self.publisher_id, alert.publisher_epoch, alert.seq)
