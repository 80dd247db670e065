"""Alert publisher and subscriber in one process over loopback: ordering, replay, filters,
epochs, bounds, malformed frames, lifecycle. (Real processes: tests/integration/test_alert_lane.py.)"""

from __future__ import annotations

import asyncio
import time

import pytest
import zmq

from mesh import sockets, wire
from mesh.alert_handlers import HandlerSet, log_handler
from mesh.alert_subscriber import AlertSubscriber, AlertSubscriberSettings
from mesh.alerts import AlertPublisher, AlertPublisherSettings
from mesh.errors import ConfigError, MeshError
from mesh.trust import Domain, Role, Trust


async def until(cond, timeout_s: float = 5.0, what: str = "condition"):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.005)


class Sink:
    def __init__(self) -> None:
        self.alerts: list[wire.Alert] = []
        self.losses: list[tuple] = []

    async def __call__(self, alert: wire.Alert) -> None:
        self.alerts.append(alert)

    def on_loss(self, *args: object) -> None:
        self.losses.append(args)

    def seqs(self, pid: str | None = None) -> list[int]:
        return [a.seq for a in self.alerts if pid is None or a.publisher_id == pid]


@pytest.fixture(autouse=True)
def key_store(tmp_path, monkeypatch):  # noqa: ANN001, ANN201
    """Publisher and subscriber built with no `trust` use the local key store (CURVE, the
    notifier key subscribing): this test's own, not the user's."""
    monkeypatch.setenv("MESH_KEY_DIR", str(tmp_path / "keys"))
    return tmp_path / "keys"


def pub_settings(pid: str = "p1", **kw) -> AlertPublisherSettings:  # noqa: ANN003
    return AlertPublisherSettings(publisher_id=pid, state_interval_s=0.05, **kw)


def run(coro):  # noqa: ANN001, ANN201
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_replay_reply_built_from_frames_decodes_to_the_same_alerts():
    frames = [wire.encode(wire.Alert(version=1, publisher_id="p", seq=i, kind="k",
                                     payload=b"x" * (i * 100))) for i in range(1, 5)]
    reply = wire.decode_replay_reply(wire.encode_replay_reply(frames, 42, 1, 4))
    assert [a.seq for a in reply.alerts] == [1, 2, 3, 4]
    assert len(reply.alerts[3].payload) == 400
    assert (reply.publisher_epoch, reply.first_available_seq, reply.last_seq) == (42, 1, 4)
    assert wire.alert_topic("equipment.fault", wire.CRITICAL) == b"equipment.fault|critical"


def test_settings_are_validated():
    with pytest.raises(ConfigError):
        AlertPublisherSettings(publisher_id="")
    with pytest.raises(ConfigError):
        AlertPublisherSettings(publisher_id="p", history_size=0)
    with pytest.raises(ConfigError):
        AlertSubscriberSettings(start_from="middle")


def test_late_subscriber_gets_history_then_live_alerts_in_order():
    async def main() -> None:
        sink = Sink()
        async with AlertPublisher(pub_settings()) as pub:
            for _ in range(30):
                pub.publish("equipment.fault", "critical", "press-7", b"p", {"line": "2"})
            async with AlertSubscriber(AlertSubscriberSettings(), sink) as sub:
                sub.add_publisher("p1", pub.pub_endpoint, pub.replay_endpoint)
                await until(lambda: len(sink.alerts) == 30, what="replay")
                for _ in range(20):
                    pub.publish("equipment.fault", wire.WARNING, "press-7")
                await until(lambda: len(sink.alerts) == 50, what="live alerts")
                assert sink.seqs() == list(range(1, 51))
                assert sink.alerts[0].labels["line"] == "2"
                assert sub.positions()["p1"] == (pub.epoch, 50)
                assert sub.stats.duplicates == 0 and sub.stats.lost == 0
    run(main())


def test_publish_before_start_raises():
    pub = AlertPublisher(pub_settings())
    with pytest.raises(MeshError):
        pub.publish("k", "info", "s")


def test_publish_rejects_an_unknown_severity_without_using_a_seq():
    async def main() -> None:
        async with AlertPublisher(pub_settings()) as pub:
            for bad in (9, 0, "fatal"):
                with pytest.raises(ValueError):
                    pub.publish("k", bad, "s")
            assert pub.publish("k", wire.CRITICAL, "s") == 1
    run(main())


