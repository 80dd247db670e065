"""Regenerate mesh/_pb from proto/ (the one documented command: python scripts/gen_proto.py).

Why a script and not a bare protoc line: the output must be byte-identical on every machine so a
test can tell when it is stale. It uses the pinned grpcio-tools protoc, runs from the repository
root with relative paths, and writes only mesh/_pb/mesh_pb2.py and .pyi.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def generate(out_dir: Path) -> None:
    from grpc_tools import protoc  # test/dev dependency only

    out_dir.mkdir(parents=True, exist_ok=True)
    args = [
        "protoc",
        f"--proto_path={ROOT / 'proto'}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        str(ROOT / "proto" / "mesh.proto"),
    ]
    code = protoc.main(args)
    if code != 0:
        raise SystemExit(f"protoc failed with exit code {code}")


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "mesh" / "_pb"
    generate(target)
    print(f"generated {target}")
