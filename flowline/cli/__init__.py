"""``flowline``: load ``module:attr`` and hand it to the runtime (arq / faststream style).

One module per command (group): `worker`, `dev`, `dlq`, `events`, `graph`, `jobs`, `publish`,
`status`, `dashboard`. Each is
thin: it parses options, builds `Settings`, and calls the runtime.
"""

from __future__ import annotations

import click

from .. import _logging
from ._common import load


@click.group()
@click.version_option(package_name="flowline")
def main() -> None:
    """flowline: Stream >> Route >> Queue pipelines on NATS JetStream and Redis."""
    # Logs go to stderr, so `--json` output on stdout stays machine-readable; `worker` reconfigures.
    _logging.configure(level="WARNING")


# Imported for their side effect: each registers its command on `main`.
from . import dashboard, dev, dlq, events, graph, jobs, publish, status, worker  # noqa: E402

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
    "status",
    "worker",
]
