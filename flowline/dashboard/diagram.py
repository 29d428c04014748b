"""A pipeline drawn on the server: sources -> routes -> each queue -> its topics and handlers.

`layout` places boxes in four columns (sources, routes, queues, topics) and returns plain data;
the ``_diagram.html`` template turns it into inline SVG. No JavaScript draws anything, so the
diagram is in the page as served and scales with it. Labels are monospace, so their width is
known here without measuring text in a browser.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .._pipeline import Pipeline
from .._stages import Cron, Source, Stream

BOX_H = 58
TOPIC_H = 40  # topics are leaves: a name and its handler, no caption
ROW = 50  # vertical pitch of the topic column
GAP = 64  # between columns, room for the curved edges
PAD = 12
LABEL_CH = 7.9  # width of one 13 px monospace character
DETAIL_CH = 6.7  # 11 px sans-serif, a generous average
CAPTION_CH = 6.4  # 10 px capitals, letter-spaced
MAX_LABEL = 36


@dataclass(frozen=True)
class Node:
    """One box: `kind` (source, route, queue, topic) picks its colour."""

    kind: str
    caption: str
    label: str
    detail: str
    title: str  # the full text, shown as a tooltip when `label` is shortened
    x: float
    y: float
    w: float
    h: float
    warn: bool = False  # a topic with no handler, a queue holding dead letters

    @property
    def cx(self) -> float:
        return self.x + self.w / 2

    @property
    def cy(self) -> float:
        return self.y + self.h / 2


@dataclass(frozen=True)
class Diagram:
    """Boxes and the SVG paths of the arrows between them."""

    id: str
    width: float
    height: float
    nodes: tuple[Node, ...]
    edges: tuple[str, ...]
    description: str  # for screen readers


def layout(pipeline: Pipeline, queues: Mapping[str, Mapping[str, Any]] | None = None) -> Diagram:
    """Place `pipeline`'s stages; with `queues` (status documents by name), show their counts.

    Args:
        pipeline: the description to draw.
        queues: each queue's entry of the status document (``ready``, ``running``, ``dead``...);
            a queue missing from it is drawn with its options instead.
    """
    srcs = [_source_box(pipeline, b.source) for b in pipeline.branches]
    n = len(pipeline.queues)
    fans = f"to {n} queue{'' if n == 1 else 's'}"
    routes = pipeline.routes
    rts = [_box("route", "route", r.name, f"fan-in, {fans}" if r.fan_in else fans) for r in routes]
    # Each queue's topics: those dequeued here, then those it lists that nobody dequeues.
    columns: list[tuple[_Box, list[_Box]]] = []
    for q in pipeline.queues:
        handled = [t for t in pipeline.topics.values() if t.queue is q]
        leaves = [_box("topic", "topic", t.name, f"→ {t.handler_name}") for t in handled]
        for name in sorted((q.topics or set()) - {t.name for t in handled}):
            leaves.append(_box("topic", "topic", name, "no handler", warn=True))
        state = (queues or {}).get(q.name)
        columns.append((_queue_box(q.name, q.options.concurrency, state), leaves))

    col_w = [
        max(x.w for x in srcs),
        max((x.w for x in rts), default=0.0),
        max((qb.w for qb, _ in columns), default=0.0),
        max((leaf.w for _, leaves in columns for leaf in leaves), default=0.0),
    ]
    xs: list[float] = [PAD]
    for w in col_w[:-1]:
        xs.append(xs[-1] + w + GAP if w else xs[-1])
    topic_rows = sum(max(1, len(leaves)) for _, leaves in columns) or 1
    # Sources stack at the box pitch; topics at theirs: the taller column sets the height.
    source_span = (len(srcs) - 1) * (BOX_H + 16)
    height = 2 * PAD + BOX_H + max((topic_rows - 1) * ROW, source_span)

    def centre(row: float) -> float:
        return PAD + BOX_H / 2 + row * ROW

    nodes: list[Node] = []
    edges: list[str] = []
    row = 0
    queue_nodes: list[Node] = []
    for qb, leaves in columns:
        span = max(1, len(leaves))
        # A queue sits level with the middle of its topics.
        qn = qb.at(xs[2], centre(row + (span - 1) / 2), col_w[2])
        queue_nodes.append(qn)
        nodes.append(qn)
        for i, leaf in enumerate(leaves):
            ln = leaf.at(xs[3], centre(row + i), col_w[3])
            nodes.append(ln)
            edges.append(_edge(qn, ln))
        row += span
    mid = (queue_nodes[0].cy + queue_nodes[-1].cy) / 2 if queue_nodes else height / 2

    def stacked(boxes: list[_Box], x: float, w: float) -> list[Node]:
        """`boxes` one above the other, centred on `mid` (kept inside the picture)."""
        span = (len(boxes) - 1) * (BOX_H + 16)
        top = min(max(mid - span / 2, PAD + BOX_H / 2), height - PAD - BOX_H / 2 - span)
        return [box.at(x, top + i * (BOX_H + 16), w) for i, box in enumerate(boxes)]

    source_nodes = stacked(srcs, xs[0], col_w[0])
    route_nodes = stacked(rts, xs[1], col_w[1])
    by_route = {id(r): node for r, node in zip(routes, route_nodes, strict=True)}
    nodes += route_nodes
    for branch, sn in zip(pipeline.branches, source_nodes, strict=True):
        if branch.route is not None:
            edges.append(_edge(sn, by_route[id(branch.route)]))
    for rn in route_nodes:
        edges.extend(_edge(rn, qn) for qn in queue_nodes)
    nodes += source_nodes
    right = xs[3] + col_w[3] if columns else (xs[1] + col_w[1] if rts else xs[0] + col_w[0])
    width = right + PAD
    steps = [" and ".join(f"{x.caption} {x.title}" for x in srcs)]
    steps += [" and ".join(f"route {x.title}" for x in rts)] if rts else []
    for qb, leaves in columns:
        steps.append(f"queue {qb.title} ({', '.join(x.title for x in leaves) or 'no topics'})")
    chain = ", then ".join(steps)
    return Diagram(
        id=f"d-{_css_id(pipeline.name)}",
        width=width,
        height=height,
        nodes=tuple(nodes),
        edges=tuple(edges),
        description=f"Pipeline {pipeline.name}: {chain}",
    )


@dataclass(frozen=True)
class _Box:
    kind: str
    caption: str
    label: str
    detail: str
    title: str
    w: float
    warn: bool = False

    def at(self, x: float, cy: float, column_width: float) -> Node:
        """The box placed at `x`, centred on `cy`, as wide as its column (arrows line up)."""
        h = TOPIC_H if self.kind == "topic" else BOX_H
        return Node(
            self.kind, self.caption, self.label, self.detail, self.title, x, cy - h / 2,
            column_width, h, warn=self.warn,
        )  # fmt: skip


def _box(kind: str, caption: str, text: str, detail: str, *, warn: bool = False) -> _Box:
    label = text if len(text) <= MAX_LABEL else text[: MAX_LABEL - 1] + "…"
    width = max(len(label) * LABEL_CH, len(detail) * DETAIL_CH, len(caption) * CAPTION_CH) + 24
    return _Box(kind, caption, label, detail, text, round(max(width, 96.0), 1), warn)


def _source_box(pipeline: Pipeline, source: Source) -> _Box:
    if isinstance(source, Stream):
        durable = source.durable or pipeline.name
        return _box("source", "stream", source.subject, f"durable {durable}")
    if isinstance(source, Cron):
        every = source.expression or f"every {source.interval:g}s"
        return _box("source", "cron", every, f"topic {source.topic} ({source.tz})")
    return _box("source", source.kind, source.name, "")  # pragma: no cover - Stream or Cron


def _queue_box(name: str, concurrency: int, state: Mapping[str, Any] | None) -> _Box:
    if state is None or state.get("ready") is None:
        return _box("queue", "queue", name, f"concurrency {concurrency}")
    detail = f"{state['ready']} ready · {state['running']} running · {state['dead']} dead"
    return _box("queue", "queue", name, detail, warn=bool(state["dead"]))


def _edge(a: Node, b: Node) -> str:
    x1, y1, x2, y2 = a.x + a.w, a.cy, b.x - 6, b.cy  # stop short of the box: the arrow head
    bend = (x2 - x1) / 2
    return f"M{x1:g},{y1:g} C{x1 + bend:g},{y1:g} {x2 - bend:g},{y2:g} {x2:g},{y2:g}"


def _css_id(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
