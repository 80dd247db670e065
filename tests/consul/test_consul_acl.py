"""What the mesh does when Consul behaves as a real agent does with ACLs on, without a leader,
after a restart and with a wildcard address: through py-consul over real HTTP to the fake agent.

Consul's behaviours relied on (checked against hashicorp/consul):
- default deny, no token: list endpoints answer 200 with an empty list and *no*
  X-Consul-Results-Filtered-By-ACLs header (it is set only for requests with a token, so as not
  to leak what exists); writes get 403 "Permission denied: anonymous token lacks permission ...";
  an unknown token gets 403 "ACL not found".
- the ?token= query parameter wins over the X-Consul-Token header (parseToken).
- a service address of 0.0.0.0 / :: is refused with 400 "Invalid service address".
- without a leader, reads fail with 500 "No cluster leader"; agent-local writes still work.
- a non-dev agent keeps its registrations and the index across a restart; a snapshot restore
  can move the index backwards, and a client must then reset its index to 0.
"""

from __future__ import annotations

import logging
import signal
from pathlib import Path

import consul
import pytest
import requests

from discovery import (
    ConsulSettings,
    DiscoveryAuthError,
    DiscoveryError,
    DiscoveryUnavailable,
    Instance,
    Watch,
    consul_settings_from_env,
    open_discovery,
    validate_instance,
)
from discovery.consul import ConsulDiscovery
from fake_agent import FakeConsulAgent
from nodes.launch import NodeProcess
from tests.support.waiting import wait_until

TOKEN = "s3cret-token"  # the acl_agent fixture's token


def ai(n: int = 1, address: str = "127.0.0.1") -> Instance:
    return Instance("mesh-ai", f"ai-acl-{n}", address, 5700 + n, ("ai",), {"ep_task": f"tcp://127.0.0.1:{5700 + n}"})


class Recorder:
    def __init__(self):
        self.calls = []

    def __call__(self, found):
        self.calls.append(sorted(i.instance_id for i in found))


@pytest.fixture
def persistent_agent():
    fake = FakeConsulAgent(min_deregister_critical_s=0.0, persist=True).start()
    try:
        yield fake
    finally:
        fake.stop()


# ---- the fake agent answers as Consul does -------------------------------------------------


def test_fake_agent_without_a_token_gets_an_empty_list_and_no_filtered_header(acl_agent):
    good = consul.Consul(host=acl_agent.host, port=acl_agent.port, token=TOKEN)
    good.agent.service.register("mesh-ai", service_id="ai-acl-1", address="127.0.0.1", port=1)
    url = f"{acl_agent.url}/v1/health/service/mesh-ai"
    anon = requests.get(url, timeout=5)
    assert anon.status_code == 200 and anon.json() == []
    assert "X-Consul-Results-Filtered-By-ACLs" not in anon.headers
    acl_agent.limited_token = "no-rules"
    limited = requests.get(url, headers={"X-Consul-Token": "no-rules"}, timeout=5)
    assert limited.json() == [] and limited.headers["X-Consul-Results-Filtered-By-ACLs"] == "true"
    allowed = requests.get(url, headers={"X-Consul-Token": TOKEN}, timeout=5)
    assert len(allowed.json()) == 1 and "X-Consul-Results-Filtered-By-ACLs" not in allowed.headers
    assert requests.get(f"{acl_agent.url}/v1/agent/self", timeout=5).status_code == 403


def test_fake_agent_query_token_wins_over_the_header(acl_agent):
    url = f"{acl_agent.url}/v1/agent/self"
    assert requests.get(url, params={"token": "wrong"}, headers={"X-Consul-Token": TOKEN}, timeout=5).status_code == 403
    assert requests.get(url, params={"token": TOKEN}, headers={"X-Consul-Token": "wrong"}, timeout=5).status_code == 200


@pytest.mark.parametrize("address", ["0.0.0.0", "::", "[::]"])
def test_fake_agent_refuses_a_wildcard_service_address(agent, address):
    c = consul.Consul(host=agent.host, port=agent.port)
    with pytest.raises(consul.ConsulException, match="400 Invalid service address"):
        c.agent.service.register("mesh-ai", service_id="x", address=address, port=1)
    assert agent.services() == {}


# ---- the mesh's handling -------------------------------------------------------------------


