"""Every option of the node programs, defined once: name, type, default, help.

One `Option` gives a command-line flag (`--max-attempts`), an environment variable
(`MESH_MAX_ATTEMPTS`) and a key of the TOML file named by `--config` / `$MESH_CONFIG`
(`max_attempts`, at the top level for every command or in the command's table, `[helper]`).
What is set where wins in this order: flag > environment > file > default. A default that is a
mesh setting is read from its `mesh.settings` Struct, never written twice.

    # mesh.toml
    log_format = "json"            # every command
    [helper]
    max_attempts = 5
    kind_max_attempts = { vision = 8 }
    [ai]
    app = "myservice.tasks:app"
    concurrency = 32

`mesh config show --for helper [FLAGS...]` prints the effective values and where each came from.
The parsers of the `mesh` command resolve their options as they parse (`MeshParser`), so
`args.max_attempts` holds the effective value and `args.mesh_sources` says where it came from.
"""

from __future__ import annotations

import argparse
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import msgspec

from mesh.alerts import AlertPublisherSettings
from mesh.settings import (
    BREAKER_MODES, EXECUTORS, FSYNC_POLICIES, AINodeSettings, HelperSettings,
)

CONFIG_ENV = "MESH_CONFIG"
SOURCES_ATTR = "mesh_sources"
TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off", "")


@dataclass(frozen=True)
class Option:
    """One option. `setting` = (Struct, field): the default comes from there. `default` may be
    a dict by command ("helper", "ai", ...) for the few whose default depends on it.
    `env` "" is MESH_<NAME>; None means no variable (e.g. Consul's own CONSUL_* apply)."""

    name: str
    help: str
    type: Callable = str
    default: object = None
    setting: tuple[type, str] | None = None
    kind: str = "value"  # value | switch (a flag without argument) | list (repeatable)
    choices: tuple = ()
    env: str | None = ""
    metavar: str | None = None
    required: bool = False  # checked by the command (a one-line message), not by argparse
    #: what separates a list's items in its environment variable (a regular expression);
    #: another than "," for items that hold commas themselves (`vision=50/s,burst=100`)
    env_sep: str = ","

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env_var(self) -> str | None:
        if self.env is None:
            return None
        return self.env or "MESH_" + self.name.upper()

    def default_for(self, command: str) -> object:
        if self.setting is not None:
            struct, name = self.setting
            for f in msgspec.structs.fields(struct):
                if f.name == name:
                    if f.default is not msgspec.NODEFAULT:
                        return f.default
                    return f.default_factory()
            raise KeyError(f"{struct.__name__} has no field {name}")  # a bug in this table
        if isinstance(self.default, dict):
            return self.default.get(command)
        if self.kind == "list":
            return []
        if self.kind == "switch":
            return False
        return self.default


def _o(name: str, help: str, **kw) -> Option:  # noqa: A002, ANN003
    return Option(name, help, **kw)


H, A = HelperSettings, AINodeSettings

