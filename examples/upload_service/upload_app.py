"""A small upload front: store the file, submit a reference to the mesh, answer 202 with the id.

    python upload_app.py --gateway http://127.0.0.1:8080 --dir ./uploads --bind 127.0.0.1:8090
    curl -sS -X POST --data-binary @photo.jpg http://127.0.0.1:8090/uploads
      -> 202 {"id": ..., "sha256": ..., "location": "http://127.0.0.1:8080/v1/tasks/..."}
    curl -sS "http://127.0.0.1:8080/v1/tasks/ID?wait=30"     (poll until done)

The file is stored under its sha256 (written to a temporary name, then renamed: a reader never
sees half a file), and submitted with `Idempotency-Key: upload-<sha256>`: the same file
uploaded twice, or a retry after a lost answer, is the same task.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import tempfile
from pathlib import Path

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

MAX_UPLOAD_BYTES = 64 * 2**20


def build(gateway_url: str, upload_dir: str | os.PathLike, token: str | None = None) -> Starlette:
    upload_dir = Path(upload_dir)
    upload_dir.mkdir(parents=True, exist_ok=True)
    headers = {"Authorization": f"Bearer {token}"} if token else {}

    async def upload(request: Request) -> JSONResponse:
        digest, size = hashlib.sha256(), 0
        fd, tmp = tempfile.mkstemp(dir=upload_dir, prefix=".upload-")
        try:
            with os.fdopen(fd, "wb") as out:
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > MAX_UPLOAD_BYTES:
                        return JSONResponse({"detail": "file too large"}, 413)
                    digest.update(chunk)
                    out.write(chunk)
            sha256 = digest.hexdigest()
            path = upload_dir / sha256
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        async with httpx.AsyncClient(base_url=gateway_url, timeout=10) as gateway:
            answer = await gateway.post(
                "/v1/tasks/upload.digest", json={"path": str(path.resolve()), "sha256": sha256},
                headers={**headers, "Idempotency-Key": f"upload-{sha256}"})
        if answer.status_code != 202:  # pass the mesh's problem on, with its status
            return JSONResponse(answer.json(), answer.status_code,
                                media_type="application/problem+json")
        task_id = answer.json()["id"]
        return JSONResponse({"id": task_id, "sha256": sha256, "bytes": size,
                             "location": f"{gateway_url}/v1/tasks/{task_id}"}, 202,
                            headers={"Location": f"{gateway_url}/v1/tasks/{task_id}"})

    return Starlette(routes=[Route("/uploads", upload, methods=["POST"])])


async def follow(gateway_url: str, task_id: str, timeout_s: float = 60.0,
                 token: str | None = None) -> dict:
    """Poll the gateway until the task is done (long-polls of up to 20 s each)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    async with httpx.AsyncClient(base_url=gateway_url, timeout=30) as gateway:
        while True:
            wait_s = max(0.0, min(20.0, deadline - loop.time()))
            answer = await gateway.get(f"/v1/tasks/{task_id}", params={"wait": wait_s},
                                       headers=headers)
            if answer.status_code == 200:
                return answer.json()
            if answer.status_code != 504 or loop.time() >= deadline:
                raise RuntimeError(f"task {task_id}: {answer.status_code} {answer.text}")


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gateway", default="http://127.0.0.1:8080")
    parser.add_argument("--dir", default="uploads")
    parser.add_argument("--bind", default="127.0.0.1:8090")
    parser.add_argument("--token", default=os.environ.get("MESH_HTTP_TOKEN"))
    args = parser.parse_args()
    host, _, port = args.bind.rpartition(":")
    uvicorn.run(build(args.gateway, args.dir, args.token), host=host, port=int(port))


if __name__ == "__main__":
    main()
