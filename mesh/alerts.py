"""Alert publisher: numbered alerts on a PUB socket of their own, with a replay endpoint.

Guarantees (see docs/decisions/003-alert-lane.md):
- `publish()` never waits on disk: it numbers the alert, sends it on PUB, keeps it in the
  in-memory history (replayable at once) and hands it to the journal, whose group commit makes
  it durable a few milliseconds later, in the background.
- Sequence numbers are 1-based and never reused within an epoch, even across a crash: numbers
  are reserved on disk in blocks ahead of use, and a restart after a crash continues above the
  reserved block. The numbers of a crash's unsynced tail (if any) then stay unavailable, and the
  replay endpoint tells subscribers so (they report them lost rather than wait).
- A clean restart with the same data dir continues the epoch and the sequence and replays the
  history it had (what was durable). A restart after a crash keeps the history but draws a new
  epoch and numbers on above the reserved seqs: subscribers take it for a new run of the same
  history, not a gap. A new or lost data dir draws a new random epoch: subscribers see the
  change and start that publisher over from seq 1.
- The history is bounded (`history_size` alerts); older ones are forgotten and reported by
  `first_available_seq`.
- Every `state_interval_s` the publisher sends its state (epoch, first and last seq) on PUB, so a
  subscriber that lost the tail of a burst (slow joiner, reconnect, HWM) finds out within one
  interval even when no further alert comes.

Trust (docs/decisions/006-trust.md): with a secure `Trust`, the PUB and the replay ROUTER are
CURVE servers in the ZAP domain `mesh.alerts`, which admits notifier keys only, so no other key
can read the alert stream or its history; each replay request's User-Id is checked again
(`Operation.ALERT_REPLAY`). The publisher's key (`public_key`) is what it announces in
discovery (`curve_key`), and what subscribers pin if their store allows it.
"""

from __future__ import annotations

import asyncio
import bisect
import functools
import logging
import random
import socket
import struct
import time
from collections import deque
from collections.abc import Mapping

import msgspec
import zmq
import zmq.asyncio

from mesh import sockets, wire
from mesh.errors import ConfigError, MeshError, WireError
from mesh.journal import FsyncPolicy, Journal
from mesh.trust import Domain, Operation, RateLimitedLog, Role, Trust, inert

log = logging.getLogger(__name__)

# Journal record types of an alert history (its own journal directory, so its own numbering).
REC_EPOCH = 1       # key b"epoch", payload: epoch u64 + publisher_id
REC_ALERT = 2       # key: seq u64 big-endian, payload: the encoded Alert
REC_RESERVE = 3     # key b"reserve", payload: highest seq reserved, u64
REC_CLOSED = 4      # key b"state", payload: last seq used, u64 (a clean stop)
REC_ENDPOINTS = 5   # key b"endpoints", payload: pub endpoint \n replay endpoint
REC_OPENED = 6      # key b"state", no payload: running (a crash leaves this as the last word)

_U64 = struct.Struct(">Q")


class AlertPublisherSettings(msgspec.Struct, frozen=True, kw_only=True):
    #: stable name of this publisher (survives restarts; its journal belongs to it)
    publisher_id: str
    #: directory of the alert history journal; None keeps the history in memory only
    data_dir: str | None = None
    #: PUB endpoint; port 0 picks a free port (the one used before is tried first on restart)
    pub_endpoint: str = "tcp://127.0.0.1:0"
    #: ROUTER endpoint answering replay requests; port 0 as above
    replay_endpoint: str = "tcp://127.0.0.1:0"
    #: alerts kept for replay (in memory and in the journal)
    history_size: int = 100_000
    #: period of the publisher-state beat on PUB (bounds how long a lost tail goes unnoticed)
    state_interval_s: float = 1.0
    #: sequence numbers reserved on disk per block (bounds the numbers a crash leaves unavailable)
    reserve_block: int = 10_000
    #: limits of one replay reply (a subscriber asks again for the rest)
    max_replay_alerts: int = 5_000
    max_replay_bytes: int = 4 * 2**20
    #: largest encoded alert accepted by publish()
    max_alert_bytes: int = 512 * 1024
    #: journal fsync policy (see mesh/journal/journal.py), segment size, compaction period
    fsync_policy: str = "batch"
    journal_segment_bytes: int = 16 * 2**20
    compact_interval_s: float = 10.0

    def __post_init__(self) -> None:
        if not self.publisher_id:
            raise ConfigError("publisher_id must not be empty")
        for name in ("history_size", "state_interval_s", "reserve_block", "max_replay_alerts",
                     "max_replay_bytes", "max_alert_bytes", "journal_segment_bytes",
                     "compact_interval_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)!r}")


