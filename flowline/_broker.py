"""A flowline `Queue` compiled onto a taskiq broker, so taskiq's ecosystem can run its jobs.

`compile_broker(pipeline)` gives a `FlowlineBroker` with one task per topic, named after it. It
speaks the queue's own layout (`runtime.keys`) and scripts, so both sides mix freely: a job
kicked with ``.kiq(data)`` is run by ``flowline worker``, and a job enqueued by flowline is run
by ``taskiq worker module:broker``, inside taskiq's middlewares.

Mapping: task name = topic, task id = job id (kicking one id twice enqueues one job), and the
job data is the task's single positional argument, its keyword arguments as a dict, or None.
Labels ``priority`` (> 0: the urgent stream) and ``delay`` (seconds) are honoured. Received
messages carry label ``flowline_attempt`` and ``ack_type=when_saved``: the ack records the
outcome, so it must come after the run.

Results: the broker's result backend (`FlowlineResultBackend`) answers taskiq from the job's
record, whichever worker ran it: ``await (await task.kiq(data)).wait_result()`` returns the
handler's return value, or ``is_err`` with a `JobError` carrying the error and the worker's
traceback, and ``get_progress()`` gives the job's state and progress percentage.

A ``taskiq worker`` process of the broker registers itself in the process registry and records
the pipeline's lifecycle events in its event log, as ``flowline worker`` does (`startup`).

This is the compatible path, not the fast one: taskiq's receiver takes one message at a time
and acknowledges each alone, where `runtime.worker.QueueWorker` completes jobs in batches.
Both settle jobs with the same code (`QueueWorker`'s): retries, backoff, dead letters, events.
"""

from __future__ import annotations

import asyncio
import functools
import time
import uuid
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import structlog
from taskiq import (
    AckableMessage,
    AsyncBroker,
    AsyncResultBackend,
    BrokerMessage,
    Context,
    TaskiqDepends,
    TaskiqResult,
)
from taskiq.depends.progress_tracker import TaskProgress, TaskState
from taskiq.message import TaskiqMessage

from ._settings import Settings
from .backends.redis import RedisStore
from .errors import JobError, JobTimeout, PipelineError, SerializationError
from .runtime import jobs
from .runtime.connections import connect_redis
from .runtime.enqueue import Planned, write
from .runtime.eventlog import EventLog
from .runtime.job import JobContext, dumps, loads
from .runtime.keys import QueueKeys
from .runtime.registry import Presence
from .runtime.worker import QueueWorker, Running, consumer_name

if TYPE_CHECKING:
    from ._chain import Topic
    from ._pipeline import Pipeline
    from ._stages import Queue

log = structlog.get_logger("flowline.taskiq")

# taskiq pulls one message at a time; a small batch saves round trips without hoarding jobs
# that another worker could run.
_READ_COUNT = 10
# The task's way to pass the outcome to the ack: (encoded result, result), or the error.
_Outcome = tuple[str, Any] | Exception


