"""Turning `Job` descriptions into rows and writing them to their queues, idempotently."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, NamedTuple

from .._stages import Job, seconds
from ..errors import SerializationError, UnknownTopicError
from .job import dumps
from .keys import QueueKeys
from .scripts import ENQUEUE, Scripts

if TYPE_CHECKING:
    from redis import Redis as SyncRedis
    from redis.asyncio import Redis

    from .._pipeline import Pipeline


class Planned(NamedTuple):
    """A job ready to be written: its queue, stable id, topic and encoded data.

    `born_ms` is when the work began (the stream message's stored time, the cron tick; 0 means
    the moment it is written), from which ``flowline_event_to_done_seconds`` is measured;
    `trace` is the W3C traceparent the job's span continues ('' when not tracing).
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


def plan(
    pipeline: Pipeline,
    jobs: Iterable[Job],
    base_id: str,
    origin: str,
    stage: str,
    *,
    born_ms: int = 0,
    trace: str = "",
) -> list[Planned]:
    """Give each job its id (``<base_id>:<index>``, or ``key:<key>``) and encode its data.

    Raises:
        UnknownTopicError: a job's topic has no handler in the pipeline.
        SerializationError: a job's data is not JSON-serialisable.
    """
    rows = []
    # Routers often give several jobs the same data object: encode it once (ids are stable
    # while `jobs` holds the objects).
    encoded: dict[int, str] = {}
    for index, job in enumerate(jobs):
        topic = pipeline.topics.get(job.topic)
        if topic is None:
            known = ", ".join(sorted(pipeline.topics)) or "none"
            raise UnknownTopicError(
                f"no handler dequeues topic {job.topic!r} (dequeued topics: {known}); "
                f"add @pipeline.dequeue({job.topic!r})",
                stage=stage,
            )
        data = encoded.get(id(job.data))
        if data is None:
            try:
                data = encoded[id(job.data)] = dumps(job.data, what=f"data of job {job.topic!r}")
            except SerializationError as exc:
                exc.add_note(f"[while running stage {stage!r}]")
                raise
        due = 0 if not job.delay else int((time.time() + seconds(job.delay)) * 1000)
        job_id = f"key:{job.key}" if job.key is not None else f"{base_id}:{index}"
        rows.append(
            Planned(
                topic.queue.name, job_id, job.topic, data, due, origin, job.priority, born_ms, trace
            )
        )
    return rows


def direct(pipeline: Pipeline, job: Job, *, trace: str = "") -> list[Planned]:
    """The row of one job enqueued without a stream: a unique id, or ``key:<key>`` if keyed."""
    return plan(pipeline, [job], f"direct:{uuid.uuid4().hex}", "direct", "enqueue", trace=trace)


def _calls(rows: list[Planned]) -> list[tuple[str, list[str], list[str | int]]]:
    """(queue, KEYS, ARGV) of one ENQUEUE call per queue and priority class the rows go to."""
    by_stream: dict[tuple[str, bool], list[Planned]] = {}
    for row in rows:
        by_stream.setdefault((row.queue, row.priority > 0), []).append(row)
    now_ms = int(time.time() * 1000)
    now = str(now_ms)
    calls = []
    for (name, urgent), group in by_stream.items():
        keys = QueueKeys(name)
        args: list[str | int] = [keys.job_prefix, now]
        for r in group:
            args += (r.id, r.topic, r.data, r.due_ms, r.origin, r.born_ms or now_ms, r.trace)
        calls.append((name, [keys.urgent if urgent else keys.jobs, keys.delayed], args))
    return calls


async def write(
    redis: Redis,
    scripts: Scripts,
    rows: list[Planned],
    added: Callable[[str, int], None] | None = None,
) -> int:
    """Write rows with one atomic script call per queue; returns how many were new.

    Args:
        added: called with (queue, how many were new) after each queue's call (metrics).
    """
    total = 0
    for queue, keys, args in _calls(rows):
        new = int(await scripts.enqueue(keys=keys, args=args))
        total += new
        if added is not None:
            added(queue, new)
    return total


def write_sync(redis: SyncRedis, rows: list[Planned]) -> int:
    """`write` for code that is not async (a Django view, a script)."""
    script = redis.register_script(ENQUEUE)
    return sum(int(script(keys=keys, args=args)) for _, keys, args in _calls(rows))
