"""The Notifier's positions file by default (issue 13): a per-user private place named by the
notifier id, never ./mesh-data in the directory the notifier was started from."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from nodes.config import private_state_dir
from nodes.launch import NodeProcess

pytestmark = pytest.mark.timeout(60)


def test_private_state_dir_is_per_user_0700_and_never_the_cwd(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.chdir(tmp_path)
    home = tmp_path / "home"
    assert private_state_dir("n1", {"XDG_STATE_HOME": str(tmp_path / "xdg")}) == \
        str(tmp_path / "xdg" / "mesh" / "n1")
    monkeypatch.setenv("HOME", str(home))
    made = Path(private_state_dir("n2", {}))
    assert made == home / ".local" / "state" / "mesh" / "n2"
    assert stat.S_IMODE(made.stat().st_mode) == 0o700
    assert private_state_dir("n3", {"MESH_DATA_DIR": str(tmp_path / "data")}) == \
        str(tmp_path / "data" / "n3")
    assert not (tmp_path / "mesh-data").exists()


def test_notifier_default_positions_file_does_not_land_in_the_cwd(tmp_path) -> None:  # noqa: ANN001
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    state_home = tmp_path / "state"
    env = {"XDG_STATE_HOME": str(state_home), "MESH_KEY_DIR": str(tmp_path / "keys"),
           "PYTHONUNBUFFERED": "1"}
    env_clear = {k: "" for k in ("MESH_DATA_DIR",) if k in os.environ}
    proc = NodeProcess(["notifier", "--notifier-id", "pager", "--no-discovery", "--insecure"],
                       env={**env, **env_clear}, cwd=run_dir, log_path=tmp_path / "n.log",
                       name="notifier")
    try:
        ready = proc.start().ready
    finally:
        proc.stop()
    assert ready["state_file"] == str(state_home / "mesh" / "pager" / "alert-positions.json")
    assert stat.S_IMODE((state_home / "mesh" / "pager").stat().st_mode) == 0o700
    assert list(run_dir.iterdir()) == [], "nothing written where the notifier was started"