def test_topic_filter_delivers_matching_alerts_only_and_reports_no_loss():
    async def main() -> None:
        sink = Sink()
        async with AlertPublisher(pub_settings()) as pub:
            settings = AlertSubscriberSettings(topics=("equipment.", "mesh.node.down|critical"))
            async with AlertSubscriber(settings, sink, on_loss=sink.on_loss) as sub:
                sub.add_publisher("p1", pub.pub_endpoint, pub.replay_endpoint)
                kinds = ["equipment.fault", "mesh.task.dead", "mesh.node.down", "equipment.ok"]
                for i in range(40):
                    pub.publish(kinds[i % 4], "critical" if i % 8 < 4 else "info", "x")
                    await asyncio.sleep(0)
                await until(lambda: sub.positions().get("p1", (0, 0))[1] == 40, what="position")
                got = [(a.kind, a.seq) for a in sink.alerts]
                want = [(kinds[i % 4], i + 1) for i in range(40)
                        if kinds[i % 4].startswith("equipment.")
                        or (kinds[i % 4] == "mesh.node.down" and i % 8 < 4)]
                assert got == want
                assert sink.losses == [] and sub.stats.lost == 0
    run(main())


def test_history_bound_reports_what_fell_out_and_delivers_the_rest():
    async def main() -> None:
        sink = Sink()
        async with AlertPublisher(pub_settings(history_size=10)) as pub:
            for _ in range(30):
                pub.publish("k", "error", "s")
            assert pub.first_available_seq == 21
            async with AlertSubscriber(AlertSubscriberSettings(), sink,
                                       on_loss=sink.on_loss) as sub:
                sub.add_publisher("p1", pub.pub_endpoint, pub.replay_endpoint)
                await until(lambda: len(sink.alerts) == 10, what="the 10 kept alerts")
                assert sink.seqs() == list(range(21, 31))
                assert [(a[2], a[3]) for a in sink.losses] == [(1, 20)]
    run(main())


def test_start_from_latest_skips_the_history():
    async def main() -> None:
        sink = Sink()
        async with AlertPublisher(pub_settings()) as pub:
            for _ in range(5):
                pub.publish("k", "error", "s")
            async with AlertSubscriber(AlertSubscriberSettings(start_from="latest"), sink) as sub:
                sub.add_publisher("p1", pub.pub_endpoint, pub.replay_endpoint)
                await until(lambda: sub.stats.replay_requests >= 1 and not
                            sub._links["p1"].wait_latest, what="the start point")
                pub.publish("k", "error", "s")
                await until(lambda: sink.seqs() == [6], what="the new alert only")
    run(main())


def test_new_epoch_is_reported_and_read_from_seq_1(tmp_path):
    async def main() -> None:
        sink = Sink()
        ctx = sockets.new_context()
        pub_ep = f"tcp://127.0.0.1:{_free_port()}"
        rep_ep = f"tcp://127.0.0.1:{_free_port()}"
        sub = AlertSubscriber(AlertSubscriberSettings(), sink, on_loss=sink.on_loss, context=ctx)
        await sub.start()
        first = AlertPublisher(pub_settings(data_dir=str(tmp_path / "a"), pub_endpoint=pub_ep,
                                            replay_endpoint=rep_ep), context=ctx)
        await first.start()
        sub.add_publisher("p1", pub_ep, rep_ep)
        for _ in range(5):
            first.publish("k", "error", "s")
        await until(lambda: len(sink.alerts) == 5, what="first life")
        await first.stop()
        # same id, journal lost: a new epoch, numbering from 1 again
        second = AlertPublisher(pub_settings(data_dir=str(tmp_path / "b"), pub_endpoint=pub_ep,
                                             replay_endpoint=rep_ep), context=ctx)
        await second.start()
        assert second.epoch != first.epoch
        for _ in range(3):
            second.publish("k", "error", "s")
        await until(lambda: len(sink.alerts) == 8, what="second life")
        assert [(a.publisher_epoch, a.seq) for a in sink.alerts] == (
            [(first.epoch, i) for i in range(1, 6)] + [(second.epoch, i) for i in range(1, 4)])
        assert sub.stats.epoch_resets == 1
        assert sub.positions()["p1"] == (second.epoch, 3)
        await second.stop()
        await sub.stop()
        ctx.term()
    run(main())


