"""mesh.trust without sockets: roles, the key store, the ZAP decision, inert text."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pytest
import zmq.auth

from mesh.trust import (
    ALLOWED, DOMAIN_ROLES, Domain, KeyStore, Operation, RateLimitedLog, Role, Trust, TrustError,
    allowed, inert, key_of, load_certificate, load_keypair, refusal, role_of, write_keypair,
)


def _mode(path) -> int:  # noqa: ANN001
    return stat.S_IMODE(os.stat(path).st_mode)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# ---- roles ------------------------------------------------------------------------------

def test_each_role_may_do_exactly_its_operations() -> None:
    assert allowed(Role.CLIENT, Operation.SUBMIT)
    assert allowed(Role.CLIENT, Operation.RESULT)
    assert not allowed(Role.CLIENT, Operation.DEAD_LETTER_PURGE)
    assert not allowed(Role.CLIENT, Operation.STATS)
    assert allowed(Role.OPERATOR, Operation.DEAD_LETTER_REPLAY)
    assert allowed(Role.OPERATOR, Operation.SUBMIT)  # operator includes client
    assert allowed(Role.AI_NODE, Operation.ACK) and allowed(Role.AI_NODE, Operation.HEARTBEAT)
    assert not allowed(Role.AI_NODE, Operation.DELIVERY)
    assert allowed(Role.HELPER, Operation.DELIVERY)
    assert allowed(Role.NOTIFIER, Operation.ALERT_REPLAY)
    assert not allowed(None, Operation.STATUS)
    # every operation belongs to some role, every role and domain is in the tables
    assert set().union(*ALLOWED.values()) == set(Operation)
    assert set(ALLOWED) == set(Role) and set(DOMAIN_ROLES) == set(Domain)


def test_role_of_reads_the_user_id_and_refuses_what_it_does_not_know() -> None:
    key = "rYl#9gvh)pMT=S*8e(v4k5#a.6YlASA{0]*Gxl:y"  # Z85 may contain ':'
    assert role_of(f"ai-node:{key}") is Role.AI_NODE
    assert key_of(f"ai-node:{key}") == key
    assert role_of(b"client:abc") is Role.CLIENT
    assert role_of("wizard:abc") is None
    assert role_of("client") is None          # no separator: not a mesh User-Id
    assert role_of("") is None and role_of(None) is None
    assert key_of("anonymous") == ""


def test_refusal_names_the_operation_and_the_role_that_would_allow_it() -> None:
    text = refusal(Role.CLIENT, Operation.DEAD_LETTER_PURGE)
    assert "dead-letter-purge" in text and "client" in text and "operator" in text


# ---- keys -------------------------------------------------------------------------------

def test_new_key_pair_is_private_and_readable_by_zmq_auth(tmp_path: Path) -> None:
    public, secret = write_keypair(tmp_path / "keys", "alice", Role.CLIENT)
    assert _mode(tmp_path / "keys") == 0o700
    assert _mode(secret) == 0o600
    assert public.name == "alice.key" and secret.name == "alice.key_secret"
    pub, sec = zmq.auth.load_certificate(secret)
    assert zmq.auth.load_certificate(public) == (pub, None)
    assert len(pub) == 40 and len(sec) == 40
    assert load_certificate(public).role is Role.CLIENT
    pair = load_keypair(public)
    assert pair.role is Role.CLIENT and pair.secret_key == sec
    assert str(sec) not in repr(pair)  # a logged KeyPair does not leak its secret
    with pytest.raises(TrustError, match="exists"):
        write_keypair(tmp_path / "keys", "alice", Role.CLIENT)
    assert zmq.auth.load_certificate(secret) == (pub, sec)  # untouched


def test_ensure_local_makes_a_complete_private_store_once(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = KeyStore.ensure_local(root)
    assert _mode(root) == 0o700
    assert _mode(store.own_dir) == 0o700 and _mode(store.allowed_dir) == 0o700
    first = {}
    for role in Role:
        pair = store.keypair(role)
        first[role] = pair.public_key
        assert _mode(store.own_dir / f"{role.value}.key_secret") == 0o600
        assert _mode(store.allowed_dir / role.value) == 0o700
        assert store.role_of_key(pair.public_key) is role
        assert store.server_key(role) == pair.public_key
    again = KeyStore.ensure_local(root)
    assert {r: again.keypair(r).public_key for r in Role} == first


def test_ensure_local_restores_a_missing_allow_list_entry(tmp_path: Path) -> None:
    store = KeyStore.ensure_local(tmp_path)
    (store.allowed_dir / "helper" / "local.key").unlink()
    again = KeyStore.ensure_local(tmp_path)
    assert again.role_of_key(again.keypair(Role.HELPER).public_key) is Role.HELPER


def test_store_refuses_loose_permissions(tmp_path: Path) -> None:
    store = KeyStore.ensure_local(tmp_path / "s")
    os.chmod(store.own_dir / "client.key_secret", 0o644)
    with pytest.raises(TrustError, match="chmod 600"):
        store.load()
    os.chmod(store.own_dir / "client.key_secret", 0o600)
    os.chmod(store.allowed_dir / "operator", 0o777)
    with pytest.raises(TrustError, match="chmod 700"):
        KeyStore.ensure_local(tmp_path / "s")
    os.chmod(store.allowed_dir / "operator", 0o700)
    os.chmod(store.root, 0o755)
    with pytest.raises(TrustError, match="open to others"):
        KeyStore(store.root).load()


def test_a_key_allowed_under_two_roles_is_refused(tmp_path: Path) -> None:
    store = KeyStore.ensure_local(tmp_path / "s")
    (tmp_path / "k").mkdir()
    public, _ = zmq.auth.create_certificates(tmp_path / "k", "x")  # no role in its metadata
    store.allow(Role.CLIENT, public)
    with pytest.raises(TrustError, match="already allowed as client"):
        store.allow(Role.OPERATOR, public)
    # the same, written by hand behind the store's back
    (store.allowed_dir / "operator" / "x.key").write_text(open(public).read())
    with pytest.raises(TrustError, match="both"):
        store.load()


def test_misfiled_and_unknown_role_certificates_grant_nothing(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = KeyStore.ensure_local(tmp_path / "s")
    client_pub, _ = write_keypair(tmp_path / "k", "c", Role.CLIENT)
    other_pub, _ = write_keypair(tmp_path / "k", "w", Role.CLIENT)
    # a client certificate copied into allowed/operator does not make an operator
    (store.allowed_dir / "operator" / "c.key").write_text(client_pub.read_text())
    wizard = store.allowed_dir / "wizard"
    wizard.mkdir(mode=0o700)
    (wizard / "w.key").write_text(other_pub.read_text())
    with caplog.at_level(logging.WARNING, "mesh.trust"):
        store.load()
    assert store.role_of_key(load_certificate(client_pub).public_key) is None
    assert store.role_of_key(load_certificate(other_pub).public_key) is None
    assert "metadata says role client" in caplog.text and "no role is called wizard" in caplog.text


def test_server_key_is_pinned_from_the_allow_list_never_from_the_announcement(
        tmp_path: Path) -> None:
    store = KeyStore.ensure_local(tmp_path / "s")
    helper_key = store.keypair(Role.HELPER).public_key
    assert store.server_key(Role.HELPER, helper_key.decode()) == helper_key
    stranger, _ = zmq.curve_keypair()
    with pytest.raises(TrustError, match="not allowed as helper"):
        store.server_key(Role.HELPER, stranger)
    with pytest.raises(TrustError, match="not allowed as helper"):  # a key of another role
        store.server_key(Role.HELPER, store.keypair(Role.CLIENT).public_key)
    second, _ = write_keypair(tmp_path / "k", "h2", Role.HELPER)
    store.allow(Role.HELPER, second)
    with pytest.raises(TrustError, match="2 keys are allowed as helper"):
        store.server_key(Role.HELPER)


def test_keypair_of_a_missing_role_says_how_to_make_one(tmp_path: Path) -> None:
    root = tmp_path / "s"
    root.mkdir(mode=0o700)
    with pytest.raises(TrustError, match="mesh keys new --role operator"):
        KeyStore(root).keypair(Role.OPERATOR)


# ---- Trust (no sockets) ------------------------------------------------------------------

def test_zap_decision_admits_only_the_domains_roles(tmp_path: Path) -> None:
    trust = Trust.local(tmp_path / "s")
    store = trust.store
    client = store.keypair(Role.CLIENT).public_key
    node = store.keypair(Role.AI_NODE).public_key
    assert trust.callback(Domain.INTAKE.value, client)
    assert trust.callback(Domain.INTAKE.value, store.keypair(Role.OPERATOR).public_key)
    assert not trust.callback(Domain.INTAKE.value, node)
    assert trust.callback(Domain.ACKS.value, node)
    assert not trust.callback("mesh.nowhere", client)
    assert trust.refused[(Domain.INTAKE.value, "role ai-node not admitted")] == 1
    assert trust.refused[("mesh.nowhere", "role client not admitted")] == 1


def test_a_key_copied_in_while_running_is_honoured_at_once(tmp_path: Path) -> None:
    clock = FakeClock()
    trust = Trust(KeyStore.ensure_local(tmp_path / "s"), clock=clock)
    public, _ = write_keypair(tmp_path / "k", "late", Role.CLIENT)
    key = load_certificate(public).public_key
    assert not trust.callback(Domain.INTAKE.value, key)
    # another process adds it (an AI node making its own key next to a running Helper): the
    # allow-list directory changed, so the unknown key makes a re-read, interval or not
    KeyStore(trust.store.root).allow(Role.CLIENT, public)
    assert trust.callback(Domain.INTAKE.value, key)


def test_a_key_edited_in_place_is_honoured_after_the_rescan_interval(tmp_path: Path) -> None:
    clock = FakeClock()
    trust = Trust(KeyStore.ensure_local(tmp_path / "s"), clock=clock)
    public, _ = write_keypair(tmp_path / "k", "late", Role.CLIENT)
    key = load_certificate(public).public_key
    target = trust.store.allowed_dir / "client" / "local.key"
    stamp = trust.store.stamp()
    target.write_text(public.read_text())  # rewritten in place: no directory change
    assert trust.store.stamp() == stamp
    assert not trust.callback(Domain.INTAKE.value, key)   # within the interval: no rescan
    clock.now += Trust.RESCAN_INTERVAL_S
    assert trust.callback(Domain.INTAKE.value, key)


def test_insecure_trust_permits_everything_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "mesh.trust"):
        trust = Trust.plain()
    assert "--insecure" in caplog.text
    assert trust.server(None, Role.HELPER, Domain.INTAKE) is None
    assert trust.client(Role.CLIENT, Role.HELPER) is None
    assert trust.permits("", Operation.DEAD_LETTER_PURGE)
    with pytest.raises(TrustError):
        Trust(None)


def test_secure_trust_permits_by_role(tmp_path: Path) -> None:
    trust = Trust.local(tmp_path / "s")
    assert trust.permits("client:k", Operation.SUBMIT)
    assert not trust.permits("client:k", Operation.STATS)
    assert not trust.permits("", Operation.SUBMIT)
    link = trust.client(Role.CLIENT, Role.HELPER)
    assert link.server_key == trust.store.keypair(Role.HELPER).public_key


# ---- untrusted text ---------------------------------------------------------------------

def test_inert_escapes_what_could_forge_or_hide_log_lines() -> None:
    assert inert("plain-task_id.42") == "plain-task_id.42"
    assert inert("a\nFAKE 2024 INFO ok") == "a\\nFAKE 2024 INFO ok"
    assert inert("\x1b[31mred") == "\\x1b[31mred"
    assert inert("abc\u202edcba") == "abc\\u202edcba"     # bidi override
    assert inert("x\\ny") == "x\\\\ny"                   # a literal backslash-n stays visible
    assert inert(b"\xff\xfeok") == "\\\\xff\\\\xfeok"
    assert inert(None) == ""
    assert inert("é漢字") == "é漢字"


def test_inert_truncates_and_says_how_much() -> None:
    out = inert("x" * 1000, 10)
    assert out == "x" * 10 + "...(+990 chars)"
    assert inert("\n" * 10, 5).startswith("\\n\\n")
    assert len(inert("\n" * 10, 5).split("...")[0]) <= 5


def test_rate_limited_log_says_how_many_it_held_back(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    limited = RateLimitedLog(logging.getLogger("t.ratelimit"), 10.0, clock=clock, max_keys=2)
    with caplog.at_level(logging.WARNING, "t.ratelimit"):
        assert limited.warning("bad", "bad frame %s", 1)
        assert not limited.warning("bad", "bad frame %s", 2)
        assert not limited.warning("bad", "bad frame %s", 3)
        assert limited.warning("other", "other trouble")
        clock.now += 10
        assert limited.warning("bad", "bad frame %s", 4)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["bad frame 1", "other trouble", "bad frame 4 (2 more like this held back)"]
    for i in range(50):  # many distinct keys: memory stays bounded
        limited.warning(("k", i), "x")
    assert len(limited._last) <= 2 and len(limited.suppressed) <= 2
