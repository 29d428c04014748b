"""Rate limits (`Queue(rate=)`, `dequeue(rate=)`): at most N job starts in any period across
every process together, jobs past it waiting, throughput reaching the limit. Real `flowline
worker` processes on real servers, and in memory on `flowline.testing`'s clock."""

from __future__ import annotations

import json
from typing import Any

import pytest

from flowline import PipelineError, Queue, Rate, Route, Settings, Stream, connect
from flowline.testing import run

from .apps import limited
from .conftest import eventually

TARGET = "tests.apps.limited:pipeline"


def most_in_any_window(times: list[float], period: float) -> int:
    """The largest number of `times` inside one window of `period` seconds."""
    times = sorted(times)
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while t - times[lo] >= period:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


class TestSpelling:
    @pytest.mark.parametrize(
        ("given", "rate"),
        [("100/s", Rate(100, 1.0)), ("10/m", Rate(10, 60.0)), ("5/10s", Rate(5, 10.0)),
         ("3/h", Rate(3, 3600.0)), (Rate(2, per=0.5), Rate(2, 0.5))],
    )  # fmt: skip
    def test_rates_read_as_celery_writes_them(self, given: Any, rate: Rate) -> None:
        assert Queue("q", rate=given).options.rate == rate

    @pytest.mark.parametrize("given", ["fast", "10", "0/s", "10/0s", "-1/s", 5])
    def test_a_bad_rate_is_a_one_line_error(self, given: Any) -> None:
        with pytest.raises(PipelineError, match=r"^(rate .* is not a rate|Rate\(.*\): the limit)"):
            Queue("q", rate=given)

    def test_a_topic_rate_is_checked_at_dequeue(self) -> None:
        p = Stream("r", json.loads) >> Route(lambda e: []) >> Queue("r")
        with pytest.raises(PipelineError, match="'often' is not a rate"):
            p.dequeue("t", lambda job: None, rate="often")


async def test_in_memory_the_rate_spaces_starts_on_the_test_clock() -> None:
    p = Stream("r", json.loads) >> Route(lambda e: []) >> Queue("r", rate="3/s")
    starts: dict[str, list[float]] = {"work": [], "api": []}

    @p.dequeue("work")
    async def work(job: Any) -> None:
        starts["work"].append(app.clock.time())

    @p.dequeue("api", rate=Rate(1, per=2))
    async def api(job: Any) -> None:
        starts["api"].append(app.clock.time())

    async with run(p) as app:
        for n in range(12):
            await p.enqueue("work", {"n": n})
        for n in range(3):
            await p.enqueue("api", {"n": n})
        await app.settle()
        assert len(app.completed()) == 15
    assert most_in_any_window(starts["work"] + starts["api"], 1.0) <= 3
    assert most_in_any_window(starts["api"], 2.0) == 1
    assert max(starts["work"]) - min(starts["work"]) < 5.0  # 15 at 3/s: about 4 s, no slower


async def test_three_processes_share_one_queue_rate(
    worker: Any, redis: Any, settings: Settings
) -> None:
    """120 jobs, 3 processes, 20/s for the queue: the run takes what 20/s allows, and no second
    holds more starts than that. The rate counts starts when Redis grants them; the handlers'
    own timestamps come a few milliseconds later, unevenly (a burst of 20 tasks starts over
    some 50 ms, a process's first job later still), so a window of a second by those may
    take the tail of one second's starts and the next second's: it may hold a few more, never
    two seconds' worth, and one of 0.9 s none; the rate over the run is the limit's."""
    await started_workers(worker, 3)
    async with connect(limited.pipeline, settings):
        for n in range(120):
            await limited.pipeline.enqueue("work", {"n": n})
        rows = await eventually(lambda: _starts(redis, 120), timeout=30)
    times = [r["t"] for r in rows]
    assert len({r["pid"] for r in rows}) == 3  # every process took part
    worst = most_in_any_window(times, 1.0)
    assert most_in_any_window(times, 0.9) <= limited.QUEUE_RATE.limit
    assert worst < 2 * limited.QUEUE_RATE.limit, worst  # never two processes' worth
    span = max(times) - min(times)
    reached = (len(times) - limited.QUEUE_RATE.limit) / span  # the first 20 start at once
    print(f"queue rate 20/s over 3 processes: busiest second {worst}, {reached:.1f} starts/s")
    assert 0.9 * limited.QUEUE_RATE.limit <= reached <= 1.1 * limited.QUEUE_RATE.limit, span


async def test_a_topic_rate_holds_across_processes_without_holding_up_others(
    worker: Any, redis: Any, settings: Settings
) -> None:
    await started_workers(worker, 2)
    async with connect(limited.pipeline, settings):
        for n in range(20):
            await limited.pipeline.enqueue("api", {"n": n})
        for n in range(10):
            await limited.pipeline.enqueue("work", {"n": n})
        rows = await eventually(lambda: _starts(redis, 30), timeout=30)
    api = sorted(r["t"] for r in rows if r["topic"] == "api")
    work = sorted(r["t"] for r in rows if r["topic"] == "work")
    worst = most_in_any_window(api, 1.0)
    assert most_in_any_window(api, 0.9) <= limited.API_RATE.limit
    assert worst < 2 * limited.API_RATE.limit, worst
    reached = (len(api) - limited.API_RATE.limit) / (api[-1] - api[0])
    print(f"topic rate 5/s over 2 processes: busiest second {worst}, {reached:.1f} starts/s")
    assert 0.8 * limited.API_RATE.limit <= reached <= 1.1 * limited.API_RATE.limit
    assert work[-1] - api[0] < 1.5  # the other topic's jobs did not wait behind the api ones
    records = [await redis.hget(f"flowline:{{limited}}:job:{r['id']}", "attempt") for r in rows]
    assert set(records) == {b"1"}  # waiting for the rate is not an attempt


async def started_workers(worker: Any, n: int) -> None:
    procs = [worker(TARGET, "--concurrency", "10") for _ in range(n)]
    for proc in procs:
        await proc.ready()


async def _starts(redis: Any, n: int) -> list[dict[str, Any]] | None:
    rows = [json.loads(x) for x in await redis.lrange("test:starts", 0, -1)]
    return rows if len(rows) >= n else None


async def test_a_killed_worker_loses_no_job_and_the_rate_still_holds(
    worker: Any, redis: Any, settings: Settings
) -> None:
    """One of two processes is SIGKILLed mid-run: the jobs it held are reclaimed and run, and
    the survivor keeps to the queue's rate, which lives in Redis."""
    procs = [worker(TARGET, "--concurrency", "10") for _ in range(2)]
    for proc in procs:
        await proc.ready()
    async with connect(limited.pipeline, settings):
        ids = [await limited.pipeline.enqueue("work", {"n": n}) for n in range(60)]
        await eventually(lambda: _starts(redis, 25), timeout=30)
        procs[0].kill()
        rows = await eventually(lambda: _all_started(redis, set(ids)), timeout=40)
        await eventually(lambda: _completed(redis, ids), timeout=10)  # every job, once done
    assert most_in_any_window([r["t"] for r in rows], 0.9) <= limited.QUEUE_RATE.limit


async def _all_started(redis: Any, ids: set[str]) -> list[dict[str, Any]] | None:
    rows = [json.loads(x) for x in await redis.lrange("test:starts", 0, -1)]
    return rows if ids <= {r["id"] for r in rows} else None


async def _completed(redis: Any, ids: list[str]) -> bool:
    states = [await redis.hget(f"flowline:{{limited}}:job:{i}", "state") for i in ids]
    return set(states) == {b"completed"}