OPTIONS: dict[str, Option] = {o.name: o for o in [
    # -- every node ---------------------------------------------------------------------------
    _o("config", "TOML file of options (top-level keys, and a table per command, e.g. [helper])",
       env=CONFIG_ENV, metavar="FILE"),
    _o("discovery", "embedded:///dir | static://svc=h:p,... | consul://host:port (unset: Consul "
       "if CONSUL_HTTP_ADDR is set, else the embedded registry)", metavar="URL"),
    _o("discovery_wait", "seconds to wait at start for discovery that does not answer, then exit "
       "with code 3", type=float, default=10.0),
    _o("metrics_port", "serve Prometheus /metrics on this port (0 = any free port; unset: off)",
       type=int, metavar="PORT"),
    _o("metrics_addr", "address the metrics port binds", default="127.0.0.1"),
    _o("log_level", "DEBUG, INFO, WARNING or ERROR", default="INFO", type=str.upper,
       choices=("DEBUG", "INFO", "WARNING", "ERROR")),
    _o("log_format", "text, or json: one object per line (ts, level, logger, msg, task_id, "
       "node_id, ...)", default="text", choices=("text", "json")),
    _o("consul_token_file", "file holding the Consul ACL token (unset: $CONSUL_HTTP_TOKEN_FILE, "
       "else $CONSUL_HTTP_TOKEN)", env=None, metavar="PATH"),
    _o("consul_cacert", "CA to verify the agent's HTTPS certificate with (unset: $CONSUL_CACERT)",
       env=None, metavar="PATH"),
    _o("consul_client_cert", "client certificate for an agent that verifies incoming HTTPS "
       "(unset: $CONSUL_CLIENT_CERT)", env=None, metavar="PATH"),
    _o("consul_client_key", "its key (unset: $CONSUL_CLIENT_KEY)", env=None, metavar="PATH"),
    _o("keys", "CURVE key store (unset: $XDG_DATA_HOME/mesh/keys); made on first use",
       env="MESH_KEY_DIR", metavar="DIR"),
    _o("insecure", "plain, unauthenticated links (warns at every start)", kind="switch"),
    # -- registration in discovery ------------------------------------------------------------
    _o("service_name", "service to register as",
       default={"helper": "mesh-helper", "ai": "mesh-ai"}),
    _o("ai_service", "service of the AI nodes a Helper follows", default="mesh-ai"),
    _o("helper_service", "service of the Helpers an AI node follows", default="mesh-helper"),
    _o("pool", "pool tag (pool=NAME); nodes pair only within one pool (unset: none)"),
    _o("advertise", "host or IP other nodes reach this one at; a wildcard bind uses its IP",
       env="MESH_ADVERTISE_HOST", metavar="HOST"),
    _o("discovery_ttl", "seconds without a heartbeat before the check goes critical", type=float,
       default=3.0),
    _o("deregister_after", "seconds critical before Consul removes the registration (Consul "
       "enforces 60 at least)", type=float, default=60.0),
    # -- mesh helper --------------------------------------------------------------------------
    _o("helper_id", "stable id; owns the data dir", default="helper-1"),
    _o("data_dir", "journal directory, made 0700; one Helper at a time (a second exits with "
       "code 75) (unset: $MESH_DATA_DIR/ID, else ./mesh-data/ID)", env=None, metavar="DIR"),
    _o("intake", "client endpoint to bind", setting=(H, "intake_endpoint")),
    _o("acks", "ack endpoint to bind", setting=(H, "ack_endpoint")),
    _o("fsync", "journal fsync policy", setting=(H, "fsync_policy"), choices=FSYNC_POLICIES),
    _o("max_attempts", "attempts per task unless the task or its kind says otherwise", type=int,
       setting=(H, "max_attempts")),
    _o("kind_max_attempts", "attempts for one task kind (repeatable; env: comma-separated; file: "
       "a table); a task's own still wins", kind="list", metavar="KIND=N"),
    _o("max_pending", "tasks queued at most; past it a submit is refused (QueueFull)", type=int,
       setting=(H, "max_pending_tasks")),
    _o("max_pending_bytes", "payload bytes queued at most", type=int,
       setting=(H, "max_pending_bytes")),
    _o("node_dead_after", "seconds an AI node may stay silent before it is declared dead",
       type=float, setting=(H, "node_dead_after_s")),
    _o("ack_timeout", "seconds a delivery may wait for STARTED before it is sent again",
       type=float, setting=(H, "ack_timeout_s")),
    _o("unroutable_grace", "seconds a task of a kind no live node serves waits before DEAD",
       type=float, setting=(H, "unroutable_grace_s")),
    _o("refuse_unknown_kinds", "refuse a submit (INVALID_TASK) for a kind no AI node has "
       "announced since this Helper started (from --node-dead-after seconds after its start, "
       "when every live node has been heard from)", kind="switch",
       setting=(H, "refuse_unknown_kinds")),
    _o("dispatch_before_sync", "send a task to a node while its journal record is being synced",
       kind="switch", setting=(H, "dispatch_before_sync")),
    _o("retry_base", "retry backoff base, seconds", type=float, setting=(H, "retry_base_s")),
    _o("retry_cap", "retry backoff cap, seconds", type=float, setting=(H, "retry_cap_s")),
    _o("max_lost_deliveries", "running deliveries lost with their node before a task is DEAD",
       type=int, setting=(H, "max_lost_deliveries")),
    _o("journal_segment_bytes", "size of a journal segment file", type=int,
       setting=(H, "journal_segment_bytes")),
    _o("max_dead_letters", "dead letters kept; past it (or the bytes bound) the oldest is "
       "forgotten", type=int, setting=(H, "max_dead_letters")),
    _o("max_dead_letter_bytes", "bytes of dead letters kept", type=int,
       setting=(H, "max_dead_letter_bytes")),
    _o("max_result_waiters", "result long-polls held at once", type=int,
       setting=(H, "max_result_waiters")),
    _o("max_result_waiters_per_client", "result long-polls held at once per client", type=int,
       setting=(H, "max_result_waiters_per_client")),
    _o("max_reply_bytes", "bytes of one reply to a client", type=int,
       setting=(H, "max_reply_bytes")),
    _o("max_unread_reply_bytes", "bytes of large replies a client may leave unread", type=int,
       setting=(H, "max_unread_reply_bytes")),
    _o("max_nodes", "live AI node ids tracked at once; heartbeats of new ids beyond are dropped",
       type=int, setting=(H, "max_nodes")),
    _o("max_node_ids_per_key", "live AI node ids one ai-node key may hold", type=int,
       setting=(H, "max_node_ids_per_key")),
    _o("rate_limit", "dispatch rate of a kind, e.g. vision=50/s or ocr=600/m,burst=20 "
       "(repeatable; env: separated by ';' or whitespace, since an item holds commas); split "
       "evenly among the Helpers in discovery", kind="list", env_sep=r"[;\s]+",
       metavar="KIND=RATE"),
    _o("breakers", "circuit breakers per dependency a handler names (DependencyDown), per task "
       "kind too (all: its retryable failures, timeouts, child deaths), or off",
       setting=(H, "breakers"), choices=BREAKER_MODES),
    _o("breaker_failure_ratio", "a breaker opens when failures reach this share of its window",
       type=float, setting=(H, "breaker_failure_ratio"), metavar="RATIO"),
    _o("breaker_min_calls", "outcomes in a breaker's window before it may open", type=int,
       setting=(H, "breaker_min_calls")),
    _o("breaker_window_calls", "outcomes a breaker's window holds at most", type=int,
       setting=(H, "breaker_window_calls")),
    _o("breaker_window", "a breaker's window, seconds", type=float,
       setting=(H, "breaker_window_s")),
    _o("breaker_cool_down", "seconds a breaker stays open before one probe goes (doubled per "
       "failed probe)", type=float, setting=(H, "breaker_cool_down_s")),
    _o("breaker_max_cool_down", "the longest cool-down, seconds", type=float,
       setting=(H, "breaker_max_cool_down_s")),
    _o("no_alerts", "do not publish the Helper's own fault alerts", kind="switch"),
    _o("alerts_bind", "alert PUB endpoint", setting=(AlertPublisherSettings, "pub_endpoint")),
    _o("alerts_replay_bind", "alert replay endpoint",
       setting=(AlertPublisherSettings, "replay_endpoint")),
    # -- mesh ai ------------------------------------------------------------------------------
    _o("app", "module:attribute of your mesh.App (required; the current directory is on the "
       "import path)", metavar="MODULE:APP", required=True),
    _o("node_id", "stable id of this AI node (unset: ai-HOST-PID)"),
    _o("bind", "task endpoint to bind", setting=(A, "task_endpoint")),
    _o("concurrency", "tasks run at once", type=int, setting=(A, "concurrency")),
    _o("prefetch", "deliveries accepted beyond --concurrency, waiting for a slot (0: work goes "
       "to free slots; see docs/decisions/005-failure-semantics.md)", type=int,
       setting=(A, "prefetch")),
    _o("helper", "a Helper's ack endpoint (repeatable; discovery adds the rest)", kind="list",
       metavar="ENDPOINT"),
    _o("drain_grace", "seconds running tasks may take to finish on SIGTERM", type=float,
       setting=(A, "drain_grace_s")),
    _o("run_timeout", "run timeout of a task that carries none and whose handler sets none",
       type=float, setting=(A, "run_timeout_s")),
    _o("max_result_bytes", "largest result sent; a larger one fails the attempt (FATAL); keep it "
       "at or below the Helpers' max payload", type=int, setting=(A, "max_result_bytes")),
    _o("max_helpers", "Helper links at most; deliveries needing one more are refused", type=int,
       setting=(A, "max_helpers")),
    _o("executor", "where handlers run: async (async ones on the loop, sync ones in threads), "
       "thread (all in threads), process (all in --concurrency child processes: hangs "
       "killed, crashes contained)", setting=(A, "executor"), choices=EXECUTORS),
    _o("max_tasks_per_child", "process executor: replace a child after this many tasks "
       "(0: never)", type=int, setting=(A, "max_tasks_per_child")),
    _o("max_memory_per_child", "process executor: replace a child whose RSS after a task is "
       "above this (bytes, or 512M, 2G; 0: never)", default="0", metavar="BYTES"),
    _o("child_kill_grace", "process executor: SIGKILL this long after the SIGTERM of a child "
       "whose run passed its timeout", type=float, setting=(A, "child_kill_grace_s")),
]}

