"""Diagrams of pipelines: their nodes and edges found once, written as Mermaid or Graphviz DOT.

A pipeline is drawn left to right: each stage (its sources, their routes, the queues) a box,
each topic a rounded node under its queue, labelled ``topic: handler``. Several pipelines (a
`Pipelines` target) are one diagram with a group per pipeline. `Pipeline.to_mermaid` (Jupyter
renders it) and ``flowline graph`` both use this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._pipeline import Pipeline

FORMATS = ("mermaid", "dot")


@dataclass(frozen=True)
class Graph:
    """One pipeline's diagram: stages (id, label), the edges between them, and topics (id,
    label, the id of the queue they hang from)."""

    name: str
    stages: list[tuple[str, str]]
    edges: list[tuple[str, str]]
    topics: list[tuple[str, str, str]]


def graph(pipeline: Pipeline, prefix: str = "") -> Graph:
    """The nodes and edges of `pipeline`, their ids starting with `prefix`."""
    ids = {id(s): f"{prefix}s{i}" for i, s in enumerate(pipeline.stages)}
    edges = []
    for branch in pipeline.branches:  # each source to its route (routes may be shared)
        if branch.route is not None:
            edges.append((ids[id(branch.source)], ids[id(branch.route)]))
    for route in pipeline.routes:  # every route feeds every queue
        edges += [(ids[id(route)], ids[id(q)]) for q in pipeline.queues]
    return Graph(
        pipeline.name,
        [(ids[id(s)], s.describe()) for s in pipeline.stages],
        edges,
        [
            (f"{prefix}t{i}", f"{t.name}: {t.handler_name}", ids[id(t.queue)])
            for i, t in enumerate(pipeline.topics.values())
        ],
    )


def mermaid(pipelines: Sequence[Pipeline]) -> str:
    """A Mermaid flowchart; several pipelines each in a subgraph."""
    lines = ["flowchart LR"]
    several = len(pipelines) > 1
    indent = "    " * (2 if several else 1)
    for j, pipeline in enumerate(pipelines):
        g = graph(pipeline, f"p{j}" if several else "")
        if several:
            lines.append(f'    subgraph p{j}["{_mermaid(g.name)}"]')
        lines += [f'{indent}{node}["{_mermaid(label)}"]' for node, label in g.stages]
        lines += [f"{indent}{a} --> {b}" for a, b in g.edges]
        for node, label, queue in g.topics:  # each topic's edge right after it, as people write
            lines += [f'{indent}{node}(["{_mermaid(label)}"])', f"{indent}{queue} --> {node}"]
        if several:
            lines.append("    end")
    return "\n".join(lines)


def dot(pipelines: Sequence[Pipeline]) -> str:
    """A Graphviz digraph (``dot -Tsvg``); each pipeline in a cluster labelled with its name."""
    lines = ["digraph flowline {", "    rankdir=LR;"]
    lines += [f'    {kind} [fontname="Helvetica"];' for kind in ("graph", "node")]
    for j, pipeline in enumerate(pipelines):
        g = graph(pipeline, f"p{j}")
        lines.append(f"    subgraph cluster_{j} {{")
        lines.append(f"        label={_dot(g.name)};")
        lines += [f"        {node} [label={_dot(label)}, shape=box];" for node, label in g.stages]
        for node, label, _ in g.topics:
            lines.append(f'        {node} [label={_dot(label)}, shape=box, style="rounded"];')
        lines += [f"        {a} -> {b};" for a, b in g.edges]
        lines += [f"        {queue} -> {node};" for node, _, queue in g.topics]
        lines.append("    }")
    lines.append("}")
    return "\n".join(lines)


def _mermaid(text: str) -> str:
    return text.replace('"', "#quot;").replace("<", "#lt;").replace(">", "#gt;")


def _dot(text: str) -> str:
    """A DOT quoted string: backslashes and quotes escaped, newlines kept out."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")
    return f'"{escaped}"'
