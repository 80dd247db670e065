"""The Helper's node table under forged heartbeats: node ids bound to keys, bounded tables,
acks only from a key the task was given to, results too large for the journal (no sockets)."""

from __future__ import annotations

import random

from mesh import make_task, records, wire
from mesh.dispatcher import Dispatcher
from mesh.metrics import HelperMetrics
from mesh.settings import HelperSettings

HELPER_INCARNATION = 0x1234


def _dispatcher(append=None, **settings) -> tuple[Dispatcher, list]:  # noqa: ANN001, ANN003
    connected: list = []

    def connect(endpoint: str, key: str) -> object:
        connected.append((endpoint, key))
        return object()

    d = Dispatcher(
        HelperSettings(helper_id="h", data_dir="/nonexistent", reconcile_window_s=0.0,
                       **settings),
        helper_incarnation=HELPER_INCARNATION, reply_to="tcp://127.0.0.1:1",
        journal_append=append or (lambda *a: None), journal_release=lambda key: None,
        connect=connect, send=lambda sock, frame: True, close=lambda sock: None,
        metrics=HelperMetrics(), rng=random.Random(1), record_limit_bytes=1000)
    return d, connected


def _beat(d: Dispatcher, key: str, *, node_id: str = "n1", incarnation: int = 7,
          credit: int = 4, beat: int = 1, acks: tuple = (), endpoint: str = "tcp://127.0.0.1:2",
          held: tuple = ()) -> None:
    hb = wire.Heartbeat(node_id=node_id, incarnation=incarnation, task_endpoint=endpoint,
                        concurrency=4, credit=credit, kinds=["k"], beat=beat,
                        helper_incarnation=HELPER_INCARNATION, held_task_ids=list(held))
    d.on_ack_batch(wire.decode_ack_batch(wire.encode_ack_batch(hb, list(acks))), key)


def _refused(d: Dispatcher, reason: str) -> float:
    return d.metrics.acks_refused.labels(reason)._value.get()


def test_a_node_id_is_bound_to_its_first_key_while_the_node_lives() -> None:
    d, connected = _dispatcher()
    _beat(d, "KEY-A")
    assert connected == [("tcp://127.0.0.1:2", "KEY-A")]  # the PUSH pins the heartbeat's key
    _beat(d, "KEY-B", credit=10_000, beat=2, endpoint="tcp://127.0.0.1:9")
    assert d.nodes["n1"].key == "KEY-A" and d.nodes["n1"].announced == 4
    assert _refused(d, "node_id_bound") == 1
    _beat(d, "KEY-B", incarnation=8, beat=1)  # a "restart" under another key: refused too
    assert d.nodes["n1"].incarnation == 7 and _refused(d, "node_id_bound") == 2
    # a restart with the same key replaces the old incarnation
    _beat(d, "KEY-A", incarnation=8, beat=1)
    assert d.nodes["n1"].incarnation == 8
    # once the node is declared dead the binding ends
    d.node_dead(d.nodes["n1"], "missed_heartbeats")
    _beat(d, "KEY-B", incarnation=9)
    assert d.nodes["n1"].key == "KEY-B"


def test_one_key_holds_at_most_max_node_ids_per_key() -> None:
    d, _ = _dispatcher(max_node_ids_per_key=2)
    for i in range(50):
        _beat(d, "KEY-B", node_id=f"forged-{i}")
    assert len(d.nodes) == 2 and _refused(d, "ids_per_key") == 48
    _beat(d, "KEY-A", node_id="genuine")
    assert "genuine" in d.nodes


def test_the_node_table_is_bounded_by_max_nodes() -> None:
    d, connected = _dispatcher(max_nodes=3)
    for i in range(10):
        _beat(d, f"KEY-{i}", node_id=f"n{i}")
    assert len(d.nodes) == 3 and len(connected) == 3 and _refused(d, "max_nodes") == 7
    _beat(d, "KEY-0", node_id="n0", incarnation=8)  # a live node restarting still gets in
    assert d.nodes["n0"].incarnation == 8


def test_an_ack_counts_only_from_a_key_the_task_was_given_to() -> None:
    d, _ = _dispatcher()
    _beat(d, "KEY-A", node_id="a")
    entry = d.admit(make_task("k", b"x"))
    d.durable(entry)
    assert d.dispatch_pass() == 1 and entry.node_id == "a"
    _beat(d, "KEY-B", node_id="b")
    forged = (wire.Ack(task_id=entry.task_id, delivery=1, kind=wire.DONE, result=b"forged"),
              wire.Ack(task_id=entry.task_id, delivery=1, kind=wire.FAILED, error="x",
                       error_class=wire.FATAL))
    _beat(d, "KEY-B", node_id="b", beat=2, acks=forged)
    assert entry.state == wire.DISPATCHED and entry.result == b""
    assert d.metrics.acks_not_holder._value.get() == 2
    _beat(d, "KEY-A", node_id="a", beat=2,
          acks=(wire.Ack(task_id=entry.task_id, delivery=1, kind=wire.DONE, result=b"real"),))
    assert entry.state == wire.SUCCEEDED and entry.result == b"real"


def test_a_result_too_large_for_a_journal_record_makes_the_task_dead_not_an_exception() -> None:
    appended: list = []

    def append(record_type: int, key: bytes, payload: bytes) -> None:
        if len(payload) > 1000:
            raise ValueError(f"journal record of {len(payload)} bytes exceeds "
                             "max_record_bytes=1000")
        appended.append((record_type, key, payload))

    d, _ = _dispatcher(append)
    _beat(d, "KEY-A", node_id="a")
    entry = d.admit(make_task("k", b"x"))
    d.durable(entry)
    d.dispatch_pass()
    _beat(d, "KEY-A", node_id="a", beat=2, acks=(
        wire.Ack(task_id=entry.task_id, delivery=1, kind=wire.DONE, result=b"r" * 5000),))
    assert entry.state == wire.DEAD and entry.dead_reason == wire.PAYLOAD_REJECTED
    assert "5000 bytes" in entry.error and "1000 bytes" in entry.error
    assert entry.task is not None  # kept for a replay
    assert appended[-1][0] == records.TRANSITION


def test_node_text_in_alerts_is_inert() -> None:
    events: list = []
    d, _ = _dispatcher()
    d._on_event = lambda kind, info: events.append((kind, info))
    _beat(d, "KEY-A", node_id="evil\n\x1b[31mnode\u202e")
    kind, info = events[0]
    assert kind == "node_up" and "\n" not in info["node_id"] and "\x1b" not in info["node_id"]
    assert "\u202e" not in info["node_id"]
