"""`pipeline.cron(topic, schedule, on_emit)`: the seed's repeatable job, one job per tick across
every process (real `flowline worker` processes), in memory too, and its refusals."""

from __future__ import annotations

import asyncio
import json
import re
import signal
from datetime import timedelta
from itertools import pairwise
from typing import Any

import pytest

from flowline import Cron, CronTick, Job, PipelineError, Queue, Route, Settings, Stream, connect
from flowline.testing import run

TARGET = "tests.apps.repeating:pipeline"


def base(*queues: Queue) -> Any:
    p = Stream("pc", json.loads) >> Route(lambda e: [Job("work", e)])
    for q in queues or (Queue("pc"),):
        p = p >> q
    return p


class TestDescribing:
    def test_it_adds_a_cron_branch_routed_to_the_topic(self) -> None:
        p = base()
        source = p.cron("digest", "0 9 * * *", tz="Europe/Paris")
        assert isinstance(source, Cron)
        assert (source.topic, source.expression, source.tz) == (
            "digest",
            "0 9 * * *",
            "Europe/Paris",
        )
        assert p.branch("cron:digest").route is not None
        assert p.describe() == (
            "(Stream('pc', loads) >> Route(<lambda at test_pipeline_cron.py:23>) | "
            "Cron('0 9 * * *', topic='digest') >> Route(cron:digest)) >> Queue('pc')"
        )

    def test_a_topic_no_queue_owns_is_refused(self) -> None:
        p = base(Queue("a", topics=["work"]))
        with pytest.raises(PipelineError, match="'digest'"):
            p.cron("digest", 60)

    def test_a_second_cron_of_one_topic_is_refused(self) -> None:
        p = base()
        p.cron("digest", 60)
        with pytest.raises(PipelineError, match="has a cron of topic 'digest' already"):
            p.cron("digest", 30)

    @pytest.mark.parametrize(
        ("schedule", "message"),
        [("not cron", "not a valid cron expression"), (0, "interval must be positive")],
    )
    def test_a_bad_schedule_is_refused(self, schedule: Any, message: str) -> None:
        with pytest.raises(PipelineError, match=message):
            base().cron("digest", schedule)

    async def test_a_running_pipeline_takes_no_more_crons(self, settings: Settings) -> None:
        p = base()
        async with connect(p, settings):
            with pytest.raises(PipelineError, match="is running or part of another pipeline"):
                p.cron("digest", 60)


async def test_in_memory_each_tick_is_one_job_with_on_emit_data() -> None:
    p = base()
    seen: list[CronTick] = []

    async def data(tick: CronTick) -> dict[str, Any]:
        seen.append(tick)
        return {"at": tick.scheduled.isoformat()}

    p.cron("digest", timedelta(minutes=1), on_emit=data)
    p.cron("plain", 120)

    @p.dequeue("digest")
    async def digest(job: Any) -> Any:
        return job.data

    @p.dequeue("plain")
    async def plain(job: Any) -> Any:
        return job.data

    async with run(p) as app:
        await app.advance(600)
        digests = app.completed("digest")
        assert len(digests) == 10
        assert [e.result["at"] for e in digests] == [t.scheduled.isoformat() for t in seen]
        assert all(re.fullmatch(r"cron:digest:\d+:0", e.id) for e in digests)
        plains = app.completed("plain")
        assert len(plains) == 5
        assert set(plains[0].result) == {"scheduled"}


async def test_two_processes_enqueue_one_job_per_tick(worker: Any, redis: Any) -> None:
    """Both processes watch the schedule; every 1 s tick makes exactly one job, run once."""
    procs = [worker(TARGET) for _ in range(2)]
    for proc in procs:
        await proc.ready()
    await asyncio.sleep(4.5)
    for proc in procs:
        proc.signal(signal.SIGTERM)
    for proc in procs:
        assert await proc.wait() == 0, proc.output()
    beats = [json.loads(b) for b in await redis.lrange("test:beats", 0, -1)]
    ids = [b["id"] for b in beats]
    assert len(ids) == len(set(ids)), ids  # no tick ran twice
    ticks = sorted(int(re.fullmatch(r"cron:beat:(\d+):0", i)[1]) for i in ids)  # type: ignore[index]
    assert len(ticks) >= 3, ticks
    assert [b - a for a, b in pairwise(ticks)] == [1000] * (len(ticks) - 1)
    for b in beats:
        tick = int(b["id"].split(":")[2])
        assert b["data"] == {"second": (tick // 1000) % 60}  # what on_emit returned
    fired = [ln for proc in procs for ln in proc.lines() if ln.get("event") == "cron fired"]
    assert len(fired) == len(ticks)  # one firing per tick, across both processes
