"""mesh.ownership: one owner per data dir / node id, refused at once, released by the kernel."""

from __future__ import annotations

import logging
import os

import pytest

from mesh.errors import ConfigError, InUse
from mesh.ownership import DATA_DIR_LOCK, claim_data_dir, claim_node_id


def mode_of(path) -> int:
    return os.stat(path).st_mode & 0o777


def test_claim_makes_the_data_dir_0700_and_a_0600_lock_file_naming_our_pid(tmp_path):
    data_dir = tmp_path / "deep" / "helper-1"
    old_umask = os.umask(0)
    try:
        lock = claim_data_dir(data_dir)
    finally:
        os.umask(old_umask)
    try:
        assert lock.held
        assert mode_of(data_dir) == 0o700
        assert mode_of(data_dir / DATA_DIR_LOCK) == 0o600
        assert (data_dir / DATA_DIR_LOCK).read_text() == f"{os.getpid()}\n"
    finally:
        lock.release()


def test_a_second_claim_is_refused_at_once_naming_the_holder_pid(tmp_path):
    with claim_data_dir(tmp_path / "d", advice="stop it or choose another --data-dir"):
        with pytest.raises(InUse) as err:
            claim_data_dir(tmp_path / "d", advice="stop it or choose another --data-dir")
    assert str(err.value) == (f"data dir {tmp_path / 'd'} is in use by pid {os.getpid()} "
                              "(another Helper); stop it or choose another --data-dir")
    assert err.value.holder_pid == os.getpid()
    # released by the with block: a new owner gets it
    claim_data_dir(tmp_path / "d").release()


def test_release_is_idempotent_and_leaves_the_file(tmp_path):
    lock = claim_data_dir(tmp_path / "d")
    lock.release()
    lock.release()
    assert not lock.held
    assert (tmp_path / "d" / DATA_DIR_LOCK).exists()


def test_an_existing_data_dir_of_ours_open_to_others_is_tightened_with_a_warning(tmp_path, caplog):
    data_dir = tmp_path / "d"
    data_dir.mkdir()
    data_dir.chmod(0o755)
    with caplog.at_level(logging.WARNING, logger="mesh.ownership"):
        claim_data_dir(data_dir).release()
    assert mode_of(data_dir) == 0o700
    assert "was mode 0755" in caplog.text


def test_a_forked_child_does_not_keep_the_lock_after_its_parent_lets_go(tmp_path):
    lock = claim_data_dir(tmp_path / "d")
    r, w = os.pipe()
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child says it runs (fork hooks done), then waits holding what it inherited
        os.close(w)
        os.write(ready_w, b"r")
        os.read(r, 1)
        os._exit(0)
    os.close(r)
    os.close(ready_w)
    try:
        assert os.read(ready_r, 1) == b"r"
        os.close(ready_r)
        lock.release()
        claim_data_dir(tmp_path / "d").release()  # would be InUse if the child held the lock
    finally:
        os.write(w, b"x")
        os.close(w)
        os.waitpid(pid, 0)


def test_node_id_lock_refuses_a_second_owner_and_a_path_like_id(tmp_path):
    with claim_node_id(tmp_path, "ai-1", advice="stop it or choose another --node-id"):
        with pytest.raises(InUse, match=r"^node id ai-1 is in use by pid \d+ \(another AI node\)"):
            claim_node_id(tmp_path, "ai-1")
        claim_node_id(tmp_path, "ai-2").release()  # another id is another lock
    assert mode_of(tmp_path / "ai-1.lock") == 0o600
    for bad in ("../ai-1", ".hidden", ""):
        with pytest.raises(ConfigError):
            claim_node_id(tmp_path, bad)
