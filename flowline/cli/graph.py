"""``flowline graph``: the diagram of a target's pipelines, as Mermaid or Graphviz DOT."""

from __future__ import annotations

import click

from .. import _diagram
from ._common import load_pipelines
from ._main import main


@main.command()
@click.argument("target")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(_diagram.FORMATS),
    default="mermaid",
    show_default=True,
    help="mermaid (GitHub, Jupyter, most docs) or dot (Graphviz: dot -Tsvg).",
)
def graph(target: str, fmt: str) -> None:
    """Print the diagram of the pipeline(s) at TARGET: stages, queues, topics and handlers.

    Needs no server. For a picture: flowline graph TARGET --format dot | dot -Tsvg > graph.svg
    """
    pipelines = load_pipelines(target)
    draw = _diagram.mermaid if fmt == "mermaid" else _diagram.dot
    click.echo(draw(pipelines))
