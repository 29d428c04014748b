"""The ``flowline`` command group; each command module adds itself to it."""

from __future__ import annotations

import click

from .. import _logging


@click.group()
@click.version_option(package_name="flowline")
def main() -> None:
    """flowline: Stream >> Route >> Queue pipelines on NATS JetStream and Redis."""
    # Logs go to stderr, so `--json` output on stdout stays machine-readable; `worker` reconfigures.
    _logging.configure(level="WARNING")