def test_restart_with_same_data_dir_continues_epoch_sequence_and_history(tmp_path):
    async def main() -> None:
        settings = pub_settings(data_dir=str(tmp_path))
        async with AlertPublisher(settings) as pub:
            for _ in range(7):
                pub.publish("k", "error", "s", b"x")
            epoch, endpoint = pub.epoch, pub.pub_endpoint
        async with AlertPublisher(settings) as pub:
            assert pub.epoch == epoch
            assert pub.pub_endpoint == endpoint  # port 0: the previous port is reused
            assert pub.last_seq == 7 and pub.first_available_seq == 1
            assert pub.publish("k", "error", "s") == 8
            sink = Sink()
            async with AlertSubscriber(AlertSubscriberSettings(), sink) as sub:
                sub.add_publisher("p1", pub.pub_endpoint, pub.replay_endpoint)
                await until(lambda: len(sink.alerts) == 8, what="the history")
    run(main())


def test_compaction_keeps_the_history_and_the_sequence_across_restarts(tmp_path):
    async def main() -> None:
        settings = AlertPublisherSettings(
            publisher_id="p1", data_dir=str(tmp_path), history_size=50, reserve_block=100,
            journal_segment_bytes=8 * 1024, compact_interval_s=0.01, state_interval_s=0.01)
        for life in range(3):
            async with AlertPublisher(settings) as pub:
                assert pub.last_seq == life * 1000
                for i in range(1000):
                    pub.publish("k", "error", "s", b"y" * 40)
                    if i % 50 == 0:
                        await asyncio.sleep(0.002)  # lets the beat compact now and then
                await until(lambda: pub._journal.segment_count <= 4, what="compaction")
        segments = [p for p in tmp_path.iterdir() if p.suffix == ".seg"]
        assert len(segments) <= 6
        async with AlertPublisher(settings) as pub:
            assert pub.last_seq == 3000 and pub.first_available_seq == 2951
            sink = Sink()
            async with AlertSubscriber(AlertSubscriberSettings(), sink,
                                       on_loss=sink.on_loss) as sub:
                sub.add_publisher("p1", pub.pub_endpoint, pub.replay_endpoint)
                await until(lambda: len(sink.alerts) == 50, what="the kept 50")
                assert sink.seqs() == list(range(2951, 3001))
    run(main())


def test_restart_takes_a_new_port_when_the_old_one_is_taken(tmp_path):
    async def main() -> None:
        settings = pub_settings(data_dir=str(tmp_path))
        async with AlertPublisher(settings) as pub:
            pub.publish("k", "error", "s")
            old = pub.pub_endpoint
        squatter = sockets.new_context()
        sock, _ = sockets.alert_pub(squatter, old)  # someone else binds it meanwhile
        try:
            async with AlertPublisher(settings) as pub:
                assert pub.pub_endpoint != old and pub.last_seq == 1
        finally:
            sock.close(linger=0)
            squatter.term()
    run(main())


def test_failed_start_leaves_nothing_open(tmp_path):
    async def main() -> None:
        import threading
        threads = threading.active_count()
        pub = AlertPublisher(pub_settings(data_dir=str(tmp_path),
                                          replay_endpoint="tcp://256.0.0.1:1"))
        with pytest.raises(zmq.ZMQError):
            await pub.start()
        assert threading.active_count() == threads
        with pytest.raises(MeshError):
            pub.publish("k", "error", "s")
        await pub.stop()
    run(main())


def test_subscriber_resumes_from_its_state_file(tmp_path):
    async def main() -> None:
        state = str(tmp_path / "positions.json")
        async with AlertPublisher(pub_settings()) as pub:
            for _ in range(10):
                pub.publish("k", "error", "s")
            sink = Sink()
            async with AlertSubscriber(AlertSubscriberSettings(state_path=state), sink) as sub:
                sub.add_publisher("p1", pub.pub_endpoint, pub.replay_endpoint)
                await until(lambda: len(sink.alerts) == 10, what="first run")
            for _ in range(5):
                pub.publish("k", "error", "s")
            sink2 = Sink()
            async with AlertSubscriber(AlertSubscriberSettings(state_path=state), sink2) as sub:
                sub.add_publisher("p1", pub.pub_endpoint, pub.replay_endpoint)
                await until(lambda: len(sink2.alerts) == 5, what="second run")
                assert sink2.seqs() == [11, 12, 13, 14, 15]
    run(main())


