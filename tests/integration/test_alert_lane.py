"""The fault alert lane with real processes on loopback: publisher, notifier, load.

Every process runs in the secure default: CURVE with the test's own local key store
(MESH_KEY_DIR), publishers with the helper key, notifiers with the notifier key.
Every wait is on a condition with a deadline; every process is killed and reaped at teardown.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import zmq

from mesh import sockets, wire
from mesh.trust import Role, Trust
from nodes.launch import kill_tree
from tests.support.waiting import wait_until

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.argv = argv
        self.popen = subprocess.Popen(
            [sys.executable, *argv], cwd=REPO, env=env, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1,
            start_new_session=True)  # its own process group: kill() takes its children too
        self.lines: queue.Queue[str] = queue.Queue()
        self.stderr: list[str] = []
        threading.Thread(target=self._pump, args=(self.popen.stdout, self.lines.put),
                         daemon=True).start()
        threading.Thread(target=self._pump, args=(self.popen.stderr, self.stderr.append),
                         daemon=True).start()

    @staticmethod
    def _pump(stream, put) -> None:  # noqa: ANN001
        with stream:
            for line in stream:
                put(line.rstrip("\n"))

    def expect(self, prefix: str, timeout_s: float = 15.0) -> str:
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or self.popen.poll() is not None and self.lines.empty():
                raise AssertionError(
                    f"{self.argv[:3]}: no line starting {prefix!r} (exit {self.popen.poll()}); "
                    f"stderr:\n" + "\n".join(self.stderr[-30:]))
            try:
                line = self.lines.get(timeout=min(left, 0.1))
            except queue.Empty:
                continue
            if line.startswith(prefix):
                return line

    def ready(self) -> dict:
        return json.loads(self.expect("READY ")[len("READY "):])

    def send(self, line: str) -> None:
        self.popen.stdin.write(line + "\n")
        self.popen.stdin.flush()

    def publish(self, count: int, *rest: str) -> int:
        self.send(" ".join(["publish", str(count), *rest]))
        return int(self.expect("PUBLISHED ", 30.0).split()[1])

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 10.0) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
        try:
            return self.popen.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            return self.popen.wait(5)

    def kill(self) -> None:
        kill_tree(self.popen.pid)  # `mesh demo` puts its nodes in sessions of their own
        self.popen.wait(5)
        try:
            self.popen.stdin.close()
        except OSError:
            pass
        # stdout/stderr are closed by their pump threads at EOF (closing them here could block
        # on a read in progress)


class Lane:
    """Starts the processes of one test; `close()` kills and reaps all of them."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[Proc] = []
        self.cleanup: list[Path] = []  # directories made by the processes outside tmp
        self.out = tmp / "alerts.out"
        self.keys = tmp / "keys"
        self.env = {**os.environ, "PYTHONPATH": str(REPO), "MESH_TEST_ALERT_OUT": str(self.out),
                    "MESH_LOG_LEVEL": "WARNING", "MESH_KEY_DIR": str(self.keys)}
        self._trust: Trust | None = None

    @property
    def trust(self) -> Trust:
        """The test's view of the same key store the processes use."""
        if self._trust is None:
            self._trust = Trust.local(self.keys)
        return self._trust

    def replay(self, endpoint: str, pid: str, from_seq: int):  # noqa: ANN201
        """A replay request with the notifier key, as a notifier asks."""
        reply = _replay(endpoint, pid, from_seq, self.trust.client(Role.NOTIFIER, Role.HELPER))
        assert reply is not None, f"no replay reply from {endpoint}"
        return reply

    def start(self, *argv: str) -> Proc:
        proc = Proc(list(argv), self.env)
        self.procs.append(proc)
        return proc

    def publisher(self, pid: str = "pub-1", data_dir: Path | None = None,
                  pub_port: int | None = None, replay_port: int | None = None) -> tuple[Proc, dict]:
        data_dir = data_dir or self.tmp / pid
        argv = ["-m", "tests.integration.alert_procs", "publisher", "--publisher-id", pid,
                "--data-dir", str(data_dir)]
        if pub_port:
            argv += ["--pub", f"tcp://127.0.0.1:{pub_port}"]
        if replay_port:
            argv += ["--replay", f"tcp://127.0.0.1:{replay_port}"]
        proc = self.start(*argv)
        return proc, proc.ready()

    def notifier(self, publishers: list[tuple[str, dict]], *extra: str) -> Proc:
        argv = ["-m", "nodes.notifier", "--no-discovery", "--no-log",
                "--handler", "tests.integration.alert_procs:record",
                "--state-file", str(self.tmp / "notifier-positions.json"), *extra]
        for pid, info in publishers:
            argv += ["--publisher", f"{pid}={info['pub']},{info['replay']}"]
        proc = self.start(*argv)
        proc.ready()
        return proc

    def received(self) -> list[tuple[str, int, int]]:
        if not self.out.exists():
            return []
        rows = []
        for line in self.out.read_text().splitlines():
            parts = line.split()
            if len(parts) == 3:
                rows.append((parts[0], int(parts[1]), int(parts[2])))
        return rows

    def seqs(self, pid: str = "pub-1") -> list[int]:
        return [seq for p, seq, _ in self.received() if p == pid]

    def close(self) -> None:
        for proc in self.procs:
            proc.kill()
        for path in self.cleanup:
            shutil.rmtree(path, ignore_errors=True)
        if self._trust is not None:
            self._trust.close()


