"""The one settings definition: flags, MESH_* variables and the --config TOML file, with
flag > env > file > default, defaults read from mesh.settings, shown in --help."""

from __future__ import annotations

import os

import msgspec
import pytest

from mesh.settings import AINodeSettings, HelperSettings
from nodes import cli, settings_spec
from nodes.settings_spec import OPTIONS


def _parse(argv: list[str], monkeypatch, env: dict[str, str] | None = None):  # noqa: ANN001, ANN202
    for name in [k for k in os.environ if k.startswith("MESH_")]:
        monkeypatch.delenv(name)
    for key, value in (env or {}).items():
        monkeypatch.setenv(key, value)
    return cli.build_parser().parse_args(argv)


def test_flag_beats_env_beats_file_beats_default(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    conf = tmp_path / "mesh.toml"
    conf.write_text('max_attempts = 7\nretry_cap = 11\nlog_format = "json"\n'
                    "[helper]\nretry_base = 0.5\nkind_max_attempts = { vision = 8 }\n")
    args = _parse(["helper", "--config", str(conf), "--retry-cap", "9"], monkeypatch,
                  env={"MESH_MAX_ATTEMPTS": "5", "MESH_RETRY_CAP": "10"})
    assert args.retry_cap == 9.0 and args.mesh_sources["retry_cap"] == "flag"
    assert args.max_attempts == 5 and args.mesh_sources["max_attempts"] == "env MESH_MAX_ATTEMPTS"
    assert args.retry_base == 0.5 and args.mesh_sources["retry_base"] == f"file {conf}"
    assert args.log_format == "json"
    assert args.kind_max_attempts == ["vision=8"]
    assert args.max_pending == 200_000 and args.mesh_sources["max_pending"] == "default"


def test_defaults_come_from_the_settings_structs() -> None:
    helper = {f.name: f.default for f in msgspec.structs.fields(HelperSettings)}
    ai = {f.name: f.default for f in msgspec.structs.fields(AINodeSettings)}
    for opt in OPTIONS.values():
        if opt.setting is None:
            continue
        struct, field = opt.setting
        table = helper if struct is HelperSettings else ai if struct is AINodeSettings else None
        if table is not None:
            assert opt.default_for("helper") == table[field], opt.name
    assert OPTIONS["max_pending"].default_for("helper") == 200_000
    assert OPTIONS["concurrency"].default_for("ai") == 16


def test_every_node_option_has_help_and_shows_its_default_and_variable(capsys) -> None:  # noqa: ANN001
    for command in ("helper", "ai"):
        with pytest.raises(SystemExit):
            cli.build_parser().parse_args([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        for name in (*settings_spec.HELPER, *settings_spec.COMMON) if command == "helper" \
                else (*settings_spec.AI, *settings_spec.COMMON):
            opt = OPTIONS[name]
            assert opt.help, name
            assert opt.flag in text, (command, name)
            if opt.env_var:
                assert f"${opt.env_var}" in text, (command, name)
        assert "[default: 3; $MESH_MAX_ATTEMPTS]" in text or command == "ai"
        assert "[default: 16; $MESH_CONCURRENCY]" in text or command == "helper"


def test_existing_flags_and_variables_keep_working(monkeypatch) -> None:  # noqa: ANN001
    args = _parse(["ai", "--app", "m:app", "--helper", "tcp://a:1", "--helper", "tcp://b:2",
                   "--node-id", "n1", "--insecure"], monkeypatch,
                  env={"MESH_ADVERTISE_HOST": "10.0.0.6", "MESH_POOL": "gpu",
                       "MESH_KEY_DIR": "/k", "MESH_DISCOVERY": "embedded:///tmp/x",
                       "MESH_METRICS_PORT": "9102", "MESH_LOG_LEVEL": "debug"})
    assert args.helper == ["tcp://a:1", "tcp://b:2"] and args.insecure is True
    assert (args.advertise, args.pool, args.keys) == ("10.0.0.6", "gpu", "/k")
    assert (args.discovery, args.metrics_port, args.log_level) == ("embedded:///tmp/x", 9102,
                                                                   "DEBUG")
    assert args.service_name == "mesh-ai" and args.helper_service == "mesh-helper"
    helper = _parse(["helper"], monkeypatch)
    assert helper.service_name == "mesh-helper" and helper.kind_max_attempts == []


@pytest.mark.parametrize("env, file_text, message", [
    ({"MESH_MAX_ATTEMPTS": "three"}, "", "MESH_MAX_ATTEMPTS='three': not a valid int"),
    ({"MESH_FSYNC": "sometimes"}, "", "expected one of always"),
    ({"MESH_INSECURE": "maybe"}, "", "expected one of 1, true"),
    ({}, "max_atempts = 3\n", "no option is named 'max_atempts'"),
    ({}, "[helper]\nconcurrency_x = 3\n", "[helper] has no option 'concurrency_x'"),
    ({}, "no_alerts = 1\n", "expected true or false"),
    ({}, "max_attempts = [\n", "config file"),
])
def test_a_bad_value_is_a_usage_error_naming_it(tmp_path, monkeypatch, capsys, env, file_text,  # noqa: ANN001
                                                message) -> None:
    conf = tmp_path / "mesh.toml"
    conf.write_text(file_text)
    with pytest.raises(SystemExit) as exc:
        _parse(["helper", "--config", str(conf)], monkeypatch, env=env)
    assert exc.value.code == cli.EXIT_USAGE
    assert message in capsys.readouterr().err


def test_a_missing_config_file_is_a_usage_error(tmp_path, monkeypatch, capsys) -> None:  # noqa: ANN001
    with pytest.raises(SystemExit) as exc:
        _parse(["ai"], monkeypatch, env={"MESH_CONFIG": str(tmp_path / "nope.toml")})
    assert exc.value.code == cli.EXIT_USAGE
    assert "nope.toml does not exist" in capsys.readouterr().err


def test_config_show_prints_effective_values_and_sources(tmp_path, monkeypatch, capsys) -> None:  # noqa: ANN001
    conf = tmp_path / "mesh.toml"
    conf.write_text('[ai]\napp = "svc.tasks:app"\nconcurrency = 4\n')
    for name in [k for k in os.environ if k.startswith("MESH_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("MESH_PREFETCH", "2")
    assert cli.main(["config", "show", "--for", "ai", "--config", str(conf),
                     "--drain-grace", "5"]) == 0
    lines = {line.split("=", 1)[0].strip(): line for line in capsys.readouterr().out.splitlines()
             if "=" in line and not line.startswith("#")}
    assert lines["app"].split("#")[0].strip() == 'app = "svc.tasks:app"'
    assert lines["concurrency"].endswith(f"# file {conf}")
    assert lines["prefetch"].endswith("# env MESH_PREFETCH")
    assert lines["drain_grace"].endswith("# flag") and "5.0" in lines["drain_grace"]
    assert lines["run_timeout"].endswith("# default") and "300.0" in lines["run_timeout"]


def test_config_show_output_is_a_config_file_that_gives_the_same_values(tmp_path, monkeypatch,  # noqa: ANN001
                                                                       capsys) -> None:
    for name in [k for k in os.environ if k.startswith("MESH_")]:
        monkeypatch.delenv(name)
    cli.main(["config", "show", "--for", "helper", "--max-attempts", "6", "--kind-max-attempts",
              "ocr=2", "--insecure"])
    text = capsys.readouterr().out
    conf = tmp_path / "shown.toml"
    conf.write_text("[helper]\n" + "\n".join(
        line for line in text.splitlines() if not line.startswith("#")
        and not line.startswith("config ")))
    args = cli.build_parser().parse_args(["helper", "--config", str(conf)])
    assert (args.max_attempts, args.kind_max_attempts, args.insecure) == (6, ["ocr=2"], True)


def test_version_names_the_distribution(capsys) -> None:  # noqa: ANN001
    with pytest.raises(SystemExit) as exc:
        cli.build_parser().parse_args(["--version"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("mesh ") and "unknown" not in out  # metadata of mesh-tasks found


def test_rate_limits_from_the_environment_keep_their_commas(monkeypatch) -> None:  # noqa: ANN001
    """MESH_RATE_LIMIT items hold commas (`vision=50/s,burst=100`): they are separated by ';'
    or whitespace; the other list-valued variables still split on commas."""
    args = _parse(["helper"], monkeypatch, env={
        "MESH_RATE_LIMIT": "vision=50/s,burst=100; ocr=600/m,burst=20\nasr=5/s",
        "MESH_KIND_MAX_ATTEMPTS": "vision=5,ocr=2"})
    assert args.rate_limit == ["vision=50/s,burst=100", "ocr=600/m,burst=20", "asr=5/s"]
    assert args.kind_max_attempts == ["vision=5", "ocr=2"]
    one = _parse(["helper"], monkeypatch, env={"MESH_RATE_LIMIT": "vision=50/s,burst=100"})
    assert one.rate_limit == ["vision=50/s,burst=100"]
