"""``flowline jobs``: one job by id, the jobs in one state, cancelling jobs and deleting old
records. Needs Redis only."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import click

from .._pipeline import Pipeline
from .._settings import Settings
from ..backends.base import Cancellation
from ..backends.redis import RedisStore
from ..runtime import jobs as inspection
from ..runtime.connections import connect_redis
from ..runtime.deadletters import DeadLetter
from ..runtime.jobs import JobInfo
from ..runtime.runner import Runner
from ._common import load_pipelines, nats_option, redis_option, run, tls_option
from ._main import main

DEFAULT_LIMIT = 20
CLEANABLE = ("completed", "failed", "cancelled")
AGE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd]?)")
UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
# Seconds `jobs cancel` waits to report how a running job's cancel ended.
WAIT_CANCELLED = 3.0


@main.command()
@click.argument("target")
@click.argument("words", metavar="[ID | cancel ID... | clean]", nargs=-1)
@click.option(
    "--state",
    type=click.Choice(sorted({*inspection.STATES, *CLEANABLE})),
    help="List the jobs in this state; with clean, whose records to delete.",
)
@click.option(
    "--limit",
    type=click.IntRange(1, 10_000),
    help=f"How many jobs --state lists at most (default {DEFAULT_LIMIT}).",
)
@click.option(
    "--older-than",
    "older_than",
    metavar="AGE",
    help="With clean: records of jobs that finished longer ago than AGE (90s, 15m, 1h, 2d).",
)
@click.option("--queue", "queue_name", metavar="NAME", help="Look in this queue only.")
@click.option("--json", "as_json", is_flag=True, help="Print the document as JSON.")
@nats_option
@redis_option
@tls_option
def jobs(
    target: str,
    words: tuple[str, ...],
    state: str | None,
    limit: int | None,
    older_than: str | None,
    queue_name: str | None,
    as_json: bool,
    nats_url: str | None,
    redis_url: str | None,
    tls_ca: str | None,
) -> None:
    """Show job ID of the pipeline(s) at TARGET, list them with --state, cancel them, or
    delete old records.

    \b
    --state failed    jobs that failed for good, record still kept (newest first)
    --state dead      dead letters, of jobs and of stream messages (newest first)
    --state running   jobs a worker holds now (oldest first)
    --state delayed   delayed jobs and jobs waiting to be retried (soonest due first)

    \b
    cancel ID...      cancel jobs: a waiting one never runs; a running one is stopped by
                      its worker within about a second; it ends 'cancelled'
    clean --state completed|failed|cancelled --older-than AGE
                      delete those job records (safe while workers run)
    """
    action = words[0] if words and words[0] in ("cancel", "clean") else "show"
    if action == "cancel" and len(words) < 2:
        raise click.UsageError("name the job ID(s) to cancel: jobs TARGET cancel ID...")
    if action == "clean":
        if len(words) > 1:
            raise click.UsageError("clean takes no job ids: it selects by --state and --older-than")
        if state not in CLEANABLE or older_than is None:
            raise click.UsageError(
                "clean needs --state " + "|".join(CLEANABLE) + " and --older-than AGE"
            )
    elif older_than is not None:
        raise click.UsageError("--older-than applies to clean")
    if action != "show" and (limit is not None or as_json):
        raise click.UsageError(f"--limit and --json do not apply to {action}")
    age = parse_age(older_than) if older_than is not None else 0.0
    if action == "show":
        if len(words) > 1:
            raise click.UsageError(f"name one job ID, got {len(words)}: {' '.join(words)}")
        job_id = words[0] if words else None
        if job_id is None and state is None:
            raise click.UsageError("name a job ID, or pass --state " + "|".join(inspection.STATES))
        if job_id is not None and state is not None:
            raise click.UsageError("pass a job ID or --state, not both")
        if state is not None and state not in inspection.STATES:
            raise click.UsageError(
                f"--state {state} applies to clean; to list, pass one of "
                + "|".join(inspection.STATES)
            )
        if limit is not None and state is None:
            raise click.UsageError("--limit applies to --state listings")
    elif action == "cancel" and state is not None:
        raise click.UsageError("--state does not apply to cancel")
    pipelines = load_pipelines(target)
    queues = inspection.queues_of(pipelines)  # every shard of a sharded queue
    if queue_name is not None:
        shards = {q.name: q.shard_names for p in pipelines for q in p.queues}
        if queue_name not in queues and queue_name not in shards:
            known = ", ".join(shards) or "none"
            raise click.BadParameter(
                f"{target} has no queue {queue_name!r} (its queues: {known})", param_hint="--queue"
            )
        queues = {n: queues[n] for n in shards.get(queue_name, [queue_name])}

    def settings() -> Settings:
        # Read inside `run`, so a bad URL or variable is the one-line error every command gives.
        return Settings.from_env(nats_url=nats_url, redis_url=redis_url, tls_ca=tls_ca)

    if action == "cancel":
        run(lambda: _cancel(pipelines, list(queues), words[1:], settings))
        return
    if action == "clean":
        assert state is not None
        run(lambda: _clean(pipelines, list(queues), state, age, older_than or "", settings))
        return
    job_id = words[0] if words else None

    async def go() -> None:
        # --nats is checked like every command's, and never contacted: jobs live in Redis.
        redis = await connect_redis(settings(), max_connections=4)
        try:
            if job_id is not None:
                _show(await inspection.find(redis, queues, job_id), job_id, queues, as_json)
                return
            assert state is not None
            n = limit or DEFAULT_LIMIT
            if state == "dead":
                letters = await inspection.dead_letters(redis, pipelines, n, queue=queue_name)
                _list_letters(letters, n, as_json)
                return
            listing = {
                "failed": inspection.failed,
                "running": inspection.running,
                "delayed": inspection.delayed,
            }[state]
            _list_jobs(await listing(redis, queues, n), state, n, as_json)
        finally:
            await redis.aclose()

    run(go)


def parse_age(text: str) -> float:
    """Seconds of ``90s``, ``15m``, ``1h``, ``2d`` (or a plain number of seconds)."""
    match = AGE.fullmatch(text.strip())
    if match is None or float(match[1]) <= 0:
        raise click.BadParameter(
            f"{text!r} is not an age: a positive number and a unit, e.g. 90s, 15m, 1h, 2d",
            param_hint="--older-than",
        )
    return float(match[1]) * UNITS[match[2] or "s"]


def _handles(pipelines: tuple[Pipeline, ...], names: list[str], runner: Runner) -> list[Any]:
    """The handles of the queues `names` (queues, or shards of one) belong to."""
    owner = {n: (p, q) for p in pipelines for q in p.queues for n in q.shard_names}
    wanted = list(dict.fromkeys(owner[n] for n in names))
    return [runner.queue_handle(p, q) for p, q in wanted]


async def _cancel(
    pipelines: tuple[Pipeline, ...],
    names: list[str],
    job_ids: tuple[str, ...],
    settings: Callable[[], Settings],
) -> None:
    failed = False
    # A Runner that runs nothing: its event log records the job:cancelled of waiting jobs.
    async with Runner(pipelines, settings(), only=()) as app:
        handles = _handles(pipelines, names, app)
        for job_id in job_ids:
            found = [(h, c) for h in handles if (c := await h.cancel(job_id)).outcome != "unknown"]
            if not found:
                failed = True
                click.echo(
                    f"no job {job_id!r} in queue(s) {', '.join(names)}: never enqueued, or its "
                    "record expired",
                    err=True,
                )
                continue
            for handle, c in found:
                click.echo(_said(job_id, handle.name, c))
                failed = failed or (c.outcome == "finished" and c.detail != "cancelled")
            for handle, c in found:
                if c.outcome == "cancelling":
                    click.echo(await _outcome(handle, job_id))
    if failed:
        raise SystemExit(1)


def _said(job_id: str, queue: str, c: Cancellation) -> str:
    if c.outcome == "cancelled":
        return f"cancelled {job_id} ({queue}): it was {c.detail} and will not run"
    if c.outcome == "finished":
        if c.detail == "cancelled":
            return f"{job_id} ({queue}) was already cancelled"
        return f"{job_id} ({queue}) already {c.detail}: nothing to cancel"
    on = f" on {c.detail}" if c.detail else ""
    return f"cancelling {job_id} ({queue}): running{on}, its worker stops it within a second"


async def _outcome(handle: Any, job_id: str) -> str:
    """How a running job's cancel ended, once its worker acted (or `WAIT_CANCELLED` passed)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_CANCELLED
    while True:
        info = await handle.job(job_id)
        state = "gone" if info is None else info.state
        if state in ("cancelled", "completed", "failed", "gone"):
            return f"{job_id}: {state}"
        if loop.time() > deadline:
            return (
                f"{job_id}: still {state} after {WAIT_CANCELLED:g}s; its handler has not given "
                "way to the cancellation yet (it ends cancelled when it does)"
            )
        await asyncio.sleep(0.1)