COMMON = ("config", "discovery", "metrics_port", "metrics_addr", "log_level", "log_format")
CONSUL = ("consul_token_file", "consul_cacert", "consul_client_cert", "consul_client_key")
TRUST = ("keys", "insecure")
REGISTRATION = ("service_name", "pool", "advertise", "discovery_ttl", "deregister_after",
                "discovery_wait")
HELPER = ("helper_id", "data_dir", "intake", "acks", "fsync", "max_attempts",
          "kind_max_attempts", "max_pending", "max_pending_bytes", "node_dead_after",
          "ack_timeout", "unroutable_grace", "refuse_unknown_kinds", "dispatch_before_sync",
          "retry_base", "retry_cap", "max_lost_deliveries", "journal_segment_bytes",
          "max_dead_letters", "max_dead_letter_bytes", "max_result_waiters",
          "max_result_waiters_per_client", "max_reply_bytes", "max_unread_reply_bytes",
          "max_nodes", "max_node_ids_per_key", "no_alerts", "alerts_bind", "alerts_replay_bind",
          "ai_service", "rate_limit", "breakers", "breaker_failure_ratio", "breaker_min_calls",
          "breaker_window_calls", "breaker_window", "breaker_cool_down",
          "breaker_max_cool_down")
AI = ("app", "node_id", "bind", "concurrency", "prefetch", "helper", "drain_grace",
      "run_timeout", "max_result_bytes", "max_helpers", "helper_service", "executor",
      "max_tasks_per_child", "max_memory_per_child", "child_kill_grace")


