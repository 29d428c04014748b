"""`Clock`: the one place the runtime reads the time and waits, so a test can own both.

The runtime asks its clock for the wall time (job due times, records' timestamps), for a
monotonic time (intervals) and to wait. `SystemClock` is the real one. `ManualClock` stands
still until `advance` moves it: a retry 5 minutes away is reached by one call, instantly.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import time


class Clock:
    """The time as the runtime sees it."""

    def time(self) -> float:
        """Wall-clock time, epoch seconds (as `time.time`)."""
        raise NotImplementedError

    def monotonic(self) -> float:
        """Seconds that only go forward (as `time.monotonic`)."""
        raise NotImplementedError

    async def sleep(self, seconds: float) -> None:
        """Wait `seconds` of this clock's time."""
        raise NotImplementedError

    async def wait(self, event: asyncio.Event, seconds: float) -> bool:
        """Wait until `event` is set or `seconds` have passed; True if it was set."""
        raise NotImplementedError


class SystemClock(Clock):
    """The machine's clock."""

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def wait(self, event: asyncio.Event, seconds: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout=seconds)
        return event.is_set()


class ManualClock(Clock):
    """A clock that moves only when told to: every sleeper wakes when its time is reached.

    Args:
        start: its wall-clock time at first (default: the machine's, so ids and records look
            like real ones).
    """

    def __init__(self, start: float | None = None) -> None:
        self._epoch = time.time() if start is None else start
        self._elapsed = 0.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def time(self) -> float:
        return self._epoch + self._elapsed

    def monotonic(self) -> float:
        return self._elapsed

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._elapsed + seconds, next(self._order), future))
        try:
            await future
        finally:
            future.cancel()  # a cancelled sleeper leaves a done future, skipped on wake

    async def wait(self, event: asyncio.Event, seconds: float) -> bool:
        if event.is_set():
            return True
        waiter = asyncio.ensure_future(event.wait())
        timer = asyncio.ensure_future(self.sleep(seconds))
        try:
            await asyncio.wait((waiter, timer), return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            timer.cancel()
        return event.is_set()

    def next_wake(self) -> float | None:
        """The monotonic time of the next sleeper, or None when nobody sleeps."""
        while self._sleepers and self._sleepers[0][2].done():
            heapq.heappop(self._sleepers)
        return self._sleepers[0][0] if self._sleepers else None

    def advance(self, seconds: float) -> None:
        """Move time forward by `seconds`, waking everyone whose time has come."""
        if seconds < 0:
            raise ValueError(f"time only goes forward; cannot advance by {seconds}")
        self._elapsed += seconds
        while self._sleepers and self._sleepers[0][0] <= self._elapsed:
            _, _, future = heapq.heappop(self._sleepers)
            if not future.done():
                future.set_result(None)

    def advance_to(self, when: float) -> None:
        """Move the wall-clock time forward to `when` (epoch seconds), if it is later."""
        self.advance(max(0.0, when - self.time()))