class AlertPublisherStats:
    """Plain counters (the node wiring exports them to Prometheus)."""

    __slots__ = ("published", "replay_requests", "replayed_alerts", "malformed_requests",
                 "journal_errors", "unreserved_seqs", "refused_requests")

    def __init__(self) -> None:
        self.refused_requests = 0
        self.published = 0
        self.replay_requests = 0
        self.replayed_alerts = 0
        self.malformed_requests = 0
        self.journal_errors = 0
        self.unreserved_seqs = 0


class AlertPublisher:
    """One alert publisher: a PUB socket, a replay ROUTER, a bounded journaled history.

    Lifecycle: `await start()`, `publish(...)` from the event loop, `await stop()` (idempotent).
    `trust`: the process's keys; None: the local key store (`Trust.default()`);
    `Trust.plain()` for plain links;
    `role`: the key it publishes with (a Helper's, or a monitor's for `mesh alert publish`).
    """

    def __init__(self, settings: AlertPublisherSettings,
                 context: zmq.asyncio.Context | None = None, *, trust: Trust | None = None,
                 role: Role = Role.HELPER) -> None:
        self.settings = settings
        self._own_trust = trust is None  # then its ZAP handler is ours to release
        self.trust = trust if trust is not None else Trust.default()
        self.role = role
        self._warn = RateLimitedLog(log, interval_s=10.0)
        self.stats = AlertPublisherStats()
        self._own_context = context is None
        self._ctx = context
        self._pub: zmq.asyncio.Socket | None = None
        self._pub_send: zmq.Socket | None = None   # sync view of the PUB: never blocks
        self._router: zmq.asyncio.Socket | None = None
        self._tasks: list[asyncio.Task] = []
        self._journal = None
        self._sync_task: asyncio.Task | None = None
        self.epoch = 0
        self._next_seq = 1
        self._reserved_high = 0
        self._reserving = False
        # history: seqs in increasing order (holes only after a crash) and their frames
        self._seqs: deque[int] = deque()
        self._frames: dict[int, bytes] = {}
        self._first_available = 1
        self.pub_endpoint = ""
        self.replay_endpoint = ""
        self._state = "new"
        self._served_through = 0
        self._served: asyncio.Event | None = None  # created in start(), on the loop
        self._sync_again = False
        self._reserve_task: asyncio.Task | None = None
        self._log_limit: dict[str, float] = {}

    # ---- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Recover the history, bind both endpoints, start serving. On failure nothing is left
        open (journal, sockets, context) and the error is raised."""
        if self._state != "new":
            raise MeshError(f"alert publisher {self.settings.publisher_id!r} was already started")
        self._state = "starting"
        self._served = asyncio.Event()
        try:
            old_endpoints = await self._open_history()
            if self._ctx is None:
                self._ctx = sockets.new_context()
            link = self.trust.server(self._ctx, self.role, Domain.ALERTS)
            self._pub, self.pub_endpoint = _bind_reusing(
                functools.partial(sockets.alert_pub, link=link), self._ctx,
                self.settings.pub_endpoint, old_endpoints[0])
            self._pub_send = zmq.Socket.shadow(self._pub.underlying)
            self._router, self.replay_endpoint = _bind_reusing(
                functools.partial(sockets.replay_router, link=link), self._ctx,
                self.settings.replay_endpoint, old_endpoints[1])
        except BaseException:
            # A failed bind leaves the socket the factory made open (sockets.bind does not
            # close it): our own context is destroyed, which closes it; a shared one keeps it
            # until it is garbage-collected.
            if self._own_context and self._ctx is not None:
                for sock in (self._pub, self._router):
                    if sock is not None:
                        sock.close(linger=0)
                self._pub = self._router = self._pub_send = None
                self.trust.release(self._ctx)
                self._ctx.destroy(linger=0)
                self._ctx = None
            self._state = "running"  # so that stop() releases what was opened
            await self.stop()
            raise
        if self._journal is not None:
            self._journal_append(REC_ENDPOINTS, b"endpoints",
                                 f"{self.pub_endpoint}\n{self.replay_endpoint}".encode())
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._serve_replays(), name=f"alert-replay-{self.settings.publisher_id}"),
            loop.create_task(self._beat(), name=f"alert-state-{self.settings.publisher_id}"),
        ]
        self._state = "running"
        log.info("alert publisher %s epoch %016x at %s (replay %s), next seq %d",
                 self.settings.publisher_id, self.epoch, self.pub_endpoint, self.replay_endpoint,
                 self._next_seq)

    async def stop(self) -> None:
        """Stop serving, make the history durable with a clean-stop mark, close everything."""
        if self._state in ("stopped", "stopping", "new"):
            self._state = "stopped" if self._state == "new" else self._state
            return
        self._state = "stopping"
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        for task in (self._sync_task, self._reserve_task):
            if task is not None:
                await asyncio.gather(task, return_exceptions=True)
        if self._journal is not None:
            self._journal_append(REC_CLOSED, b"state", _U64.pack(self._next_seq - 1))
            try:
                await self._journal.close()
            except Exception as exc:  # noqa: BLE001 - reported, the sockets still close
                self.stats.journal_errors += 1
                log.error("alert journal of %s did not close cleanly: %s",
                          self.settings.publisher_id, exc)
            self._journal = None
        for sock in (self._pub, self._router):
            if sock is not None:
                sock.close(linger=sockets.CLOSE_LINGER_MS)
        self._pub = self._router = self._pub_send = None
        if self._ctx is not None and (self._own_context or self._own_trust):
            self.trust.release(self._ctx)  # its ZAP socket would block term()
            await asyncio.sleep(0)  # one loop turn: the handler's cancelled task ends
        if self._own_context and self._ctx is not None:
            self._ctx.term()
            self._ctx = None
        self._state = "stopped"

    async def __aenter__(self) -> AlertPublisher:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ---- publishing ------------------------------------------------------------------------

    def publish(self, kind: str, severity: int | str, source: str, payload: bytes = b"",
                labels: Mapping[str, str] | None = None) -> int:
        """Number, send and keep one alert; return its seq. Never blocks, never waits on disk.

        `severity` is a `wire` Severity value or its name ("critical"). Must be called from the
        publisher's event loop thread, after `start()`.
        """
        if self._state != "running":
            raise MeshError(
                f"alert publisher {self.settings.publisher_id!r} is {self._state}; start() it first")
        sev = wire.severity_value(severity) if isinstance(severity, str) else int(severity)
        if not wire.INFO <= sev <= wire.CRITICAL:
            raise ValueError(f"severity {severity!r} is not one of info, warning, error, critical")
        seq = self._next_seq
        alert = wire.Alert(version=wire.PROTOCOL_VERSION, publisher_id=self.settings.publisher_id,
                           publisher_epoch=self.epoch, seq=seq, kind=kind, severity=sev,
                           source=source, time_ns=time.time_ns(), payload=payload)
        if labels:
            alert.labels.update(labels)
        frame = wire.encode(alert)
        if len(frame) > self.settings.max_alert_bytes:
            raise MeshError(
                f"alert of {len(frame)} bytes exceeds max_alert_bytes "
                f"{self.settings.max_alert_bytes}; send a reference instead of the data")
        self._next_seq = seq + 1
        try:
            self._pub_send.send_multipart((wire.alert_topic(kind, sev), frame), zmq.NOBLOCK)
        except zmq.Again:
            pass  # PUB at HWM for some peer: that subscriber will see the gap and replay
        self._keep(seq, frame)
        self.stats.published += 1
        if self._journal is not None:
            self._journal_append(REC_ALERT, _U64.pack(seq), frame)
            if seq > self._reserved_high:
                self.stats.unreserved_seqs += 1
            if seq + self.settings.reserve_block // 2 >= self._reserved_high:
                self._reserve_ahead()
            self._schedule_sync()
        return seq

    async def flush(self) -> None:
        """Wait until every alert published so far is durable (no-op without a data dir).
        `publish()` never waits for this; call it where a caller must know, e.g. before exit."""
        if self._journal is not None:
            await self._journal.sync()

    # ---- state, for callers and tests ------------------------------------------------------

    @property
    def public_key(self) -> str:
        """The Z85 key subscribers must pin ("" on plain links): announce it as `curve_key`."""
        return self.trust.public_key(self.role)

    @property
    def last_seq(self) -> int:
        return self._next_seq - 1

    @property
    def first_available_seq(self) -> int:
        return self._first_available

    @property
    def served_through(self) -> int:
        """Highest seq sent to some subscriber in a replay reply."""
        return self._served_through

    async def wait_served(self, seq: int, timeout_s: float) -> bool:
        """Wait until a replay reply carrying `seq` (or later) went out; False on timeout."""
        deadline = time.monotonic() + timeout_s
        while self._served_through < seq:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._served.clear()
            try:
                await asyncio.wait_for(self._served.wait(), left)
            except TimeoutError:
                return self._served_through >= seq
        return True

    # ---- history ---------------------------------------------------------------------------

    def _keep(self, seq: int, frame: bytes) -> None:
        self._seqs.append(seq)
        self._frames[seq] = frame
        while len(self._seqs) > self.settings.history_size:
            old = self._seqs.popleft()
            del self._frames[old]
            self._first_available = old + 1
            if self._journal is not None:
                self._journal.release(_U64.pack(old))

    def _range(self, from_seq: int, to_seq: int) -> tuple[list[bytes], int]:
        """Frames of the kept alerts with from_seq <= seq <= to_seq, within the reply limits,
        and the seq of the last one (0 when none)."""
        seqs = self._seqs
        if not seqs or to_seq < from_seq:
            return [], 0
        if seqs[-1] - seqs[0] + 1 == len(seqs):      # no holes: index arithmetic
            start = max(from_seq, seqs[0]) - seqs[0]
        else:
            start = bisect.bisect_left(seqs, from_seq)
        out: list[bytes] = []
        top = 0
        size = 0
        limit_n, limit_b = self.settings.max_replay_alerts, self.settings.max_replay_bytes
        for i in range(start, len(seqs)):
            seq = seqs[i]
            if seq > to_seq:
                break
            frame = self._frames[seq]
            if out and (len(out) >= limit_n or size + len(frame) > limit_b):
                break
            out.append(frame)
            top = seq
            size += len(frame) + 8
        return out, top

    # ---- replay endpoint -------------------------------------------------------------------

    async def _serve_replays(self) -> None:
        router = self._router
        drain = zmq.Socket.shadow(router.underlying)
        while True:
            await router.poll(1000)
            for _ in range(256):  # drain what is ready, then yield
                try:
                    frames = drain.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                # ZAP let only notifier keys connect; checked per request all the same.
                user_id = sockets.user_id(frames[-1])
                if not self.trust.permits(user_id, Operation.ALERT_REPLAY):
                    self.stats.refused_requests += 1
                    self._warn.warning("refused", "alert publisher %s refused a replay request "
                                       "from %s", self.settings.publisher_id,
                                       inert(user_id or "an unauthenticated peer", 60))
                    continue
                parts = [f.bytes for f in frames]
                try:
                    self._answer(drain, parts)
                except Exception:  # noqa: BLE001 - a bug must not close the replay endpoint
                    self.stats.malformed_requests += 1
                    log.exception("alert publisher %s: replay request failed",
                                  self.settings.publisher_id)

    def _answer(self, router: zmq.Socket, parts: list[bytes]) -> None:
        self.stats.replay_requests += 1
        if len(parts) != 2:
            self._malformed(f"replay request of {len(parts)} frames")
            return
        identity, frame = parts
        try:
            req = wire.decode_replay_request(frame)
        except WireError as exc:
            self._malformed(str(exc))
            return
        if req.publisher_id and req.publisher_id != self.settings.publisher_id:
            self._malformed(f"replay request for publisher {inert(req.publisher_id, 100)!r}")
            return
        last = self._next_seq - 1
        to_seq = last if req.to_seq == 0 else min(req.to_seq, last)
        frames, top = self._range(max(1, req.from_seq), to_seq)
        reply = wire.encode_replay_reply(frames, self.epoch, self._first_available, last)
        try:
            router.send_multipart((identity, reply), zmq.NOBLOCK)
        except zmq.Again:
            return  # the requester is gone or not reading; it asks again after its timeout
        if frames:
            self.stats.replayed_alerts += len(frames)
            if top > self._served_through:
                self._served_through = top
                self._served.set()

    def _malformed(self, what: str) -> None:
        self.stats.malformed_requests += 1
        self._log_limited("malformed", logging.WARNING,
                          "alert publisher %s dropped a malformed replay request: %s",
                          self.settings.publisher_id, inert(what))

    async def _beat(self) -> None:
        last_compact = time.monotonic()
        while True:
            self._send_state()
            await asyncio.sleep(self.settings.state_interval_s)
            if (self._journal is not None
                    and time.monotonic() - last_compact >= self.settings.compact_interval_s):
                last_compact = time.monotonic()
                try:
                    self._journal.compact()
                except Exception as exc:  # noqa: BLE001
                    self.stats.journal_errors += 1
                    self._log_limited("journal", logging.ERROR,
                                      "alert publisher %s: journal compaction failed: %s",
                                      self.settings.publisher_id, exc)

    def _send_state(self) -> None:
        frame = wire.encode_replay_reply([], self.epoch, self._first_available, self._next_seq - 1)
        try:
            self._pub_send.send_multipart((wire.ALERT_STATE_TOPIC, frame), zmq.NOBLOCK)
        except zmq.Again:
            pass

    # ---- journal ---------------------------------------------------------------------------

    async def _open_history(self) -> tuple[str | None, str | None]:
        """Recover epoch, sequence and history from the journal; return the endpoints used last."""
        if self.settings.data_dir is None:
            self.epoch = _new_epoch()
            return None, None
        jr = Journal(self.settings.data_dir, policy=FsyncPolicy(self.settings.fsync_policy),
                     segment_size_bytes=self.settings.journal_segment_bytes,
                     rewrite=self._rewrite_record)
        epoch = 0
        reserved = 0
        clean_stop_at: int | None = None   # last lifecycle record: CLOSED(n) -> n, OPENED -> None
        endpoints: tuple[str | None, str | None] = (None, None)
        last_alert = 0
        for rec in jr.recover():
            if rec.type == REC_ALERT:
                seq = _U64.unpack(rec.key)[0]
                if seq not in self._frames:
                    self._seqs.append(seq)
                self._frames[seq] = bytes(rec.payload)
                last_alert = max(last_alert, seq)
            elif rec.type == REC_EPOCH:
                epoch = _U64.unpack(rec.payload[:8])[0]
            elif rec.type == REC_RESERVE:
                reserved = max(reserved, _U64.unpack(rec.payload)[0])
            elif rec.type == REC_CLOSED:
                clean_stop_at = _U64.unpack(rec.payload)[0]
            elif rec.type == REC_OPENED:
                clean_stop_at = None
            elif rec.type == REC_ENDPOINTS:
                pub, _, rep = bytes(rec.payload).decode().partition("\n")
                endpoints = (pub, rep)
        # compaction rewrites live alerts forward, so recovery may yield them out of order
        if any(a > b for a, b in zip(self._seqs, list(self._seqs)[1:])):
            self._seqs = deque(sorted(self._seqs))
        self._journal = jr
        while len(self._seqs) > self.settings.history_size:
            old = self._seqs.popleft()
            del self._frames[old]
            jr.release(_U64.pack(old))
        if epoch == 0:
            self.epoch = _new_epoch()
            self._next_seq = 1
        else:
            self.epoch = epoch
            if clean_stop_at is not None and clean_stop_at >= last_alert:
                self._next_seq = clean_stop_at + 1          # clean stop: continue right after
            else:
                # A crash: numbers up to the reservation may have gone out unsynced. Number on
                # above them, in a new epoch: subscribers take the epoch change for a new run of
                # the same history (its alerts stay replayable), not for a gap of the reserved,
                # mostly never used, numbers (docs/decisions/003-alert-lane.md).
                self._next_seq = max(reserved, last_alert) + 1
                self.epoch = _new_epoch()
                log.info(
                    "alert publisher %s restarted after a crash: new epoch %016x from seq %d "
                    "(seqs %d..%d were reserved by the run that crashed: unused, or sent but not "
                    "journaled)", self.settings.publisher_id, self.epoch, self._next_seq,
                    last_alert + 1, self._next_seq - 1)
        self._first_available = self._seqs[0] if self._seqs else self._next_seq
        jr.start(asyncio.get_running_loop())
        # Before any publish: the epoch, "running" (so a crash is told from a clean stop) and the
        # first reserved block are on disk.
        self._journal_append(REC_EPOCH, b"epoch", self._epoch_payload())
        self._journal_append(REC_OPENED, b"state", b"")
        self._reserved_high = self._next_seq - 1 + self.settings.reserve_block
        self._journal_append(REC_RESERVE, b"reserve", _U64.pack(self._reserved_high))
        await jr.sync()
        return endpoints

    def _epoch_payload(self) -> bytes:
        return _U64.pack(self.epoch) + self.settings.publisher_id.encode()

    def _rewrite_record(self, key: bytes) -> list[tuple[int, bytes]]:
        """Compaction: the records that keep `key` alive, appended again to the newest segment."""
        if key == b"epoch":
            return [(REC_EPOCH, self._epoch_payload())]
        if key == b"state":
            return [(REC_OPENED, b"")]
        if key == b"reserve":
            return [(REC_RESERVE, _U64.pack(max(self._reserved_high, self._next_seq - 1)))]
        if key == b"endpoints":
            return [(REC_ENDPOINTS, f"{self.pub_endpoint}\n{self.replay_endpoint}".encode())]
        if len(key) == 8:
            frame = self._frames.get(_U64.unpack(key)[0])
            if frame is not None:
                return [(REC_ALERT, frame)]
        return []

    def _journal_append(self, rtype: int, key: bytes, payload: bytes) -> None:
        try:
            self._journal.append(rtype, key, payload)
        except Exception as exc:  # noqa: BLE001 - alerts keep flowing from memory
            self.stats.journal_errors += 1
            self._log_limited("journal", logging.ERROR,
                              "alert publisher %s could not journal a record (%s); alerts are "
                              "still sent and kept in memory, but not durable",
                              self.settings.publisher_id, exc)

    def _reserve_ahead(self) -> None:
        if self._reserving:
            return
        self._reserving = True
        high = self._reserved_high + self.settings.reserve_block
        self._journal_append(REC_RESERVE, b"reserve", _U64.pack(high))

        async def durable() -> None:
            try:
                await self._journal.sync()
                self._reserved_high = high
            except Exception as exc:  # noqa: BLE001
                self.stats.journal_errors += 1
                self._log_limited("journal", logging.ERROR,
                                  "alert publisher %s: reserving seqs failed: %s",
                                  self.settings.publisher_id, exc)
            finally:
                self._reserving = False

        self._reserve_task = asyncio.get_running_loop().create_task(durable())

    def _schedule_sync(self) -> None:
        """One background sync in flight at a time; the journal's group commit batches."""
        if self._sync_task is not None and not self._sync_task.done():
            self._sync_again = True
            return
        self._sync_again = False
        self._sync_task = asyncio.get_running_loop().create_task(self._sync_loop())

    async def _sync_loop(self) -> None:
        while True:
            try:
                await self._journal.sync()
            except Exception as exc:  # noqa: BLE001
                self.stats.journal_errors += 1
                self._log_limited("journal", logging.ERROR,
                                  "alert publisher %s: journal sync failed: %s",
                                  self.settings.publisher_id, exc)
            if not self._sync_again or self._journal is None:
                return
            self._sync_again = False

    def _log_limited(self, what: str, level: int, msg: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._log_limit.get(what, -1e9) >= 10.0:
            self._log_limit[what] = now
            log.log(level, msg, *args)


def _new_epoch() -> int:
    return random.SystemRandom().getrandbits(63) | 1


def _bind_reusing(factory, ctx: zmq.asyncio.Context, endpoint: str,  # noqa: ANN001
                  previous: str | None) -> tuple:
    """Bind `endpoint`; with port 0, try the port used before first, so subscribers that knew
    it reconnect on their own after a restart. (Checked with a plain socket first: a failed
    ZeroMQ bind would leave a socket behind in the factory.)"""
    if previous and endpoint.startswith("tcp://") and endpoint.endswith(":0"):
        host = endpoint[len("tcp://"):].rsplit(":", 1)[0]
        prev_host, _, prev_port = previous[len("tcp://"):].rpartition(":")
        if previous.startswith("tcp://") and prev_host == host and prev_port.isdigit() \
                and _port_free(host, int(prev_port)):
            return factory(ctx, previous)
    return factory(ctx, endpoint)


def _port_free(host: str, port: int) -> bool:
    addr = "0.0.0.0" if host == "*" else host
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as ZeroMQ binds
            probe.bind((addr, port))
        return True
    except OSError:
        return False
