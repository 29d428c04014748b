"""The queue side: run jobs with bounded concurrency, in batches, at least once.

Hot path: one store read (XREADGROUP in Redis) fetches up to `batch` jobs; each runs as a
task; finished jobs are completed by one store call per flush (in Redis one script: XACK +
XDEL + result), so the per-job cost is the handler plus a few microseconds. Safety: live
workers refresh their claims (heartbeat), a dead worker's jobs are reclaimed after
`visibility_timeout` with ``attempt`` counted up, failures retry with backoff and end in the
dead-letter store, and shutdown hands unfinished jobs back instead of leaving them to time
out. The store (`flowline.backends`) is Redis in production, memory in `flowline.testing`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import inspect
import logging
import os
import random
import socket
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import structlog

from .. import _logging
from ..backends.base import CANCELLED, Running
from ..errors import Fail, JobError, JobTimeout, Retry, SerializationError, UnknownTopicError
from ..observability.tracing import get_tracing
from . import fanin
from .deadletters import job_record
from .job import JobContext, dumps, loads

if TYPE_CHECKING:
    from .._chain import Topic
    from .._pipeline import Pipeline
    from .._stages import Queue
    from ..backends.base import JobStore
    from ..observability.metrics import JobStats, Metrics
    from .emit import Emitter

__all__ = ["QueueWorker", "Running", "consumer_name"]

log = structlog.get_logger("flowline.worker")
T = TypeVar("T")

# Seconds between two reads of the cancel requests of the jobs a worker holds: a cancel asked
# for anywhere stops a running handler within about this (one ZMSCORE per queue per poll, and
# none while the worker holds no job).
CANCEL_POLL = 0.5


def consumer_name() -> str:
    """Unique per process: host, pid and a random suffix (pids repeat across containers)."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class QueueWorker:
    """Runs the jobs of one queue in this process."""

    def __init__(
        self,
        pipeline: Pipeline,
        queue: Queue,
        store: JobStore,
        *,
        concurrency: int | None = None,
        consumer: str | None = None,
        emitter: Emitter | None = None,
        metrics: Metrics | None = None,
        shard: str | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.emitter = emitter
        self.queue = queue
        self.topics: dict[str, Topic] = {
            name: t for name, t in pipeline.topics.items() if t.queue is queue
        }
        self.store = store
        self.clock = store.clock
        # The physical queue this worker reads: the queue, or one of its shards.
        self.name = shard or queue.name
        self.opts = queue.options
        self.concurrency = concurrency or self.opts.concurrency  # per shard, for a sharded one
        self.consumer = consumer or consumer_name()
        self.bus = pipeline.bus
        self.log = log.bind(pipeline=pipeline.name, stage="job", queue=self.name)
        self.claims: dict[tuple[str, str], Running] = {}
        self._running = 0
        self.completed = 0  # jobs this worker completed (and failed attempts), for the registry
        self.failed = 0
        self._done: list[tuple[Running, str, Any]] = []
        self._slot = asyncio.Event()
        self._flush_wake = asyncio.Event()
        self._closing = asyncio.Event()
        self._backlog: collections.deque[Running] = collections.deque()
        self._keep = int(self.opts.keep_completed)
        self._keep_failed = int(self.opts.keep_failed)
        self._vis_ms = int(self.opts.visibility_timeout * 1000)
        self._reclaim_after = 0.0  # monotonic time before which this worker does not reclaim
        # Rate limits: the queue's, taken before each read; topics', taken before their jobs start.
        self._rate = self.opts.rate
        self._topic_rates = {n: t.rate for n, t in self.topics.items() if t.rate is not None}
        self._takes = 0  # numbers each take, for its token
        # One count for the pipeline: its jobs from a source whose Route does not fan in
        # have no total, and the store leaves them alone.
        self._fan_in = any(route.fan_in for route in pipeline.routes)
        # Called with each job just before its handler (`flowline.testing` fails chosen
        # attempts with it); what it raises is the handler's failure.
        self.before: Callable[[JobContext], None] | None = None
        self._sync_handlers = {
            name: not (inspect.iscoroutinefunction(t.handler)) for name, t in self.topics.items()
        }
        # Looked up once: the hot path updates these objects' fields directly.
        self._stats: dict[str, JobStats] = {}
        if metrics is not None:
            self._stats = {
                name: metrics.job(pipeline.name, self.name, name) for name in self.topics
            }
            metrics.watch_running(pipeline.name, self.name, lambda: self._running)
        self._metrics = metrics
        # Checked once: with INFO off (--log-level WARNING) the per-job lines cost nothing.
        enabled = getattr(self.log, "is_enabled_for", None)
        self._log_jobs: bool = enabled(logging.INFO) if enabled is not None else True

    @property
    def running(self) -> int:
        """Handlers running now."""
        return self._running

    async def setup(self) -> None:
        """Create the queue's streams and consumer group if they do not exist yet."""
        await self.store.setup(self.name)

    # -- main loop ------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event, grace: float) -> None:
        """Read and run jobs until `stop`; then finish or hand back what is in flight."""
        # Helpers stop cooperatively through `_closing`, never by cancellation: redis-py can
        # swallow a CancelledError that lands mid-command, which would leave a loop running.
        helpers = [
            asyncio.create_task(self._flusher(), name=f"flush:{self.name}"),
            asyncio.create_task(self._heartbeat(), name=f"heartbeat:{self.name}"),
            asyncio.create_task(self._maintain(stop), name=f"maintain:{self.name}"),
            asyncio.create_task(self._watch_cancels(), name=f"cancels:{self.name}"),
        ]
        try:
            await self._read(stop)
        finally:
            await self._drain(grace)
            self._closing.set()
            self._flush_wake.set()
            await asyncio.gather(*helpers, return_exceptions=True)
            await self._flush_all()

    async def _pause(self, seconds: float) -> None:
        """Sleep, waking early when the worker is closing."""
        await self.clock.wait(self._closing, seconds)

    async def _read(self, stop: asyncio.Event) -> None:
        failures = 0
        backlog = self._backlog
        store, name, consumer = self.store, self.name, self.consumer
        while not stop.is_set():
            free = self.concurrency - self._running
            if free <= 0:
                self._slot.clear()
                await self._slot.wait()
                continue
            if backlog:
                # Read ahead, before a pause: not started while paused, but handed back.
                if await self._hand_back_if_paused():
                    continue
                granted, token = await self._admit(min(len(backlog), free))
                if granted:
                    started = await self._begin([backlog.popleft() for _ in range(granted)])
                    await self._give_back(token, granted, started)
                continue
            try:
                jobs = await store.read(name, consumer, min(free, self.opts.batch), 0.5)
                failures = 0
            except Exception as exc:
                failures += 1
                delay = min(5.0, 0.1 * 2**failures) * random.uniform(0.5, 1.0)
                self._store_trouble()
                self.log.warning("reading jobs failed; backing off", error=repr(exc), delay=delay)
                await self.clock.sleep(delay)
                continue
            if not jobs:
                continue
            if await self._paused_meanwhile():
                # Paused while the read waited: held, so the next turn hands them back.
                for job in jobs:
                    self.claims[job.key] = job
                    backlog.append(job)
                continue
            # A read may give more than the free slots (Redis counts per stream), and a rate
            # fewer starts than jobs: the rest waits in the backlog, claimed and kept alive by
            # the heartbeat. Starts are taken from the rate just before they happen, never
            # before a read that may block, so the rate's window holds the real start times.
            granted, token = await self._admit(min(len(jobs), free), wait=False)
            for job in jobs[granted:]:
                self.claims[job.key] = job
                backlog.append(job)
            started = await self._begin(jobs[:granted]) if granted else 0
            await self._give_back(token, granted, started)

    # -- rate limits ------------------------------------------------------------------------------

    async def _admit(self, wanted: int, *, wait: bool = True) -> tuple[int, str]:
        """How many jobs may start now under the queue's rate (all of `wanted` without one),
        and the token of the take; with `wait`, waits (up to a second) when none may."""
        rate = self._rate
        if rate is None:
            return wanted, ""
        token = self._token()
        try:
            # Rates count the starts of the whole queue: its shards share one window.
            granted, delay = await self.store.take(
                self.queue.name, "", wanted, rate.limit, rate.per, token
            )
        except Exception as exc:
            self._store_trouble()
            self.log.warning("could not take from the queue's rate", error=repr(exc))
            await self._pause(0.5)
            return 0, token
        if not granted and wait:
            await self._pause(min(delay, 1.0))
        return granted, token

    def _token(self) -> str:
        """A name for one take's starts, unique to it (`JobStore.give_back` finds them by it)."""
        self._takes += 1
        return f"{self.consumer}:{self._takes}:"

    async def _give_back(self, token: str, granted: int, used: int) -> None:
        """Return the queue's rate starts a take granted and no job used."""
        if token and used < granted:
            try:
                await self.store.give_back(self.queue.name, "", token, granted, used)
            except Exception as exc:  # the starts lapse with the window: nothing is lost
                self.log.warning("could not give rate starts back", error=repr(exc))

    async def _begin(self, jobs: list[Running]) -> int:
        """Start `jobs`, but those whose topic's rate is used up, which wait (delayed) until it
        frees; returns how many started."""
        if not self._topic_rates:
            for job in jobs:
                self._start(job)
            return len(jobs)
        limited: dict[str, list[Running]] = {}
        go: list[Running] = []
        for job in jobs:
            if job.topic in self._topic_rates:
                limited.setdefault(job.topic, []).append(job)
            else:
                go.append(job)
        for topic, held in limited.items():
            rate = self._topic_rates[topic]
            granted = 0
            try:
                granted, wait = await self.store.take(
                    self.queue.name, topic, len(held), rate.limit, rate.per, self._token()
                )
                if granted < len(held):
                    due = int((self.clock.time() + wait) * 1000)
                    await self.store.defer(self.name, self.consumer, held[granted:], due)
                    for job in held[granted:]:
                        self.claims.pop(job.key, None)
            except Exception as exc:
                # Still claimed: they wait in the backlog and are tried again.
                self._store_trouble()
                self.log.warning("could not take from a topic's rate", topic=topic, error=repr(exc))
                for job in held[granted:]:
                    self.claims[job.key] = job
                    self._backlog.append(job)
                await self._pause(0.5)
            go += held[:granted]
        for job in go:
            self._start(job)
        return len(go)

    async def _paused_meanwhile(self) -> bool:
        """Whether the queue was paused (as last seen, at most a quarter of a second ago, or at
        once when this process paused it); a failed check counts as not paused, as the read
        that just succeeded saw it."""
        try:
            return await self.store.paused(self.name, within=0.25)
        except Exception:
            return False

    async def _hand_back_if_paused(self) -> bool:
        """When the queue is paused, give the read-ahead backlog back; True if it was."""
        try:
            if not await self.store.paused(self.name, within=0.25):
                return False
            held = list(self._backlog)
            await self.store.release(self.name, self.consumer, held)
        except Exception as exc:
            self._store_trouble()
            self.log.warning("could not check whether the queue is paused", error=repr(exc))
            await self.clock.sleep(0.5)
            return True
        self._backlog.clear()
        for job in held:
            self.claims.pop(job.key, None)
        self.log.info("queue paused: handed back jobs read ahead", jobs=len(held))
        return True

    def _start(self, job: Running) -> None:
        self.claims[job.key] = job
        self._running += 1
        job.task = asyncio.create_task(self._run(job))

    # -- one job --------------------------------------------------------------------------------

    async def _run(self, job: Running) -> None:
        topic = self.topics.get(job.topic)
        bus = self.bus
        ctx: JobContext | None = None
        tracing = get_tracing()
        span = None
        if tracing is not None:
            span = tracing.job(
                topic=job.topic,
                job_id=job.job_id,
                queue=self.name,
                attempt=job.attempt,
                traceparent=job.trace,
                size=len(job.data),
                pipeline=self.pipeline.name,
            )
        try:
            if topic is None:
                raise UnknownTopicError(
                    f"queue {self.name!r} has no handler for topic {job.topic!r}",
                    stage="job",
                )
            try:
                data = loads(job.data)
            except ValueError as exc:
                raise SerializationError(
                    f"job data is not JSON ({exc}); it is never unpickled"
                ) from exc
            ctx = JobContext(
                id=job.job_id,
                topic=job.topic,
                data=data,
                attempt=job.attempt,
                queue=self.name,
                store=self.store,
                bus=bus,
                emitter=self.emitter,
            )
            if bus.wants("job:start"):
                bus.emit("job:start", "job", job=ctx)
            job.started = started = self.clock.time()
            stats = self._stats.get(job.topic)
            if stats is not None:
                stats.started += 1
                stats.wait.observe(max(0.0, started - job.ready_at))
            try:
                if topic.timeout is None:
                    result = await self._call(topic, ctx)
                else:
                    try:
                        async with asyncio.timeout(topic.timeout):
                            result = await self._call(topic, ctx)
                    except TimeoutError as exc:
                        raise JobTimeout(
                            f"handler {topic.handler_name} ran past its {topic.timeout:g}s timeout",
                            stage=job.topic,
                        ) from exc
            finally:
                job.duration = self.clock.time() - started
            encoded = dumps(result, what=f"result of job {job.job_id}")
        except asyncio.CancelledError as exc:
            if span is not None:
                span.fail(exc)
            if not job.cancel:
                raise  # shutdown or a lost claim: the job is handed back or run elsewhere
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()  # the cancellation was ours, and is handled here
            await self._cancelled(job, ctx)
        except BaseException as exc:
            if not isinstance(exc, Exception):
                raise
            if span is not None:
                span.fail(exc)
            if job.cancel:
                await self._cancelled(job, ctx)
            else:
                await self._failed(job, topic, ctx, exc)
        else:
            if job.cancel:
                # The handler caught the cancellation and returned: its result is dropped.
                await self._cancelled(job, ctx)
            else:
                self._done.append((job, encoded, result))
                self._flush_wake.set()
        finally:
            if span is not None:
                span.end()
            self._running -= 1
            self._slot.set()

    async def _call(self, topic: Topic, ctx: JobContext) -> Any:
        if self.before is not None:
            self.before(ctx)
        if self._sync_handlers[topic.name]:
            # Sync handlers run in a thread, as in taskiq and Celery, so they cannot stall the loop.
            result = await asyncio.to_thread(topic.handler, ctx)
        else:
            result = topic.handler(ctx)
        if inspect.isawaitable(result):
            result = await result
        return result

    async def _failed(
        self, job: Running, topic: Topic | None, ctx: JobContext | None, exc: Exception
    ) -> None:
        job.settling = True
        retries = topic.retries if topic is not None else 0
        final = isinstance(exc, (Fail, UnknownTopicError, SerializationError))
        retry = isinstance(exc, Retry)
        can_retry = not final and job.attempt <= retries
        err: Exception = exc
        if not retry and not isinstance(exc, JobError):
            err = JobError(f"{type(exc).__name__}: {exc}", stage=job.topic)
            err.__cause__ = exc
        if not retry:
            if self._metrics is not None:
                self._metrics.error(self.pipeline.name, "job")
            self.bus.emit("error:job", "job", job=ctx, error=err, topic=job.topic, id=job.job_id)
        delay = -1.0
        if can_retry:
            assert topic is not None
            if isinstance(exc, Retry) and exc.delay is not None:
                delay = max(0.0, float(exc.delay))
            else:
                delay = topic.backoff.delay(job.attempt, random.random())
        now = self.clock.time()
        due = -1 if delay < 0 else (0 if delay == 0 else int((now + delay) * 1000))
        record = (
            ""
            if due >= 0
            else job_record(
                job_id=job.job_id,
                queue=self.name,
                topic=job.topic,
                data=job.data,
                attempts=job.attempt,
                err=exc,
                now=now,
            )
        )
        dead = await self._until_done(
            "could not record failure; retrying",
            lambda: self.store.fail(
                self.name,
                job,
                consumer=self.consumer,
                now_ms=int(now * 1000),
                keep=self._keep_failed,
                due_ms=due,
                error=str(exc),
                record=record,
            ),
        )
        self.claims.pop(job.key, None)
        if dead is None:
            # Another worker holds the job now, or this very call already went through before
            # its reply was lost: either way it is recorded once, by someone else's call.
            self.log.warning("failure not recorded: job no longer held here", job=job.job_id)
            return
        if dead == CANCELLED:
            self._said_cancelled(job, ctx)
            return
        self.failed += 1
        stats = self._stats.get(job.topic)
        if stats is not None:
            stats.failed += 1
            if job.started:  # the handler ran (not: bad data, or reclaimed too often)
                stats.duration.observe(job.duration)
        # The fields of every line about this attempt (the per-job log lines of the README).
        about = {
            "topic": job.topic,
            "job": job.job_id,
            "attempt": job.attempt,
            "duration": round(job.duration, 6),
            "error": str(exc),
        }
        if due >= 0:
            if stats is not None:
                stats.retried += 1
            self.log.warning("job failed", outcome="retry", delay=round(delay, 3), **about)
            self.bus.emit(
                "job:retry", "job", job=ctx, id=job.job_id, topic=job.topic, error=err, delay=delay
            )
            return
        if stats is not None:
            stats.dead_lettered += 1
        self.log.error("job failed", outcome="failed", **about)
        self.log.warning("job dead-lettered", dead_letter=dead, **about)
        self.bus.emit("job:failed", "job", job=ctx, id=job.job_id, topic=job.topic, error=err)
        self.bus.emit("dead-letter", "job", job=ctx, id=dead, error=err, topic=job.topic)
        await self._finished([job.job_id])

    async def _until_done(self, warning: str, call: Callable[[], Awaitable[T]]) -> T:
        """Make a store call that settles a job held here, again each second until it goes
        through: the job stays claimed (the heartbeat keeps it) in between."""
        while True:
            try:
                return await call()
            except Exception as exc:
                self.log.warning(warning, error=repr(exc))
                await self.clock.sleep(1.0)

    # -- cancellation ---------------------------------------------------------------------------

    async def _watch_cancels(self) -> None:
        """Stop the jobs held here whose cancel was asked for, in whichever process asked."""
        failures = 0
        while not self._closing.is_set():
            # Backing off while the store is away: the other loops already say so.
            await self._pause(CANCEL_POLL * 2 ** min(failures, 3))
            try:
                await self.check_cancels()
                failures = 0
            except Exception as exc:
                failures += 1
                if failures == 1:
                    self.log.warning("could not read cancel requests", error=repr(exc))

    async def check_cancels(self) -> None:
        """Stop every job held here that has a cancel request (also called at once after a
        cancel asked for in this process)."""
        held = {job.job_id: job for job in self.claims.values() if not job.cancel}
        if not held:
            return
        for job_id in await self.store.cancel_requested(self.name, list(held)):
            await self._stop(held[job_id])

    async def _stop(self, job: Running) -> None:
        """Cancel a job held here: one not started yet ends at once, a running one when its
        handler gives way to the cancellation (`_run` settles it)."""
        job.cancel = True
        if job.task is None:
            with contextlib.suppress(ValueError):
                self._backlog.remove(job)
            await self._cancelled(job, None)
        elif not job.task.done():
            self.log.info("cancelling job", topic=job.topic, job=job.job_id)
            job.task.cancel()

    async def _cancelled(self, job: Running, ctx: JobContext | None) -> None:
        job.settling = True
        held = await self._until_done(
            "could not record a cancel; retrying",
            lambda: self.store.settle_cancelled(
                self.name,
                job,
                consumer=self.consumer,
                now_ms=int(self.clock.time() * 1000),
                keep=self._keep_failed,
            ),
        )
        self.claims.pop(job.key, None)
        if held:
            self._said_cancelled(job, ctx)

    def _said_cancelled(self, job: Running, ctx: JobContext | None) -> None:
        stats = self._stats.get(job.topic)
        if stats is not None:
            stats.cancelled += 1
        self.log.info(
            "job cancelled",
            topic=job.topic,
            job=job.job_id,
            attempt=job.attempt,
            duration=round(job.duration, 6),
            outcome="cancelled",
        )
        self.bus.emit(
            "job:cancelled", "job", job=ctx, id=job.job_id, topic=job.topic, attempt=job.attempt
        )

    # -- completion -----------------------------------------------------------------------------

    async def _flusher(self) -> None:
        while not self._closing.is_set():
            await self._flush_wake.wait()
            self._flush_wake.clear()
            await self._flush_all()

    async def _flush_all(self) -> None:
        while self._done:
            batch, self._done = self._done, []
            now = int(self.clock.time() * 1000)
            try:
                await self.store.complete(
                    self.name, [(job, encoded) for job, encoded, _ in batch], now, self._keep
                )
            except Exception as exc:
                # Still claimed (the heartbeat keeps them); try again shortly. Completing twice
                # is harmless (in Redis: XACK and XDEL of a finished entry do nothing).
                self.log.warning("could not complete jobs; retrying", error=repr(exc))
                self._done[:0] = batch
                if self._closing.is_set():
                    return  # unacked: the heartbeat is gone, so another worker reclaims them
                await self._pause(0.5)
                continue
            claims = self.claims
            for job, _, _ in batch:
                claims.pop(job.key, None)
            self.completed += len(batch)
            if self._stats:
                self._count_completed(batch, now / 1000)
            if self._log_jobs:
                self._log_completed(batch)
            bus = self.bus
            if bus.wants("job:complete"):
                for job, _, result in batch:
                    bus.emit(
                        "job:complete",
                        "job",
                        id=job.job_id,
                        topic=job.topic,
                        result=result,
                        attempt=job.attempt,
                    )
            await self._finished([job.job_id for job, _, _ in batch])

    def _log_completed(self, batch: list[tuple[Running, str, Any]]) -> None:
        """One INFO line per job: written a batch at a time when flowline set up JSON logs."""
        lines = _logging.job_lines()
        if lines is not None:
            rows = ((job.topic, job.job_id, job.attempt, job.duration) for job, _, _ in batch)
            lines.completed(self.pipeline.name, self.name, rows)
            return
        info = self.log.info
        for job, _, _ in batch:
            info(
                "job completed",
                topic=job.topic,
                job=job.job_id,
                attempt=job.attempt,
                duration=round(job.duration, 6),
                outcome="completed",
            )

    def _count_completed(self, batch: list[tuple[Running, str, Any]], now: float) -> None:
        stats = self._stats
        for job, _, _ in batch:
            s = stats.get(job.topic)
            if s is not None:
                s.completed += 1
                s.duration.observe(job.duration)
                if job.born:
                    s.event_to_done.observe(max(0.0, now - job.born / 1000))

    async def _finished(self, job_ids: list[str]) -> None:
        """Fan-in: emit ``route:complete`` for messages whose last job just finished."""
        if not self._fan_in:
            return
        routed = [job_id for job_id in job_ids if fanin.routed(job_id)]
        if not routed:
            return
        try:
            # Fan-in bookkeeping outlives the jobs' records, also with `keep_completed=0`.
            keep = self._keep or self._keep_failed
            complete = await self.store.fan_in_finished(self.pipeline.name, routed, keep)
        except Exception as exc:
            self.log.warning("fan-in bookkeeping failed", error=repr(exc))
            return
        for origin, total in complete:
            self.bus.emit("route:complete", "route", origin=origin, jobs=total)

    # -- keeping claims, reclaiming, delayed jobs ------------------------------------------------

    def _store_trouble(self) -> None:
        """The store (Redis) failed us: nobody could refresh a claim meanwhile, us included.

        The time Redis was away counts towards every claim's idle time, so right after an
        outage the jobs of live workers look abandoned. Reclaiming waits one visibility
        timeout, in which every live worker refreshes its claims (a heartbeat runs every third
        of it, and soon after a failed one).
        """
        self._reclaim_after = self.clock.monotonic() + self.opts.visibility_timeout

    async def _heartbeat(self) -> None:
        interval = self.opts.visibility_timeout / 3
        wait = interval
        while not self._closing.is_set():
            await self._pause(wait)
            wait = interval
            try:
                held = list(self.claims.values())
                for job in await self.store.heartbeat(self.name, self.consumer, held):
                    self._lose(job.key)
            except Exception as exc:
                self._store_trouble()
                wait = min(interval, 0.25)  # refresh our claims as soon as Redis is back
                self.log.warning("heartbeat failed", error=repr(exc))

    def _lose(self, key: tuple[str, str]) -> None:
        """Another worker took this job over (we were stalled past the visibility timeout)."""
        job = self.claims.get(key)
        if job is None:
            return
        if job.settling or (job.task is not None and job.task.done()):
            # Our own completion or failure acked the entry between this heartbeat's snapshot
            # of the claims and its script: nobody took it over, and there is no run to stop.
            return
        del self.claims[key]
        if job.task is None:
            # Never started here (waiting in the read-ahead backlog): it must not start now.
            with contextlib.suppress(ValueError):
                self._backlog.remove(job)
        self.log.warning("lost claim on job; stopping our run", job=job.job_id)
        if job.task is not None:
            job.task.cancel()

    async def _maintain(self, stop: asyncio.Event) -> None:
        reclaim_every = max(0.2, self.opts.visibility_timeout / 4)
        next_reclaim = 0.0
        while not self._closing.is_set():
            sleep = 0.25
            clock = self.clock
            try:
                moved, due = await self.store.promote(self.name, int(clock.time() * 1000), 500)
                if due >= 0:
                    sleep = min(sleep, max(0.005, due / 1000 - clock.time()))
                if moved == 500:
                    sleep = 0
                now = clock.monotonic()
                if now >= next_reclaim and now >= self._reclaim_after and not stop.is_set():
                    next_reclaim = clock.monotonic() + reclaim_every
                    await self._reclaim()
            except Exception as exc:
                self._store_trouble()
                self.log.warning("queue maintenance failed", error=repr(exc))
                sleep = 1.0
            await self._pause(sleep)

    async def _reclaim(self) -> None:
        # As many as we can start now (one, over the limit, when busy): the rest are left to
        # workers with free slots, rather than waiting here behind our own jobs.
        count = max(1, self.concurrency - self._running)
        taken = await self.store.reclaim(self.name, self.consumer, self._vis_ms, count)
        taken = [job for job in taken if job.key not in self.claims]  # ours: just refreshed
        asked = await self.store.cancel_requested(self.name, [j.job_id for j in taken])
        for job in taken:
            if job.job_id in asked:
                # Its worker died after the cancel was asked for: it is not run again.
                self.claims[job.key] = job
                await self._stop(job)
                continue
            self.log.warning(
                "reclaimed job from a worker that stopped", job=job.job_id, attempt=job.attempt
            )
            t = self.topics.get(job.topic)
            limit = (t.retries if t is not None else 0) + 1
            if job.attempt > limit:
                self.claims[job.key] = job
                exc = JobError(
                    f"worker stopped while running it {job.attempt - 1} times "
                    f"(limit {limit} attempts)",
                    stage=job.topic,
                )
                await self._failed(job, None, None, exc)
                continue
            if self._rate is not None or job.topic in self._topic_rates:
                # It waits its turn under the rates, like a job just read.
                self.claims[job.key] = job
                self._backlog.append(job)
                continue
            self._start(job)

    # -- shutdown -------------------------------------------------------------------------------

    async def _drain(self, grace: float) -> None:
        tasks = [j.task for j in self.claims.values() if j.task is not None and not j.task.done()]
        if tasks:
            self.log.info("waiting for jobs in flight", jobs=len(tasks), grace=grace)
            _, pending = await asyncio.wait(tasks, timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                # Bounded: a handler may ignore cancellation; its job is handed back regardless.
                await asyncio.wait(pending, timeout=5)
        await self._flush_all()
        # Cancelled mid-run, or read but never started (the backlog): hand them back.
        unfinished = [j for j in self.claims.values() if j.task is None or j.task.cancelled()]
        self._backlog.clear()
        if unfinished:
            await self.store.release(self.name, self.consumer, unfinished)
            for j in unfinished:
                self.claims.pop(j.key, None)
        if unfinished:
            self.log.info("handed back unfinished jobs", jobs=len(unfinished))
