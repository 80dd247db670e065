"""The embedded (lease-file) backend: leases, liveness, blocking queries, and the Watch on top."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from discovery import EmbeddedDiscovery, Health, Instance, Watch
from discovery.embedded import process_alive
from tests.support.waiting import wait_until

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def disco(tmp_path):
    d = EmbeddedDiscovery(tmp_path / "registry")
    yield d
    d.close()


def ai(n: int = 1, **kw) -> Instance:
    return Instance(
        service="mesh-ai",
        instance_id=f"ai-test-{n}",
        address="127.0.0.1",
        port=5500 + n,
        tags=("ai", "v1"),
        meta={"ep_task": f"tcp://127.0.0.1:{5500 + n}", "concurrency": "16", "incarnation": f"inc{n}"},
        **kw,
    )


def health_of(disco, instance_id, service="mesh-ai"):
    _, found = disco.instances(service, passing_only=False)
    return next((i.health for i in found if i.instance_id == instance_id), None)


def test_register_then_instances_returns_the_same_values(disco):
    reg = disco.register(ai(1), ttl_s=5)
    index, found = disco.instances("mesh-ai")
    assert index >= 1
    assert found == [ai(1)]
    assert disco.instances("nobody")[1] == []
    reg.deregister()
    reg.deregister()  # idempotent
    assert disco.instances("mesh-ai")[1] == []
    reg.heartbeat()  # after deregister: a no-op, does not resurrect
    assert disco.instances("mesh-ai", passing_only=False)[1] == []


def test_lease_file_is_written_atomically_under_service_dir(disco):
    reg = disco.register(ai(1), ttl_s=5)
    files = os.listdir(disco.directory / "mesh-ai")
    assert files == ["ai-test-1.json"]  # no temporary file left behind
    assert reg.path == disco.directory / "mesh-ai" / "ai-test-1.json"


def test_heartbeat_keeps_a_short_lease_passing(disco):
    reg = disco.register(ai(1), ttl_s=0.6)
    end = time.monotonic() + 1.5  # over two TTLs
    while time.monotonic() < end:
        reg.heartbeat()
        assert health_of(disco, "ai-test-1") == Health.PASSING
        time.sleep(0.05)


def test_lease_not_renewed_goes_critical_and_is_excluded_from_passing(disco):
    disco.register(ai(1), ttl_s=0.2, deregister_after_s=60)
    assert [i.instance_id for i in disco.instances("mesh-ai")[1]] == ["ai-test-1"]
    wait_until(lambda: health_of(disco, "ai-test-1") == Health.CRITICAL, what="critical")
    assert disco.instances("mesh-ai", passing_only=True)[1] == []


def test_critical_lease_is_removed_after_deregister_after(disco):
    reg = disco.register(ai(1), ttl_s=0.1, deregister_after_s=0.2)
    wait_until(lambda: disco.instances("mesh-ai", passing_only=False)[1] == [], what="lease removed")
    assert not reg.path.exists()
    # the owner comes back (it was only stopped): its heartbeat writes the lease again
    reg.heartbeat()
    assert health_of(disco, "ai-test-1") == Health.PASSING


def test_warning_with_note_is_kept_but_not_passing(disco):
    reg = disco.register(ai(1), ttl_s=5)
    reg.heartbeat(Health.WARNING, "saturated 16/16")
    assert health_of(disco, "ai-test-1") == Health.WARNING
    assert disco.instances("mesh-ai")[1] == []
    reg.heartbeat(Health.PASSING)
    assert health_of(disco, "ai-test-1") == Health.PASSING


def test_lease_of_a_reused_pid_is_removed(disco):
    reg = disco.register(ai(1), ttl_s=5)
    reg._pid_start = "1"  # as if our pid had belonged to another process when it registered
    reg.write()
    assert disco.instances("mesh-ai", passing_only=False)[1] == []
    assert not reg.path.exists()


def test_process_alive_sees_ourselves_and_not_a_reaped_child():
    assert process_alive(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert not process_alive(child.pid)


REGISTRANT = textwrap.dedent(
    """
    import sys, time
    from discovery import EmbeddedDiscovery, Instance
    d = EmbeddedDiscovery(sys.argv[1])
    reg = d.register(Instance("mesh-ai", sys.argv[2], "127.0.0.1", 5999), ttl_s=float(sys.argv[3]))
    print("ready", flush=True)
    while True:
        reg.heartbeat()
        time.sleep(0.05)
    """
)


@pytest.fixture
def registrant(disco):
    procs = []

    def start(instance_id: str, ttl_s: float = 30.0) -> subprocess.Popen:
        proc = subprocess.Popen(
            [sys.executable, "-c", REGISTRANT, str(disco.directory), instance_id, str(ttl_s)],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stdout=subprocess.PIPE,
            text=True,
        )
        procs.append(proc)
        assert proc.stdout.readline().strip() == "ready"
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
        proc.wait(timeout=10)
        proc.stdout.close()


def test_sigkilled_registrant_disappears_at_once(disco, registrant):
    proc = registrant("ai-victim", ttl_s=30.0)  # long TTL: only the pid check can explain removal
    assert [i.instance_id for i in disco.instances("mesh-ai")[1]] == ["ai-victim"]
    proc.kill()
    proc.wait(timeout=10)
    wait_until(lambda: disco.instances("mesh-ai", passing_only=False)[1] == [], timeout_s=2.0, what="gone")
    assert os.listdir(disco.directory / "mesh-ai") == []


def test_sigstopped_registrant_goes_critical_then_recovers(disco, registrant):
    proc = registrant("ai-frozen", ttl_s=0.3)
    wait_until(lambda: health_of(disco, "ai-frozen") == Health.PASSING, what="passing")
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        wait_until(lambda: health_of(disco, "ai-frozen") == Health.CRITICAL, what="critical")
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    wait_until(lambda: health_of(disco, "ai-frozen") == Health.PASSING, what="passing again")


def test_blocking_instances_returns_early_on_change(disco):
    index, found = disco.instances("mesh-ai")
    assert found == []
    timer = threading.Timer(0.2, lambda: disco.register(ai(1), ttl_s=5))
    timer.start()
    try:
        started = time.monotonic()
        new_index, found = disco.instances("mesh-ai", index=index, wait_s=10.0)
        elapsed = time.monotonic() - started
    finally:
        timer.join()
    assert new_index != index
    assert [i.instance_id for i in found] == ["ai-test-1"]
    assert elapsed < 5.0


def test_blocking_instances_without_change_returns_after_wait_s(disco):
    reg = disco.register(ai(1), ttl_s=5)
    index, _ = disco.instances("mesh-ai")
    started = time.monotonic()
    reg.heartbeat()  # a renewal is not a change
    new_index, found = disco.instances("mesh-ai", index=index, wait_s=0.3)
    assert time.monotonic() - started >= 0.3
    assert new_index == index
    assert len(found) == 1


def test_blocking_instances_with_an_old_index_returns_at_once(disco):
    index, _ = disco.instances("mesh-ai")
    disco.register(ai(1), ttl_s=5)
    started = time.monotonic()
    new_index, found = disco.instances("mesh-ai", index=index, wait_s=10.0)
    assert time.monotonic() - started < 2.0
    assert new_index > index and len(found) == 1


def test_close_wakes_a_blocked_query(disco):
    index, _ = disco.instances("mesh-ai")
    threading.Timer(0.1, disco.close).start()
    started = time.monotonic()
    disco.instances("mesh-ai", index=index, wait_s=10.0)
    assert time.monotonic() - started < 5.0


class Recorder:
    def __init__(self):
        self.calls: list[list[Instance]] = []
        self.lock = threading.Lock()

    def __call__(self, found):
        with self.lock:
            self.calls.append(found)

    def ids(self, n):
        return sorted(i.instance_id for i in self.calls[n])


def test_watch_reports_changes_only(disco):
    rec = Recorder()
    queries = []

    class Counting:
        def instances(self, *a, **kw):
            queries.append(kw.get("index"))
            return disco.instances(*a, **kw)

    watch = Watch(Counting(), "mesh-ai", rec, wait_s=0.1)
    reg1 = disco.register(ai(1), ttl_s=5)
    watch.start()
    try:
        wait_until(lambda: len(rec.calls) == 1, what="first report")
        assert rec.ids(0) == ["ai-test-1"]
        # heartbeats and timed-out long polls are not changes
        n = len(queries)
        while len(queries) < n + 4:
            reg1.heartbeat()
            time.sleep(0.02)
        assert len(rec.calls) == 1
        disco.register(ai(2), ttl_s=5)
        wait_until(lambda: len(rec.calls) == 2, what="second report")
        assert rec.ids(1) == ["ai-test-1", "ai-test-2"]
        reg1.heartbeat(Health.WARNING, "draining")  # leaves the passing set
        wait_until(lambda: len(rec.calls) == 3, what="third report")
        assert rec.ids(2) == ["ai-test-2"]
        assert watch.last_known == rec.calls[2]
    finally:
        watch.stop()
    assert not any(t.name.startswith("discovery-watch") for t in threading.enumerate())


# -- the directories the registry owns: created 0700, checked, never trusted because they exist --

from discovery import DiscoveryError, default_runtime_dir, ensure_private_dirs  # noqa: E402

NOBODY = 65534
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root")


def mode_of(path) -> int:
    return os.lstat(path).st_mode & 0o777


@pytest.fixture
def xdg(tmp_path, monkeypatch):
    """$XDG_RUNTIME_DIR pointed at a private dir of this test: the default registry lives in it."""
    runtime = tmp_path / "xdg"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    return runtime


def test_default_registry_dirs_are_0700_and_lease_files_0600_whatever_the_umask(xdg):
    old_umask = os.umask(0)
    try:
        d = EmbeddedDiscovery()
        reg = d.register(ai(1), ttl_s=5)
        reg.heartbeat(Health.WARNING, "rewrites the lease")
    finally:
        os.umask(old_umask)
        d.close()
    assert d.directory == xdg / "mesh" / "registry"
    for path in (xdg / "mesh", xdg / "mesh" / "registry", xdg / "mesh" / "registry" / "mesh-ai"):
        assert mode_of(path) == 0o700, path
    assert mode_of(reg.path) == 0o600


def test_tmp_fallback_is_the_per_user_dir_under_the_given_tmp(tmp_path):
    assert default_runtime_dir({}, tmp_dir=str(tmp_path)) == tmp_path / f"mesh-{os.getuid()}"


@needs_root
def test_runtime_dir_premade_by_another_user_is_refused(xdg):
    premade = xdg / "mesh"
    premade.mkdir(mode=0o755)
    os.chown(premade, NOBODY, NOBODY)
    with pytest.raises(DiscoveryError, match=f"registry directory {premade} belongs to uid {NOBODY}, not to us"):
        EmbeddedDiscovery()
    assert not (premade / "registry").exists()


@needs_root
def test_tmp_style_parent_premade_by_another_user_is_refused(tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    tmp.chmod(0o1777)
    root = default_runtime_dir({}, tmp_dir=str(tmp))
    root.mkdir(mode=0o700)
    os.chown(root, NOBODY, NOBODY)
    with pytest.raises(DiscoveryError, match="belongs to uid 65534") as err:
        ensure_private_dirs(root, "registry")
    assert "\n" not in str(err.value)
    assert not (root / "registry").exists()


def test_world_writable_runtime_dir_is_refused(xdg):
    premade = xdg / "mesh"
    premade.mkdir()
    premade.chmod(0o777)
    with pytest.raises(DiscoveryError, match="writable by other users"):
        EmbeddedDiscovery()


def test_symlinked_runtime_dir_or_registry_is_refused(xdg, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    (xdg / "mesh").symlink_to(elsewhere)
    with pytest.raises(DiscoveryError, match="is a symbolic link"):
        EmbeddedDiscovery()
    (tmp_path / "reg-link").symlink_to(elsewhere)
    with pytest.raises(DiscoveryError, match="is a symbolic link"):
        EmbeddedDiscovery(tmp_path / "reg-link")


@needs_root
def test_service_dir_premade_by_another_user_is_refused(disco):
    premade = disco.directory / "mesh-ai"
    premade.mkdir(mode=0o755)
    os.chown(premade, NOBODY, NOBODY)
    with pytest.raises(DiscoveryError, match="belongs to uid 65534"):
        disco.register(ai(1), ttl_s=5)
    assert os.listdir(premade) == []


def test_our_own_readable_dir_is_tightened_to_0700(tmp_path):
    mine = tmp_path / "registry"
    mine.mkdir(mode=0o755)
    mine.chmod(0o755)
    d = EmbeddedDiscovery(mine)
    d.close()
    assert mode_of(mine) == 0o700


def test_xdg_runtime_dir_writable_by_others_is_refused(xdg):
    xdg.chmod(0o777)
    with pytest.raises(DiscoveryError, match="XDG_RUNTIME_DIR"):
        EmbeddedDiscovery()