async def _clean(
    pipelines: tuple[Pipeline, ...],
    names: list[str],
    state: str,
    age: float,
    said: str,
    settings: Callable[[], Settings],
) -> None:
    redis = await connect_redis(settings(), max_connections=2)
    try:
        store = RedisStore(redis)
        before = int((time.time() - age) * 1000)
        for name in names:
            n = await store.clean(name, state, before)
            click.echo(f"{name}: deleted {n} {state} job record(s) older than {said}")
    finally:
        await redis.aclose()


def _show(found: list[JobInfo], job_id: str, queues: dict[str, Any], as_json: bool) -> None:
    if not found:
        raise click.ClickException(
            f"no job {job_id!r} in queue(s) {', '.join(queues)}: never enqueued, or its record "
            "expired (keep_completed after it finished)"
        )
    if len(found) > 1:
        where = ", ".join(str(j.queue) for j in found)
        raise click.ClickException(f"job {job_id!r} is in several queues ({where}): pass --queue")
    job = found[0]
    if as_json:
        click.echo(json.dumps(inspection.job_document(job), indent=2))
        return
    m = job.message
    rows = [
        ("job", job.id),
        ("queue", job.queue),
        ("topic", job.topic),
        ("state", job.state + (f" on {job.running_on}" if job.running_on else "")),
        ("attempt", job.attempt),
        ("progress", f"{job.progress:g}"),
        ("result", "-" if job.result is None else json.dumps(job.result)),
        ("error", job.error),
        ("created", _when(job.created)),
        ("finished", _when(job.finished)),
        ("due", _when(job.due)),
        ("origin", job.origin),
        ("message", m and f"stream {m.stream}, sequence {m.sequence}, subject {m.subject}"),
        ("dead letter", job.dead_letter),
    ]
    for name, value in rows:
        if value not in (None, "-") or name in ("result", "error"):
            click.echo(f"{name:<12} {'-' if value is None else value}")
    if job.traceback:
        click.echo("traceback:")
        click.echo(job.traceback.rstrip())


