"""The compiler: binds pipeline descriptions to concrete NATS and Redis resources.

It checks what only makes sense across pipelines (a queue or durable name used twice), decides
which parts this process runs (``--only``). The taskiq side of the binding is `_broker`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ._pipeline import Pipeline, Pipelines
from ._stages import Cron, Queue, Stream
from .errors import ConfigurationError, PipelineError


@dataclass(frozen=True)
class Plan:
    """What one process runs: stream consumers, cron sources and queue workers."""

    pipelines: tuple[Pipeline, ...]
    streams: tuple[tuple[Pipeline, Stream[Any]], ...]
    crons: tuple[tuple[Pipeline, Cron], ...]
    queues: tuple[tuple[Pipeline, Queue], ...]


def as_pipelines(target: object) -> tuple[Pipeline, ...]:
    """Accepts a `Pipeline`, a `Pipelines`, or any iterable of pipelines."""
    if isinstance(target, Pipeline):
        return (target,)
    if isinstance(target, Pipelines):
        return tuple(target)
    if isinstance(target, Iterable) and not isinstance(target, (str, bytes)):
        items = tuple(target)
        if items and all(isinstance(p, Pipeline) for p in items):
            return tuple(Pipelines(*items))
    raise ConfigurationError(
        f"expected a Pipeline or a collection of pipelines, got {type(target).__name__}"
    )


def compile_plan(target: object, only: Iterable[str] | None = None) -> Plan:
    """Validate `target` as a whole and pick the parts named by `only` (all when None).

    `only` items: ``stream``, ``cron``, ``queue`` (every queue) or ``queue:NAME``; an empty
    collection runs nothing (a producer that only publishes and enqueues).

    Raises:
        PipelineError: two pipelines share a queue, or a queue has no handler at all.
        ConfigurationError: `only` names something that does not exist.
    """
    pipelines = as_pipelines(target)
    owners: dict[str, str] = {}
    for p in pipelines:
        for q in p.queues:
            if q.name in owners:
                raise PipelineError(
                    f"Queue({q.name!r}) is used by pipelines {owners[q.name]!r} and {p.name!r}; "
                    f"a queue belongs to one pipeline: feed it from both sources in one, "
                    f"(source_a >> Route(a) | source_b >> Route(b)) >> Queue({q.name!r})"
                )
            owners[q.name] = p.name
    wanted = {"stream", "cron", "queue"} if only is None else set(only)
    queue_names = {f"queue:{name}" for name in owners}
    unknown = wanted - {"stream", "cron", "queue"} - queue_names
    if unknown:
        choices = ", ".join(sorted({"stream", "cron", "queue", *queue_names}))
        raise ConfigurationError(
            f"--only {sorted(unknown)[0]!r} matches nothing; choose from {choices}"
        )
    streams, crons, queues = [], [], []
    for p in pipelines:
        for src in p.sources:
            if isinstance(src, Stream) and "stream" in wanted:
                streams.append((p, src))
            if isinstance(src, Cron) and "cron" in wanted:
                crons.append((p, src))
        for q in p.queues:
            if "queue" in wanted or f"queue:{q.name}" in wanted:
                if not any(t.queue is q for t in p.topics.values()):
                    raise PipelineError(
                        f"Queue({q.name!r}) of pipeline {p.name!r} has no handler; "
                        "register one with pipeline.dequeue('topic', handler)"
                    )
                queues.append((p, q))
    return Plan(pipelines, tuple(streams), tuple(crons), tuple(queues))
