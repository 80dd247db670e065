"""The App of the rate-limit and circuit-breaker tests (tests/integration/test_rate_limit.py,
test_circuit_breaker.py): handlers that say when they ran, and one whose dependency is up or
down as a file says."""

from __future__ import annotations

import json
import os
import time

from mesh import App, TaskContext
from mesh.executors import DependencyDown

app = App("policies-tests")


@app.task("vision")
def vision(payload: bytes) -> dict:
    return {"start": time.time()}


@app.task("text")
def text(payload: bytes) -> dict:
    return {"start": time.time()}


@app.task("ocr")
def ocr(payload: bytes, ctx: TaskContext) -> bytes:
    """Calls "ocr-api": down while $MESH_TEST_DEPENDENCY_FILE says "down". Every run is logged
    (start, end, task id) to $MESH_TEST_RUN_LOG."""
    start = time.time()
    with open(os.environ["MESH_TEST_DEPENDENCY_FILE"]) as f:
        down = f.read().strip() == "down"
    time.sleep(0.02)
    with open(os.environ["MESH_TEST_RUN_LOG"], "a") as f:
        f.write(json.dumps({"start": start, "end": time.time(), "task_id": ctx.task_id,
                            "down": down}) + "\n")
    if down:
        raise DependencyDown("ocr-api", "ocr-api answered 503")
    return b"text"
