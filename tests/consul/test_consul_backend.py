"""The Consul backend through py-consul, over real HTTP, against the fake agent."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from discovery import (
    ConsulSettings,
    DiscoveryAuthError,
    DiscoveryUnavailable,
    Health,
    Instance,
    Watch,
    open_discovery,
)
from discovery.consul import ConsulDiscovery, go_duration
from tests.support.waiting import wait_until


def ai(n: int = 1) -> Instance:
    return Instance(
        service="mesh-ai",
        instance_id=f"ai-host-{n}",
        address="127.0.0.1",
        port=5500 + n,
        tags=("ai", "v1"),
        meta={"ep_task": f"tcp://127.0.0.1:{5500 + n}", "concurrency": "16", "version": "0.1.0",
              "protocol": "1", "incarnation": f"inc{n}"},
    )


@pytest.fixture
def disco(agent):
    d = ConsulDiscovery(agent.addr, timeout_s=2.0)
    yield d
    d.close()


def health_of(disco, instance_id):
    _, found = disco.instances("mesh-ai", passing_only=False)
    return next((i.health for i in found if i.instance_id == instance_id), None)


class Recorder:
    def __init__(self):
        self.calls = []

    def __call__(self, found):
        self.calls.append(sorted(i.instance_id for i in found))


def test_registration_carries_service_fields_and_a_ttl_check_with_deregister_after(agent, disco):
    disco.register(ai(1), ttl_s=10, deregister_after_s=90)
    svc = agent.services()["ai-host-1"]
    assert (svc["Service"], svc["Address"], svc["Port"]) == ("mesh-ai", "127.0.0.1", 5501)
    assert svc["Tags"] == ["ai", "v1"]
    assert svc["Meta"] == dict(ai(1).meta)
    checks = agent.checks()
    assert list(checks) == ["service:ai-host-1:ttl"]
    chk = checks["service:ai-host-1:ttl"]
    assert chk["ServiceID"] == "ai-host-1" and chk["Status"] == "passing" and chk["Type"] == "ttl"
    assert chk["Definition"] == {"TTL": "10s", "DeregisterCriticalServiceAfter": "90s"}
    method, path, query, token = next(r for r in agent.requests if r[1] == "/v1/agent/service/register")
    assert query.get("replace-existing-checks") == ["true"] and token is None


def test_instances_maps_health_entries_to_instances(disco):
    disco.register(ai(1), ttl_s=10)
    index, found = disco.instances("mesh-ai")
    assert index >= 1
    assert found == [ai(1)]
    assert disco.instances("nobody")[1] == []


def test_ttl_expiry_turns_critical_and_drops_from_passing(agent, disco):
    disco.register(ai(1), ttl_s=0.3, deregister_after_s=600)
    assert [i.instance_id for i in disco.instances("mesh-ai")[1]] == ["ai-host-1"]
    wait_until(lambda: health_of(disco, "ai-host-1") == Health.CRITICAL, what="critical")
    assert disco.instances("mesh-ai", passing_only=True)[1] == []
    assert agent.checks()["service:ai-host-1:ttl"]["Output"].startswith("TTL expired")


def test_heartbeats_keep_a_short_ttl_passing(disco):
    reg = disco.register(ai(1), ttl_s=0.6)
    end = time.monotonic() + 1.5  # over two TTLs
    while time.monotonic() < end:
        reg.heartbeat()
        assert health_of(disco, "ai-host-1") == Health.PASSING
        time.sleep(0.05)


def test_warning_and_critical_heartbeats_carry_the_note(agent, disco):
    reg = disco.register(ai(1), ttl_s=10)
    reg.heartbeat(Health.WARNING, "saturated 16/16")
    chk = agent.checks()["service:ai-host-1:ttl"]
    assert (chk["Status"], chk["Output"]) == ("warning", "saturated 16/16")
    assert disco.instances("mesh-ai", passing_only=True)[1] == []
    assert health_of(disco, "ai-host-1") == Health.WARNING
    reg.heartbeat(Health.CRITICAL, "draining")
    assert agent.checks()["service:ai-host-1:ttl"]["Status"] == "critical"
    reg.heartbeat()
    assert agent.checks()["service:ai-host-1:ttl"]["Status"] == "passing"


def test_critical_node_check_excludes_the_instance_from_passing(agent, disco):
    disco.register(ai(1), ttl_s=10)
    agent.set_node_health("critical")  # serfHealth is part of every entry's checks
    assert disco.instances("mesh-ai")[1] == []
    assert health_of(disco, "ai-host-1") == Health.CRITICAL


def test_deregister_critical_service_after_removes_the_service(agent, disco):
    disco.register(ai(1), ttl_s=0.2, deregister_after_s=0.3)  # the fake's 60 s minimum is lowered
    wait_until(lambda: "ai-host-1" not in agent.services(), what="service reaped")
    assert disco.instances("mesh-ai", passing_only=False)[1] == []


def test_deregister_is_idempotent_and_silences_heartbeats(agent, disco):
    reg = disco.register(ai(1), ttl_s=10)
    reg.deregister()
    reg.deregister()
    assert agent.services() == {} and agent.checks() == {}
    n = len(agent.requests)
    reg.heartbeat()
    assert len(agent.requests) == n  # no request, no resurrection


def test_blocking_query_wakes_on_change(agent, disco):
    disco.register(ai(1), ttl_s=10)
    index, _ = disco.instances("mesh-ai")
    timer = threading.Timer(0.2, lambda: disco.register(ai(2), ttl_s=10))
    timer.start()
    try:
        started = time.monotonic()
        new_index, found = disco.instances("mesh-ai", index=index, wait_s=10.0)
        elapsed = time.monotonic() - started
    finally:
        timer.join()
    assert new_index > index and elapsed < 5.0
    assert sorted(i.instance_id for i in found) == ["ai-host-1", "ai-host-2"]
    query = [r for r in agent.requests if r[1] == "/v1/health/service/mesh-ai"][-1][2]
    assert query["index"] == [str(index)] and query["wait"] == ["10s"] and query["passing"] == ["1"]


def test_blocking_query_without_change_returns_after_wait(agent, disco):
    index, _ = disco.instances("mesh-ai")
    started = time.monotonic()
    new_index, found = disco.instances("mesh-ai", index=index, wait_s=0.4)
    assert time.monotonic() - started >= 0.35
    assert (new_index, found) == (index, [])
    assert agent.requests[-1][2]["wait"] == ["400ms"]


def test_non_blocking_query_sends_no_index(agent, disco):
    disco.instances("mesh-ai", index=7, wait_s=0.0)  # an index without wait would block 5 minutes
    assert "index" not in agent.requests[-1][2]


def test_agent_restart_lost_state_reregisters_on_next_heartbeat(agent, disco):
    reg = disco.register(ai(1), ttl_s=10)
    agent.restart()  # a dev agent forgets everything
    assert agent.services() == {}
    reg.heartbeat()  # the agent answers 404 for the check: register again
    assert "ai-host-1" in agent.services()
    assert agent.checks()["service:ai-host-1:ttl"]["Status"] == "passing"
    assert reg.registrations == 2


def test_unreachable_agent_fails_fast_then_heartbeat_reregisters(agent, disco):
    reg = disco.register(ai(1), ttl_s=10)
    agent.stop()
    started = time.monotonic()
    with pytest.raises(DiscoveryUnavailable, match=f"Consul agent at http://{agent.addr} is unreachable"):
        reg.heartbeat()
    with pytest.raises(DiscoveryUnavailable):
        disco.instances("mesh-ai")
    assert time.monotonic() - started < 2.0
    agent.start()
    reg.heartbeat()
    assert "ai-host-1" in agent.services() and reg.registrations == 2


def test_a_wedged_agent_times_out_instead_of_hanging(agent):
    d = ConsulDiscovery(agent.addr, timeout_s=0.3)
    try:
        index, _ = d.instances("mesh-ai")
        agent.hang()
        started = time.monotonic()
        with pytest.raises(DiscoveryUnavailable, match="did not answer in time"):
            d.instances("mesh-ai")
        assert time.monotonic() - started < 2.0
        started = time.monotonic()
        with pytest.raises(DiscoveryUnavailable, match="did not answer in time"):
            d.instances("mesh-ai", index=index, wait_s=0.5)  # timeout = wait + wait/16 + timeout_s
        assert 0.5 <= time.monotonic() - started < 3.0
    finally:
        d.close()


def test_wrong_acl_token_raises_auth_error_with_a_clear_message(acl_agent):
    bad = ConsulDiscovery(acl_agent.addr, token="wrong", timeout_s=2.0)
    anon = ConsulDiscovery(acl_agent.addr, timeout_s=2.0)
    good = ConsulDiscovery(acl_agent.addr, token="s3cret-token", timeout_s=2.0)
    try:
        with pytest.raises(DiscoveryAuthError, match="Consul refused the ACL token given .*ACL not found"):
            bad.register(ai(1))
        with pytest.raises(DiscoveryAuthError, match="ACL not found"):
            bad.instances("mesh-ai")
        with pytest.raises(DiscoveryAuthError, match="anonymous token .*Permission denied"):
            anon.register(ai(1))
        reg = good.register(ai(1), ttl_s=10)
        reg.heartbeat(Health.WARNING, "saturated 16/16")
        assert [i.health for i in good.instances("mesh-ai", passing_only=False)[1]] == [Health.WARNING]
        assert acl_agent.requests[-1][3] == "s3cret-token"
        assert "s3cret" not in repr(good)
    finally:
        for d in (bad, anon, good):
            d.close()


def test_a_read_emptied_by_acls_is_an_auth_error_not_an_empty_list(acl_agent):
    good = ConsulDiscovery(acl_agent.addr, token="s3cret-token", timeout_s=2.0)
    limited = ConsulDiscovery(acl_agent.addr, token="no-rules-token", timeout_s=2.0)
    acl_agent.limited_token = "no-rules-token"
    try:
        good.register(ai(1))
        with pytest.raises(DiscoveryAuthError, match="hid instances of 'mesh-ai' from the ACL token given.*service:read"):
            limited.instances("mesh-ai")
    finally:
        good.close()
        limited.close()


def test_environment_is_not_read(agent, monkeypatch):
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", "from-env")
    monkeypatch.setenv("CONSUL_HTTP_ADDR", "127.0.0.1:1")
    d = ConsulDiscovery(agent.addr)
    try:
        d.register(ai(1))
        assert agent.requests[-1][3] is None  # py-consul alone would have sent "from-env"
    finally:
        d.close()


def test_open_discovery_consul_url(acl_agent):
    d = open_discovery(f"consul://{acl_agent.addr}?timeout_s=1.5", consul=ConsulSettings(token="s3cret-token"))
    try:
        assert isinstance(d, ConsulDiscovery)
        d.register(ai(1))
        assert [i.instance_id for i in d.instances("mesh-ai")[1]] == ["ai-host-1"]
    finally:
        d.close()


def test_watch_keeps_last_membership_while_agent_is_down_and_recovers(agent, disco):
    reg = disco.register(ai(1), ttl_s=10)
    rec = Recorder()
    watch = Watch(disco, "mesh-ai", rec, wait_s=0.3, min_backoff_s=0.05, max_backoff_s=0.2)
    watch.start()
    try:
        wait_until(lambda: rec.calls == [["ai-host-1"]], what="first report")
        agent.stop()
        wait_until(lambda: watch.failures >= 2, what="failures")
        assert [i.instance_id for i in watch.last_known] == ["ai-host-1"]
        assert rec.calls == [["ai-host-1"]]
        agent.start()
        wait_until(lambda: watch.failures == 0, what="recovery")
        # the restarted agent lost us until our next heartbeat
        reg.heartbeat()
        wait_until(lambda: rec.calls[-1] == ["ai-host-1"] and len(rec.calls) >= 2, what="membership back")
    finally:
        watch.stop()


def test_watch_resets_the_index_when_the_agent_restarts(agent, disco):
    reg = disco.register(ai(1), ttl_s=10)
    for n in range(2, 12):  # push the agent's index well above a fresh agent's
        disco.register(ai(n), ttl_s=10).deregister()
    rec = Recorder()
    watch = Watch(disco, "mesh-ai", rec, wait_s=0.3, min_backoff_s=0.05, max_backoff_s=0.2)
    watch.start()
    try:
        wait_until(lambda: rec.calls == [["ai-host-1"]], what="first report")
        high = watch.index
        assert high > 20
        agent.restart()

        def heartbeat_until_reset():
            try:
                reg.heartbeat()
            except DiscoveryUnavailable:
                pass
            return watch.index_resets >= 1 and rec.calls[-1] == ["ai-host-1"]

        wait_until(heartbeat_until_reset, what="index reset and membership back")
        assert watch.index < high
    finally:
        watch.stop()


def test_go_duration():
    assert go_duration(10) == "10s"
    assert go_duration(0.25) == "250ms"
    assert go_duration(90.0) == "90s"
    with pytest.raises(Exception):
        go_duration(0)


def test_half_open_listener_does_not_hang_register():
    with socket.socket() as lsock:
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(8)  # the kernel accepts; nobody ever answers
        d = ConsulDiscovery(f"127.0.0.1:{lsock.getsockname()[1]}", timeout_s=0.3)
        try:
            started = time.monotonic()
            with pytest.raises(DiscoveryUnavailable):
                d.register(ai(1))
            assert time.monotonic() - started < 2.0
        finally:
            d.close()
