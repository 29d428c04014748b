"""`run`: a pipeline running in this process on the in-memory backends, with time in hand.

The runner, stream ingest, queue workers and cron are the ones ``flowline worker`` runs; only
the job store and the stream source are `flowline.backends.memory`'s, and the clock is a
`ManualClock` that moves when `App.settle` or `App.advance` moves it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable
from typing import Any

from .._events import Event, matches
from .._pipeline import Pipeline
from .._settings import Settings
from ..backends.base import Cancellation
from ..backends.clock import ManualClock
from ..backends.memory import MemorySource, MemoryStore
from ..errors import FlowlineError, PipelineError
from ..runtime.cron import next_tick
from ..runtime.deadletters import DeadLetter
from ..runtime.job import JobContext
from ..runtime.jobs import JobInfo
from ..runtime.runner import Runner

# A jump lands this far past a due time, so that a sleeper due then is surely woken
# (its wake time was computed in floating point) and a job due then is surely due.
_PAST = 0.001
# How many turns of the event loop with nothing changing count as "nothing left to run".
_QUIET_TURNS = 5


class SettleTimeout(FlowlineError, TimeoutError):
    """Raised when `App.settle` gave up: work was still going on after `within` seconds."""


class App:
    """A running pipeline (or several) with no servers: publish, enqueue, settle, look.

    Made by `run`. `clock`, `store` and `streams` are the in-memory pieces it runs on, and
    `runner` the `flowline.Runner` running its stages on them.
    """

    def __init__(self, runner: Runner, clock: ManualClock) -> None:
        self.runner = runner
        self.clock = clock
        self.pipelines: list[Pipeline] = list(runner.plan.pipelines)
        self._events: list[Event] = []
        self._faults: dict[str, tuple[frozenset[int], BaseException | None]] = {}

    @classmethod
    def in_memory(
        cls, target: object, *, clock: ManualClock | None = None, concurrency: int | None = None
    ) -> App:
        """An app on a new `MemoryStore` and `MemorySource` sharing one `ManualClock`."""
        clock = clock or ManualClock()
        settings = Settings(concurrency=concurrency, grace=5.0, events_retention=0)
        store, streams = MemoryStore(clock), MemorySource(clock)
        return cls(Runner(target, settings, store=store, streams=streams), clock)

    @property
    def store(self) -> MemoryStore:
        return self.runner.store  # type: ignore[return-value]  # what `in_memory` gave it

    @property
    def streams(self) -> MemorySource:
        return self.runner.streams  # type: ignore[return-value]

    # -- running --------------------------------------------------------------------------------

    async def start(self) -> None:
        for p in self.pipelines:
            p.bus.on("*", self._events.append)
        await self.runner.start()
        for worker in self.runner.workers:
            worker.before = self._inject

    async def stop(self) -> None:
        self.runner.stop_event.set()
        # Readers wait on the manual clock, which stands still: wake them to see the stop.
        if isinstance(self.runner.store, MemoryStore):
            await self.runner.store.close()
        if isinstance(self.runner.streams, MemorySource):
            await self.runner.streams.close()
        try:
            await self.runner.stop()
        finally:
            for p in self.pipelines:
                p.bus.off("*", self._events.append)

    # -- putting work in ----------------------------------------------------------------------

    async def publish(
        self,
        event: Any,
        *,
        pipeline: Pipeline | None = None,
        subject: str | None = None,
        msg_id: str | None = None,
    ) -> int:
        """Publish `event` to the pipeline's Stream (the one on `subject`); returns its sequence.

        Raises:
            PipelineError: several pipelines run and none is given, or no such Stream.
        """
        p = pipeline or self._only("publish to")
        return await self.runner.publish(p, event, msg_id=msg_id, subject=subject)

    async def enqueue(
        self,
        topic: str,
        data: Any = None,
        *,
        key: str | None = None,
        delay: float | None = None,
        priority: int = 0,
        group: str | None = None,
    ) -> str:
        """Enqueue a job of `topic` directly (as `Pipeline.enqueue`); returns its id.

        Raises:
            PipelineError: no running pipeline dequeues `topic`.
        """
        owners = [p for p in self.pipelines if topic in p.topics]
        if not owners:
            raise PipelineError(f"no pipeline here dequeues topic {topic!r} ({self._topics()})")
        return await self.runner.enqueue(
            owners[0], topic, data, key=key, delay=delay, priority=priority, group=group
        )

    def fail(
        self, topic: str, *, on: int | Iterable[int] = 1, error: BaseException | None = None
    ) -> None:
        """Make the jobs of `topic` fail on the given attempt(s) before their handler runs.

        The failure takes the same path as a handler's exception: a retry with the topic's
        backoff, or a dead letter after its last attempt. `error` is what is raised (default:
        a `RuntimeError` naming the attempt); raise `flowline.Fail` to fail without retries.

        Raises:
            PipelineError: no running pipeline dequeues `topic`, or an attempt below 1.
        """
        if not any(topic in p.topics for p in self.pipelines):
            raise PipelineError(f"no pipeline here dequeues topic {topic!r} ({self._topics()})")
        attempts = frozenset([on] if isinstance(on, int) else on)
        if not attempts or min(attempts) < 1:
            raise PipelineError(f"attempts count from 1; got {sorted(attempts)} for {topic!r}")
        self._faults[topic] = (attempts, error)

    def _inject(self, job: JobContext) -> None:
        fault = self._faults.get(job.topic)
        if fault is not None and job.attempt in fault[0]:
            error = fault[1]
            if error is None:
                error = RuntimeError(f"failed by flowline.testing on attempt {job.attempt}")
            raise error

    # -- time -----------------------------------------------------------------------------------

    async def settle(self, *, within: float = 30.0) -> None:
        """Run until nothing is left to do: no message to route, no job ready, running or
        delayed. Time jumps to each delayed job and handed-back message when nothing else is
        left, so a retry 5 minutes away settles at once; cron ticks still ahead are not
        waited for (`advance` moves time to them).

        Raises:
            SettleTimeout: work was still going on after `within` seconds of real time (a
                handler that never returns, or a job that retries forever).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            await self._run_until_idle(deadline)
            due = self._next_due()
            if due is None:
                return
            self._reach(due)

    async def advance(self, seconds: float, *, within: float = 30.0) -> None:
        """Move time forward by `seconds`, stopping at each cron tick, delayed job and
        handed-back message on the way to run what falls due, as if the time had passed.

        Raises:
            SettleTimeout: as `settle`.
        """
        if seconds < 0:
            raise ValueError(f"time only goes forward; cannot advance by {seconds}")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        end = self.clock.time() + seconds
        while True:
            await self._run_until_idle(deadline)
            due = self._next_due(with_ticks=True)
            if due is None or due > end:
                break
            self._reach(due)
        self.clock.advance_to(end)
        await self._run_until_idle(deadline)

    def _reach(self, due: float) -> None:
        """Move time to `due`; once there, to the next sleeper's wake: the loop that picks up
        what fell due (the delayed-job promoter, every 0.25 s) may be asleep past it."""
        if due + _PAST > self.clock.time():
            self.clock.advance_to(due + _PAST)
            return
        wake = self.clock.next_wake()
        if wake is None:  # pragma: no cover - the runtime's loops always sleep on the clock
            raise SettleTimeout(f"work fell due at {due} and nothing is left to run it")
        self.clock.advance(max(0.0, wake - self.clock.monotonic()))

    def _next_due(self, *, with_ticks: bool = False) -> float | None:
        """The soonest time (epoch seconds) at which something waiting falls due."""
        due = [self.streams.next_due()]
        store_due = self.store.next_due()
        if store_due is not None:
            due.append(store_due / 1000)
        if with_ticks:
            now = self.clock.time()
            due += [next_tick(cron, now) for _, cron in self.runner.plan.crons]
        found = [d for d in due if d is not None]
        return min(found) if found else None

    async def _run_until_idle(self, deadline: float) -> None:
        """Let every task run until none has work and nothing changes any more."""
        loop = asyncio.get_running_loop()
        while True:
            await self._quiet()
            for p in self.pipelines:
                await p.bus.drain()  # async listeners may publish or enqueue
            if not self._working():
                await self._quiet()
                if not self._working():
                    return
            if loop.time() > deadline:
                raise SettleTimeout(f"still busy after the time allowed: {self._busy()}")
            await asyncio.sleep(0.001)  # a handler awaits something real (I/O, a thread)

    def _working(self) -> bool:
        """Whether a job is ready or running, a message unrouted, or a cron tick firing."""
        return (
            self.store.busy()
            or self.streams.busy()
            or any(cron.firing for cron in self.runner.crons)
            or any(w.running for w in self.runner.workers)
        )

    async def _quiet(self) -> None:
        """Turn the event loop until the store, the streams and the events stop changing."""
        seen, still = None, 0
        while still < _QUIET_TURNS:
            await asyncio.sleep(0)
            now = (self.store.changes, len(self._events), self.streams.busy())
            still = still + 1 if now == seen else 0
            seen = now

    def _busy(self) -> str:
        parts = [
            f"Queue({name!r}): {ready} ready, {running} running"
            for name, (ready, running) in self.store.backlog().items()
        ]
        if self.streams.busy():
            parts.append("stream messages not yet routed")
        parts += [f"Cron({c.cron.topic!r}) firing" for c in self.runner.crons if c.firing]
        return "; ".join(parts) or "nothing (it may have just finished)"

    # -- looking --------------------------------------------------------------------------------

    def events(self, pattern: str = "*") -> list[Event]:
        """Every event emitted so far whose name matches `pattern` (``*``, ``error``,
        ``job:*``, ``dead-letter``...), in order."""
        return [e for e in self._events if matches(pattern, e.name)]

    def completed(self, topic: str | None = None) -> list[Event]:
        """The ``job:complete`` events (of `topic`): each has ``id``, ``topic``, ``attempt``,
        ``result``."""
        return [e for e in self.events("job:complete") if topic is None or e.topic == topic]

    def failed(self, topic: str | None = None) -> list[Event]:
        """The ``job:failed`` events (of `topic`): jobs that failed for good; each has ``id``,
        ``topic``, ``error``."""
        return [e for e in self.events("job:failed") if topic is None or e.topic == topic]

    def retried(self, topic: str | None = None) -> list[Event]:
        """The ``job:retry`` events (of `topic`): attempts that failed and will run again; each
        has ``id``, ``topic``, ``error``, ``delay``."""
        return [e for e in self.events("job:retry") if topic is None or e.topic == topic]

    def cancelled(self, topic: str | None = None) -> list[Event]:
        """The ``job:cancelled`` events (of `topic`): each has ``id``, ``topic``, ``attempt``
        (0 when it was cancelled before it ran)."""
        return [e for e in self.events("job:cancelled") if topic is None or e.topic == topic]

    async def cancel(self, job_id: str) -> Cancellation:
        """Cancel a job of any queue (as `QueueHandle.cancel`). A running one's handler is
        cancelled at once (its worker is in this process); `settle` lets it end."""
        for p in self.pipelines:
            for q in p.queues:
                found = await p.queue(q.name).cancel(job_id)
                if found.outcome != "unknown":
                    return found
        return Cancellation("unknown", "", "")

    async def job(self, job_id: str) -> JobInfo | None:
        """The job's record as the store holds it (as `QueueHandle.job`), or None."""
        for p in self.pipelines:
            for q in p.queues:
                found = await p.queue(q.name).job(job_id)
                if found is not None:
                    return found
        return None

    async def dead_letters(self) -> list[DeadLetter]:
        """Every pipeline's dead letters, oldest first (stream side, then each queue)."""
        out = []
        for p in self.pipelines:
            out += await self.runner.store.dead_letters(p, 10_000)
        return out

    def published(self, subject: str) -> list[bytes]:
        """The payloads published to `subject` so far (by `publish`, or jobs' emits)."""
        return self.streams.messages(subject)

    # -- helpers --------------------------------------------------------------------------------

    def _only(self, what: str) -> Pipeline:
        if len(self.pipelines) == 1:
            return self.pipelines[0]
        names = ", ".join(p.name for p in self.pipelines)
        raise PipelineError(f"several pipelines run here ({names}): say which to {what}")

    def _topics(self) -> str:
        topics = sorted(t for p in self.pipelines for t in p.topics)
        return f"dequeued topics: {', '.join(topics) or 'none'}"


@contextlib.asynccontextmanager
async def run(
    target: object, *, clock: ManualClock | None = None, concurrency: int | None = None
) -> AsyncIterator[App]:
    """Run `target` (a pipeline, a `Pipelines`, or pipelines) in memory for a test.

        async with flowline.testing.run(pipeline) as app:
            await app.publish(FanbaseEvent(fan="f1", talent="t1", action="followed"))
            await app.settle()
            assert app.completed("notify-fan-following")[0].result["sent"]

    Args:
        clock: the clock to run on (default: a `ManualClock` starting at the machine's time).
        concurrency: overrides every queue's concurrency.
    """
    app = App.in_memory(target, clock=clock, concurrency=concurrency)
    await app.start()
    try:
        yield app
    finally:
        await app.stop()