def _list_jobs(rows: list[JobInfo], state: str, limit: int, as_json: bool) -> None:
    if as_json:
        doc = {"state": state, "limit": limit, "jobs": [inspection.job_document(j) for j in rows]}
        click.echo(json.dumps(doc, indent=2))
        return
    if not rows:
        click.echo(f"no {state} jobs")
    for j in rows:
        extra = {
            "running": f"on {j.running_on}",
            "delayed": f"due {_when(j.due)}",
            "failed": f"{_when(j.finished)}  {j.error}",
        }[state]
        click.echo(f"{j.id}  {j.queue}  {j.topic}  {j.state}  attempt={j.attempt}  {extra}")


def _list_letters(letters: list[DeadLetter], limit: int, as_json: bool) -> None:
    if as_json:
        items = [inspection.letter_document(x) for x in letters]
        click.echo(json.dumps({"state": "dead", "limit": limit, "dead_letters": items}, indent=2))
        return
    if not letters:
        click.echo("no dead letters")
    for x in letters:
        r = x.record
        what = (
            f"{r.get('job_id')}  {r.get('queue')}  {r.get('topic')}"
            if x.kind == "job"
            else f"{r.get('subject')}#{r.get('sequence')}"
        )
        click.echo(
            f"{x.id}  {r.get('stage')}  {what}  attempts={r.get('attempts')}  {r.get('error')}"
        )


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
