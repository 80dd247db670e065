"""Fixtures shared by every test tier."""

from __future__ import annotations

import os

import pytest

from tests.support.cluster import Cluster
from tests.support.keys import session_store


@pytest.fixture(autouse=True, scope="session")
def mesh_key_dir(tmp_path_factory):  # noqa: ANN001, ANN201
    """$MESH_KEY_DIR: one local key store for the session (tests/support/keys.py)."""
    with session_store(tmp_path_factory.mktemp("keys")) as root:
        yield root


@pytest.fixture(autouse=True, scope="session")
def mesh_app():  # noqa: ANN201
    """$MESH_APP for AI nodes the tests start by hand without --app (`mesh ai` requires an app;
    tests/integration/test_rails.py removes it to check that)."""
    previous = os.environ.get("MESH_APP")
    os.environ.setdefault("MESH_APP", "nodes.sample_app:app")
    yield
    if previous is None:
        os.environ.pop("MESH_APP", None)


@pytest.fixture
def cluster(tmp_path, request):  # noqa: ANN001, ANN201
    """Real node processes on loopback; all stopped and reaped at teardown.
    On failure, the tail of every node's log is printed."""
    c = Cluster(tmp_path)
    yield c
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        print(c.logs())
    c.close()


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):  # noqa: ANN001, ANN201
    outcome = yield
    report = outcome.get_result()
    setattr(item, "rep_" + report.when, report)


@pytest.fixture
def discovered(cluster, monkeypatch):  # noqa: ANN001, ANN201
    """The environment of a process on a host of this mesh: discovery named, no intake."""
    monkeypatch.setenv("MESH_DISCOVERY", cluster.discovery)
    monkeypatch.delenv("MESH_INTAKE", raising=False)
    monkeypatch.delenv("CONSUL_HTTP_ADDR", raising=False)
    return cluster
