"""``flowline publish``: put one event on a pipeline's stream from a shell."""

from __future__ import annotations

import json

import click

from .._settings import Settings
from ..errors import PipelineError
from ..runtime.runner import Runner
from ._common import load_pipelines, nats_option, redis_option, run, tls_option
from ._main import main


@main.command()
@click.argument("target")
@click.option("--json", "payload", required=True, help="The event as a JSON object.")
@click.option("--msg-id", help="Message id: a retried publish with the same id is stored once.")
@click.option("--subject", help="The stream's subject, for a pipeline that reads several.")
@nats_option
@redis_option
@tls_option
def publish(
    target: str,
    payload: str,
    msg_id: str | None,
    subject: str | None,
    nats_url: str | None,
    redis_url: str | None,
    tls_ca: str | None,
) -> None:
    """Publish one event to the stream of the pipeline at TARGET."""
    pipelines = load_pipelines(target)
    if len(pipelines) != 1:
        raise click.UsageError("TARGET must name one pipeline")
    try:
        pipelines[0].stream(subject)  # before connecting: which stream, or why none
    except PipelineError as exc:
        raise click.UsageError(str(exc)) from None
    try:
        event = json.loads(payload)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--json") from None

    async def go() -> None:
        settings = Settings.from_env(nats_url=nats_url, redis_url=redis_url, tls_ca=tls_ca)
        async with Runner(pipelines, settings, only=()) as app:
            seq = await app.publish(pipelines[0], event, msg_id=msg_id, subject=subject)
            click.echo(f"published as sequence {seq}")

    run(go)