class FlowlineBroker(AsyncBroker):
    """A taskiq broker on one flowline queue: the same streams, scripts and job records."""

    def __init__(self, pipeline: Pipeline, queue: Queue, settings: Settings) -> None:
        super().__init__()
        self.pipeline, self.queue, self.settings = pipeline, queue, settings
        self.consumer = consumer_name()
        self._worker: QueueWorker | None = None
        self._store: RedisStore  # set with the worker, by `_connect`
        self._outcomes: dict[str, _Outcome] = {}
        self._next_upkeep = 0.0
        self.result_backend = FlowlineResultBackend(self)
        # A worker process's registry entry and event log, as `flowline worker` keeps them.
        self._presence: Presence | None = None
        self._events: EventLog | None = None

    async def _connect(self) -> QueueWorker:
        """The `QueueWorker` this broker settles jobs with (it holds the Redis client)."""
        if self._worker is None:
            self._store = RedisStore(
                await connect_redis(self.settings),
                wait_replicas=self.settings.redis_wait_replicas,
            )
            self._worker = QueueWorker(
                self.pipeline, self.queue, self._store, consumer=self.consumer
            )
        return self._worker

    async def startup(self) -> None:
        """Connect to Redis and create the queue's streams and consumer group if missing.

        In a worker process (``taskiq worker``) also register in the process registry and
        record lifecycle events in the event log, as ``flowline worker`` does.
        """
        await super().startup()
        worker = await self._connect()
        if self.is_worker_process:
            s = self.settings
            part = f"queue:{self.queue.name}"
            self._presence = Presence(
                self._store.redis,
                self.consumer,
                [self.pipeline.name],
                s.heartbeat,
                [self.queue.name],
                lambda: ([part], len(worker.claims), worker.completed, worker.failed),
            )
            await self._presence.register()
            if s.events_retention:
                self._events = EventLog(self._store.redis, self.consumer, s.events_retention)
                self._events.attach([self.pipeline])
                self._events.start()
            self._presence.start()
        await worker.setup()

    async def shutdown(self) -> None:
        """Run taskiq's shutdown hooks, write the events left, then close the connections."""
        await super().shutdown()
        if self._presence is not None:
            await self._presence.stop()
            self._presence = None
        if self._events is not None:
            await self._events.close()
            self._events = None
        if self._worker is not None:
            await self._store.close()
            self._worker = None

    async def kick(self, message: BrokerMessage) -> None:
        """Enqueue `message` as job `task_id` of topic `task_name`; a known id is a no-op.

        Raises:
            PipelineError: the task is no topic of this queue, or takes several arguments.
            SerializationError: the job data is not JSON-serialisable.
        """
        topic = self.pipeline.topics.get(message.task_name)
        if topic is None or topic.queue is not self.queue:
            known = ", ".join(t for t, d in self.pipeline.topics.items() if d.queue is self.queue)
            raise PipelineError(
                f"task {message.task_name!r} is no topic of Queue({self.queue.name!r}) "
                f"(its topics: {known or 'none'})"
            )
        msg = self.formatter.loads(message.message)
        if len(msg.args) > 1 or (msg.args and msg.kwargs):
            raise PipelineError(
                f"task {topic.name!r} takes the job data as one argument (or keyword arguments, "
                f"sent as a dict); got {len(msg.args)} positional and {len(msg.kwargs)} keyword"
            )
        data = msg.args[0] if msg.args else (msg.kwargs or None)
        encoded = dumps(data, what=f"data of task {topic.name!r}")
        delay = float(message.labels.get("delay") or 0)
        due = int((time.time() + delay) * 1000) if delay > 0 else 0
        priority = int(message.labels.get("priority") or 0)
        row = Planned(
            self.queue.name, message.task_id, topic.name, encoded, due, "taskiq", priority
        )
        await self._connect()
        await write(self._store, [row])

    async def listen(self) -> AsyncGenerator[AckableMessage, None]:
        """Yield the queue's jobs as taskiq messages; acknowledging one settles its job."""
        worker = await self._connect()
        await worker.setup()
        worker._closing.clear()
        heartbeat = asyncio.create_task(worker._heartbeat())
        buffered: deque[Running] = deque()
        try:
            while True:
                if not buffered:
                    # Shielded: redis-py can hang when cancelled mid-command (taskiq cancels the
                    # pending read on shutdown); finish the read instead, and hand its jobs back.
                    read = asyncio.ensure_future(self._read(worker))
                    try:
                        buffered.extend(await asyncio.shield(read))
                    except asyncio.CancelledError:
                        buffered.extend(await read)
                        raise
                    continue
                job = buffered.popleft()
                try:
                    args = [loads(job.data)]
                except ValueError as exc:
                    error = SerializationError(f"job data is not JSON ({exc})")
                    await worker._failed(job, None, None, error)
                    continue
                labels = {"ack_type": "when_saved", "flowline_attempt": job.attempt}
                body = TaskiqMessage(
                    task_id=job.job_id, task_name=job.topic, labels=labels, args=args, kwargs={}
                )
                data = self.formatter.dumps(body).message
                yield AckableMessage(data=data, ack=functools.partial(self._settle, job))
        finally:
            worker._closing.set()
            await asyncio.gather(heartbeat, return_exceptions=True)
            for job in buffered:  # read, never handed to taskiq: readable again at once
                worker.claims.pop(job.key, None)
            if buffered:
                await self._store.release(self.queue.name, self.consumer, list(buffered))

    async def _read(self, worker: QueueWorker) -> list[Running]:
        """Delayed jobs now due, jobs whose worker died, then new jobs (blocking briefly)."""
        store, name, rows = self._store, self.queue.name, []
        if time.monotonic() >= self._next_upkeep:
            self._next_upkeep = time.monotonic() + 0.25
            await store.promote(name, int(time.time() * 1000), 500)
            rows += await store.reclaim(name, self.consumer, worker._vis_ms, _READ_COUNT)
        rows += await store.read(name, self.consumer, _READ_COUNT, 0.25)
        ready = []
        for job in rows:
            worker.claims[job.key] = job
            topic = self.pipeline.topics.get(job.topic)
            if topic is not None and job.attempt > topic.retries + 1:
                # Reclaimed once too often: the workers running it keep dying.
                error = JobError(f"its worker stopped {job.attempt - 1} times", stage=job.topic)
                await worker._failed(job, None, None, error)
            else:
                ready.append(job)
        return ready

    async def _settle(self, job: Running) -> None:
        """Finish a job as `flowline worker` would: completed, retried later, or dead-lettered."""
        worker = await self._connect()
        outcome = self._outcomes.pop(job.job_id, None)
        if isinstance(outcome, tuple):
            worker._done.append((job, *outcome))
            await worker._flush_all()
            return
        # No outcome: taskiq has no task for the topic, or cancelled the run (its timeout).
        error = outcome or JobError("its taskiq task did not finish", stage=job.topic)
        await worker._failed(job, self.pipeline.topics.get(job.topic), None, error)

    def _task(self, topic: Topic) -> Callable[..., Awaitable[Any]]:
        """The taskiq task of `topic`: runs its handler and keeps the outcome for the ack."""

        # A default of TaskiqDepends() is how taskiq injects the Context.
        async def run(data: Any = None, context: Context = TaskiqDepends()) -> Any:  # noqa: B008
            worker = await self._connect()
            # Called directly, not by taskiq's receiver: there is no job record to update.
            msg = context.message if isinstance(context, Context) else None
            job_id = msg.task_id if msg else f"local:{uuid.uuid4().hex}"
            job = JobContext(
                id=job_id,
                topic=topic.name,
                data=data,
                attempt=int(msg.labels.get("flowline_attempt", 1)) if msg else 1,
                queue=self.queue.name,
                store=self._store if msg else None,
                bus=self.pipeline.bus,
            )
            bus = self.pipeline.bus
            if msg and bus.wants("job:start"):
                bus.emit("job:start", "job", job=job)
            try:
                result = await _timed(worker, topic, job)
                encoded = dumps(result, what=f"result of job {job_id}")
            except Exception as exc:
                if msg:
                    self._outcomes[job_id] = exc
                raise
            if msg:
                self._outcomes[job_id] = (encoded, result)
            return result

        return run


