"""``flowline dlq``: list, replay and purge dead letters.

Listing and purging need Redis only; replaying connects to NATS only for a stream message.
"""

from __future__ import annotations

import json

import click

from .._settings import Settings
from ..runtime import deadletters
from ..runtime.runner import Runner
from ._common import load_pipelines, nats_option, redis_option, run, tls_option
from ._main import main


@main.group()
def dlq() -> None:
    """Inspect, replay and purge dead letters."""


@dlq.command("list")
@click.argument("target")
@nats_option
@redis_option
@tls_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def dlq_list(
    target: str, nats_url: str | None, redis_url: str | None, tls_ca: str | None, as_json: bool
) -> None:
    """List the dead letters of the pipeline(s) at TARGET."""
    pipelines = load_pipelines(target)

    async def go() -> None:
        settings = Settings.from_env(nats_url=nats_url, redis_url=redis_url, tls_ca=tls_ca)
        async with Runner(pipelines, settings, only=()) as app:
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

    run(go)


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
@tls_option
def dlq_replay(
    target: str,
    ids: tuple[str, ...],
    all_: bool,
    nats_url: str | None,
    redis_url: str | None,
    tls_ca: str | None,
) -> None:
    """Send dead letters back through the normal path (jobs to queues, messages to streams)."""
    pipelines = load_pipelines(target)

    async def go() -> None:
        settings = Settings.from_env(nats_url=nats_url, redis_url=redis_url, tls_ca=tls_ca)
        async with Runner(pipelines, settings, only=()) as app:
            letters = [(p, x) for p in pipelines for x in await app.dead_letters(p)]
            chosen = {x.id for x in _select([x for _, x in letters], ids, all_)}
            picked = [(p, x) for p, x in letters if x.id in chosen]
            # A job goes back to its queue through Redis alone: NATS only for a stream message,
            # connected before replaying anything, so an unreachable NATS replays nothing.
            needs_nats = any(x.kind != "job" for _, x in picked)
            js = await app.jetstream() if needs_nats else None
            for p, letter in picked:
                await deadletters.replay(app.redis, js, p, letter)  # type: ignore[arg-type]
            click.echo(f"replayed {len(picked)}")

    run(go)


@dlq.command("purge")
@click.argument("target")
@click.argument("ids", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Purge every dead letter.")
@nats_option
@redis_option
@tls_option
def dlq_purge(
    target: str,
    ids: tuple[str, ...],
    all_: bool,
    nats_url: str | None,
    redis_url: str | None,
    tls_ca: str | None,
) -> None:
    """Delete dead letters for good."""
    pipelines = load_pipelines(target)

    async def go() -> None:
        settings = Settings.from_env(nats_url=nats_url, redis_url=redis_url, tls_ca=tls_ca)
        async with Runner(pipelines, settings, only=()) as app:
            letters = [x for p in pipelines for x in await app.dead_letters(p)]
            removed = await deadletters.purge(app.redis, _select(letters, ids, all_))  # type: ignore[arg-type]
            click.echo(f"purged {removed}")

    run(go)