class ConfigValueError(ValueError):
    """A value from the environment or the file that the option does not take."""


def command_of(parser: argparse.ArgumentParser) -> str:
    """`mesh helper` -> "helper", `mesh alert publish` -> "alert.publish"."""
    return ".".join(parser.prog.split()[1:])


def add_options(parser: argparse.ArgumentParser, names: tuple[str, ...] | list[str],
                group: argparse._ArgumentGroup | None = None) -> None:
    """Add the flags of `names` to `parser` (or one of its groups), with the default and the
    variable in the help. The parser remembers them: `MeshParser` resolves them after parsing."""
    command = command_of(parser)
    target = group or parser
    known = getattr(parser, "_mesh_options", None)
    if known is None:
        known = parser._mesh_options = []  # type: ignore[attr-defined]
    for name in names:
        if name in known:
            continue
        opt = OPTIONS[name]
        known.append(name)
        default = opt.default_for(command)
        shown = [f"default: {_show(default)}" if default not in (None, [], False) else ""]
        if opt.env_var:
            shown.append(f"${opt.env_var}")
        tail = "; ".join(s for s in shown if s)
        help_text = f"{opt.help} [{tail}]" if tail else opt.help
        kwargs: dict = {"dest": name, "default": argparse.SUPPRESS, "help": help_text}
        if opt.kind == "switch":
            kwargs["action"] = "store_true"
        else:
            kwargs["type"] = opt.type
            kwargs["metavar"] = opt.metavar or {int: "N", float: "SECONDS"}.get(opt.type,
                                                                                name.upper())
            if opt.kind == "list":
                kwargs["action"] = "append"
            if opt.choices:
                kwargs["choices"] = opt.choices
                kwargs.pop("metavar")
        target.add_argument(opt.flag, **kwargs)