_SET_PROGRESS = """
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], 'progress', ARGV[1]) end
"""
# taskiq's names for the states it knows; a queued or delayed job keeps flowline's own.
_TASK_STATES: dict[str, str] = {
    "running": TaskState.STARTED,
    "retrying": TaskState.RETRY,
    "completed": TaskState.SUCCESS,
    "failed": TaskState.FAILURE,
}


class FlowlineResultBackend(AsyncResultBackend[Any]):
    """taskiq's results, read from flowline's job records: nothing is stored twice.

    Whichever worker runs the job (``flowline worker`` or ``taskiq worker``), its completion
    writes the record, so both answer alike. A result is ready once the job completed or failed
    for good (a failed attempt that will be retried is not a result), or when the job has no
    record (never enqueued, or expired after its queue's ``keep_completed``): then
    `get_result` raises instead of letting ``wait_result()`` wait forever. ``execution_time``
    is 0 (the record does not time the handler; the ``flowline_job_duration_seconds`` metric
    does) and ``labels`` are empty.
    """

    def __init__(self, broker: FlowlineBroker) -> None:
        self.broker = broker

    async def set_result(self, task_id: str, result: TaskiqResult[Any]) -> None:
        """Nothing to do: acknowledging the message records the outcome on the job."""

    async def is_result_ready(self, task_id: str) -> bool:
        """True once the job completed or failed for good, or has no record."""
        await self.broker._connect()
        redis = self.broker._store.redis
        state = await redis.hget(QueueKeys(self.broker.queue.name).job(task_id), "state")
        return state is None or state in (b"completed", b"failed")

    async def get_result(self, task_id: str, with_logs: bool = False) -> TaskiqResult[Any]:
        """The job's result, or its error (a `JobError` with the worker's traceback as a note).

        Raises:
            LookupError: the job has no record, or has not finished yet.
        """
        job = await self._job(task_id)
        if job is None:
            queue = self.broker.queue
            keep = queue.options.keep_completed
            gone = (
                "its queue keeps no completed records (keep_completed=0)"
                if keep == 0
                else f"expired {keep:g}s after it finished"
            )
            raise LookupError(
                f"job {task_id!r} has no record in Queue({queue.name!r}): never enqueued, or {gone}"
            )
        if job.state not in ("completed", "failed"):
            raise LookupError(f"job {task_id!r} is {job.state}: it has no result yet")
        if job.state == "completed":
            return TaskiqResult(is_err=False, return_value=job.result, execution_time=0.0)
        error = JobError(job.error or "failed", stage=job.topic)
        if job.traceback:
            error.add_note(f"Traceback of the job, from the worker that ran it:\n{job.traceback}")
        return TaskiqResult(is_err=True, return_value=None, execution_time=0.0, error=error)

    async def set_progress(self, task_id: str, progress: TaskProgress[Any]) -> None:
        """Store a numeric ``meta`` (0..100) as the job's progress, as `JobContext.progress` does.

        Raises:
            ValueError: ``meta`` is not a number within 0..100: the record holds a percentage.
        """
        meta = progress.meta
        if isinstance(meta, bool) or not isinstance(meta, int | float) or not 0 <= meta <= 100:
            raise ValueError(f"flowline stores progress as a number within 0..100, got {meta!r}")
        await self.broker._connect()
        key = QueueKeys(self.broker.queue.name).job(task_id)
        # Only onto an existing record: a stray call must not leave a record that never expires.
        await self.broker._store.redis.eval(_SET_PROGRESS, 1, key, meta)

    async def get_progress(self, task_id: str) -> TaskProgress[Any] | None:
        """The job's state (taskiq's name for it where there is one) and progress percentage."""
        job = await self._job(task_id)
        if job is None:
            return None
        return TaskProgress(state=_TASK_STATES.get(job.state, job.state), meta=job.progress)

    async def _job(self, task_id: str) -> jobs.JobInfo | None:
        await self.broker._connect()
        return await self.broker._store.job(self.broker.pipeline, self.broker.queue.name, task_id)


