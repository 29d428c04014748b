"""``flowline dlq``: list, replay and purge dead letters.

Listing and purging need Redis only; replaying connects to NATS only for a stream message.
"""

from __future__ import annotations

import json
from collections import Counter

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
            owned = [(p, x) for p in pipelines for x in await app.dead_letters(p)]
            names = _handles([x for _, x in owned])
            for (p, letter), handle in zip(owned, names, strict=True):
                rec = letter.record
                if as_json:
                    click.echo(json.dumps({"id": handle, "pipeline": p.name, **rec}))
                else:
                    what = rec.get("topic") or f"{rec.get('subject')}#{rec.get('sequence')}"
                    click.echo(
                        f"{handle}  {p.name}  {rec['stage']:<7} {what}  "
                        f"attempts={rec.get('attempts')}  {rec['error']}"
                    )

    run(go)


def _handles(letters: list[deadletters.DeadLetter]) -> list[str]:
    """A name for each letter: its entry id, or ``<entry id>@<store>`` where another store
    holds an entry of the same id (ids are per Redis stream: two written in one millisecond
    to two stores can share one)."""
    seen = Counter(x.id for x in letters)
    return [x.id if seen[x.id] == 1 else f"{x.id}@{x.store}" for x in letters]


def _select(
    letters: list[deadletters.DeadLetter], ids: tuple[str, ...], all_: bool
) -> list[deadletters.DeadLetter]:
    """The letters `ids` name (an entry id, or ``<entry id>@<store>`` as the dashboard and
    ``dlq list`` give them), or all; an id several stores share is refused, never both taken."""
    if not ids and not all_:
        raise click.UsageError("name dead-letter ids, or pass --all")
    if all_:
        return letters
    by_name: dict[str, list[deadletters.DeadLetter]] = {}
    for x in letters:
        by_name.setdefault(x.id, []).append(x)
        by_name.setdefault(f"{x.id}@{x.store}", []).append(x)
    chosen = []
    for name in ids:
        found = by_name.get(name, [])
        if not found:
            raise click.ClickException(f"no dead letter with id {name}")
        if len(found) > 1:
            options = ", ".join(f"{x.id}@{x.store}" for x in found)
            raise click.ClickException(
                f"dead letter id {name} is in several stores; give one of: {options}"
            )
        chosen += [x for x in found if x not in chosen]
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
            chosen = _select([x for _, x in letters], ids, all_)
            # By the letter, not its id: two stores may hold entries of one id.
            picked = [(p, x) for p, x in letters if any(x is c for c in chosen)]
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
