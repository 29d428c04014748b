"""Diagrams of pipelines: their nodes and edges found once, written as Mermaid or Graphviz DOT.

A pipeline is drawn left to right: each stage (source, route, queues) a box, each topic a
rounded node under its queue, labelled ``topic: handler``. Several pipelines (a `Pipelines`
target) are one diagram with a group per pipeline. `Pipeline.to_mermaid` (Jupyter renders
it) and ``flowline graph`` both use this module.
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
    """One pipeline's diagram: nodes (id, label, is a topic) and edges (from id, to id)."""

    name: str
    nodes: list[tuple[str, str, bool]]
    edges: list[tuple[str, str]]


def graph(pipeline: Pipeline, prefix: str = "") -> Graph:
    """The nodes and edges of `pipeline`, their ids starting with `prefix`."""
    ids = {id(s): f"{prefix}s{i}" for i, s in enumerate(pipeline.stages)}
    nodes = [(ids[id(s)], s.describe(), False) for s in pipeline.stages]
    edges = []
    source, route = pipeline.stages[0], pipeline.route
    if route is not None:
        edges.append((ids[id(source)], ids[id(route)]))
        edges += [(ids[id(route)], ids[id(q)]) for q in pipeline.queues]
    for i, topic in enumerate(pipeline.topics.values()):
        nodes.append((f"{prefix}t{i}", f"{topic.name}: {topic.handler_name}", True))
        edges.append((ids[id(topic.queue)], f"{prefix}t{i}"))
    return Graph(pipeline.name, nodes, edges)


def mermaid(pipelines: Sequence[Pipeline]) -> str:
    """A Mermaid flowchart; several pipelines each in a subgraph."""
    lines = ["flowchart LR"]
    several = len(pipelines) > 1
    for j, pipeline in enumerate(pipelines):
        g = graph(pipeline, f"p{j}" if several else "")
        indent = "    " * (2 if several else 1)
        if several:
            lines.append(f'    subgraph p{j}["{_mermaid(g.name)}"]')
        # Edges follow the nodes they join, as Mermaid users write them.
        stage_edges = [e for e in g.edges if not _is_topic(g, e[1])]
        for node, label, topic in g.nodes:
            if not topic:
                lines.append(f'{indent}{node}["{_mermaid(label)}"]')
        lines += [f"{indent}{a} --> {b}" for a, b in stage_edges]
        for node, label, topic in g.nodes:
            if topic:
                lines.append(f'{indent}{node}(["{_mermaid(label)}"])')
                lines += [f"{indent}{a} --> {b}" for a, b in g.edges if b == node]
        if several:
            lines.append("    end")
    return "\n".join(lines)


def dot(pipelines: Sequence[Pipeline]) -> str:
    """A Graphviz digraph (``dot -Tsvg``); each pipeline in a cluster labelled with its name."""
    lines = [
        "digraph flowline {",
        "    rankdir=LR;",
        '    graph [fontname="Helvetica"];',
        '    node [fontname="Helvetica"];',
    ]
    for j, pipeline in enumerate(pipelines):
        g = graph(pipeline, f"p{j}")
        lines.append(f"    subgraph cluster_{j} {{")
        lines.append(f"        label={_dot(g.name)};")
        for node, label, topic in g.nodes:
            shape = 'shape=box, style="rounded"' if topic else "shape=box"
            lines.append(f"        {node} [label={_dot(label)}, {shape}];")
        lines += [f"        {a} -> {b};" for a, b in g.edges]
        lines.append("    }")
    lines.append("}")
    return "\n".join(lines)


def _is_topic(g: Graph, node: str) -> bool:
    return any(n == node and topic for n, _, topic in g.nodes)


def _mermaid(text: str) -> str:
    return text.replace('"', "#quot;").replace("<", "#lt;").replace(">", "#gt;")


def _dot(text: str) -> str:
    """A DOT quoted string: backslashes and quotes escaped, newlines kept out."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")
    return f'"{escaped}"'
