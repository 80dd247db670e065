"""open_discovery schemes, the static backend, env-to-URL, and instance validation."""

from __future__ import annotations

import pytest

from discovery import (
    DiscoveryError,
    EmbeddedDiscovery,
    Instance,
    StaticDiscovery,
    consul_url_from_env,
    default_registry_dir,
    open_discovery,
    redact_url,
    validate_instance,
)
from discovery.static import parse_static_spec


def test_static_spec_parses_services_hosts_and_ipv6():
    services = parse_static_spec("mesh-ai=10.0.0.1:5555,10.0.0.2:5556; mesh-helper=[::1]:7000")
    assert [(i.address, i.port) for i in services["mesh-ai"]] == [("10.0.0.1", 5555), ("10.0.0.2", 5556)]
    assert services["mesh-ai"][0].instance_id == "mesh-ai@10.0.0.1:5555"
    assert services["mesh-helper"][0].address == "::1"


@pytest.mark.parametrize("bad", ["mesh-ai", "mesh-ai=host", "mesh-ai=host:0", "mesh-ai=::1:5", "=h:1"])
def test_static_spec_rejects_bad_input_with_a_clear_error(bad):
    with pytest.raises(DiscoveryError):
        parse_static_spec(bad)


def test_static_backend_returns_the_list_and_registers_nothing():
    d = open_discovery("static://mesh-ai=127.0.0.1:5555,127.0.0.1:5556")
    assert isinstance(d, StaticDiscovery)
    index, found = d.instances("mesh-ai")
    assert index == 1 and len(found) == 2
    assert d.instances("other") == (1, [])
    reg = d.register(Instance("mesh-helper", "h-1", "127.0.0.1", 1))
    reg.heartbeat()
    reg.deregister()
    d.close()
    assert d.instances("mesh-ai", index=1, wait_s=30.0)[0] == 1  # closed: does not block


def test_open_discovery_embedded_schemes(tmp_path):
    d = open_discovery(f"embedded://{tmp_path}/reg")
    assert isinstance(d, EmbeddedDiscovery) and d.directory == tmp_path / "reg"
    assert (tmp_path / "reg").is_dir()
    with pytest.raises(DiscoveryError, match="three slashes"):
        open_discovery("embedded://relative/dir")


def test_open_discovery_default_is_embedded():
    for url in (None, "", "embedded://"):
        d = open_discovery(url)
        assert isinstance(d, EmbeddedDiscovery)
        assert d.directory == default_registry_dir()


def test_default_registry_dir_uses_xdg_runtime_dir(tmp_path):
    assert default_registry_dir({"XDG_RUNTIME_DIR": str(tmp_path)}) == tmp_path / "mesh" / "registry"
    assert str(default_registry_dir({})).endswith("/registry")


def test_open_discovery_rejects_unknown_schemes():
    with pytest.raises(DiscoveryError, match="unknown discovery scheme"):
        open_discovery("zookeeper://x:1")
    with pytest.raises(DiscoveryError, match="no scheme"):
        open_discovery("127.0.0.1:8500")


def test_consul_url_from_env():
    assert consul_url_from_env({}) is None
    assert consul_url_from_env({"CONSUL_HTTP_ADDR": "10.1.2.3:8500"}) == "consul://10.1.2.3:8500"
    # the token is never put in the URL: consul_settings_from_env carries it
    assert consul_url_from_env({"CONSUL_HTTP_ADDR": "http://c:8501", "CONSUL_HTTP_TOKEN": "s3cr/t"}) == (
        "consul://c:8501"
    )
    assert consul_url_from_env({"CONSUL_HTTP_ADDR": "https://c:8501"}) == "consul://c:8501?scheme=https"
    assert consul_url_from_env({"CONSUL_HTTP_ADDR": "c", "CONSUL_HTTP_SSL": "true"}) == (
        "consul://c:8500?scheme=https"
    )
    with pytest.raises(DiscoveryError):
        consul_url_from_env({"CONSUL_HTTP_ADDR": "unix:///var/run/consul.sock"})


def test_redact_url_hides_the_token():
    assert redact_url("consul://c:8500?token=secret&scheme=https") == "consul://c:8500?token=***&scheme=https"
    assert redact_url("consul://c:8500") == "consul://c:8500"
    assert redact_url("consul://tok3n@c:8500/") == "consul://***@c:8500/"


@pytest.mark.parametrize(
    "instance",
    [
        Instance("mesh ai", "x", "h", 1),
        Instance("mesh-ai", "../x", "h", 1),
        Instance("mesh-ai", "x", "h", 70000),
        Instance("mesh-ai", "x", "h", 1, meta={"ep.task": "tcp://h:1"}),
        Instance("mesh-ai", "x", "h", 1, meta={"consul-x": "1"}),
        Instance("mesh-ai", "x", "h", 1, meta={"k": "v" * 513}),
    ],
)
def test_validate_instance_rejects_what_some_backend_would_refuse(instance):
    with pytest.raises(DiscoveryError):
        validate_instance(instance)


def test_validate_instance_accepts_mesh_meta():
    validate_instance(
        Instance(
            "mesh-ai", "ai-host-123-ab12", "127.0.0.1", 5555, ("ai",),
            {"ep_task": "tcp://127.0.0.1:5555", "concurrency": "16", "version": "0.1.0", "protocol": "1",
             "incarnation": "9f2c"},
        )
    )