@pytest.fixture
def lane(tmp_path):
    lane = Lane(tmp_path)
    yield lane
    lane.close()


def test_late_subscriber_receives_earlier_alerts_via_replay(lane):
    pub, info = lane.publisher()
    assert pub.publish(50) == 50
    lane.notifier([("pub-1", info)])
    wait_until(lambda: len(lane.seqs()) >= 50, 15, what="50 replayed alerts")
    assert lane.seqs() == list(range(1, 51))
    # and live ones after the replay, in order
    assert pub.publish(10) == 60
    wait_until(lambda: len(lane.seqs()) >= 60, 15, what="60 alerts")
    assert lane.seqs() == list(range(1, 61))


def test_notifier_started_before_its_publisher_gets_everything(lane):
    pub_port, replay_port = free_port(), free_port()
    endpoints = {"pub": f"tcp://127.0.0.1:{pub_port}", "replay": f"tcp://127.0.0.1:{replay_port}"}
    lane.notifier([("pub-1", endpoints)])
    pub, _ = lane.publisher(pub_port=pub_port, replay_port=replay_port)
    assert pub.publish(20) == 20
    wait_until(lambda: len(lane.seqs()) >= 20, 15, what="20 alerts")
    assert lane.seqs() == list(range(1, 21))


def test_burst_of_10000_alerts_arrives_complete_and_in_order(lane):
    pub, info = lane.publisher()
    notifier = lane.notifier([("pub-1", info)])
    assert pub.publish(1) == 1
    wait_until(lambda: lane.seqs() == [1], 15, what="the first alert")
    assert pub.publish(10_000) == 10_001
    wait_until(lambda: len(lane.seqs()) >= 10_001, 30, what="10,001 alerts")
    assert lane.seqs() == list(range(1, 10_002))
    assert notifier.stop() == 0
    assert not [line for line in notifier.stderr if "lost" in line]


def test_subscriber_killed_and_restarted_misses_nothing(lane):
    pub, info = lane.publisher()
    notifier = lane.notifier([("pub-1", info)])
    assert pub.publish(300) == 300
    wait_until(lambda: len(lane.seqs()) >= 300, 15, what="300 alerts")
    # kill it in the middle of a paced stream, keep publishing while it is dead
    pub.send("publish 400 equipment.fault critical 1")
    wait_until(lambda: len(lane.seqs()) >= 350, 15, what="alerts of the paced stream")
    notifier.stop(signal.SIGKILL)
    last = int(pub.expect("PUBLISHED ", 30).split()[1])
    assert last == 700
    assert pub.publish(100) == 800
    lane.notifier([("pub-1", info)])
    wait_until(lambda: set(lane.seqs()) >= set(range(1, 801)), 20, what="every alert after the restart")
    seqs = lane.seqs()
    assert set(seqs) == set(range(1, 801))
    # in order within each run; the restart may repeat what was delivered right before the kill
    restart_at = next(i for i in range(1, len(seqs)) if seqs[i] <= seqs[i - 1])
    assert seqs[:restart_at] == sorted(seqs[:restart_at])
    assert seqs[restart_at:] == list(range(seqs[restart_at], 801))
    assert restart_at - seqs.index(seqs[restart_at]) < 100  # few repeats (positions flushed often)


def test_publisher_restart_continues_sequence_without_false_gap(lane):
    data_dir = lane.tmp / "pub-1"
    pub_port, replay_port = free_port(), free_port()
    pub, info = lane.publisher(data_dir=data_dir, pub_port=pub_port, replay_port=replay_port)
    notifier = lane.notifier([("pub-1", info)])
    assert pub.publish(100) == 100
    wait_until(lambda: len(lane.seqs()) >= 100, 15, what="100 alerts")
    assert pub.stop() == 0
    pub2, info2 = lane.publisher(data_dir=data_dir, pub_port=pub_port, replay_port=replay_port)
    assert info2["epoch"] == info["epoch"] and info2["next_seq"] == 101
    assert pub2.publish(100) == 200
    wait_until(lambda: len(lane.seqs()) >= 200, 15, what="200 alerts")
    assert lane.seqs() == list(range(1, 201))
    assert notifier.stop() == 0
    assert not [line for line in notifier.stderr if "lost" in line or "new epoch" in line]


