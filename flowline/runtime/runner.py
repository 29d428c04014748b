"""The runner: connects to NATS and Redis, starts what the plan says, stops cleanly.

``flowline worker`` is a thin shell around `Runner`; notebooks and tests use it directly:

    async with Runner(pipeline, Settings(...)) as app:
        await app.publish(pipeline, event)
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterable
from typing import Any

import nats
import structlog
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from redis.asyncio import Redis

from .._compile import Plan, compile_plan
from .._pipeline import Pipeline
from .._settings import Settings, redact
from .._stages import Job, Stream
from ..errors import ConfigurationError, PipelineError
from . import deadletters
from .cron import CronSource
from .emit import Emitter
from .enqueue import direct, write
from .ingest import StreamIngest, ensure_stream
from .scripts import Scripts
from .worker import QueueWorker, consumer_name

log = structlog.get_logger("flowline.runner")


async def connect_nats(settings: Settings) -> NATS:
    """A NATS connection that reconnects forever; credentials never reach the logs."""
    nc: NATS | None = None

    async def on_error(exc: Exception) -> None:
        log.warning("nats error", error=repr(exc))

    async def on_disconnect() -> None:
        if nc is not None and (nc.is_closed or nc.is_draining):
            return
        log.warning("nats disconnected; reconnecting", url=redact(settings.nats_url))

    async def on_reconnect() -> None:
        log.info("nats reconnected", url=redact(settings.nats_url))

    try:
        nc = await nats.connect(
            servers=[u.strip() for u in settings.nats_url.split(",")],
            name="flowline",
            # A few attempts at start, so wrong credentials or URLs fail instead of hanging...
            max_reconnect_attempts=3,
            reconnect_time_wait=0.5,
            connect_timeout=5,
            allow_reconnect=True,
            error_cb=on_error,
            disconnected_cb=on_disconnect,
            reconnected_cb=on_reconnect,
            **settings.nats_connect_options(),
        )
        # ...then, once connected, reconnect forever: a NATS restart must never stop a worker.
        nc.options["max_reconnect_attempts"] = -1
        return nc
    except Exception as exc:
        raise ConfigurationError(
            f"cannot connect to NATS at {redact(settings.nats_url)}: {type(exc).__name__}: {exc}"
        ) from None


async def connect_redis(settings: Settings) -> Redis:
    """A Redis client, checked with PING so a wrong URL fails at start, not mid-stream."""
    redis = Redis.from_url(
        settings.redis_url,
        health_check_interval=10,
        socket_keepalive=True,
        retry_on_timeout=True,
        **settings.redis_connect_options(),  # type: ignore[arg-type]
    )
    try:
        await redis.ping()
    except Exception as exc:
        await redis.aclose()
        raise ConfigurationError(
            f"cannot connect to Redis at {redact(settings.redis_url)}: {type(exc).__name__}: {exc}"
        ) from None
    return redis


class Runner:
    """Runs pipelines in this process: stream ingest, queue workers and cron, per the plan."""

    def __init__(
        self,
        target: object,
        settings: Settings | None = None,
        *,
        only: Iterable[str] | None = None,
    ) -> None:
        self.plan: Plan = compile_plan(target, only)
        self.settings = settings or Settings.from_env()
        self.stop_event = asyncio.Event()
        self.nc: NATS | None = None
        self.js: JetStreamContext | None = None
        self.redis: Redis | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._consumer = consumer_name()
        self._known_streams: set[str] = set()

    async def start(self) -> None:
        """Connect, create streams, consumers and queue groups, and start every loop."""
        s = self.settings
        self.redis = await connect_redis(s)
        self.scripts = Scripts(self.redis)
        if any(isinstance(p.source, Stream) for p in self.plan.pipelines):
            self.nc = await connect_nats(s)
            self.js = self.nc.jetstream()
        for pipeline in self.plan.pipelines:
            pipeline._runner = self  # lets pipeline.publish / pipeline.enqueue use this runner
        for p, stream in self.plan.streams:
            assert self.js is not None
            ingest = StreamIngest(p, stream, self.js, self.redis, self.scripts)
            await ingest.setup()
            self._spawn(ingest.run(self.stop_event), f"stream:{p.name}")
        emitter = Emitter(self.publish_to, self.redis)
        for p, queue in self.plan.queues:
            worker = QueueWorker(
                p,
                queue,
                self.redis,
                self.scripts,
                concurrency=s.concurrency,
                consumer=f"{self._consumer}-{queue.name}",
                emitter=emitter,
            )
            await worker.setup()
            self._spawn(worker.run(self.stop_event, s.grace), f"queue:{queue.name}")
        for p, cron in self.plan.crons:
            source = CronSource(p, cron, self.redis, self.scripts)
            self._spawn(source.run(self.stop_event), f"cron:{cron.topic}")
        log.info(
            "flowline started",
            pipelines=[p.name for p in self.plan.pipelines],
            streams=[st.subject for _, st in self.plan.streams],
            queues=[q.name for _, q in self.plan.queues],
            crons=[c.topic for _, c in self.plan.crons],
            nats=redact(s.nats_url),
            redis=redact(s.redis_url),
        )

    async def _jetstream(self) -> JetStreamContext:
        """JetStream, connecting on first use (a queue-only process may never need NATS)."""
        if self.js is None:
            self.nc = await connect_nats(self.settings)
            self.js = self.nc.jetstream()
        return self.js

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        task.add_done_callback(self._on_task_done)
        self._tasks.append(task)

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
        results = await asyncio.gather(*self._tasks, return_exceptions=True)
        for p in self.plan.pipelines:
            await p.bus.drain()
            if p._runner is self:
                p._runner = None
        if self.nc is not None:
            # Not drain(): our loops have stopped, and unacked messages are redelivered anyway.
            await self.nc.close()
        if self.redis is not None:
            await self.redis.aclose()
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

    async def publish(self, pipeline: Pipeline, event: Any, *, msg_id: str | None = None) -> int:
        """Put `event` on `pipeline`'s stream; returns its stream sequence.

        With `msg_id`, JetStream stores a retried publish only once (within its duplicate window).
        """
        stream = pipeline.source
        if not isinstance(stream, Stream):
            raise PipelineError(f"pipeline {pipeline.name!r} has no Stream to publish to")
        return await self.publish_to(stream.subject, _encode(stream, event), msg_id)

    async def publish_to(self, subject: str, payload: bytes, msg_id: str | None = None) -> int:
        """Publish raw bytes to `subject` (creating its stream once); returns the sequence."""
        js = await self._jetstream()
        if subject not in self._known_streams:
            await ensure_stream(js, subject)
            self._known_streams.add(subject)
        headers = {"Nats-Msg-Id": msg_id} if msg_id else None
        ack = await js.publish(subject, payload, headers=headers)
        return int(ack.seq)

    async def enqueue(
        self,
        pipeline: Pipeline,
        topic: str,
        data: Any = None,
        *,
        key: str | None = None,
        delay: float | None = None,
        priority: int = 0,
    ) -> str:
        """Put one job on its queue without a stream; returns its id.

        With `key`, enqueueing the same key again (a retried HTTP request) is a no-op.
        """
        assert self.redis is not None
        rows = direct(pipeline, Job(topic, data, delay=delay, key=key, priority=priority))
        await write(self.redis, self.scripts, rows)
        return rows[0].id

    async def dead_letters(self, pipeline: Pipeline) -> list[deadletters.DeadLetter]:
        """The pipeline's dead letters, oldest first."""
        assert self.redis is not None
        return await deadletters.listing(self.redis, pipeline)


def connect(target: object, settings: Settings | None = None) -> Runner:
    """A runner that runs nothing: use it to publish and enqueue from an app or a script.

    async with flowline.connect(pipeline):
        await pipeline.enqueue("notify-fan-following", {"fan": "fan-1", "talent": "t-1"})
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
