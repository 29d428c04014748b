"""``flowline``: load ``module:attr`` and hand it to the runtime (arq / faststream style).

One module per command (group): `worker`, `dev`, `dlq`, `events`, `graph`, `jobs`, `publish`,
`queue`, `status`, `dashboard`. Each is thin: it parses options, builds `Settings`, and calls the
runtime. Each adds itself to the group in `_main` when imported, here.
"""

from __future__ import annotations

from . import dashboard, dev, dlq, events, graph, jobs, publish, queue, status, worker
from ._common import load
from ._main import main

__all__ = [
    "dashboard",
    "dev",
    "dlq",
    "events",
    "graph",
    "jobs",
    "load",
    "main",
    "publish",
    "queue",
    "status",
    "worker",
]
