"""A process's own named key (an AI node's key per node id) in the local store."""

import pytest

from mesh.trust import Role, Trust, TrustError


def test_each_ai_node_identity_gets_its_own_allowed_key(tmp_path) -> None:
    root = tmp_path / "keys"
    one = Trust.local(root, identity="ai-node-n1")
    two = Trust.local(root, identity="ai-node-n2")
    shared = Trust.local(root)
    k1, k2 = one.keypair(Role.AI_NODE).public_key, two.keypair(Role.AI_NODE).public_key
    assert k1 != k2 != shared.keypair(Role.AI_NODE).public_key
    assert shared.store.role_of_key(k1) is Role.AI_NODE
    assert shared.store.role_of_key(k2) is Role.AI_NODE
    # the same identity again is the same key (a restarted node keeps its binding)
    assert Trust.local(root, identity="ai-node-n1").keypair(Role.AI_NODE).public_key == k1
    # other roles keep the host's shared keys
    assert one.keypair(Role.HELPER).public_key == shared.keypair(Role.HELPER).public_key
    assert (root / "own" / "ai-node-n1.key_secret").stat().st_mode & 0o077 == 0


@pytest.mark.parametrize("name", ["../x", ".hidden", "a/b", "", "n\n1"])
def test_identity_names_must_be_plain_file_names(tmp_path, name) -> None:
    with pytest.raises(TrustError):
        Trust.local(tmp_path / "keys", identity=name)
