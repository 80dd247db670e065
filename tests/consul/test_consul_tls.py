"""Consul over HTTPS with client certificates: the backend through py-consul against the fake
agent serving real TLS (a throwaway CA, a server certificate for 127.0.0.1, client certs)."""

from __future__ import annotations

import pytest

from discovery import (
    ConsulSettings,
    DiscoveryAuthError,
    DiscoveryError,
    Instance,
    Watch,
    consul_settings_from_env,
    consul_url_from_env,
    open_discovery,
)
from discovery.consul import ConsulDiscovery
from tests.support.waiting import wait_until


def ai(n: int = 1) -> Instance:
    return Instance("mesh-ai", f"ai-tls-{n}", "127.0.0.1", 5600 + n, ("ai",), {"ep_task": f"tcp://127.0.0.1:{5600 + n}"})


def tls_env(agent, pki) -> dict[str, str]:
    return {
        "CONSUL_HTTP_ADDR": agent.addr,
        "CONSUL_HTTP_SSL": "true",
        "CONSUL_CACERT": str(pki.ca),
        "CONSUL_CLIENT_CERT": str(pki.client_cert),
        "CONSUL_CLIENT_KEY": str(pki.client_key),
    }


def open_from(environ: dict[str, str]):
    return open_discovery(consul_url_from_env(environ), consul=consul_settings_from_env(environ))


def test_registers_and_watches_over_https_with_a_client_certificate(tls_agent, pki):
    d = open_from(tls_env(tls_agent, pki))
    try:
        assert isinstance(d, ConsulDiscovery) and d.addr == f"https://{tls_agent.addr}"
        reg = d.register(ai(1), ttl_s=10)
        reg.heartbeat()
        assert "ai-tls-1" in tls_agent.services()
        calls = []
        watch = Watch(d, "mesh-ai", lambda found: calls.append([i.instance_id for i in found]), wait_s=0.3)
        watch.start()
        try:
            wait_until(lambda: calls == [["ai-tls-1"]], what="first membership over TLS")
            d.register(ai(2), ttl_s=10)
            wait_until(lambda: calls[-1:] == [["ai-tls-1", "ai-tls-2"]], what="a blocking query woke over TLS")
        finally:
            watch.stop()
        reg.deregister()
        assert "ai-tls-1" not in tls_agent.services()
    finally:
        d.close()


def test_flags_win_over_the_environment(tls_agent, pki):
    env = {**tls_env(tls_agent, pki), "CONSUL_CACERT": str(pki.other_ca)}
    settings = consul_settings_from_env(env, ca_file=str(pki.ca))  # --consul-cacert
    d = open_discovery(consul_url_from_env(env), consul=settings)
    try:
        d.register(ai(1))
    finally:
        d.close()


def test_a_wrong_ca_is_refused_with_a_clear_error(tls_agent, pki):
    d = open_from({**tls_env(tls_agent, pki), "CONSUL_CACERT": str(pki.other_ca)})
    try:
        with pytest.raises(DiscoveryAuthError) as err:
            d.register(ai(1))
        message = str(err.value)
        assert f"TLS with the Consul agent at https://{tls_agent.addr} failed" in message
        assert "certificate verify failed" in message and "CONSUL_CACERT" in message
        with pytest.raises(DiscoveryAuthError, match="not signed by the CA we trust"):
            d.instances("mesh-ai")
        assert tls_agent.services() == {}
    finally:
        d.close()


@pytest.mark.parametrize("cert", ["none", "stranger"])
def test_the_agent_refuses_a_missing_or_foreign_client_certificate(tls_agent, pki, cert):
    env = tls_env(tls_agent, pki)
    if cert == "none":
        del env["CONSUL_CLIENT_CERT"], env["CONSUL_CLIENT_KEY"]
    else:
        env.update(CONSUL_CLIENT_CERT=str(pki.stranger_cert), CONSUL_CLIENT_KEY=str(pki.stranger_key))
    d = open_from(env)
    try:
        with pytest.raises(DiscoveryAuthError, match="refused our client certificate.*CONSUL_CLIENT_CERT"):
            d.register(ai(1))
        assert tls_agent.services() == {}
    finally:
        d.close()


def test_plain_http_to_an_https_agent_and_https_to_a_plain_one_say_so(tls_agent, agent, pki):
    plain = ConsulDiscovery(tls_agent.addr, timeout_s=2.0)
    to_plain = ConsulDiscovery(f"https://{agent.addr}", verify=str(pki.ca), timeout_s=2.0)
    try:
        with pytest.raises(DiscoveryError, match="Client sent an HTTP request to an HTTPS server"):
            plain.register(ai(1))
        with pytest.raises(DiscoveryError, match="Is the agent serving HTTPS on this port"):
            to_plain.register(ai(1))
    finally:
        plain.close()
        to_plain.close()


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_verify_off_skips_the_ca_check_but_still_sends_the_client_certificate(tls_agent, pki):
    env = {**tls_env(tls_agent, pki), "CONSUL_HTTP_SSL_VERIFY": "false"}
    del env["CONSUL_CACERT"]
    d = open_from(env)
    try:
        d.register(ai(1))
        assert "ai-tls-1" in tls_agent.services()
    finally:
        d.close()


def test_settings_refuse_missing_files_and_a_key_without_its_certificate(pki, tmp_path):
    with pytest.raises(DiscoveryError, match="CA file .*nope.pem"):
        consul_settings_from_env({"CONSUL_CACERT": str(tmp_path / "nope.pem")})
    with pytest.raises(DiscoveryError, match="key was given without its certificate"):
        ConsulSettings(client_key=str(pki.client_key))
    assert ConsulSettings(client_cert=str(pki.client_cert)).requests_cert == str(pki.client_cert)
    assert ConsulSettings(ca_file=str(pki.ca)).requests_verify == str(pki.ca)
    assert ConsulSettings(ca_file=str(pki.ca), verify=False).requests_verify is False
    with pytest.raises(DiscoveryError, match="CONSUL_HTTP_SSL_VERIFY"):
        consul_settings_from_env({"CONSUL_HTTP_SSL_VERIFY": "maybe"})


def test_an_ai_node_registers_over_tls_and_a_wrong_ca_stops_it_at_startup(tls_agent, pki, tmp_path):
    import signal

    from nodes.launch import NodeProcess

    env = {**tls_env(tls_agent, pki), "MESH_DISCOVERY": "", "PYTHONUNBUFFERED": "1"}
    with NodeProcess(["ai", "--node-id", "ai-tls", "--discovery-ttl", "1"], env=env,
                     log_path=tmp_path / "ok.log") as node:
        wait_until(lambda: [c["Output"] for c in tls_agent.checks().values()] == ["running 0/16"],
                   10, what="registered and heart-beating over TLS")
        node.signal(signal.SIGTERM)
        assert node.proc.wait(10) == 0
    assert tls_agent.services() == {}

    log = tmp_path / "wrong-ca.log"
    wrong = NodeProcess(["ai", "--node-id", "ai-tls", "--discovery-ttl", "1", "--consul-cacert", str(pki.other_ca)],
                        env=env, log_path=log)
    try:
        with pytest.raises(RuntimeError, match="exited with 3 before READY"):
            wrong.start()
    finally:
        wrong.stop()
    text = log.read_text()
    assert "mesh ai: TLS with the Consul agent at https://" in text and "CONSUL_CACERT" in text, text
