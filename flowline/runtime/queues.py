"""Queue handles: look up a job, count what a queue holds, enqueue onto it directly, pause it,
cancel a job."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ..backends.base import Cancellation as Cancellation  # what `QueueHandle.cancel` answers
from .jobs import JobInfo as JobInfo  # defined with the lookups; public from here

if TYPE_CHECKING:
    from .._pipeline import Pipeline
    from .._stages import Queue
    from ..backends.base import JobStore


@dataclass(frozen=True)
class QueueCounts:
    """How many jobs a queue holds in each place."""

    ready: int
    running: int
    delayed: int
    dead: int


class Local(Protocol):
    """What the process a handle belongs to does for it (the `Runner`)."""

    async def check_cancels(self, queue: Queue) -> None:
        """Have this process's workers of `queue` act on cancel requests now."""

    def record_events(self) -> None:
        """Make sure this process's lifecycle events reach the event log."""


class QueueHandle:
    """A queue of a connected pipeline: ``pipeline.queue("name")``."""

    def __init__(
        self, pipeline: Pipeline, queue: Queue, store: JobStore, local: Local | None = None
    ) -> None:
        self.pipeline = pipeline
        self.queue = queue
        self._store = store
        self._local = local

    @property
    def name(self) -> str:
        return self.queue.name

    async def enqueue(
        self,
        topic: str,
        data: Any = None,
        *,
        key: str | None = None,
        delay: float | None = None,
        group: str | None = None,
    ) -> str:
        """Enqueue a job of `topic` (which must belong to this queue); returns its id."""
        from ..errors import PipelineError

        if self.pipeline.queue_for(topic) is not self.queue:
            raise PipelineError(f"topic {topic!r} does not belong to Queue({self.name!r})")
        return await self.pipeline.enqueue(topic, data, key=key, delay=delay, group=group)

    async def job(self, job_id: str) -> JobInfo | None:
        """The job's record, or None when there is none (never existed, or expired).

        A job a worker holds is ``running`` (with `running_on`); a failed one carries its
        traceback and dead letter id; a delayed one when it is due.
        """
        for shard in self._shards_of(job_id):
            info = await self._store.job(self.pipeline, shard, job_id)
            if info is not None:
                return info
        return None

    def _shards_of(self, job_id: str) -> list[str]:
        """Where a job may be: its id's shard first (a job with a group went to its group's,
        which the id alone does not tell), then the rest."""
        first = self.queue.shard_for(job_id, None)
        return [first, *(s for s in self.queue.shard_names if s != first)]

    async def pause(self) -> bool:
        """Pause the queue in every process: within half a second of this call's return no
        process starts one of its jobs (this process at once); jobs already running finish,
        and the stream side keeps routing into it. Returns False if it was already paused."""
        changed = await asyncio.gather(*(self._store.pause(s) for s in self.queue.shard_names))
        return any(changed)

    async def resume(self) -> bool:
        """Let every process start the queue's jobs again (within a quarter of a second);
        returns False if it was not paused."""
        changed = await asyncio.gather(*(self._store.resume(s) for s in self.queue.shard_names))
        return any(changed)

    async def cancel(self, job_id: str) -> Cancellation:
        """Cancel job `job_id` of this queue, whichever process runs it.

        A job still waiting (ready, delayed, or waiting for a retry) is removed at once and
        never runs: ``outcome == "cancelled"``. A job a worker holds (running, or read ahead)
        is stopped by that worker within about a second (``outcome == "cancelling"``,
        `detail` names the worker): its handler is cancelled (``asyncio.CancelledError`` at its
        next ``await``) and the job ends ``cancelled``, neither retried nor dead-lettered,
        whatever the handler does then. Either way ``job:cancelled`` is emitted once. A
        finished job (``outcome == "finished"``, `detail` its state) and an unknown one
        (``"unknown"``) are left as they are.
        """
        now_ms = int(self._store.clock.time() * 1000)
        keep = int(self.queue.options.keep_failed)
        for shard in self._shards_of(job_id):
            result = await self._store.cancel(shard, job_id, now_ms, keep)
            if result.outcome != "unknown":
                break
        if result.outcome == "cancelled":
            if self._local is not None:
                self._local.record_events()
            self.pipeline.bus.emit(
                "job:cancelled", "job", job=None, id=job_id, topic=result.topic, attempt=0
            )
        elif result.outcome == "cancelling" and self._local is not None:
            await self._local.check_cancels(self.queue)
        return result

    async def paused(self) -> bool:
        """Whether the queue is paused."""
        return any(await asyncio.gather(*(self._store.paused(s) for s in self.queue.shard_names)))

    async def counts(self) -> QueueCounts:
        """Ready, running (claimed by a worker), delayed and dead jobs (of every shard)."""
        each = await asyncio.gather(*(self._store.counts(s) for s in self.queue.shard_names))
        return QueueCounts(
            ready=sum(c.ready for c in each),
            running=sum(c.running for c in each),
            delayed=sum(c.delayed for c in each),
            dead=sum(c.dead for c in each),
        )