def test_unreadable_state_file_means_start_over_not_crash(tmp_path):
    async def main() -> None:
        state = tmp_path / "positions.json"
        state.write_text("{not json")
        async with AlertPublisher(pub_settings()) as pub:
            pub.publish("k", "error", "s")
            sink = Sink()
            async with AlertSubscriber(AlertSubscriberSettings(state_path=str(state)), sink) as s:
                s.add_publisher("p1", pub.pub_endpoint, pub.replay_endpoint)
                await until(lambda: sink.seqs() == [1], what="the alert")
    run(main())


def test_malformed_frames_on_sub_and_in_replies_are_counted_and_dropped():
    """A fake publisher sends garbage on PUB and answers replays with garbage, then good data."""
    async def main() -> None:
        ctx = sockets.new_context()
        trust = Trust.default()  # as a Helper's publisher: helper key, notifiers only
        link = trust.server(ctx, Role.HELPER, Domain.ALERTS)
        pub, pub_ep = sockets.alert_pub(ctx, "tcp://127.0.0.1:0", link=link)
        router, rep_ep = sockets.replay_router(ctx, "tcp://127.0.0.1:0", link=link)
        sink = Sink()
        sub = AlertSubscriber(AlertSubscriberSettings(replay_timeout_s=0.2), sink, context=ctx)
        await sub.start()
        sub.add_publisher("p1", pub_ep, rep_ep)

        def alert(seq: int, pid: str = "p1") -> bytes:
            return wire.encode(wire.Alert(version=1, publisher_id=pid, publisher_epoch=9,
                                          seq=seq, kind="k", severity=wire.ERROR))

        # first replay request: answer with garbage, then (after its timeout) properly
        ident, _ = await router.recv_multipart()
        await router.send_multipart([ident, b"\xff\x00garbage"])
        ident, req = await router.recv_multipart()
        assert wire.decode_replay_request(req).from_seq == 1
        await router.send_multipart([ident, wire.encode_replay_reply([alert(1)], 9, 1, 1)])
        await until(lambda: sink.seqs() == [1], what="alert 1")
        await pub.send_multipart([b"k|error"])                        # one frame
        await pub.send_multipart([b"k|error", b"\xff\xff\xff"])      # not protobuf
        await pub.send_multipart([b"k|error", alert(2, pid="p2")])   # another publisher's
        await pub.send_multipart([wire.ALERT_STATE_TOPIC, b"\xff\xff"])
        await pub.send_multipart([b"k|error", wire.encode(wire.Alert(version=7, seq=2))])
        await pub.send_multipart([b"k|error", alert(2)])
        await until(lambda: sink.seqs() == [1, 2], what="alert 2")
        assert sub.stats.malformed == 6
        # a severity this build does not know (a newer publisher) is delivered, not fatal
        newer = wire.Alert(version=1, publisher_id="p1", publisher_epoch=9, seq=3, kind="k",
                           severity=9)
        await pub.send_multipart([b"k|severity9", wire.encode(newer)])
        await until(lambda: sink.seqs() == [1, 2, 3], what="alert 3")
        log_handler(sink.alerts[-1])
        await sub.stop()
        pub.close(linger=0)
        router.close(linger=0)
        trust.release(ctx)
        ctx.term()
    run(main())


def test_malformed_replay_requests_are_counted_and_the_endpoint_keeps_serving():
    async def main() -> None:
        async with AlertPublisher(pub_settings()) as pub:
            pub.publish("k", "error", "s")
            ctx = sockets.new_context()
            dealer = sockets.replay_dealer(  # a notifier's key: admitted, then talks garbage
                ctx, pub.replay_endpoint, link=pub.trust.client(Role.NOTIFIER, Role.HELPER))
            await dealer.send(b"\xff\xff")
            await dealer.send_multipart([b"a", b"b"])
            await dealer.send(wire.encode(wire.ReplayRequest(version=1, publisher_id="other")))
            await dealer.send(wire.encode(wire.ReplayRequest(version=1, publisher_id="p1",
                                                             from_seq=1)))
            assert await dealer.poll(5000)
            reply = wire.decode_replay_reply(await dealer.recv())
            assert [a.seq for a in reply.alerts] == [1]
            assert pub.stats.malformed_requests == 3
            dealer.close(linger=0)
            ctx.term()
    run(main())


