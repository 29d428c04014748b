"""Cron sources: every process watches the schedule; Redis decides which one fires a tick.

A tick fires when its time has come and the shared high-water mark is below it. The firing
process takes a short lease on the tick, routes it, enqueues its jobs under ids derived from
the tick (so even two firings could not queue a job twice), then raises the mark. A process
that dies mid-tick lets the lease lapse and another fires it. Missed ticks (no process ran):
only the most recent one fires, once, when a process starts (``catch_up=True``).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

import structlog

from .enqueue import plan, write
from .routing import call_router

if TYPE_CHECKING:
    from .._pipeline import Pipeline
    from .._stages import Cron
    from ..backends.base import JobStore
    from ..observability.metrics import Metrics

log = structlog.get_logger("flowline.cron")


@dataclass(frozen=True)
class CronTick:
    """The event a cron source hands its router: which topic, and the scheduled time."""

    topic: str
    scheduled: datetime


def previous_tick(cron: Cron, now: float) -> float:
    """The latest scheduled time at or before `now` (epoch seconds)."""
    if cron.interval is not None:
        return (now // cron.interval) * cron.interval
    from croniter import croniter

    base = datetime.fromtimestamp(now, ZoneInfo(cron.tz))
    it = croniter(cron.expression, base)
    if croniter.match(cron.expression, base.replace(microsecond=0)) and base.second == 0:
        return base.replace(microsecond=0).timestamp()
    return float(it.get_prev(float))


def next_tick(cron: Cron, now: float) -> float:
    """The first scheduled time strictly after `now` (epoch seconds)."""
    if cron.interval is not None:
        return (now // cron.interval + 1) * cron.interval
    from croniter import croniter

    return float(
        croniter(cron.expression, datetime.fromtimestamp(now, ZoneInfo(cron.tz))).get_next(float)
    )


class CronSource:
    """Fires one pipeline's Cron ticks, coordinated with every other process through Redis."""

    def __init__(
        self,
        pipeline: Pipeline,
        cron: Cron,
        store: JobStore,
        metrics: Metrics | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.metrics = metrics
        self.cron = cron
        self.store = store
        self.clock = store.clock
        self.firing = False  # a tick is being routed and enqueued now
        self.log = log.bind(pipeline=pipeline.name, stage="cron", topic=cron.topic)

    def _added(self, queue: str, count: int) -> None:
        if self.metrics is not None:
            self.metrics.enqueued(self.pipeline.name, queue, count)

    async def run(self, stop: asyncio.Event) -> None:
        first = True
        clock, store, name, topic = self.clock, self.store, self.pipeline.name, self.cron.topic
        while not stop.is_set():
            now = clock.time()
            try:
                last = await store.cron_mark(name, topic)
                tick = previous_tick(self.cron, now)
                if first and (last is None or not self.cron.catch_up):
                    # Start the schedule now: history is not replayed (see the module docstring).
                    await store.raise_cron_mark(name, topic, int(tick * 1000))
                elif (last if last is not None else -1) < int(tick * 1000):
                    await self.fire(tick)
                first = False
            except Exception as exc:
                self.log.warning("cron check failed", error=repr(exc))
            wait = max(0.01, min(1.0, next_tick(self.cron, clock.time()) - clock.time()))
            await clock.wait(stop, wait)

    async def fire(self, tick: float) -> bool:
        """Fire the tick at `tick` unless another process holds its lease; True if fired."""
        self.firing = True
        try:
            return await self._fire(tick)
        finally:
            self.firing = False

    async def _fire(self, tick: float) -> bool:
        tick_ms = int(tick * 1000)
        name, topic = self.pipeline.name, self.cron.topic
        if not await self.store.lease_tick(name, topic, tick_ms, 30_000):
            return False
        event = CronTick(self.cron.topic, datetime.fromtimestamp(tick, UTC))
        bus = self.pipeline.bus
        bus.emit("cron", "cron", event=event, topic=self.cron.topic)
        bus.emit(f"cron:{self.cron.topic}", "cron", event=event, topic=self.cron.topic)
        route = self.pipeline.route_for(self.cron)
        try:
            if route is not None:
                jobs = await call_router(route, event)
                rows = plan(
                    self.pipeline,
                    jobs,
                    f"cron:{self.cron.topic}:{tick_ms}",
                    "cron",
                    "route",
                    born_ms=tick_ms,
                    now=self.clock.time(),
                )
                await write(self.store, rows, self._added)
        except Exception as exc:
            if self.metrics is not None:
                self.metrics.error(self.pipeline.name, "cron")
            bus.emit("error:cron", "cron", error=exc, event=event)
            self.log.warning("cron tick failed; it will be retried", error=repr(exc))
            await self.store.drop_tick_lease(name, topic, tick_ms)
            return False
        await self.store.raise_cron_mark(name, topic, tick_ms)
        if self.metrics is not None:
            self.metrics.cron_tick(self.pipeline.name, self.cron.topic)
        self.log.info("cron fired", scheduled=event.scheduled.isoformat())
        return True
