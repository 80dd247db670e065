"""How to reach a Consul agent: TLS files and the ACL token, from Consul's own variables.

The address comes in a consul:// URL; everything secret or file-based comes here, in
`ConsulSettings`, so the ACL token never sits in a URL, a command line (`ps`), a log line or
an exception message. nodes/ calls `consul_settings_from_env(os.environ, <flags>)`; this
package reads no environment itself.

Variables, as the `consul` CLI reads them:
- CONSUL_HTTP_TOKEN        the ACL token
- CONSUL_HTTP_TOKEN_FILE   a file holding the token (wins over CONSUL_HTTP_TOKEN, as in Consul's
                           Go client); the flag --consul-token-file wins over both
- CONSUL_HTTP_SSL          true: talk HTTPS even when the address has no https://
- CONSUL_HTTP_SSL_VERIFY   false: do not verify the agent's certificate (never in production)
- CONSUL_CACERT            the CA bundle to verify the agent with (else the system's)
- CONSUL_CLIENT_CERT, CONSUL_CLIENT_KEY   our client certificate, when the agent asks for one
                           (verify_incoming); the key may also sit in the certificate file
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field

from discovery.base import DiscoveryError

log = logging.getLogger(__name__)

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


@dataclass(frozen=True, slots=True)
class ConsulSettings:
    """Credentials and TLS for a Consul agent. The token is kept out of repr()."""

    token: str | None = field(default=None, repr=False)
    https: bool = False
    verify: bool = True
    ca_file: str | None = None
    client_cert: str | None = None
    client_key: str | None = None

    def __post_init__(self) -> None:
        if self.client_key and not self.client_cert:
            raise DiscoveryError("a Consul client key was given without its certificate (CONSUL_CLIENT_CERT)")
        for what, path in (("CA file", self.ca_file), ("client certificate", self.client_cert),
                           ("client key", self.client_key)):
            if path and not os.path.isfile(path):
                raise DiscoveryError(f"Consul {what} {path!r} is not a readable file")

    def __repr__(self) -> str:
        return (f"ConsulSettings(token={'***' if self.token else None}, https={self.https}, "
                f"verify={self.verify}, ca_file={self.ca_file!r}, client_cert={self.client_cert!r}, "
                f"client_key={self.client_key!r})")

    @property
    def requests_verify(self) -> bool | str:
        """What requests (and so py-consul) takes as `verify`: False, a CA path, or True."""
        if not self.verify:
            return False
        return self.ca_file or True

    @property
    def requests_cert(self) -> tuple[str, str] | str | None:
        if not self.client_cert:
            return None
        return (self.client_cert, self.client_key) if self.client_key else self.client_cert


def read_token_file(path: str) -> str:
    """The token in `path`, stripped. Errors name the file, never its content."""
    try:
        with open(path, encoding="utf-8") as f:
            mode = os.fstat(f.fileno()).st_mode
            token = f.read().strip()
    except OSError as exc:
        raise DiscoveryError(f"cannot read the Consul token file {path!r}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise DiscoveryError(f"the Consul token file {path!r} is not text") from None
    if not token:
        raise DiscoveryError(f"the Consul token file {path!r} is empty")
    if "\n" in token:
        raise DiscoveryError(f"the Consul token file {path!r} holds more than one line; put only the token in it")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("the Consul token file %r is readable by other users (mode %o); chmod 600 it",
                    path, stat.S_IMODE(mode))
    return token


def _flag(environ: Mapping[str, str], name: str, default: bool) -> bool:
    value = (environ.get(name) or "").strip().lower()
    if not value:
        return default
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise DiscoveryError(f"{name}={value!r}: expected true or false")


def consul_settings_from_env(
    environ: Mapping[str, str],
    *,
    token_file: str | None = None,
    ca_file: str | None = None,
    client_cert: str | None = None,
    client_key: str | None = None,
) -> ConsulSettings:
    """ConsulSettings from Consul's variables; the keyword arguments (flags) win over them."""
    token_file = token_file or environ.get("CONSUL_HTTP_TOKEN_FILE") or None
    if token_file:
        token = read_token_file(token_file)
    else:
        token = (environ.get("CONSUL_HTTP_TOKEN") or "").strip() or None
    return ConsulSettings(
        token=token,
        https=_flag(environ, "CONSUL_HTTP_SSL", False),
        verify=_flag(environ, "CONSUL_HTTP_SSL_VERIFY", True),
        ca_file=ca_file or environ.get("CONSUL_CACERT") or None,
        client_cert=client_cert or environ.get("CONSUL_CLIENT_CERT") or None,
        client_key=client_key or environ.get("CONSUL_CLIENT_KEY") or None,
    )