def test_publisher_crash_keeps_history_and_never_reuses_a_seq(lane):
    data_dir = lane.tmp / "pub-1"
    pub, info = lane.publisher(data_dir=data_dir)
    assert pub.publish(100) == 100
    pub.send("flush")
    assert pub.expect("FLUSHED ") == "FLUSHED 100"
    pub.stop(signal.SIGKILL)
    pub2, info2 = lane.publisher(data_dir=data_dir)
    assert info2["epoch"] != info["epoch"]  # a new run of the same history
    assert info2["next_seq"] > 100  # above the reservation: no number is ever given twice
    reply = lane.replay(info2["replay"], "pub-1", 1)
    assert [a.seq for a in reply.alerts] == list(range(1, 101))
    first_new = pub2.publish(5)
    notifier = lane.notifier([("pub-1", info2)])
    wait_until(lambda: len(lane.seqs()) >= 105, 15, what="105 alerts")
    assert lane.seqs() == list(range(1, 101)) + list(range(first_new - 4, first_new + 1))
    assert notifier.stop() == 0
    # the reserved seqs between the two runs were never used: no loss is reported
    assert not [line for line in notifier.stderr if "lost" in line]


def test_malformed_frames_on_the_replay_endpoint_are_dropped(lane):
    pub, info = lane.publisher()
    assert pub.publish(3) == 3
    ctx = zmq.Context()
    try:
        sock = ctx.socket(zmq.DEALER)  # a notifier's key: admitted, then talks garbage
        sock.setsockopt(zmq.LINGER, 0)
        sockets.connect(sock, info["replay"], lane.trust.client(Role.NOTIFIER, Role.HELPER))
        sock.send(b"\xff\xff garbage")
        sock.send_multipart([b"two", b"frames"])
        sock.send(wire.encode(wire.ReplayRequest(version=99, publisher_id="pub-1", from_seq=1)))
        sock.send(b"x" * (100 * 1024))  # above the endpoint's MAXMSGSIZE: ZeroMQ drops the peer
        sock.close()
        reply = lane.replay(info["replay"], "pub-1", 1)
        assert [a.seq for a in reply.alerts] == [1, 2, 3]
    finally:
        ctx.term()
    assert pub.publish(1) == 4


#: loads to run beside the alert lane: argv (python -m ...) and the stdout line that says it runs.
#: "tasklane" is the real task lane at full load: `mesh demo` (a Helper, 3 AI nodes, 8 submitters).
LOADS = {
    "push_pull": (["-m", "tests.integration.alert_procs", "load", "--seconds", "30"], "READY "),
    "tasklane": (["-m", "nodes.cli", "demo", "--tasks", "1000000"], "mesh demo: work dir"),
}


@pytest.mark.parametrize("load", sorted(LOADS))
def test_alerts_flow_while_another_process_saturates_the_machine(lane, load):
    argv, ready = LOADS[load]
    loader = lane.start(*argv)
    line = loader.expect(ready, 30)
    if load == "tasklane":
        lane.cleanup.append(Path(line.split("work dir ", 1)[1].split(" (seed")[0]))
        loader.expect("started Helper", 30)
    pub, info = lane.publisher()
    lane.notifier([("pub-1", info)])
    assert pub.publish(200, "equipment.fault", "critical", "2") == 200
    wait_until(lambda: len(lane.seqs()) >= 200, 20, what="200 alerts under load")
    assert lane.seqs() == list(range(1, 201))
    assert loader.popen.poll() is None, "the load ended before the alerts were through"
    latencies_ms = sorted(lat / 1000 for _, _, lat in lane.received())
    assert latencies_ms[-1] < 15_000  # the requirement; bench/alert_latency.py measures ms


def _replay(endpoint: str, pid: str, from_seq: int, link=None, timeout_ms: int = 5000):  # noqa: ANN001, ANN202
    """One replay request over a DEALER with `link` (a ClientLink: whose key asks); None when
    no reply came within `timeout_ms`."""
    ctx = zmq.Context()
    try:
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sockets.connect(sock, endpoint, link)
        sock.send(wire.encode(wire.ReplayRequest(
            version=wire.PROTOCOL_VERSION, publisher_id=pid, from_seq=from_seq)))
        if not sock.poll(timeout_ms):
            sock.close()
            return None
        reply = wire.decode_replay_reply(sock.recv())
        sock.close()
        return reply
    finally:
        ctx.term()


