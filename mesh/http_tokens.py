"""Bearer tokens of the HTTP gateway: who may call it, and as which role.

The file holds one token per line, `ROLE TOKEN` (`#` starts a comment), or JSON: a list of
`{"role": ..., "token": ...}` (or `{"tokens": [...]}`). Roles: `client` (submit, status,
results) and `operator` (also dead letters and the overview); an operator may do what a client
may. A file that group or others may read or write is refused: whoever reads it can act as any
role in it.

Tokens are compared with `hmac.compare_digest` against every entry (no early exit), so the
answer time does not say how much of a guess was right.
"""

from __future__ import annotations

import enum
import hmac
import json
import os
import stat
from pathlib import Path

from mesh.errors import ConfigError

#: shortest token accepted: a guessable token is no authentication
MIN_TOKEN_CHARS = 16


class HttpRole(enum.StrEnum):
    CLIENT = "client"
    OPERATOR = "operator"


def permits(role: HttpRole | None, needed: HttpRole) -> bool:
    return role is HttpRole.OPERATOR or (role is not None and role is needed)


class TokenTable:
    def __init__(self, entries: list[tuple[HttpRole, str]]) -> None:
        self._entries = [(role, token.encode()) for role, token in entries]

    def __len__(self) -> int:
        return len(self._entries)

    def role_of(self, authorization: str | None) -> HttpRole | None:
        """The role of an `Authorization: Bearer TOKEN` header; None if it matches no token."""
        if not authorization:
            return None
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return None
        given = token.strip().encode()
        found: HttpRole | None = None
        for role, known in self._entries:
            if hmac.compare_digest(given, known) and found is None:
                found = role
        return found

    @classmethod
    def load(cls, path: str | os.PathLike) -> TokenTable:
        """Read and check a token file; ConfigError says what is wrong and how to fix it."""
        path = Path(path)
        try:
            mode = path.stat().st_mode
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read the token file {path}: {exc}") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(f"the token file {path} is open to group or others (mode "
                              f"{stat.S_IMODE(mode):04o}); run: chmod 600 {path}")
        entries = _parse_json(text, path) if text.lstrip()[:1] in ("[", "{") else \
            _parse_lines(text, path)
        if not entries:
            raise ConfigError(f"the token file {path} holds no token")
        return cls(entries)


def _entry(role: str, token: str, where: str) -> tuple[HttpRole, str]:
    try:
        parsed = HttpRole(role.strip().lower())
    except ValueError:
        raise ConfigError(f"{where}: unknown role {role!r}; use client or operator") from None
    token = token.strip()
    if len(token) < MIN_TOKEN_CHARS:
        raise ConfigError(f"{where}: a token of {len(token)} characters is too short (at least "
                          f"{MIN_TOKEN_CHARS}; e.g. python3 -c 'import secrets; "
                          "print(secrets.token_urlsafe(32))')")
    return parsed, token


def _parse_lines(text: str, path: Path) -> list[tuple[HttpRole, str]]:
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ConfigError(f"{path}:{number}: expected `ROLE TOKEN`, got {len(parts)} "
                              "fields")
        entries.append(_entry(parts[0], parts[1], f"{path}:{number}"))
    return entries


def _parse_json(text: str, path: Path) -> list[tuple[HttpRole, str]]:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{path}: not valid JSON: {exc}") from None
    if isinstance(data, dict):
        data = data.get("tokens", [])
    if not isinstance(data, list):
        raise ConfigError(f"{path}: expected a list of {{role, token}} objects")
    entries = []
    for i, item in enumerate(data):
        if not isinstance(item, dict) or not isinstance(item.get("role"), str) \
                or not isinstance(item.get("token"), str):
            raise ConfigError(f"{path}: entry {i} must be {{\"role\": ..., \"token\": ...}}")
        entries.append(_entry(item["role"], item["token"], f"{path}: entry {i}"))
    return entries
