"""`mesh keys`: make and place CURVE keys; and the flags every node uses to pick its Trust.

    mesh keys new --role ROLE --out DIR [--name NAME]   a key pair: NAME.key, NAME.key_secret
    mesh keys local [--store DIR]                       the single-host store, made if missing
    mesh keys allow --role ROLE FILE.key [--store DIR]  trust a public key as ROLE

Where keys live (the only place that reads the environment for it): --keys/--store, else
$MESH_KEY_DIR, else $XDG_DATA_HOME/mesh/keys, else ~/.local/share/mesh/keys. A persistent
directory, not $XDG_RUNTIME_DIR: keys copied to other hosts must outlive a reboot.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from mesh import trust
from mesh.trust import KeyStore, Role, Trust, load_certificate, write_keypair
from nodes import settings_spec


def default_key_dir() -> str:
    return trust.default_key_dir(os.environ)


def add_trust_arguments(parser: argparse.ArgumentParser) -> None:
    """--keys and --insecure, for every command that opens a socket."""
    settings_spec.add_options(parser, settings_spec.TRUST)


def trust_from_args(args: argparse.Namespace, *, identity: str | None = None,
                    identity_role: Role = Role.AI_NODE) -> Trust:
    """The process's Trust: plain with --insecure, else the key store, completed with a
    local key per role so one host works with no setup.

    `identity` gives this process a key of its own for `identity_role` (own/IDENTITY.key, made
    and allowed on first use), e.g. `identity=f"ai-node-{node_id}"` for an AI node: the Helper
    binds a node id to the key its heartbeats come with, so nodes must not share a key."""
    if getattr(args, "insecure", False):
        return Trust.plain()
    return Trust.local(getattr(args, "keys", None) or default_key_dir(), identity=identity,
                       identity_role=identity_role)


def ai_node_identity(node_id: str) -> str:
    """The key name of the AI node `node_id` in a local store."""
    return f"ai-node-{node_id}"


def prune_generated_node_keys(args: argparse.Namespace, host: str) -> int:
    """Remove the keys of AI nodes of this host whose id was generated (`ai-HOST-PID`) and
    whose process is gone, so nodes started without --node-id do not pile keys up in the
    store. Returns how many key names were removed. A live pid, another host's keys and named
    nodes' keys are kept; a pid reused since only keeps a stale key a while longer."""
    if getattr(args, "insecure", False):
        return 0
    root = Path(getattr(args, "keys", None) or default_key_dir())
    prefix = f"ai-node-ai-{host}-"
    removed = 0
    for folder in (root / "own", root / "allowed" / Role.AI_NODE.value):
        try:
            names = [p for p in folder.iterdir() if p.name.startswith(prefix)]
        except OSError:
            continue
        for path in names:
            pid = path.name[len(prefix):].split(".", 1)[0]
            if not pid.isdigit() or Path(f"/proc/{pid}").exists():
                continue
            path.unlink(missing_ok=True)
            removed += folder.name == Role.AI_NODE.value
    return removed


def register_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("keys", help="CURVE keys: new, local, allow")
    keys_sub = p.add_subparsers(dest="keys_command", required=True)
    roles = [r.value for r in Role]

    new = keys_sub.add_parser("new", help="create a key pair for a role")
    new.add_argument("--role", required=True, choices=roles)
    new.add_argument("--out", required=True, help="directory for NAME.key and NAME.key_secret")
    new.add_argument("--name", default=None, help="file name stem (default: the role)")
    new.set_defaults(func=_new)

    local = keys_sub.add_parser("local", help="make or complete this host's key store")
    local.add_argument("--store", default=None, help="store directory (default: see mesh keys)")
    local.set_defaults(func=_local)

    allow = keys_sub.add_parser("allow", help="trust a public certificate as a role")
    allow.add_argument("--role", required=True, choices=roles)
    allow.add_argument("certificate", help="a NAME.key file (never the _secret one)")
    allow.add_argument("--store", default=None)
    allow.add_argument("--name", default=None, help="file name in the allow-list")
    allow.set_defaults(func=_allow)


def _new(args: argparse.Namespace) -> int:
    role = Role(args.role)
    public, secret = write_keypair(args.out, args.name or role.value, role)
    print(json.dumps({"role": role.value, "public": str(public), "secret": str(secret),
                      "public_key": load_certificate(public).public_key.decode()}))
    return 0


def _local(args: argparse.Namespace) -> int:
    store = KeyStore.ensure_local(args.store or default_key_dir())
    print(json.dumps({"store": str(store.root),
                      "keys": {r.value: store.keypair(r).public_z85 for r in Role}}))
    return 0


def _allow(args: argparse.Namespace) -> int:
    if Path(args.certificate).name.endswith("_secret"):
        print("mesh keys allow: give the public NAME.key, not the secret file", file=sys.stderr)
        return 2
    store = KeyStore(args.store or default_key_dir())
    target = store.allow(Role(args.role), args.certificate, args.name)
    print(json.dumps({"role": args.role, "allowed": str(target)}))
    return 0
