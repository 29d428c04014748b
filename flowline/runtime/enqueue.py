"""Turning `Job` descriptions into rows and writing them to their queues, idempotently."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, NamedTuple

from .._stages import Job, seconds
from ..errors import SerializationError, UnknownTopicError
from .job import dumps, encode

if TYPE_CHECKING:
    from .._pipeline import Pipeline
    from ..backends.base import JobStore


class Planned(NamedTuple):
    """A job ready to be written: its queue, stable id, topic and encoded data.

    `born_ms` is when the work began (the stream message's stored time, the cron tick; 0 means
    the moment it is written), from which ``flowline_event_to_done_seconds`` is measured;
    `trace` is the W3C traceparent the job's span continues ('' when not tracing). A job routed
    from a stream message names the message's stream (`source`) and sequence (`seq`): the store
    keeps a dedup mark for it until the stream side forgets that sequence (`JobStore.forget`).
    """

    queue: str
    id: str
    topic: str
    data: str
    due_ms: int
    origin: str
    priority: int = 0
    born_ms: int = 0
    trace: str = ""
    group: str = ""  # '' for none
    group_limit: int = 0  # its queue's `group_limit`, for a job with a group
    source: str = ""  # the stream of the message it was routed from ('' for none)
    seq: int = 0  # that message's sequence


def plan(
    pipeline: Pipeline,
    jobs: Iterable[Job],
    base_id: str,
    origin: str,
    stage: str,
    *,
    born_ms: int = 0,
    trace: str = "",
    now: float | None = None,
    source: str = "",
    seq: int = 0,
) -> list[Planned]:
    """Give each job its id (``<base_id>:<index>``, or ``key:<key>``) and encode its data.

    A delayed job is due `delay` after `now` (epoch seconds; default: the machine's clock).
    Jobs routed from a stream message name its stream (`source`) and sequence (`seq`).

    Raises:
        UnknownTopicError: a job's topic has no handler in the pipeline.
        SerializationError: a job's data is not JSON-serialisable.
    """
    rows = []
    # Routers often give several jobs the same data object: encode it once (ids are stable
    # while `jobs` holds the objects).
    encoded: dict[int, str] = {}
    if now is None:
        now = time.time()
    name: str | None = None  # the topic looked up last: a fan-out's jobs mostly share one
    queue = ""
    limit = 0
    sharded = None  # the topic's Queue when it has shards: each job's queue is then its shard
    for index, job in enumerate(jobs):
        if job.topic != name:
            name = job.topic
            topic = pipeline.topics.get(name)
            if topic is None:
                known = ", ".join(sorted(pipeline.topics)) or "none"
                raise UnknownTopicError(
                    f"no handler dequeues topic {name!r} (dequeued topics: {known}); "
                    f"add @pipeline.dequeue({name!r})",
                    stage=stage,
                )
            queue, limit = topic.queue.name, topic.queue.options.group_limit
            sharded = topic.queue if topic.queue.shards > 1 else None
        value = job.data
        data = encoded.get(id(value))
        if data is None:
            try:
                data = encoded[id(value)] = encode(value)
            except (TypeError, ValueError):
                try:  # again, for the error that names the job
                    dumps(value, what=f"data of job {name!r}")
                except SerializationError as exc:
                    exc.add_note(f"[while running stage {stage!r}]")
                    raise
                raise
        due = 0 if not job.delay else int((now + seconds(job.delay)) * 1000)
        job_id = f"key:{job.key}" if job.key is not None else f"{base_id}:{index}"
        if sharded is not None:
            queue = sharded.shard_for(job_id, job.group)
        row = Planned(
            queue, job_id, name, data, due, origin, job.priority, born_ms, trace,
            "" if job.group is None else job.group, limit if job.group is not None else 0,
            source, seq,
        )  # fmt: skip
        rows.append(row)
    return rows


def direct(
    pipeline: Pipeline, job: Job, *, trace: str = "", now: float | None = None
) -> list[Planned]:
    """The row of one job enqueued without a stream: a unique id, or ``key:<key>`` if keyed."""
    base = f"direct:{uuid.uuid4().hex}"
    return plan(pipeline, [job], base, "direct", "enqueue", trace=trace, now=now)


def by_queue(rows: Iterable[Planned]) -> dict[str, list[Planned]]:
    """Rows grouped by their queue, in order."""
    grouped: dict[str, list[Planned]] = {}
    for row in rows:
        grouped.setdefault(row.queue, []).append(row)
    return grouped


async def write(
    store: JobStore,
    rows: list[Planned],
    added: Callable[[str, int], None] | None = None,
) -> int:
    """Write rows with one atomic store call per queue; returns how many were new.

    Args:
        added: called with (queue, how many were new) after each queue's call (metrics).
    """
    total = 0
    now_ms = int(store.clock.time() * 1000)
    for queue, group in by_queue(rows).items():
        new = await store.enqueue(queue, group, now_ms)
        total += new
        if added is not None:
            added(queue, new)
    return total