@pytest.mark.parametrize("address", ["0.0.0.0", "::", "[::]", "0:0::0"])
def test_a_wildcard_address_is_refused_before_registering(agent, address):
    d = ConsulDiscovery(agent.addr, timeout_s=2.0)
    try:
        with pytest.raises(DiscoveryError, match="not routable.*must advertise an address other nodes can reach"):
            d.register(ai(1, address))
        assert not any(r[1] == "/v1/agent/service/register" for r in agent.requests)
    finally:
        d.close()
    validate_instance(ai(1, "10.0.0.7"))
    validate_instance(ai(1, "ai-host.example"))


def test_no_token_on_an_acl_agent_warns_that_the_empty_list_may_be_hidden(acl_agent, caplog):
    good = ConsulDiscovery(acl_agent.addr, token=TOKEN, timeout_s=2.0)
    clock = [0.0]
    anon = ConsulDiscovery(acl_agent.addr, timeout_s=2.0, clock=lambda: clock[0], missing_token_log_every_s=300)
    try:
        good.register(ai(1))
        caplog.set_level(logging.WARNING, logger="discovery")
        assert anon.instances("mesh-ai") == (acl_agent.index, [])  # no error: Consul gives no proof
        warnings = [r.getMessage() for r in caplog.records if "no instances of 'mesh-ai'" in r.getMessage()]
        assert len(warnings) == 1
        assert "no ACL-filter header" in warnings[0] and "refuses requests without a token (ACLs are on)" in warnings[0]
        assert "Is CONSUL_HTTP_TOKEN (or CONSUL_HTTP_TOKEN_FILE) set?" in warnings[0]
        anon.instances("mesh-ai")
        clock[0] = 299.0
        anon.instances("mesh-ai")
        assert len([r for r in caplog.records if "no instances" in r.getMessage()]) == 1  # not every query
        clock[0] = 301.0
        anon.instances("mesh-ai")
        assert len([r for r in caplog.records if "no instances" in r.getMessage()]) == 2  # but not forever silent
        assert sum(r[1] == "/v1/agent/self" for r in acl_agent.requests) == 1  # one probe per backend
    finally:
        good.close()
        anon.close()


def test_an_empty_list_without_acls_is_just_empty(agent, caplog):
    d = ConsulDiscovery(agent.addr, timeout_s=2.0)
    try:
        caplog.set_level(logging.WARNING, logger="discovery")
        assert d.instances("mesh-ai")[1] == []
        assert d.instances("mesh-ai")[1] == []
        assert not [r for r in caplog.records if "no instances" in r.getMessage()]
    finally:
        d.close()


@pytest.mark.parametrize("token, reason", [(None, "Permission denied: anonymous token lacks permission"),
                                           ("wrong", "ACL not found")])
def test_a_refused_registration_is_a_one_line_auth_error(acl_agent, token, reason):
    d = ConsulDiscovery(acl_agent.addr, token=token, timeout_s=2.0)
    try:
        with pytest.raises(DiscoveryAuthError) as err:
            d.register(ai(1))
        message = str(err.value)
        assert "\n" not in message and reason in message
        assert message.startswith("Consul refused ") and "CONSUL_HTTP_TOKEN" in message
        assert acl_agent.services() == {}
    finally:
        d.close()


def test_no_cluster_leader_is_retried_with_backoff_and_membership_is_kept(agent, caplog):
    d = ConsulDiscovery(agent.addr, timeout_s=2.0)
    rec = Recorder()
    watch = Watch(d, "mesh-ai", rec, wait_s=0.3, min_backoff_s=0.05, max_backoff_s=0.2)
    try:
        reg = d.register(ai(1), ttl_s=30)
        watch.start()
        wait_until(lambda: rec.calls == [["ai-acl-1"]], what="first membership")
        caplog.set_level(logging.INFO, logger="discovery")
        agent.fail_next(8)  # the next 8 reads: 500 No cluster leader
        wait_until(lambda: watch.failures >= 3, what="failed reads")
        reg.heartbeat()  # the agent-local TTL update needs no leader
        assert [i.instance_id for i in watch.last_known] == ["ai-acl-1"] and rec.calls == [["ai-acl-1"]]
        wait_until(lambda: watch.failures == 0, what="reads answered again")
        assert rec.calls == [["ai-acl-1"]]  # nothing was dropped, nothing re-announced
        text = caplog.text
        assert "500 No cluster leader" in text and "keeping the last known membership" in text
        assert "is back after" in text
        watch.stop()  # else its next read may take the one injected failure first
        agent.fail_next(1)
        with pytest.raises(DiscoveryUnavailable, match="No cluster leader"):
            d.instances("mesh-ai")
    finally:
        watch.stop()
        d.close()


