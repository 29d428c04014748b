"""``flowline events``: follow every process's lifecycle events, live (BullMQ's QueueEvents)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from datetime import UTC, datetime
from typing import Any

import click

from .._settings import Settings
from ..errors import FlowlineError
from ..runtime import eventlog
from ..runtime.connections import connect_redis
from ._common import load_pipelines, nats_option, redis_option, run, tls_option
from ._main import main


@main.command()
@click.argument("target")
@click.argument("names", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per event and line.")
@click.option("--since", metavar="ID", help="Start after this event id (0: with every event kept).")
@click.option(
    "--last", type=click.IntRange(min=1), metavar="N", help="Start with the last N events."
)
@nats_option
@redis_option
@tls_option
def events(
    target: str,
    names: tuple[str, ...],
    as_json: bool,
    since: str | None,
    last: int | None,
    nats_url: str | None,
    redis_url: str | None,
    tls_ca: str | None,
) -> None:
    """Print the events of the pipeline(s) at TARGET from every process, until Ctrl-C.

    NAMES filter them as `pipeline.on` does: job:failed, job:* (every job:...), error (every
    error:<stage>), * (the default). Needs only Redis; --nats is accepted for symmetry.
    """
    pipelines = load_pipelines(target)
    if since is not None and last is not None:
        raise click.UsageError("give --since or --last, not both")
    try:
        eventlog.check_names(names)
        eventlog.check_since(since or "$")
    except FlowlineError as exc:
        raise click.ClickException(str(exc)) from None

    async def go() -> None:
        settings = Settings.from_env(nats_url=nats_url, redis_url=redis_url, tls_ca=tls_ca)
        redis = await connect_redis(settings, max_connections=2)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await _print(redis, [p.name for p in pipelines], names, since, last, as_json, stop)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            await redis.aclose()

    run(go)


async def _print(
    redis: Any,
    pipelines: list[str],
    names: tuple[str, ...],
    since: str | None,
    last: int | None,
    as_json: bool,
    stop: asyncio.Event,
) -> None:
    records = eventlog.tail(redis, pipelines, names, since=since or "$", last=last, stop=stop)
    try:
        async for rec in records:
            print(_json(rec) if as_json else line(rec), flush=True)
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, and keep Python's exit flush quiet too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _json(rec: eventlog.Recorded) -> str:
    e = rec.event
    return json.dumps(
        {
            "id": rec.id,
            "time": rec.time,
            "process": rec.process,
            "seq": rec.seq,
            "pipeline": e.pipeline,
            "name": e.name,
            "stage": e.stage,
            "data": e.data,
        }
    )


def line(rec: eventlog.Recorded) -> str:
    """One event as a line: time, pipeline, name, the job (id and topic), what happened."""
    e, data = rec.event, rec.event.data
    at = datetime.fromtimestamp(rec.time, UTC).isoformat(timespec="milliseconds")
    job: dict[str, Any] = data["job"] if isinstance(data.get("job"), dict) else {}
    job_id = job.get("id") or data.get("id") or data.get("origin") or ""
    topic = job.get("topic") or data.get("topic") or ""
    parts = [at.replace("+00:00", "Z"), e.pipeline, f"{e.name:<14}", str(job_id), str(topic)]
    if "progress" in data:
        parts.append(f"{data['progress']:g}%")
    if e.name == "job:retry" and isinstance(data.get("delay"), int | float):
        parts.append(f"retry in {data['delay']:.2f}s")
    if e.name == "cron" and isinstance(data.get("event"), dict):
        parts.append(f"scheduled {data['event'].get('scheduled')}")
    if e.name == "route:complete":
        parts.append(f"{data.get('jobs')} jobs")
    error = data.get("error")
    if isinstance(error, dict):
        parts.append(f"{error.get('type')}: {error.get('message')}")
    return "  ".join(p for p in parts if p)