async def _timed(worker: QueueWorker, topic: Topic, job: JobContext) -> Any:
    """Run the topic's handler as `flowline worker` does, within the topic's timeout."""
    try:
        async with asyncio.timeout(topic.timeout):
            return await worker._call(topic, job)
    except TimeoutError as exc:
        if topic.timeout is None:
            raise
        raise JobTimeout(
            f"handler {topic.handler_name} ran past its {topic.timeout:g}s timeout",
            stage=topic.name,
        ) from exc


def compile_broker(
    pipeline: Pipeline, queue_name: str | None = None, *, redis_url: str | None = None
) -> FlowlineBroker:
    """A taskiq broker for one queue of `pipeline`, with one task per topic, named after it.

    Call it once the handlers are registered: a later ``dequeue`` adds no task.

    Args:
        queue_name: which queue; may be left out when the pipeline has only one.
        redis_url: where the queue lives (default: ``FLOWLINE_REDIS_URL``, or localhost).

    Raises:
        PipelineError: no such queue, several queues and no name, or no topic on the queue.
    """
    queues = {q.name: q for q in pipeline.queues}
    names = ", ".join(queues) or "none"
    if queue_name is None and len(queues) != 1:
        raise PipelineError(f"pipeline {pipeline.name!r} has queues {names}: pass queue_name")
    queue = queues.get(queue_name) if queue_name is not None else next(iter(queues.values()))
    if queue is None:
        raise PipelineError(f"pipeline {pipeline.name!r} has no Queue({queue_name!r}): {names}")
    if queue.shards > 1:
        raise PipelineError(
            f"Queue({queue.name!r}) has {queue.shards} shards; a taskiq broker reads one "
            f"queue: run it with `flowline worker`"
        )
    topics = [t for t in pipeline.topics.values() if t.queue is queue]
    if not topics:
        raise PipelineError(
            f"Queue({queue.name!r}) has no handlers yet: register them with "
            f"@pipeline.dequeue(topic) before compile_broker"
        )
    broker = FlowlineBroker(pipeline, queue, Settings.from_env(redis_url=redis_url))
    for topic in topics:
        broker.register_task(broker._task(topic), task_name=topic.name)
    return broker