def test_a_persistent_agent_restart_keeps_registrations_and_the_index(persistent_agent):
    agent = persistent_agent
    d = ConsulDiscovery(agent.addr, timeout_s=2.0)
    rec = Recorder()
    watch = Watch(d, "mesh-ai", rec, wait_s=0.3, min_backoff_s=0.05, max_backoff_s=0.2)
    try:
        reg = d.register(ai(1), ttl_s=30)
        watch.start()
        wait_until(lambda: rec.calls == [["ai-acl-1"]], what="first membership")
        before = agent.index
        agent.restart()
        assert agent.index == before and "ai-acl-1" in agent.services()
        reg.heartbeat()  # the agent still knows the check: no re-registration
        assert reg.registrations == 1
        d.register(ai(2), ttl_s=30)
        wait_until(lambda: rec.calls[-1] == ["ai-acl-1", "ai-acl-2"], what="the watch follows after the restart")
        assert watch.index_resets == 0 and watch.index > before
        assert rec.calls == [["ai-acl-1"], ["ai-acl-1", "ai-acl-2"]]
    finally:
        watch.stop()
        d.close()


def test_an_index_that_goes_backwards_resets_the_query_to_zero(agent):
    d = ConsulDiscovery(agent.addr, timeout_s=2.0)
    rec = Recorder()
    watch = Watch(d, "mesh-ai", rec, wait_s=0.3, min_backoff_s=0.05, max_backoff_s=0.2)
    try:
        d.register(ai(1), ttl_s=30)
        for n in range(2, 8):
            d.register(ai(n), ttl_s=30).deregister()
        watch.start()
        wait_until(lambda: rec.calls == [["ai-acl-1"]], what="first membership")
        high = watch.index
        seen = len(agent.requests)
        agent.set_index(2)  # a snapshot restore: same state, a lower index
        wait_until(lambda: watch.index_resets == 1, what="index reset")
        wait_until(lambda: any(r[1] == "/v1/health/service/mesh-ai" and "index" not in r[2]
                               for r in agent.requests[seen:]),
                   what="a query sent with index 0 (no index) after the reset")
        d.register(ai(9), ttl_s=30)
        wait_until(lambda: rec.calls[-1] == ["ai-acl-1", "ai-acl-9"], what="changes seen after the reset")
        assert watch.index < high + 5
        assert rec.calls == [["ai-acl-1"], ["ai-acl-1", "ai-acl-9"]]  # the reset announced nothing
    finally:
        watch.stop()
        d.close()


# ---- the token stays secret ----------------------------------------------------------------


def test_a_url_with_a_token_is_refused_without_showing_it():
    for url in ("consul://127.0.0.1:8500?token=Tok-in-url-1", "consul://Tok-in-url-1@127.0.0.1:8500"):
        with pytest.raises(DiscoveryError) as err:
            open_discovery(url)
        assert "carries an ACL token" in str(err.value) and "CONSUL_HTTP_TOKEN" in str(err.value)
        assert "Tok-in-url-1" not in str(err.value)


