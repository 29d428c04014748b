"""Queue handles: look up a job, count what a queue holds, enqueue onto it directly."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import jobs
from .jobs import JobInfo as JobInfo  # defined with the lookups; public from here
from .keys import GROUP, QueueKeys

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from .._pipeline import Pipeline
    from .._stages import Queue


@dataclass(frozen=True)
class QueueCounts:
    """How many jobs a queue holds in each place."""

    ready: int
    running: int
    delayed: int
    dead: int


class QueueHandle:
    """A queue of a connected pipeline: ``pipeline.queue("name")``."""

    def __init__(self, pipeline: Pipeline, queue: Queue, redis: Redis) -> None:
        self.pipeline = pipeline
        self.queue = queue
        self.keys = QueueKeys(queue.name)
        self._redis = redis

    @property
    def name(self) -> str:
        return self.queue.name

    async def enqueue(
        self, topic: str, data: Any = None, *, key: str | None = None, delay: float | None = None
    ) -> str:
        """Enqueue a job of `topic` (which must belong to this queue); returns its id."""
        from ..errors import PipelineError

        if self.pipeline.queue_for(topic) is not self.queue:
            raise PipelineError(f"topic {topic!r} does not belong to Queue({self.name!r})")
        return await self.pipeline.enqueue(topic, data, key=key, delay=delay)

    async def job(self, job_id: str) -> JobInfo | None:
        """The job's record, or None when there is none (never existed, or expired).

        A job a worker holds is ``running`` (with `running_on`); a failed one carries its
        traceback and dead letter id; a delayed one when it is due.
        """
        found = await jobs.find(self._redis, {self.name: jobs.subjects_of(self.pipeline)}, job_id)
        return found[0] if found else None

    async def counts(self) -> QueueCounts:
        """Ready, running (claimed by a worker), delayed and dead jobs."""
        r = self._redis
        in_streams = running = 0
        for stream in self.keys.streams:
            in_streams += int(await r.xlen(stream))
            groups = await r.xinfo_groups(stream) if await r.exists(stream) else []
            running += sum(int(g["pending"]) for g in groups if g["name"] == GROUP.encode())
        delayed = int(await r.zcard(self.keys.delayed))
        dead = int(await r.xlen(self.keys.dead))
        return QueueCounts(in_streams - running, running, delayed, dead)
