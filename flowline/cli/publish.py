"""``flowline publish``: put one event on a pipeline's stream from a shell."""

from __future__ import annotations

import json

import click

from .._settings import Settings
from ..runtime.runner import Runner
from . import main
from ._common import load_pipelines, nats_option, run


@main.command()
@click.argument("target")
@click.option("--json", "payload", required=True, help="The event as a JSON object.")
@click.option("--msg-id", help="Message id: a retried publish with the same id is stored once.")
@nats_option
def publish(target: str, payload: str, msg_id: str | None, nats_url: str | None) -> None:
    """Publish one event to the stream of the pipeline at TARGET."""
    pipelines = load_pipelines(target)
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

    run(go)
