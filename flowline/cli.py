"""``flowline``: load ``module:attr`` and hand it to the runtime (arq / faststream style)."""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import sys
from collections.abc import Callable, Coroutine
from typing import Any

import click

from . import _logging
from ._compile import as_pipelines
from ._pipeline import Pipeline
from ._settings import Settings
from .errors import ConfigurationError, FlowlineError
from .runtime import deadletters
from .runtime.runner import Runner


def load(target: str) -> Any:
    """Import ``module:attr`` (the current directory is importable, as with ``python -m``)."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigurationError(
            f"expected MODULE:ATTR (e.g. app.pipelines:pipeline), got {target!r}"
        )
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"cannot import {module_name!r}: {exc}") from exc
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigurationError(f"module {module_name!r} has no attribute {attr!r}") from None
    return obj


def _run(main: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    try:
        return asyncio.run(main())
    except FlowlineError as exc:
        raise click.ClickException(str(exc)) from None


nats_option = click.option("--nats", "nats_url", envvar="FLOWLINE_NATS_URL", help="NATS URL(s).")
redis_option = click.option("--redis", "redis_url", envvar="FLOWLINE_REDIS_URL", help="Redis URL.")
tls_option = click.option(
    "--tls-ca",
    "tls_ca",
    envvar="FLOWLINE_TLS_CA",
    help="CA file trusted for tls:// NATS and rediss:// Redis.",
)


@click.group()
@click.version_option(package_name="flowline")
def main() -> None:
    """flowline: Stream >> Route >> Queue pipelines on NATS JetStream and Redis."""
    # Logs go to stderr, so `--json` output on stdout stays machine-readable; `worker` reconfigures.
    _logging.configure(level="WARNING")


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

    _run(go)


@main.group()
def dlq() -> None:
    """Inspect, replay and purge dead letters."""


def _pipelines(target: str) -> tuple[Pipeline, ...]:
    try:
        return as_pipelines(load(target))
    except FlowlineError as exc:
        raise click.ClickException(str(exc)) from None


@dlq.command("list")
@click.argument("target")
@redis_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def dlq_list(target: str, redis_url: str | None, as_json: bool) -> None:
    """List the dead letters of the pipeline(s) at TARGET."""
    pipelines = _pipelines(target)

    async def go() -> None:
        async with Runner(pipelines, Settings.from_env(redis_url=redis_url), only=()) as app:
            for p in pipelines:
                for letter in await app.dead_letters(p):
                    rec = letter.record
                    if as_json:
                        click.echo(json.dumps({"id": letter.id, "pipeline": p.name, **rec}))
                    else:
                        what = rec.get("topic") or f"{rec.get('subject')}#{rec.get('sequence')}"
                        click.echo(
                            f"{letter.id}  {p.name}  {rec['stage']:<7} {what}  "
                            f"attempts={rec.get('attempts')}  {rec['error']}"
                        )

    _run(go)


def _select(
    letters: list[deadletters.DeadLetter], ids: tuple[str, ...], all_: bool
) -> list[deadletters.DeadLetter]:
    if not ids and not all_:
        raise click.UsageError("name dead-letter ids, or pass --all")
    chosen = letters if all_ else [x for x in letters if x.id in ids]
    missing = set(ids) - {x.id for x in chosen}
    if missing:
        raise click.ClickException(f"no dead letter with id {sorted(missing)[0]}")
    return chosen


@dlq.command("replay")
@click.argument("target")
@click.argument("ids", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Replay every dead letter.")
@nats_option
@redis_option
def dlq_replay(
    target: str, ids: tuple[str, ...], all_: bool, nats_url: str | None, redis_url: str | None
) -> None:
    """Send dead letters back through the normal path (jobs to queues, messages to streams)."""
    pipelines = _pipelines(target)

    async def go() -> None:
        settings = Settings.from_env(nats_url=nats_url, redis_url=redis_url)
        async with Runner(pipelines, settings, only=()) as app:
            letters = [(p, x) for p in pipelines for x in await app.dead_letters(p)]
            chosen = {x.id for x in _select([x for _, x in letters], ids, all_)}
            count = 0
            for p, letter in letters:
                if letter.id in chosen:
                    await deadletters.replay(app.redis, app.js, p, letter)  # type: ignore[arg-type]
                    count += 1
            click.echo(f"replayed {count}")

    _run(go)


@dlq.command("purge")
@click.argument("target")
@click.argument("ids", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Purge every dead letter.")
@redis_option
def dlq_purge(target: str, ids: tuple[str, ...], all_: bool, redis_url: str | None) -> None:
    """Delete dead letters for good."""
    pipelines = _pipelines(target)

    async def go() -> None:
        async with Runner(pipelines, Settings.from_env(redis_url=redis_url), only=()) as app:
            letters = [x for p in pipelines for x in await app.dead_letters(p)]
            removed = await deadletters.purge(app.redis, _select(letters, ids, all_))  # type: ignore[arg-type]
            click.echo(f"purged {removed}")

    _run(go)


@main.command()
@click.argument("target")
@click.option("--json", "payload", required=True, help="The event as a JSON object.")
@click.option("--msg-id", help="Message id: a retried publish with the same id is stored once.")
@nats_option
def publish(target: str, payload: str, msg_id: str | None, nats_url: str | None) -> None:
    """Publish one event to the stream of the pipeline at TARGET."""
    pipelines = _pipelines(target)
    if len(pipelines) != 1:
        raise click.UsageError("TARGET must name one pipeline")
    try:
        event = json.loads(payload)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--json") from None

    async def go() -> None:
        async with Runner(pipelines, Settings.from_env(nats_url=nats_url), only=()) as app:
            seq = await app.publish(pipelines[0], event, msg_id=msg_id)
            click.echo(f"published as sequence {seq}")

    _run(go)