def _show(value: object) -> str:
    if isinstance(value, str):
        return value or '""'
    if isinstance(value, int) and not isinstance(value, bool) and value >= 2**20 \
            and value % 2**20 == 0:
        return f"{value} ({value // 2**20} MiB)"
    return str(value)


# -- resolution -------------------------------------------------------------------------------

def resolve(namespace: argparse.Namespace, names: list[str], command: str,
            environ: Mapping[str, str]) -> dict[str, str]:
    """Fill `namespace` with the effective value of every option in `names` (flag > env > file >
    default); returns where each came from: "flag", "env MESH_X", "file PATH" or "default".
    Raises ConfigValueError naming the option, the value and its source."""
    sources: dict[str, str] = {}
    given = {name for name in names if hasattr(namespace, name)}
    config_path = getattr(namespace, "config", None) or environ.get(CONFIG_ENV) or None
    table = load_file(config_path, command) if config_path else {}
    for name in names:
        opt = OPTIONS[name]
        if name in given:
            sources[name] = "flag"
            continue
        env = opt.env_var
        if env and env in environ:
            value, source = _from_env(opt, environ[env]), f"env {env}"
        elif name in table:
            value, source = _from_file(opt, table[name], config_path), f"file {config_path}"
        else:
            value, source = opt.default_for(command), "default"
            if isinstance(value, list | dict):
                value = _copy(value)
        setattr(namespace, name, value)
        sources[name] = source
    return sources


def _copy(value: object) -> object:
    return list(value) if isinstance(value, list) else dict(value)  # type: ignore[arg-type]


def load_file(path: str, command: str) -> dict[str, object]:
    """The keys of the TOML file that apply to `command`: top-level ones, overridden by those of
    its table ([helper]; [alert.publish] for `mesh alert publish`). A key no option has is an
    error (a typo would otherwise be ignored)."""
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigValueError(f"config file {path} does not exist") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigValueError(f"config file {path}: {exc}") from None
    out: dict[str, object] = {}
    tables: dict[str, dict] = {}
    for key, value in data.items():
        if key in OPTIONS and not (isinstance(value, dict) and key != "kind_max_attempts"):
            out[key] = value
        elif isinstance(value, dict):
            tables[key] = value
        else:
            raise ConfigValueError(f"config file {path}: no option is named {key!r}")
    section: object = tables
    for part in command.split("."):
        section = section.get(part, {}) if isinstance(section, dict) else {}
    for key, value in (section or {}).items():
        if key not in OPTIONS:
            if isinstance(value, dict):
                continue  # a deeper command's table ([alert.publish] inside [alert])
            raise ConfigValueError(f"config file {path}: [{command}] has no option {key!r}")
        out[key] = value
    out.pop("config", None)
    return out


def _from_env(opt: Option, text: str) -> object:
    where = f"${opt.env_var}={text!r}"
    if opt.kind == "switch":
        if text.strip().lower() in TRUE_WORDS:
            return True
        if text.strip().lower() in FALSE_WORDS:
            return False
        raise ConfigValueError(f"{where}: expected one of {', '.join(TRUE_WORDS + FALSE_WORDS[:-1])}")
    if opt.kind == "list":
        return [_convert(opt, item.strip(), where) for item in re.split(opt.env_sep, text)
                if item.strip()]
    return _convert(opt, text, where)


