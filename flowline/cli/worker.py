"""``flowline worker``: run pipelines in this process until SIGTERM."""

from __future__ import annotations

import click

from .. import _logging
from .._settings import Settings
from ..runtime.runner import Runner
from ._common import load, nats_option, redis_option, run, tls_option
from ._main import main


@main.command()
@click.argument("target")
@nats_option
@redis_option
@tls_option
@click.option("--concurrency", type=click.IntRange(min=1), help="Handlers at once, per queue.")
@click.option(
    "--grace",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="Seconds in-flight jobs get to finish on SIGTERM before being handed back.",
)
@click.option(
    "--only",
    multiple=True,
    metavar="PART",
    help="Run only: stream, cron, queue, or queue:NAME (repeatable).",
)
@click.option(
    "--log-format",
    type=click.Choice(["console", "json"]),
    default="console",
    show_default=True,
    envvar="FLOWLINE_LOG_FORMAT",
)
@click.option(
    "--log-level",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    default="INFO",
    show_default=True,
    envvar="FLOWLINE_LOG_LEVEL",
    help="INFO logs a line per finished job; WARNING keeps only problems.",
)
@click.option(
    "--http-port",
    type=click.IntRange(0, 65535),
    envvar="FLOWLINE_HTTP_PORT",
    help="Serve /metrics, /healthz and /readyz on this port (0: any free port).",
)
@click.option(
    "--http-host",
    default="127.0.0.1",
    show_default=True,
    envvar="FLOWLINE_HTTP_HOST",
    help="Address the HTTP endpoint binds (0.0.0.0 for every interface).",
)
def worker(
    target: str,
    nats_url: str | None,
    redis_url: str | None,
    tls_ca: str | None,
    concurrency: int | None,
    grace: float,
    only: tuple[str, ...],
    log_format: str,
    log_level: str,
    http_port: int | None,
    http_host: str,
) -> None:
    """Run the pipeline(s) at TARGET (module:attr): stream consumer, queue workers and cron."""
    _logging.configure(json=log_format == "json", level=log_level)

    async def go() -> None:
        settings = Settings.from_env(
            nats_url=nats_url,
            redis_url=redis_url,
            concurrency=concurrency,
            grace=grace,
            tls_ca=tls_ca,
            http_port=http_port,
            http_host=http_host,
        )
        await Runner(load(target), settings, only=only or None).serve()

    run(go)