def test_replay_replies_are_chunked_and_the_subscriber_asks_for_the_rest():
    async def main() -> None:
        sink = Sink()
        async with AlertPublisher(pub_settings(max_replay_alerts=7)) as pub:
            for _ in range(50):
                pub.publish("k", "error", "s")
            async with AlertSubscriber(AlertSubscriberSettings(), sink) as sub:
                sub.add_publisher("p1", pub.pub_endpoint, pub.replay_endpoint)
                await until(lambda: len(sink.alerts) == 50, what="50 alerts")
                assert sink.seqs() == list(range(1, 51))
                assert sub.stats.replay_requests >= 8
    run(main())


def test_buffer_overflow_loses_nothing():
    """Live alerts beyond max_buffered (waiting for a gap) are dropped and replayed later."""
    async def main() -> None:
        sink = Sink()
        async with AlertPublisher(pub_settings(max_replay_alerts=20)) as pub:
            for _ in range(100):
                pub.publish("k", "error", "s")
            settings = AlertSubscriberSettings(max_buffered=5)
            async with AlertSubscriber(settings, sink, on_loss=sink.on_loss) as sub:
                sub.add_publisher("p1", pub.pub_endpoint, pub.replay_endpoint)
                for i in range(300):
                    pub.publish("k", "error", "s")
                    if i % 50 == 0:
                        await asyncio.sleep(0.001)
                await until(lambda: len(sink.alerts) == 400, what="400 alerts")
                assert sink.seqs() == list(range(1, 401))
                assert sink.losses == []
    run(main())


def test_tail_lost_on_pub_is_found_by_the_state_beat():
    """Alerts sent before the subscriber's SUB connected are lost on PUB; the publisher's state
    beat tells the subscriber there is more, and it replays them without a further alert."""
    async def main() -> None:
        sink = Sink()
        async with AlertPublisher(pub_settings()) as pub:
            # subscribe, wait for the replay of nothing, then publish: some may race the
            # subscription; every one must arrive anyway
            async with AlertSubscriber(AlertSubscriberSettings(), sink) as sub:
                sub.add_publisher("p1", pub.pub_endpoint, pub.replay_endpoint)
                for _ in range(3):
                    pub.publish("k", "error", "s")
                await until(lambda: len(sink.alerts) == 3, what="3 alerts")
                assert sink.seqs() == [1, 2, 3]
    run(main())


def test_every_alert_wakes_the_subscriber_without_waiting_for_a_timer():
    """The link sleeps on its sockets' ZMQ_FDs; a missed edge would only be caught by its 1 s
    fallback timer (and the state beat, set to 30 s here). Each alert must arrive well before."""
    async def main() -> None:
        sink = Sink()
        settings = AlertPublisherSettings(publisher_id="p1", state_interval_s=30.0)
        async with AlertPublisher(settings) as pub:
            async with AlertSubscriber(AlertSubscriberSettings(), sink) as sub:
                sub.add_publisher("p1", pub.pub_endpoint, pub.replay_endpoint)
                while sub.stats.live == 0:  # until the subscription has reached the PUB
                    pub.publish("k", "error", "s")
                    await asyncio.sleep(0.02)
                await until(lambda: len(sink.alerts) == pub.last_seq, what="the warm-up alerts")
                for i in range(pub.last_seq + 1, pub.last_seq + 41):
                    pub.publish("k", "error", "s")
                    await until(lambda i=i: len(sink.alerts) == i, timeout_s=0.9,
                                what=f"alert {i} without a timer")
    run(main())


def test_failing_callback_is_retried_and_order_kept():
    async def main() -> None:
        got: list[int] = []
        calls = {"n": 0}

        async def flaky(alert: wire.Alert) -> None:
            calls["n"] += 1
            if alert.seq == 2 and calls["n"] < 4:
                raise RuntimeError("webhook down")
            got.append(alert.seq)

        async with AlertPublisher(pub_settings()) as pub:
            for _ in range(3):
                pub.publish("k", "error", "s")
            async with AlertSubscriber(AlertSubscriberSettings(retry_cap_s=0.05), flaky) as sub:
                sub.add_publisher("p1", pub.pub_endpoint, pub.replay_endpoint)
                await until(lambda: got == [1, 2, 3], what="retried delivery")
                assert sub.stats.callback_errors == 2
    run(main())


