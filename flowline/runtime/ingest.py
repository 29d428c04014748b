"""The stream side: fetch a batch, decode, route, enqueue idempotently, then ack.

Ordering is the whole guarantee: a message is acked only after every job it produced is in
Redis. A crash anywhere before the ack means JetStream redelivers it; its jobs get the same
ids (stream + sequence + index) and the enqueue script skips the ones already written.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import random
from typing import TYPE_CHECKING, Any

import nats.errors
import structlog

from ..errors import (
    DecodeError,
    EnqueueError,
    RouteError,
    SerializationError,
    StageError,
    UnknownTopicError,
)
from ..observability.tracing import get_tracing
from . import deadletters, fanin
from .enqueue import Planned, plan, write
from .routing import call_router

if TYPE_CHECKING:
    from .._pipeline import Pipeline
    from .._stages import Stream
    from ..backends.base import Consumer, JobStore, StreamSource
    from ..backends.base import Message as Msg
    from ..observability.metrics import Metrics

log = structlog.get_logger("flowline.ingest")

# How often the stream side drops the dedup marks of messages its consumer has acked: marks
# (and so Redis memory) then cover the messages of about this long beyond those in flight.
FORGET_INTERVAL = 1.0


class StreamIngest:
    """Consumes one pipeline's Stream through a durable pull consumer shared by all processes."""

    def __init__(
        self,
        pipeline: Pipeline,
        stream: Stream[Any],
        source: StreamSource,
        store: JobStore,
        metrics: Metrics | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.stream = stream
        self.source = source
        self.store = store
        self.clock = store.clock
        self.sub: Consumer | None = None
        self.bus = pipeline.bus
        self.route = pipeline.route_for(stream)
        self.durable = stream.durable or pipeline.name
        self.stream_name = ""
        self._batch: list[Msg] = []  # being routed, then waiting for the write before it
        self._batch_started = 0.0
        self._writing: list[Msg] = []  # being written, then acked
        self._writing_started = 0.0
        self.log = log.bind(pipeline=pipeline.name, stage="stream", subject=stream.subject)
        self._fan_in = self.route is not None and self.route.fan_in
        # Fan-in bookkeeping outlives the jobs' records, also with `keep_completed=0`.
        self._keep = int(
            max(
                (q.options.keep_completed or q.options.keep_failed for q in pipeline.queues),
                default=86400,
            )
        )
        self.metrics = metrics
        self.stats = metrics.stream(pipeline.name, stream.subject) if metrics is not None else None
        self._added = (
            functools.partial(metrics.enqueued, pipeline.name) if metrics is not None else None
        )
        self._concurrent_route = self.route is not None and (
            inspect.iscoroutinefunction(self.route.fn) or inspect.isasyncgenfunction(self.route.fn)
        )
        self.tracing = get_tracing()  # looked up again per batch: the app may set it up later
        # Every queue this stream's jobs can land in: its dedup marks are forgotten there.
        self._queues = [name for q in pipeline.queues for name in q.shard_names]
        self._high = 0  # the highest sequence this process acked
        self._forgotten = -1  # the ack floor up to which marks are forgotten (-1: not looked)

    async def setup(self) -> None:
        """Create the stream (if no stream captures the subject) and the durable consumer."""
        self.stream_name = await self.source.ensure(self.stream.subject, self.stream.replicas)
        self.sub = await self.source.consumer(
            self.stream_name,
            self.stream.subject,
            self.durable,
            ack_wait=self.stream.ack_wait,
            max_ack_pending=max(20_000, self.stream.batch * 8),
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Fetch and process batches until `stop` is set; never exits on a server fault.

        Two batches overlap: one is written to Redis (then acked) while the next is fetched
        and routed. Writes stay in order, one at a time, and each message is acked only after
        its own jobs are written; a stop lets the batch being written finish.
        """
        assert self.sub is not None, "setup() first"
        keepalive = asyncio.create_task(self._keepalive(stop), name=f"keepalive:{self.durable}")
        forgetting = asyncio.create_task(self._forget(stop), name=f"forget:{self.durable}")
        failures = 0
        clock = self.clock
        writing: asyncio.Task[bool] | None = None
        try:
            while not stop.is_set():
                try:
                    msgs = await self.sub.fetch(self.stream.batch, timeout=0.5)
                except (nats.errors.TimeoutError, TimeoutError):
                    continue
                except Exception as exc:
                    failures += 1
                    delay = min(5.0, 0.1 * 2**failures)
                    self.log.warning("fetch failed; backing off", error=repr(exc), delay=delay)
                    await clock.sleep(delay)
                    continue
                started = clock.monotonic()
                self._batch, self._batch_started = msgs, started
                rows, ready = await self.route_batch(msgs)
                if writing is not None:
                    ok = await writing
                    failures = 0 if ok else failures + 1
                    if not ok:
                        await clock.sleep(min(5.0, 0.1 * 2**failures) * random.uniform(0.5, 1.0))
                self._writing, self._writing_started = msgs, started
                self._batch = []
                writing = asyncio.create_task(self.write_batch(rows, ready))
        finally:
            if writing is not None:
                await writing
            self._batch = self._writing = []
            await keepalive
            await forgetting

    async def _forget(self, stop: asyncio.Event) -> None:
        """Drop the dedup marks of the messages the consumer has acked, every FORGET_INTERVAL.

        Any process's stream side may drop any process's marks: the ack floor is the consumer's,
        shared by all. Marks at or below it are of messages JetStream never delivers again.
        """
        while not await self.clock.wait(stop, FORGET_INTERVAL):
            if self._high <= self._forgotten:
                continue  # idle since: the floor has passed all this process acked
            try:
                floor = await self.source.ack_floor(self.stream_name, self.durable)
                if floor > max(self._forgotten, 0):
                    await self.store.forget(self._queues, self.stream_name, floor)
                self._forgotten = max(self._forgotten, floor)
            except Exception as exc:  # a server down: the marks wait for the next round
                self.log.debug("could not forget acked messages' marks", error=repr(exc))

    async def _keepalive(self, stop: asyncio.Event) -> None:
        """Tell JetStream a batch is in progress while its routes run long (not redelivered).

        One loop for the consumer's life, rather than a task per batch, keeps the hot path lean.
        """
        interval = max(0.5, self.stream.ack_wait / 3)
        while not stop.is_set():
            await self.clock.wait(stop, interval / 2)
            now = self.clock.monotonic()
            for batch, started in (
                (self._writing, self._writing_started),
                (self._batch, self._batch_started),
            ):
                if batch and now - started >= interval:
                    for msg in batch:
                        if not msg._ackd:
                            with contextlib.suppress(Exception):
                                await msg.in_progress()

    async def process(self, msgs: list[Msg]) -> bool:
        """Route a batch, enqueue all its jobs, ack; returns False when Redis refused them."""
        return await self.write_batch(*await self.route_batch(msgs))

    async def route_batch(self, msgs: list[Msg]) -> tuple[list[Planned], list[Msg]]:
        """Decode and route a batch: the jobs, and the messages to ack once they are written
        (the rest were dead-lettered or handed back)."""
        self.tracing = get_tracing()
        if self._concurrent_route:
            results = await asyncio.gather(*(self._prepare(m) for m in msgs))
        else:
            results = [await self._prepare(m) for m in msgs]
        rows: list[Planned] = []
        ready: list[Msg] = []
        for msg, planned in zip(msgs, results, strict=True):
            if planned is not None:
                rows.extend(planned)
                ready.append(msg)
        return rows, ready

    async def write_batch(self, rows: list[Planned], ready: list[Msg]) -> bool:
        """Enqueue a routed batch's jobs, then ack its messages; False when Redis refused."""
        if rows:
            sending = self.tracing.send(rows) if self.tracing is not None else None
            try:
                if self._fan_in:
                    await self.store.fan_in_totals(
                        self.pipeline.name, fanin.totals(rows), self._keep
                    )
                await write(self.store, rows, self._added)
            except Exception as exc:
                if sending is not None:
                    sending.fail(exc)
                err = EnqueueError(f"could not enqueue {len(rows)} jobs: {exc!r}", stage="enqueue")
                self.log.warning("enqueue failed; messages will be redelivered", error=repr(exc))
                self._count_error("enqueue")
                self.bus.emit("error:enqueue", "enqueue", error=err, jobs=len(rows))
                for msg in ready:
                    await msg.nak(delay=1.0)
                if self.stats is not None:
                    self.stats.retried += len(ready)
                return False
            if sending is not None:
                sending.end()
        for msg in ready:
            await msg.ack()
        if ready:
            self._high = max(self._high, max(m.metadata.sequence.stream for m in ready))
        if self.stats is not None:
            self.stats.routed += len(ready)
        return True

    def _count_error(self, stage: str) -> None:
        if self.metrics is not None:
            self.metrics.error(self.pipeline.name, stage)

    async def _prepare(self, msg: Msg) -> list[Planned] | None:
        """Decode and route one message; None when it was dead-lettered or handed back."""
        meta = msg.metadata
        seq = meta.sequence.stream
        deliveries = meta.num_delivered
        bus = self.bus
        span = None
        trace = ""
        if self.tracing is not None:
            span = self.tracing.message(
                subject=msg.subject,
                sequence=seq,
                headers=msg.headers,
                size=len(msg.data),
                group=self.durable,
                deliveries=deliveries,
                pipeline=self.pipeline.name,
            )
            trace = span.traceparent
        try:
            try:
                if len(msg.data) > self.stream.max_payload:
                    raise DecodeError(
                        f"message of {len(msg.data)} bytes exceeds max_payload "
                        f"({self.stream.max_payload})",
                        stage="decode",
                    )
                if not msg.data:
                    raise DecodeError("empty message", stage="decode")
                try:
                    event = self.stream.decode(msg.data)
                except Exception as exc:
                    raise DecodeError(
                        f"could not decode message {seq} of {self.stream.subject!r} with "
                        f"{self.stream.describe()}: {type(exc).__name__}: {exc}",
                        stage="decode",
                    ) from exc
            except DecodeError as decode_error:
                if span is not None:
                    span.fail(decode_error)
                self._count_error("decode")
                bus.emit(
                    "error:decode", "decode", error=decode_error, subject=msg.subject, sequence=seq
                )
                await self._bury(msg, decode_error, "decode", deliveries)
                return None
            if bus.wants("stream"):
                bus.emit("stream", "stream", event=event, subject=msg.subject, sequence=seq)
            if self.route is None:
                return []
            try:
                jobs = await call_router(self.route, event)
                rows = plan(
                    self.pipeline,
                    jobs,
                    f"{self.stream_name}:{seq}",
                    "stream",
                    "route",
                    born_ms=int(meta.timestamp.timestamp() * 1000),
                    trace=trace,
                    now=self.clock.time(),
                    source=self.stream_name,
                    seq=seq,
                )
            except Exception as exc:
                err: Exception = (
                    exc
                    if isinstance(exc, (StageError, SerializationError))
                    else RouteError(str(exc), stage="route")
                )
                if span is not None:
                    span.fail(err)
                self._count_error("route")
                bus.emit("error:route", "route", error=err, event=event, sequence=seq)
                deterministic = isinstance(exc, UnknownTopicError) or not isinstance(
                    exc, RouteError
                )
                if deterministic or deliveries >= self.stream.max_deliver:
                    await self._bury(msg, err, "route", deliveries)
                    return None
                await msg.nak(delay=min(30.0, 0.5 * 2 ** (deliveries - 1)))
                if self.stats is not None:
                    self.stats.retried += 1
                return None
            if bus.wants("route"):
                bus.emit("route", "route", event=event, jobs=jobs, sequence=seq)
            return rows
        finally:
            if span is not None:
                span.end()

    async def _bury(self, msg: Msg, err: BaseException, stage: str, deliveries: int) -> None:
        """Dead-letter a message, then terminate it; if Redis is down, hand it back instead."""
        try:
            entry = await deadletters.bury_message(
                self.store, self.pipeline.name, msg, err, stage, deliveries, self.stream_name
            )
        except Exception as exc:
            self.log.warning("could not dead-letter message; will retry", error=repr(exc))
            await msg.nak(delay=1.0)
            if self.stats is not None:
                self.stats.retried += 1
            return
        self.log.warning(
            "message dead-lettered",
            sequence=msg.metadata.sequence.stream,
            error=str(err),
            dead_letter=entry,
        )
        self.bus.emit(
            "dead-letter", stage, error=err, id=entry, sequence=msg.metadata.sequence.stream
        )
        await msg.term()
        if self.stats is not None:
            self.stats.dead_lettered += 1
