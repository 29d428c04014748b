"""The runner: connects to NATS and Redis, starts what the plan says, stops cleanly.

``flowline worker`` is a thin shell around `Runner`; notebooks and tests use it directly:

    async with Runner(pipeline, Settings(...)) as app:
        await app.publish(pipeline, event)
"""

from __future__ import annotations

import asyncio
import functools
import signal
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import structlog
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from .._compile import Plan, compile_plan
from .._pipeline import Pipeline
from .._settings import Settings, redact
from .._stages import Job, Queue, Stream
from ..backends.jetstream import JetStreamSource
from ..backends.redis import RedisStore
from ..errors import EnqueueError, PipelineError
from ..observability.http import HttpEndpoint, asgi_app
from ..observability.metrics import Metrics
from ..observability.tracing import get_tracing
from . import deadletters
from .connections import connect_nats, connect_redis
from .cron import CronSource
from .emit import Emitter
from .enqueue import direct, write
from .eventlog import EventLog
from .ingest import StreamIngest
from .probe import Probe
from .queues import QueueHandle
from .registry import Presence
from .worker import QueueWorker, consumer_name

if TYPE_CHECKING:
    from ..backends.base import JobStore, StreamSource

log = structlog.get_logger("flowline.runner")


class Runner:
    """Runs pipelines in this process: stream ingest, queue workers and cron, per the plan.

    Args:
        target: a pipeline, a `Pipelines`, or an iterable of pipelines.
        settings: servers and process options (default: `Settings.from_env()`).
        only: run only these parts (``stream``, ``cron``, ``queue``, ``queue:NAME``).
        registry: the prometheus-client registry for flowline's metrics (default: one of its
            own; ``prometheus_client.REGISTRY`` puts them beside your application's).
        store, streams: the job store and stream source to run on instead of the settings'
            Redis and NATS (`flowline.testing` passes in-memory ones). A runner given a store
            keeps no process registry and no event log: both live in Redis.
    """

    def __init__(
        self,
        target: object,
        settings: Settings | None = None,
        *,
        only: Iterable[str] | None = None,
        registry: CollectorRegistry | None = None,
        store: JobStore | None = None,
        streams: StreamSource | None = None,
    ) -> None:
        self.plan: Plan = compile_plan(target, only)
        self.settings = settings or Settings.from_env()
        self.stop_event = asyncio.Event()
        self.nc: NATS | None = None
        self.js: JetStreamContext | None = None
        self.redis: Redis | None = None
        self.started = False
        self.loops: dict[str, asyncio.Task[None]] = {}
        self.ingests: list[StreamIngest] = []
        self.workers: list[QueueWorker] = []
        self.crons: list[CronSource] = []
        self._presence: Presence | None = None  # this process's registry entry
        self.events: EventLog | None = None  # this process's writer of the event log
        self.metrics = Metrics(registry) if self.settings.metrics else None
        self.probe = Probe(self)
        self.http: HttpEndpoint | None = None
        if self.settings.http_port is not None:
            self.http = HttpEndpoint(self.asgi(), self.settings.http_host, self.settings.http_port)
        self._consumer = consumer_name()
        self._nats_lock = asyncio.Lock()
        self._given_store = store
        self.store: JobStore = store  # type: ignore[assignment]  # set by start() when None
        self.streams: StreamSource = streams or JetStreamSource(self.jetstream)
        self._on_nats = streams is None

    def asgi(self) -> Any:
        """``/metrics``, ``/healthz`` and ``/readyz`` of this runner, as an ASGI app to mount."""
        registry = self.metrics.registry if self.metrics is not None else CollectorRegistry()
        return asgi_app(self.probe, registry)

    async def _left_unsharded(self, queue: Queue) -> list[str]:
        """The queue's own name when it is sharded now but still holds jobs from before: its
        worker drains them (new jobs go to the shards)."""
        if queue.shards == 1:
            return []
        left = await self.store.counts(queue.name)
        if not (left.ready or left.running or left.delayed):
            return []
        log.info(
            "draining jobs enqueued before the queue was sharded",
            queue=queue.name, ready=left.ready, running=left.running, delayed=left.delayed,
        )  # fmt: skip
        return [queue.name]

    def _pool_size(self) -> int:
        # Each queue holds one connection in a blocking read and briefly uses a few more (flush,
        # heartbeat, maintenance); handlers' progress writes and enqueues share the rest.
        p = self.plan
        shards = sum(q.shards for _, q in p.queues)
        return 32 + 4 * shards + 2 * len(p.streams) + len(p.crons)

    async def start(self) -> None:
        """Serve HTTP (if asked), connect, create streams, consumers and queue groups, start
        every loop."""
        if self.http is not None:
            # First, so /healthz answers (and /readyz says "starting") while we connect.
            await self.http.start()
            log.info("flowline serving /metrics /healthz /readyz", url=self.http.url)
        try:
            await self._start()
        except BaseException:
            if self.events is not None:
                self.events.detach()
            if self.http is not None:
                await self.http.stop()
            raise

    async def _start(self) -> None:
        s = self.settings
        parts = self._parts()
        # A runner that runs nothing (`connect`, `flowline publish`) connects to Redis when it
        # first enqueues or reads, so a producer that only publishes runs without Redis.
        if self._given_store is None:
            self.redis = await connect_redis(
                s, self._pool_size(), check=bool(parts), name=f"flowline:{self._consumer}"
            )
            self.store = RedisStore(self.redis, wait_replicas=s.redis_wait_replicas)
        if self.redis is not None and parts and s.events_retention:
            # Attached before any loop runs, so their first events are recorded too.
            self.events = EventLog(self.redis, self._consumer, s.events_retention)
            self.events.attach(self.plan.pipelines)
        if self.redis is not None and parts:
            self._presence = Presence(
                self.redis,
                self._consumer,
                [p.name for p in self.plan.pipelines],
                s.heartbeat,
                [q.name for _, q in self.plan.queues],
                self._state,
            )
            await self._presence.register()
        if self.plan.streams and self._on_nats:
            # Only a process that consumes a stream needs NATS from the start; a producer or a
            # queue worker connects when it first publishes (`jetstream`), so it runs without.
            await self.jetstream()
        for pipeline in self.plan.pipelines:
            pipeline._runner = self  # lets pipeline.publish / pipeline.enqueue use this runner
        for p, stream in self.plan.streams:
            ingest = StreamIngest(p, stream, self.streams, self.store, self.metrics)
            await ingest.setup()
            self.ingests.append(ingest)
            self._spawn(ingest.run(self.stop_event), f"stream:{p.name}")
        emitter = Emitter(self.publish_to, self.store)
        for p, queue in self.plan.queues:
            for shard in [*queue.shard_names, *await self._left_unsharded(queue)]:
                worker = QueueWorker(
                    p,
                    queue,
                    self.store,
                    concurrency=s.concurrency,
                    consumer=f"{self._consumer}-{shard}",
                    emitter=emitter,
                    metrics=self.metrics,
                    shard=shard,
                )
                await worker.setup()
                self.workers.append(worker)
                self._spawn(worker.run(self.stop_event, s.grace), f"queue:{shard}")
        for p, cron in self.plan.crons:
            source = CronSource(p, cron, self.store, self.metrics)
            self.crons.append(source)
            self._spawn(source.run(self.stop_event), f"cron:{cron.topic}")
        log.info(
            "flowline started",
            pipelines=[p.name for p in self.plan.pipelines],
            streams=[st.subject for _, st in self.plan.streams],
            queues=[q.name for _, q in self.plan.queues],
            crons=[c.topic for _, c in self.plan.crons],
            nats=redact(s.nats_url) if self._on_nats else "in memory",
            redis=redact(s.redis_url) if self.redis is not None else "in memory",
            http=self.http.url if self.http is not None else None,
        )
        self.started = True
        if self.events is not None:
            self.events.start()
        if self._presence is not None:
            self._presence.start()

    def _parts(self) -> list[str]:
        p = self.plan
        return [
            *(f"stream:{pl.name}" for pl, _ in p.streams),
            *(f"queue:{q.name}" for _, q in p.queues),
            *(f"cron:{c.topic}" for _, c in p.crons),
        ]

    def _state(self) -> tuple[list[str], int, int, int]:
        """What the registry shows of this process: parts, and jobs running, done, failed."""
        w = self.workers
        return (
            self._parts(),
            sum(x.running for x in w),
            sum(x.completed for x in w),
            sum(x.failed for x in w),
        )

    async def jetstream(self) -> JetStreamContext:
        """JetStream, connecting on first use (a queue-only process may never need NATS).

        Raises:
            ConfigurationError: NATS cannot be reached (each later call tries again).
        """
        js = self.js
        if js is None:
            async with self._nats_lock:  # concurrent first publishes share one connection
                if self.js is None:
                    self.nc = await connect_nats(self.settings)
                    self.js = self.nc.jetstream()
                js = self.js
        return js

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        task.add_done_callback(self._on_task_done)
        self.loops[name] = task

    def _on_task_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error(
                "a flowline loop crashed; stopping",
                task=task.get_name(),
                error=repr(task.exception()),
            )
            self.stop_event.set()

    async def stop(self) -> None:
        """Stop taking work, let in-flight jobs finish (within `grace`), close connections."""
        self.stop_event.set()
        results = await asyncio.gather(*self.loops.values(), return_exceptions=True)
        if self._presence is not None:
            await self._presence.stop()
        for p in self.plan.pipelines:
            await p.bus.drain()
            if p._runner is self:
                p._runner = None
        if self.events is not None:
            await self.events.close()
        if self.nc is not None:
            # Not drain(): our loops have stopped, and unacked messages are redelivered anyway.
            await self.nc.close()
        if self.redis is not None:
            await self.redis.aclose()
        elif self.store is not None:
            await self.store.close()
        await self.streams.close()
        if self.http is not None:
            await self.http.stop()
        crashed = [
            r
            for r in results
            if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError)
        ]
        if crashed:
            raise crashed[0]

    async def serve(self) -> None:
        """Run until SIGTERM or SIGINT, then stop gracefully."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop_event.set)
        await self.start()
        try:
            await self.stop_event.wait()
            log.info("stopping: no new work; finishing jobs in flight", grace=self.settings.grace)
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            await self.stop()

    async def __aenter__(self) -> Runner:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- producing ------------------------------------------------------------------------------

    async def publish(
        self,
        pipeline: Pipeline,
        event: Any,
        *,
        msg_id: str | None = None,
        subject: str | None = None,
    ) -> int:
        """Put `event` on `pipeline`'s stream (the one on `subject`); returns its sequence.

        With `msg_id`, JetStream stores a retried publish only once (within its duplicate window).
        """
        stream = pipeline.stream(subject)
        return await self.publish_to(stream.subject, _encode(stream, event), msg_id)

    async def publish_to(self, subject: str, payload: bytes, msg_id: str | None = None) -> int:
        """Publish raw bytes to `subject` (creating its stream once); returns the sequence."""
        headers = {"Nats-Msg-Id": msg_id} if msg_id else None
        tracing = get_tracing()
        if tracing is not None:
            headers = tracing.inject(headers)
        return await self.streams.publish(subject, payload, headers)

    async def enqueue(
        self,
        pipeline: Pipeline,
        topic: str,
        data: Any = None,
        *,
        key: str | None = None,
        delay: float | None = None,
        priority: int = 0,
        group: str | None = None,
    ) -> str:
        """Put one job on its queue without a stream; returns its id.

        With `key`, enqueueing the same key again (a retried HTTP request) is a no-op.
        """
        job = Job(topic, data, delay=delay, key=key, priority=priority, group=group)
        tracing = get_tracing()
        trace = tracing.traceparent() if tracing is not None else ""
        rows = direct(pipeline, job, trace=trace, now=self.store.clock.time())
        added = None
        if self.metrics is not None:
            added = functools.partial(self.metrics.enqueued, pipeline.name)
        try:
            await write(self.store, rows, added)
        except Exception as exc:
            raise EnqueueError(
                f"could not enqueue job {rows[0].id} of topic {topic!r}: {type(exc).__name__}: "
                f"{exc}",
                stage="enqueue",
            ) from exc
        return rows[0].id

    def queue_handle(self, pipeline: Pipeline, queue: Queue) -> QueueHandle:
        """A handle on one of `pipeline`'s queues (``pipeline.queue(name)``)."""
        return QueueHandle(pipeline, queue, self.store, self)

    async def check_cancels(self, queue: Queue) -> None:
        """Let this process's workers of `queue` act on cancel requests now, not at their
        next poll."""
        for w in self.workers:
            if w.queue is queue:
                await w.check_cancels()

    def record_events(self) -> None:
        """Record this process's lifecycle events in the event log even if it runs nothing:
        a control (a cancel) emits them from any process."""
        if self.events is None and self.redis is not None and self.settings.events_retention:
            self.events = EventLog(self.redis, self._consumer, self.settings.events_retention)
            self.events.attach(self.plan.pipelines)
            self.events.start()

    async def dead_letters(self, pipeline: Pipeline) -> list[deadletters.DeadLetter]:
        """The pipeline's dead letters, oldest first."""
        return await self.store.dead_letters(pipeline, 1000)


def connect(target: object, settings: Settings | None = None) -> Runner:
    """A runner that runs nothing: use it to publish and enqueue from an app or a script.

    async with flowline.connect(pipeline):
        await pipeline.enqueue("notify-fan-following", {"fan": "fan-1", "talent": "t-1"})

    It connects to each server when it first needs it: NATS at the first publish, Redis at the
    first enqueue or lookup, so a producer that only publishes (or only enqueues) runs without
    the other server. An unreachable server then fails that call, not the start.
    """
    return Runner(target, settings, only=())


def _encode(stream: Stream[Any], event: Any) -> bytes:
    if isinstance(event, bytes):
        return event
    if stream.encode is None:
        raise PipelineError(
            f"{stream.describe()} cannot encode {type(event).__name__}; publish bytes instead"
        )
    return stream.encode(event)
