"""``flowline queue``: steer a queue in every process at once (pause, resume)."""

from __future__ import annotations

import click

from .._settings import Settings
from ..runtime.runner import Runner
from ._common import load_pipelines, nats_option, redis_option, run, tls_option
from ._main import main


@main.command()
@click.argument("target")
@click.argument("action", type=click.Choice(["pause", "resume"]))
@click.argument("names", nargs=-1, required=True)
@nats_option
@redis_option
@tls_option
def queue(
    target: str,
    action: str,
    names: tuple[str, ...],
    nats_url: str | None,
    redis_url: str | None,
    tls_ca: str | None,
) -> None:
    """Pause or resume queue(s) NAMES of TARGET in every process at once.

    Paused, no process starts a job of the queue within half a second (jobs running finish)
    while the stream side keeps routing into it; resumed, every process starts its jobs again
    within a quarter of a second.
    """
    pipelines = load_pipelines(target)
    owners = {q.name: p for p in pipelines for q in p.queues}
    unknown = [n for n in names if n not in owners]
    if unknown:
        known = ", ".join(sorted(owners)) or "none"
        raise click.ClickException(f"no queue {unknown[0]!r} in {target} (its queues: {known})")

    async def go() -> None:
        settings = Settings.from_env(nats_url=nats_url, redis_url=redis_url, tls_ca=tls_ca)
        async with Runner(pipelines, settings, only=()) as app:
            for name in names:
                p = owners[name]
                handle = app.queue_handle(p, next(q for q in p.queues if q.name == name))
                if action == "pause":
                    changed = await handle.pause()
                    click.echo(
                        f"paused {name}: no process starts its jobs until "
                        f"`flowline queue {target} resume {name}`"
                        if changed
                        else f"{name} was already paused"
                    )
                else:
                    changed = await handle.resume()
                    click.echo(f"resumed {name}" if changed else f"{name} was not paused")

    run(go)
