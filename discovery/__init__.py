"""Service discovery for the mesh: register a node, watch the nodes of a service.

Backends, chosen by URL with `open_discovery(url)`:

- None, "" or "embedded://"      lease files in the default directory (one host, no server)
- "embedded:///some/dir"          lease files in /some/dir
- "static://svc=h:p,h:p;svc2=h:p" a fixed list; register() does nothing
- "consul://host:port"            a Consul agent (also `scheme=https`, `timeout_s=5`);
                                  "consul://" is 127.0.0.1:8500. The ACL token and TLS files
                                  come in `consul=ConsulSettings(...)`, never in the URL: a URL
                                  with a token in it is refused (it would show in `ps` and logs)

This package reads no environment variable for Consul: nodes/ calls
`consul_url_from_env(os.environ)` and `consul_settings_from_env(os.environ, ...)` and passes
the results.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping

from discovery.base import (
    Discovery,
    DiscoveryAuthError,
    DiscoveryError,
    DiscoveryUnavailable,
    Health,
    Instance,
    NoopRegistration,
    Registration,
    Watch,
    is_unspecified_address,
    parse_addr,
    validate_instance,
)
from discovery.consul_settings import ConsulSettings, consul_settings_from_env, read_token_file
from discovery.embedded import (
    EmbeddedDiscovery,
    default_registry_dir,
    default_runtime_dir,
    ensure_private_dirs,
    private_runtime_dir,
)
from discovery.static import StaticDiscovery

__all__ = [
    # values
    "Health",
    "Instance",
    # interfaces and helpers
    "Discovery",
    "Registration",
    "NoopRegistration",
    "Watch",
    "validate_instance",
    "is_unspecified_address",
    # errors
    "DiscoveryError",
    "DiscoveryUnavailable",
    "DiscoveryAuthError",
    # backends
    "EmbeddedDiscovery",
    "StaticDiscovery",
    "default_registry_dir",
    "default_runtime_dir",
    "ensure_private_dirs",
    "private_runtime_dir",
    # construction
    "open_discovery",
    "consul_url_from_env",
    "consul_settings_from_env",
    "ConsulSettings",
    "read_token_file",
    "redact_url",
]


def open_discovery(url: str | None, *, consul: ConsulSettings | None = None) -> Discovery:
    """Build the backend named by `url` (see the module docstring). Raises DiscoveryError.

    `consul` carries the ACL token and TLS files for a consul:// URL (ignored otherwise)."""
    if not url:
        return EmbeddedDiscovery()
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise DiscoveryError(f"discovery URL {redact_url(url)!r} has no scheme; use embedded://, static:// or consul://")
    scheme = scheme.lower()
    if scheme == "embedded":
        parts = urllib.parse.urlsplit(url)
        if parts.netloc:
            raise DiscoveryError(
                f"discovery URL {url!r}: write an absolute directory with three slashes, e.g. embedded:///run/mesh"
            )
        return EmbeddedDiscovery(urllib.parse.unquote(parts.path) or None)
    if scheme == "static":
        return StaticDiscovery.from_spec(rest)
    if scheme == "consul":
        from discovery.consul import ConsulDiscovery  # needs requests + py-consul; imported on demand

        parts = urllib.parse.urlsplit(url)
        query = urllib.parse.parse_qs(parts.query, keep_blank_values=True)
        if "token" in query or parts.username or parts.password:
            raise DiscoveryError(
                f"discovery URL {redact_url(url)!r} carries an ACL token; a token in a URL shows in `ps` "
                "and in logs. Remove it and put the token in CONSUL_HTTP_TOKEN or in a file named by "
                "CONSUL_HTTP_TOKEN_FILE / --consul-token-file"
            )
        settings = consul or ConsulSettings()
        http_scheme = query.get("scheme", ["https" if settings.https else "http"])[0]
        if settings.https:
            http_scheme = "https"
        if http_scheme not in ("http", "https"):
            raise DiscoveryError(f"discovery URL {redact_url(url)!r}: scheme must be http or https")
        kwargs = {}
        if "timeout_s" in query:
            try:
                kwargs["timeout_s"] = float(query["timeout_s"][0])
            except ValueError:
                raise DiscoveryError(f"discovery URL {redact_url(url)!r}: timeout_s must be a number") from None
        try:
            port = parts.port
        except ValueError:
            raise DiscoveryError(f"discovery URL {redact_url(url)!r}: bad port") from None
        host = parts.hostname or "127.0.0.1"
        addr = f"{http_scheme}://{_bracket(host)}:{port or 8500}"
        return ConsulDiscovery(
            addr=addr, token=settings.token, verify=settings.requests_verify, cert=settings.requests_cert, **kwargs
        )
    raise DiscoveryError(f"unknown discovery scheme {scheme!r} in {redact_url(url)!r}; use embedded://, static:// or consul://")


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def consul_url_from_env(environ: Mapping[str, str]) -> str | None:
    """A consul:// URL from CONSUL_HTTP_ADDR and CONSUL_HTTP_SSL, or None.

    CONSUL_HTTP_ADDR may be `host:port`, `http://host:port` or `https://host:port`. The token
    is not put in the URL: consul_settings_from_env reads it.
    """
    addr = (environ.get("CONSUL_HTTP_ADDR") or "").strip()
    if not addr:
        return None
    if addr.startswith("unix://"):
        raise DiscoveryError(f"CONSUL_HTTP_ADDR={addr!r}: unix sockets are not supported; use host:port")
    scheme, host, port = parse_addr(addr, what="CONSUL_HTTP_ADDR")
    if (environ.get("CONSUL_HTTP_SSL") or "").lower() in ("1", "true"):
        scheme = "https"
    query = {}
    if scheme != "http":
        query["scheme"] = scheme
    url = f"consul://{_bracket(host)}:{port}"
    if query:
        url += "?" + urllib.parse.urlencode(query)
    return url


def redact_url(url: str) -> str:
    """The URL with any token value (or user:password) replaced by `***`, for logs and errors."""
    head, sep, query = url.partition("?")
    scheme, colon, rest = head.partition("://")
    if colon and "@" in rest.partition("/")[0]:
        head = f"{scheme}://***@{rest.split('@', 1)[1]}"
    if not sep:
        return head
    pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
    return head + "?" + "&".join(f"{k}={'***' if k == 'token' else v}" for k, v in pairs)
