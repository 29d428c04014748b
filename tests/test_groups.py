"""Fair per-key concurrency (`Job(group=)`, `Queue(group_limit=)`): at most the limit of one
group's jobs run at once across every `flowline worker` process, and a job of a quiet group
does not wait behind a busy one (real servers); the same in memory."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from typing import Any

import pytest

from flowline import Job, PipelineError, Queue, Route, Settings, Stream, connect
from flowline.testing import run

from .apps import grouped
from .conftest import eventually, flowline_cli

TARGET = "tests.apps.grouped:pipeline"
HOT = 30
STEP = 0.1  # seconds each hot job runs


async def rows(redis: Any, n: int) -> list[dict[str, Any]] | None:
    got = [json.loads(x) for x in await redis.lrange("test:groups", 0, -1)]
    return got if sum(r["event"] == "done" for r in got) >= n else None


def runs_of(rows: list[dict[str, Any]], group: str) -> list[tuple[float, float]]:
    starts = {r["id"]: r["t"] for r in rows if r["group"] == group and r["event"] == "start"}
    ends = {r["id"]: r["t"] for r in rows if r["group"] == group and r["event"] == "done"}
    return sorted((starts[i], ends[i]) for i in starts)


async def test_one_job_per_group_at_a_time_across_processes_and_others_pass(
    worker: Any, redis: Any, settings: Settings, servers: Any
) -> None:
    """30 jobs of one group and three processes with free slots: never two at once; a job of
    another group, enqueued after them, starts within a few of their jobs' time."""
    procs = [worker(TARGET, "--concurrency", "10") for _ in range(3)]
    for proc in procs:
        await proc.ready()
    async with connect(grouped.pipeline, settings):
        hot = [{"group": "hot", "sleep": STEP, "n": n} for n in range(HOT)]
        await grouped.pipeline.publish(json.dumps({"jobs": hot}).encode())
        await eventually(lambda: rows_started(redis, "hot"))
        status = json.loads(flowline_cli("status", TARGET, "--json", env=servers.env()).stdout)
        [queue] = status["pipelines"][0]["queues"]
        # One hot job is in the stream at a time, held: only the ones waiting in the group's
        # list can make `ready` more than 0 (the CLI took a while: some already ran).
        assert queue["ready"] >= 2
        lone_at = time.time()
        await grouped.pipeline.enqueue("visit", {"group": "lone"}, group="lone")
        done = await eventually(lambda: rows(redis, HOT + 1), timeout=30)
    hot_runs = runs_of(done, "hot")
    status = json.loads(flowline_cli("status", TARGET, "--json", env=servers.env()).stdout)
    [queue] = status["pipelines"][0]["queues"]
    assert queue["ready"] == 0  # the groups' lists are counted, and are empty
    assert len(hot_runs) == HOT  # each once
    for (_, end), (start, _) in itertools.pairwise(hot_runs):
        assert start >= end, "two jobs of one group ran at once"
    assert len({r["pid"] for r in done if r["group"] == "hot"}) > 1  # in several processes
    [(lone_start, _)] = runs_of(done, "lone")
    waited = lone_start - lone_at
    print(f"lone job of another group started {waited * 1000:.0f} ms after its enqueue, "
          f"while the hot group took {hot_runs[-1][1] - hot_runs[0][0]:.1f} s")  # fmt: skip
    assert waited < 4 * STEP + 0.25  # a few hot jobs' time, not the hot group's 1.5 s
    assert hot_runs[-1][1] - lone_start > 0.5  # it passed the hot group's queued jobs


async def rows_started(redis: Any, group: str) -> bool:
    got = [json.loads(x) for x in await redis.lrange("test:groups", 0, -1)]
    return any(r["group"] == group for r in got)


async def test_in_memory_groups_keep_their_limit_and_order() -> None:
    q = Queue("g", group_limit=2)
    p = Stream("g", json.loads) >> Route(lambda e: [Job("t", e, group=e["g"])]) >> q
    running: dict[str, int] = {}
    most: dict[str, int] = {}
    order: list[int] = []

    @p.dequeue("t")
    async def t(job: Any) -> None:
        g = job.data["g"]
        running[g] = running.get(g, 0) + 1
        most[g] = max(most.get(g, 0), running[g])
        order.append(job.data["n"])
        await asyncio.sleep(0.001)
        running[g] -= 1

    async with run(p, concurrency=10) as app:
        for n in range(8):
            await app.publish(json.dumps({"g": "a", "n": n}).encode())
        await app.publish(json.dumps({"g": "b", "n": 100}).encode())
        await app.settle()
        assert len(app.completed()) == 9
    assert most == {"a": 2, "b": 1}
    assert order.index(100) <= 2  # b's job came in with a's first two, not after all eight
    assert [n for n in order if n < 100] == list(range(8))  # a group keeps its order


@pytest.mark.parametrize("limit", [0, -1, 1.5])
def test_a_bad_group_limit_is_refused(limit: Any) -> None:
    with pytest.raises(PipelineError, match="group_limit must be a whole number >= 1"):
        Queue("q", group_limit=limit)


@pytest.mark.parametrize("group", ["", 5])
def test_a_bad_group_is_refused(group: Any) -> None:
    with pytest.raises(PipelineError, match="group must be a non-empty string"):
        Job("t", group=group)


async def test_a_killed_worker_keeps_no_slot_and_loses_no_job(
    worker: Any, redis: Any, settings: Settings
) -> None:
    """The process running a group's job dies: the job is reclaimed with its slot and runs
    again; the group's other jobs follow, one at a time; no slot is left taken."""
    first = worker(TARGET)
    await first.ready()
    async with connect(grouped.pipeline, settings):
        jobs = [{"group": "g", "sleep": 1.0 if n == 0 else 0.01, "n": n} for n in range(5)]
        await grouped.pipeline.publish(json.dumps({"jobs": jobs}).encode())
        await eventually(lambda: rows_started(redis, "g"))
        first.kill()
        await redis.delete("test:groups")  # from here on: what the second process runs
        second = worker(TARGET)
        await second.ready()
        done = await eventually(lambda: rows(redis, 5), timeout=30)
        await eventually(lambda: _no_slots(redis))
    runs = runs_of(done, "g")
    assert len(runs) == 5  # the killed one again, and the four behind it
    for (_, end), (start, _) in itertools.pairwise(runs):
        assert start >= end
    assert {r["pid"] for r in done} == {second.proc.pid}


async def _no_slots(redis: Any) -> bool:
    active = await redis.hlen("flowline:{grouped}:active")
    return not active and int(await redis.get("flowline:{grouped}:waiting") or 0) == 0
