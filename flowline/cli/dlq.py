"""``flowline dlq``: list, replay and purge dead letters."""

from __future__ import annotations

import json

import click

from .._settings import Settings
from ..runtime import deadletters
from ..runtime.runner import Runner
from . import main
from ._common import load_pipelines, nats_option, redis_option, run


@main.group()
def dlq() -> None:
    """Inspect, replay and purge dead letters."""


@dlq.command("list")
@click.argument("target")
@redis_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def dlq_list(target: str, redis_url: str | None, as_json: bool) -> None:
    """List the dead letters of the pipeline(s) at TARGET."""
    pipelines = load_pipelines(target)

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
def dlq_replay(
    target: str, ids: tuple[str, ...], all_: bool, nats_url: str | None, redis_url: str | None
) -> None:
    """Send dead letters back through the normal path (jobs to queues, messages to streams)."""
    pipelines = load_pipelines(target)

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

    run(go)


@dlq.command("purge")
@click.argument("target")
@click.argument("ids", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Purge every dead letter.")
@redis_option
def dlq_purge(target: str, ids: tuple[str, ...], all_: bool, redis_url: str | None) -> None:
    """Delete dead letters for good."""
    pipelines = load_pipelines(target)

    async def go() -> None:
        async with Runner(pipelines, Settings.from_env(redis_url=redis_url), only=()) as app:
            letters = [x for p in pipelines for x in await app.dead_letters(p)]
            removed = await deadletters.purge(app.redis, _select(letters, ids, all_))  # type: ignore[arg-type]
            click.echo(f"purged {removed}")

    run(go)
