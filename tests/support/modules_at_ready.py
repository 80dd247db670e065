"""`python tests/support/modules_at_ready.py OUT mesh ARGS...`: run `mesh ARGS...` as `mesh` does
and, the moment the node says READY, write the names of every module it has imported (a JSON
list) to OUT. For tests of what a node process loads (tests/integration/test_node_imports.py)."""

import json
import sys

from nodes import runtime
from nodes.cli import main

_announce = runtime.announce_ready


def _announce_and_list(role: str, **endpoints: object) -> None:
    with open(sys.argv[1], "w") as out:
        json.dump(sorted(sys.modules), out)
    _announce(role, **endpoints)


runtime.announce_ready = _announce_and_list
sys.exit(main(sys.argv[2:]))
