"""Fixtures for the Consul backend tests: a fake agent per test, and a thread-leak check."""

from __future__ import annotations

import shutil
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # fake_agent, whatever the import mode

from fake_agent import FakeConsulAgent  # noqa: E402


@pytest.fixture(autouse=True)
def no_leaked_threads():
    """Every thread a test starts (agent, watch, helpers) must be gone shortly after it ends."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 5.0
    while True:
        leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not leaked:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"threads left running: {[t.name for t in leaked]}")
        time.sleep(0.02)


@pytest.fixture
def agent():
    fake = FakeConsulAgent(min_deregister_critical_s=0.0).start()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture
def acl_agent():
    fake = FakeConsulAgent(acl_token="s3cret-token", min_deregister_critical_s=0.0).start()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    """A throwaway CA with a server certificate for 127.0.0.1 and client certificates."""
    from tls_certs import make_pki

    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make test certificates")
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def tls_agent(pki):
    """A fake agent on HTTPS that requires a client certificate signed by the test CA
    (Consul's verify_incoming + verify_server_hostname setup)."""
    fake = FakeConsulAgent(min_deregister_critical_s=0.0, tls=pki.server_context()).start()
    try:
        yield fake
    finally:
        fake.stop()