def test_the_token_is_in_no_log_line_and_no_error(acl_agent, caplog, tmp_path):
    secret, wrong = TOKEN, "wr0ng-but-secret-too"
    caplog.set_level(logging.DEBUG)  # every logger, urllib3's request lines included
    seen: list[str] = []

    def attempt(fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - every failure's text is checked below
            seen.extend([str(exc), repr(exc), str(exc.__cause__ or "")])
            return None

    token_file = tmp_path / "token"
    token_file.write_text(secret + "\n")
    token_file.chmod(0o600)
    settings = consul_settings_from_env({}, token_file=str(token_file))
    d = open_discovery(f"consul://{acl_agent.addr}?timeout_s=1", consul=settings)
    bad = open_discovery(f"consul://{acl_agent.addr}", consul=ConsulSettings(token=wrong))
    rec = Recorder()
    watch = Watch(d, "mesh-ai", rec, wait_s=0.2, min_backoff_s=0.05, max_backoff_s=0.1)
    try:
        reg = d.register(ai(1), ttl_s=30)
        watch.start()
        wait_until(lambda: rec.calls == [["ai-acl-1"]], what="watching with the token")
        reg.heartbeat()
        attempt(bad.register, ai(2))                      # 403 ACL not found
        attempt(bad.instances, "mesh-ai")
        acl_agent.fail_next(3)                            # 500 No cluster leader
        wait_until(lambda: watch.failures >= 1, what="a failed read")
        acl_agent.stop()                                  # unreachable
        attempt(reg.heartbeat)
        attempt(d.instances, "mesh-ai")
        wait_until(lambda: watch.failures >= 2, what="failed reads while down")
        seen += [repr(d), repr(bad), repr(settings)]
    finally:
        watch.stop()
        reg.deregister()  # agent down: logged, not raised
        d.close()
        bad.close()
    assert any("ACL not found" in s for s in seen) and any("unreachable" in s for s in seen)
    text = caplog.text + "\n".join(seen)
    assert "/v1/health/service/mesh-ai" in caplog.text  # urllib3 did log the requests at DEBUG
    assert secret not in text and wrong not in text


def test_token_file_wins_and_is_read_carefully(tmp_path, caplog):
    f = tmp_path / "token"
    f.write_text("from-file\n")
    f.chmod(0o600)
    env = {"CONSUL_HTTP_TOKEN": "from-env", "CONSUL_HTTP_TOKEN_FILE": str(f)}
    assert consul_settings_from_env(env).token == "from-file"  # as Consul's Go client does
    assert consul_settings_from_env({"CONSUL_HTTP_TOKEN": "from-env"}).token == "from-env"
    flag = tmp_path / "flag-token"
    flag.write_text("from-flag")
    flag.chmod(0o600)
    assert consul_settings_from_env(env, token_file=str(flag)).token == "from-flag"
    assert "from-flag" not in repr(consul_settings_from_env(env, token_file=str(flag)))
    f.write_text("")
    with pytest.raises(DiscoveryError, match="is empty"):
        consul_settings_from_env(env)
    with pytest.raises(DiscoveryError, match="cannot read the Consul token file .*missing"):
        consul_settings_from_env({"CONSUL_HTTP_TOKEN_FILE": str(tmp_path / "missing")})
    f.write_text("shared-secret")
    f.chmod(0o644)
    caplog.set_level(logging.WARNING)
    assert consul_settings_from_env(env).token == "shared-secret"
    assert "readable by other users" in caplog.text and "shared-secret" not in caplog.text


# ---- a node process --------------------------------------------------------------------------


def test_an_ai_node_takes_the_token_from_a_file_and_shows_it_nowhere(tmp_path, acl_agent):
    token_file = tmp_path / "consul-token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o600)
    env = {"CONSUL_HTTP_ADDR": acl_agent.addr, "MESH_DISCOVERY": "", "PYTHONUNBUFFERED": "1",
           "MESH_LOG_LEVEL": "DEBUG"}
    log = tmp_path / "ai.log"
    with NodeProcess(["ai", "--node-id", "ai-token-file", "--discovery-ttl", "1",
                      "--consul-token-file", str(token_file)], env=env, log_path=log) as node:
        wait_until(lambda: [c["Output"] for c in acl_agent.checks().values()] == ["running 0/16"],
                   10, what="registered with the token from the file")
        cmdline = Path(f"/proc/{node.proc.pid}/cmdline").read_bytes().decode()
        assert TOKEN not in cmdline
        node.signal(signal.SIGTERM)
        assert node.proc.wait(10) == 0
    assert TOKEN not in log.read_text()
    assert acl_agent.requests and all(r[3] == TOKEN for r in acl_agent.requests if r[1] != "/v1/agent/self")


def test_a_node_given_a_token_in_its_discovery_url_refuses_to_start(tmp_path):
    log = tmp_path / "ai.log"
    node = NodeProcess(["ai", "--discovery", "consul://127.0.0.1:1?token=Tok-on-cmdline"],
                       env={"PYTHONUNBUFFERED": "1"}, log_path=log)
    try:
        with pytest.raises(RuntimeError, match="before READY"):
            node.start()
    finally:
        node.stop()
    text = log.read_text()
    assert "carries an ACL token" in text and "Tok-on-cmdline" not in text, text

