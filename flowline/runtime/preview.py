"""`Pipeline.preview`: the jobs one event would make, found without servers.

The router runs as the stream side would run it (`call_router`), and the jobs are planned by the
same `plan` the runtime enqueues with, so each preview carries the id the job would get, its
queue and handler, and the same errors: an unknown topic, data JSON cannot hold, a router that
raises or returns something that is not a job. Nothing is written anywhere.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from .._stages import Cron, Source, Stream, seconds
from ..backends.jetstream import stream_name_for
from ..errors import PipelineError
from .cron import CronTick
from .enqueue import plan
from .routing import call_router

if TYPE_CHECKING:
    from .._pipeline import Pipeline


@dataclass(frozen=True)
class Preview:
    """One job an event would make.

    Attributes:
        id: the id it would get (``<stream>:<sequence>:<index>``, ``cron:<topic>:<tick ms>``,
            or ``key:<key>`` for a keyed job): the id that makes a redelivery a no-op.
        topic, queue, handler: where it would go and what would run it.
        data: its data, as the handler would receive it (after a JSON round trip).
        delay, priority, key: as the router set them.
    """

    id: str
    topic: str
    queue: str
    handler: str
    data: Any
    delay: float | None
    priority: int
    key: str | None


def preview(
    pipeline: Pipeline, event: Any, *, sequence: int = 1, source: Source | str | None = None
) -> list[Preview]:
    """The jobs `pipeline`'s router makes of `event`, as they would be enqueued.

    Args:
        event: what the router receives: for a protobuf Stream the message, a dict of its fields
            (as ``publish`` takes it) or its bytes; for a Cron a `CronTick` (default: now).
        sequence: the stream sequence the ids are made with.
        source: which source `event` comes from, when the pipeline has several: the stage,
            or its name (a Stream's subject, ``cron:<topic>``). Without it, a `CronTick` is
            the one Cron's and anything else the one Stream's.

    Raises:
        PipelineError: the source has no route, or `source` names none of the pipeline's.
        RouteError, UnknownTopicError, SerializationError: as the stream side would raise them.
    """
    if source is None and len(pipeline.branches) > 1:
        source = _source_for(pipeline, event)
    branch = pipeline.branch(source)
    source, route = branch.source, branch.route
    if route is None:
        raise PipelineError(
            f"{source.describe()} of pipeline {pipeline.name!r} has no Route to preview"
        )
    if isinstance(source, Stream):
        if isinstance(event, bytes):
            event = source.decode(event)
        elif isinstance(event, Mapping) and source.encode is not None:
            event = source.decode(source.encode(event))
        base = f"{stream_name_for(source.subject)}:{sequence}"
    else:
        assert isinstance(source, Cron)
        if event is None:
            event = CronTick(source.topic, datetime.now(UTC))
        tick_ms = int(event.scheduled.timestamp() * 1000) if isinstance(event, CronTick) else 0
        base = f"cron:{source.topic}:{tick_ms}"
    jobs = _run(call_router(route, event))
    rows = plan(pipeline, jobs, base, "preview", "route")
    return [
        Preview(
            id=row.id,
            topic=row.topic,
            queue=row.queue,
            handler=pipeline.topics[row.topic].handler_name,
            data=json.loads(row.data),
            delay=None if job.delay is None else seconds(job.delay),
            priority=job.priority,
            key=job.key,
        )
        for row, job in zip(rows, jobs, strict=True)
    ]


def _source_for(pipeline: Pipeline, event: Any) -> Source | None:
    """The one source of `event`'s kind: a cron for a `CronTick`, else the one Stream."""
    kind = Cron if isinstance(event, CronTick) else Stream
    of_kind = [s for s in pipeline.sources if isinstance(s, kind)]
    return of_kind[0] if len(of_kind) == 1 else None  # None: `branch` says which to choose


def _run(coro: Any) -> Any:
    """Await `coro` from sync code, even inside a running loop (a notebook cell)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # a loop of its own, in a thread
        return pool.submit(asyncio.run, coro).result()