def test_handler_set_retries_only_the_failing_handler():
    async def main() -> None:
        calls: dict[str, int] = {"ok": 0, "flaky": 0, "sync": 0}

        async def ok(alert: wire.Alert) -> None:
            calls["ok"] += 1

        async def flaky(alert: wire.Alert) -> None:
            calls["flaky"] += 1
            if calls["flaky"] < 3:
                raise ConnectionError("push service down")

        def sync(alert: wire.Alert) -> None:
            calls["sync"] += 1

        hs = HandlerSet([("ok", ok), ("flaky", flaky), ("sync", sync)], retry_base_s=0.001,
                        retry_cap_s=0.01)
        await hs(wire.Alert(publisher_id="p", seq=1))
        assert calls == {"ok": 1, "flaky": 3, "sync": 1}
        assert hs.failures == 2 and hs.handled == 1
    run(main())


def test_stop_is_idempotent_and_closes_everything(tmp_path):
    async def main() -> None:
        before = asyncio.all_tasks()
        pub = AlertPublisher(pub_settings(data_dir=str(tmp_path)))
        await pub.start()
        pub.publish("k", "error", "s")
        sub = AlertSubscriber(AlertSubscriberSettings(), Sink())
        await sub.start()
        sub.add_publisher("p1", pub.pub_endpoint, pub.replay_endpoint)
        sub.remove_publisher("p1")
        sub.add_publisher("p1", pub.pub_endpoint, pub.replay_endpoint)
        await sub.stop()
        await sub.stop()
        await pub.stop()
        await pub.stop()
        assert asyncio.all_tasks() == before
        with pytest.raises(MeshError):
            pub.publish("k", "error", "s")
    run(main())


def test_notifier_follows_the_healthiest_registration_of_each_publisher():
    from discovery import Health, Instance
    from nodes.notifier import choose_publishers

    def inst(iid: str, pid: str, port: int, health: Health) -> Instance:
        return Instance(service="mesh-alerts", instance_id=iid, address="127.0.0.1", port=port,
                        meta={"publisher_id": pid, "pub_endpoint": f"tcp://127.0.0.1:{port}",
                              "replay_endpoint": f"tcp://127.0.0.1:{port + 1}",
                              "curve_key": f"key-{port}"}, health=health)

    found = [inst("h1-old", "helper-1", 10, Health.CRITICAL),
             inst("h1-new", "helper-1", 20, Health.PASSING),
             inst("m1", "monitor-1", 30, Health.CRITICAL),   # followed though critical
             inst("s1", "static-1", 40, Health.PASSING),
             Instance(service="mesh-alerts", instance_id="x", address="h", port=1, meta={})]
    chosen = choose_publishers(found, {"static-1"})
    assert chosen == {"helper-1": ("tcp://127.0.0.1:20", "tcp://127.0.0.1:21", "key-20", False),
                      "monitor-1": ("tcp://127.0.0.1:30", "tcp://127.0.0.1:31", "key-30", False)}
    assert choose_publishers(list(reversed(found)), {"static-1"}) == chosen


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_zmq_is_real():  # the sockets above are real loopback sockets, not mocks
    assert zmq.zmq_version_info() >= (4, 3)


def test_a_monitor_key_publishes_alerts_and_nothing_else():
    from mesh.trust import DOMAIN_ROLES, Operation, allowed
    assert allowed(Role.MONITOR, Operation.ALERT_PUBLISH)
    assert not allowed(Role.MONITOR, Operation.DELIVERY)  # an AI node runs nothing it sends
    assert Role.MONITOR not in DOMAIN_ROLES[Domain.TASKS]
    assert Role.MONITOR not in DOMAIN_ROLES[Domain.ALERTS]  # nor reads the alert stream


def test_a_publisher_announcing_a_key_not_allowed_here_is_not_followed():
    async def main() -> None:
        sink = Sink()
        async with AlertPublisher(pub_settings(), role=Role.MONITOR) as pub:
            pub.publish("k", "error", "s")
            async with AlertSubscriber(AlertSubscriberSettings(), sink) as sub:
                stranger = zmq.curve_keypair()[0].decode()
                assert not sub.add_publisher("p1", pub.pub_endpoint, pub.replay_endpoint,
                                             stranger)
                assert sub.stats.untrusted_publishers == 1 and sub.publishers == []
                # its real key, announced, is allowed as monitor: followed and read
                assert sub.add_publisher("p1", pub.pub_endpoint, pub.replay_endpoint,
                                         pub.public_key)
                await until(lambda: sink.seqs() == [1], what="the monitor's alert")
    run(main())
