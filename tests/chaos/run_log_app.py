"""The sample App with a log of every handler run, for the chaos test's count of double runs.

Each run of `simulate` appends one line to `<MESH_EFFECT_LOG_DIR>/<pid>.runs` as it starts:
`task_id node_id pid attempt delivery start_ns`. One write() per line on an O_APPEND file, so a
SIGKILLed node leaves whole lines only.
"""

from __future__ import annotations

import os
import time

from mesh import App, TaskContext
from nodes import sample_app

app = App("chaos")
_fd: list[int] = []


def _log_run(ctx: TaskContext) -> None:
    directory = os.environ.get("MESH_EFFECT_LOG_DIR")
    if not directory:
        return
    if not _fd:
        _fd.append(os.open(os.path.join(directory, f"{os.getpid()}.runs"),
                           os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644))
    os.write(_fd[0], f"{ctx.task_id} {ctx.node_id} {os.getpid()} {ctx.attempt} {ctx.delivery} "
                     f"{time.time_ns()}\n".encode())


@app.task("simulate")
async def simulate(payload: bytes, ctx: TaskContext) -> bytes:
    _log_run(ctx)
    return await sample_app.simulate(payload, ctx)
