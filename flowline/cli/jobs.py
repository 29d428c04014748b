"""``flowline jobs``: one job by id, or the jobs in one state. Needs Redis only."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import click

from .._settings import Settings
from ..runtime import jobs as inspection
from ..runtime.connections import connect_redis
from ..runtime.deadletters import DeadLetter
from ..runtime.jobs import JobInfo
from ._common import load_pipelines, nats_option, redis_option, run, tls_option
from ._main import main

DEFAULT_LIMIT = 20


@main.command()
@click.argument("target")
@click.argument("job_id", metavar="[ID]", required=False)
@click.option(
    "--state", type=click.Choice(inspection.STATES), help="List the jobs in this state instead."
)
@click.option(
    "--limit",
    type=click.IntRange(1, 10_000),
    help=f"How many jobs --state lists at most (default {DEFAULT_LIMIT}).",
)
@click.option("--queue", "queue_name", metavar="NAME", help="Look in this queue only.")
@click.option("--json", "as_json", is_flag=True, help="Print the document as JSON.")
@nats_option
@redis_option
@tls_option
def jobs(
    target: str,
    job_id: str | None,
    state: str | None,
    limit: int | None,
    queue_name: str | None,
    as_json: bool,
    nats_url: str | None,
    redis_url: str | None,
    tls_ca: str | None,
) -> None:
    """Show job ID of the pipeline(s) at TARGET, or list them with --state.

    \b
    --state failed    jobs that failed for good, record still kept (newest first)
    --state dead      dead letters, of jobs and of stream messages (newest first)
    --state running   jobs a worker holds now (oldest first)
    --state delayed   delayed jobs and jobs waiting to be retried (soonest due first)
    """
    if job_id is None and state is None:
        raise click.UsageError("name a job ID, or pass --state " + "|".join(inspection.STATES))
    if job_id is not None and state is not None:
        raise click.UsageError("pass a job ID or --state, not both")
    if limit is not None and state is None:
        raise click.UsageError("--limit applies to --state listings")
    pipelines = load_pipelines(target)
    queues = inspection.queues_of(pipelines)
    if queue_name is not None:
        if queue_name not in queues:
            known = ", ".join(queues) or "none"
            raise click.BadParameter(
                f"{target} has no queue {queue_name!r} (its queues: {known})", param_hint="--queue"
            )
        queues = {queue_name: queues[queue_name]}

    async def go() -> None:
        # --nats is checked like every command's, and never contacted: jobs live in Redis.
        settings = Settings.from_env(nats_url=nats_url, redis_url=redis_url, tls_ca=tls_ca)
        redis = await connect_redis(settings, max_connections=4)
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