def test_one_shot_cli_alert_reaches_a_notifier_found_through_discovery(lane):
    registry = f"embedded://{lane.tmp / 'registry'}"
    notifier = lane.start("-m", "nodes.cli", "notifier", "--discovery", registry,
                          "--handler", "tests.integration.alert_procs:record",
                          "--state-file", str(lane.tmp / "positions.json"), "--log-level", "INFO")
    notifier.ready()
    cli = lane.start("-m", "nodes.cli", "alert", "publish", "--kind", "equipment.fault",
                     "--severity", "critical", "--source", "press-7", "--payload", "jam",
                     "--label", "line=2", "--publisher-id", "cli-1",
                     "--data-dir", str(lane.tmp / "cli-1"), "--discovery", registry,
                     "--wait-s", "20")
    published = json.loads(cli.expect('{"published"'))["published"]
    assert published["seq"] == 1
    assert cli.popen.wait(25) == 0, "\n".join(cli.stderr[-20:])
    wait_until(lambda: lane.seqs("cli-1") == [1], 10, what="the CLI alert at the notifier")
    wait_until(lambda: any("ALERT CRITICAL equipment.fault source=press-7" in line
                           for line in notifier.stderr), 5, what="the log handler's line")


def test_one_shot_cli_without_a_notifier_says_so_and_keeps_the_alert(lane):
    argv = ["-m", "nodes.cli", "alert", "publish", "--kind", "k", "--source", "s",
            "--publisher-id", "cli-2", "--data-dir", str(lane.tmp / "cli-2"),
            "--no-discovery", "--wait-s", "0.3"]
    first = lane.start(*argv)
    assert first.popen.wait(15) == 3
    second = lane.start(*argv)
    published = json.loads(second.expect('{"published"'))["published"]
    assert published["seq"] == 2  # the sequence went on; seq 1 is still in the journal
    assert second.popen.wait(15) == 3


# ---- trust: who may read the alert stream, and what reaches a log --------------------------

_AUTH_FAILED = zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL \
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL


def _refused(sock: zmq.Socket, monitor: zmq.Socket) -> bool:
    """True once the socket's monitor reported a failed handshake (ZAP said no)."""
    from zmq.utils.monitor import recv_monitor_message
    while monitor.poll(0):
        if recv_monitor_message(monitor)["event"] & _AUTH_FAILED:
            return True
    return False


def test_a_client_key_cannot_read_alerts_and_a_notifier_key_receives_them(lane):
    pub, info = lane.publisher()
    assert info["curve_key"] == lane.trust.keypair(Role.HELPER).public_z85  # announced
    assert pub.publish(5) == 5
    lane.notifier([("pub-1", info)])  # the notifier key: history and live alerts
    wait_until(lambda: len(lane.seqs()) >= 5, 15, what="5 alerts at the notifier")
    client = lane.trust.client(Role.CLIENT, Role.HELPER)  # a valid key, of the wrong role
    ctx = zmq.Context()
    try:
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.subscribe(b"")
        sub_monitor = sub.get_monitor_socket(_AUTH_FAILED)
        sockets.connect(sub, info["pub"], client)
        dealer = ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer_monitor = dealer.get_monitor_socket(_AUTH_FAILED)
        sockets.connect(dealer, info["replay"], client)
        dealer.send(wire.encode(wire.ReplayRequest(
            version=wire.PROTOCOL_VERSION, publisher_id="pub-1", from_seq=1)))
        wait_until(lambda: _refused(sub, sub_monitor), 10, what="the client SUB refused")
        wait_until(lambda: _refused(dealer, dealer_monitor), 10,
                   what="the client replay DEALER refused")
        assert pub.publish(5) == 10
        wait_until(lambda: len(lane.seqs()) >= 10, 15, what="10 alerts at the notifier")
        assert lane.seqs() == list(range(1, 11))
        assert not sub.poll(0) and not dealer.poll(0)  # refused: not one frame, ever
        for sock in (sub, dealer, sub_monitor, dealer_monitor):
            sock.close(linger=0)
    finally:
        ctx.term()
    wait_until(lambda: any("refused a connection to mesh.alerts: role client not admitted"
                           in line for line in pub.stderr), 10, what="the publisher's warning")


def test_a_newline_in_a_node_id_cannot_forge_a_notifier_log_line(lane):
    """Alert text comes from the wire: a source (a node id, in the mesh's own alerts) holding
    a newline is escaped in the notifier's log, not written as a second line."""
    pub, info = lane.publisher()
    notifier = lane.start("-m", "nodes.notifier", "--no-discovery", "--log-level", "INFO",
                          "--state-file", str(lane.tmp / "positions.json"),
                          "--publisher", f"pub-1={info['pub']},{info['replay']}")
    notifier.ready()
    pub.send("publish 1 equipment.fault critical 0 node-7\\nFORGED-LINE")
    assert int(pub.expect("PUBLISHED ", 30).split()[1]) == 1
    wait_until(lambda: any("source=node-7\\nFORGED-LINE" in line for line in notifier.stderr),
               15, what="the escaped alert line")
    assert not [line for line in notifier.stderr if line.startswith("FORGED-LINE")]