def _from_file(opt: Option, value: object, path: str) -> object:
    where = f"config file {path}: {opt.name} = {value!r}"
    if opt.kind == "switch":
        if not isinstance(value, bool):
            raise ConfigValueError(f"{where}: expected true or false")
        return value
    if opt.kind == "list":
        if isinstance(value, dict):  # kind_max_attempts = { vision = 5 }
            return [f"{k}={v}" for k, v in value.items()]
        items = value if isinstance(value, list) else [value]
        return [_convert(opt, str(item), where) for item in items]
    if isinstance(value, bool) or isinstance(value, dict | list):
        raise ConfigValueError(f"{where}: expected a single {opt.type.__name__} value")
    return _convert(opt, str(value), where)


def _convert(opt: Option, text: str, where: str) -> object:
    try:
        value = opt.type(text)
    except ValueError:
        raise ConfigValueError(f"{where}: not a valid {opt.type.__name__}") from None
    if opt.choices and value not in opt.choices:
        raise ConfigValueError(f"{where}: expected one of {', '.join(opt.choices)}")
    return value


class MeshParser(argparse.ArgumentParser):
    """An ArgumentParser whose (sub)commands resolve their `Option`s as they parse: a flag not
    given is filled from the environment, the --config file or the default. A command with a
    `passthrough` default (mesh config show) gets the arguments it does not know there."""

    def parse_args(self, args=None, namespace=None):  # noqa: ANN001, ANN201
        namespace, extras = self.parse_known_args(args, namespace)
        if extras:
            if not isinstance(getattr(namespace, "passthrough", None), list):
                self.error(f"unrecognized arguments: {' '.join(extras)}")
            namespace.passthrough = extras
        return namespace

    def parse_known_args(self, args=None, namespace=None):  # noqa: ANN001, ANN201
        namespace, rest = super().parse_known_args(args, namespace)
        names = getattr(self, "_mesh_options", None)
        if names and not hasattr(namespace, SOURCES_ATTR):
            try:
                sources = resolve(namespace, names, command_of(self), os.environ)
            except ConfigValueError as exc:
                self.error(str(exc))
            setattr(namespace, SOURCES_ATTR, sources)
        return namespace, rest


# -- mesh config show -------------------------------------------------------------------------

def register_commands(sub: argparse._SubParsersAction,
                      build_parser: Callable[[], argparse.ArgumentParser]) -> None:
    p = sub.add_parser("config", help="the effective options of a command and their sources",
                       description="mesh config show [--for COMMAND] [FLAGS...]: what COMMAND "
                                   "would run with, given FLAGS (flag > $MESH_* > --config file > default), "
                                   "as TOML, each value with where it came from")
    config_sub = p.add_subparsers(dest="config_command", required=True)
    show = config_sub.add_parser("show", help="print the effective values and their sources")
    show.add_argument("--for", dest="for_command", default="helper", metavar="COMMAND",
                      help="helper, ai, notifier, http, ... [default: helper]")
    show.set_defaults(passthrough=[],
                      func=lambda a: show_config(build_parser(), a.for_command, a.passthrough))


def show_config(parser: argparse.ArgumentParser, command: str, flags: list[str],
                out: Callable[[str], None] = print) -> int:
    args = parser.parse_args([*command.split("."), *flags])
    sources: dict[str, str] = getattr(args, SOURCES_ATTR, {})
    if not sources:
        parser.error(f"mesh {command.replace('.', ' ')} has no options to show")
    out(f"# mesh {command.replace('.', ' ')}: effective options "
        "(flag > environment > config file > default)")
    width = max(len(n) for n in sources) + 3
    for name, source in sources.items():
        value = getattr(args, name)
        line = f"{name} = {_toml(value)}" if value is not None else f"# {name} unset"
        out(f"{line:<{width + 28}} # {source}")
    return 0


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
