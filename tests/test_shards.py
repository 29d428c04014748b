"""Sharded queues (issue 11): ``Queue(name, shards=N)`` spreads one queue over N hash slots,
each a queue of its own, with every guarantee holding per job; real workers on real servers.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from typing import Any

import pytest

from flowline import Job, PipelineError, Queue, Route, Runner, Stream, connect
from flowline.runtime.enqueue import plan
from flowline.testing import run

from .conftest import eventually, flowline_cli, runs

TARGET = "tests.apps.recorder:pipeline"
SHARDS = {"FLOWLINE_TEST_SHARDS": "4"}


def cli(servers: Any, *args: str) -> Any:
    """A command, with the servers' URLs and the recorder app's four shards."""
    return flowline_cli(*args, env={**servers.env(), **SHARDS})


def sharded(shards: int = 4, **options: Any) -> Any:
    p = (
        Stream("s", json.loads)
        >> Route(lambda e: e["jobs"])
        >> Queue("q", shards=shards, **options)
    )
    p.dequeue("t", lambda job: job.data)
    return p


# -- placement -----------------------------------------------------------------------------------


def test_shards_are_queues_of_their_own():
    q = Queue("q", shards=3)
    assert q.shard_names == ["q#0", "q#1", "q#2"]
    assert Queue("q").shard_names == ["q"]
    assert Queue("q").shard_for("any", None) == "q"


@pytest.mark.parametrize("bad", [0, -1, 1025, 2.5, "4"])
def test_shards_out_of_range_are_refused(bad):
    with pytest.raises(PipelineError, match=r"shards must be a whole number within 1\.\.1024"):
        Queue("q", shards=bad)


def test_jobs_spread_evenly_and_a_group_stays_in_one_shard():
    p = sharded(8)
    rows = plan(p, [Job("t", i) for i in range(16_000)], "s:1", "stream", "route")
    spread = Counter(r.queue for r in rows)
    assert set(spread) == {f"q#{i}" for i in range(8)}
    assert max(spread.values()) < 1.1 * 2000
    assert min(spread.values()) > 0.9 * 2000
    grouped = plan(p, [Job("t", i, group="fan-7") for i in range(50)], "s:2", "stream", "route")
    assert len({r.queue for r in grouped}) == 1
    # Placement is by id: the same id (a keyed job) lands where it did, in any process.
    again = plan(p, [Job("t", 1, key="k")], "s:3", "stream", "route")
    assert again[0].queue == plan(p, [Job("t", 2, key="k")], "s:4", "stream", "route")[0].queue


def test_a_taskiq_broker_refuses_a_sharded_queue():
    from flowline import compile_broker

    with pytest.raises(PipelineError, match="has 4 shards; a taskiq broker reads one queue"):
        compile_broker(sharded(4))


async def test_in_memory_every_job_runs_once_and_the_handle_adds_the_shards_up():
    p = sharded(4)
    async with run(p) as app:
        for i in range(40):
            await app.publish(json.dumps({"jobs": [{"topic": "t", "data": i}]}).encode())
        await app.settle()
        assert sorted(e.result for e in app.completed("t")) == list(range(40))
        counts = await p.queue("q").counts()
        assert (counts.ready, counts.running, counts.delayed) == (0, 0, 0)


# -- on real servers -----------------------------------------------------------------------------


async def publish(js: Any, events: list[dict[str, Any]]) -> None:
    for event in events:
        await js.publish("recorder", json.dumps(event).encode())


def job(topic: str, **data: Any) -> dict[str, Any]:
    return {"jobs": [{"topic": topic, "data": data}]}


async def test_two_workers_run_every_job_once_from_every_shard(worker, js, redis):
    procs = [worker(TARGET, env=SHARDS) for _ in range(2)]
    for proc in procs:
        await proc.ready()
    await publish(js, [job("record", n=i) for i in range(400)])

    async def done() -> bool:
        return sum(r["event"] == "done" for r in await runs(redis)) >= 400

    await eventually(done, timeout=30)
    await asyncio.sleep(0.5)
    ran = Counter(r["id"] for r in await runs(redis) if r["event"] == "done")
    assert len(ran) == 400
    assert set(ran.values()) == {1}
    per_shard = {i: len(await redis.keys(f"flowline:{{recorder#{i}}}:job:*")) for i in range(4)}
    assert sum(per_shard.values()) == 400
    assert min(per_shard.values()) > 60  # each shard got its share (100 expected)
    assert await redis.keys("flowline:{recorder}:job:*") == []  # nothing in the unsharded keys
    assert len(Counter(r["pid"] for r in await runs(redis) if r["event"] == "done")) == 2


async def test_a_killed_workers_job_is_taken_over_in_its_shard(worker, js, redis):
    a = worker(TARGET, env=SHARDS)
    await a.ready()
    await publish(js, [job("record", sleep=30)])

    async def started() -> bool:
        return any(r["event"] == "start" for r in await runs(redis))

    await eventually(started, timeout=10)
    b = worker(TARGET, env=SHARDS)
    await b.ready()
    a.kill()

    async def taken_over() -> list[dict[str, Any]]:
        return [r for r in await runs(redis) if r["event"] == "start" and r["pid"] == b.pid]

    (second,) = await eventually(taken_over, timeout=20)
    assert second["attempt"] == 2


async def test_retries_delays_and_dead_letters_hold_per_job(worker, js, redis, servers):
    proc = worker(TARGET, env=SHARDS)
    await proc.ready()
    await publish(
        js,
        [
            job("flaky", succeed_on=3),
            job("retry-later", delay=1.0),
            job("boom"),
        ],
    )

    async def settled() -> bool:
        done = {r["topic"] for r in await runs(redis) if r["event"] == "done"}
        return {"flaky", "retry-later"} <= done

    await eventually(settled, timeout=30)
    attempts = sorted(r["attempt"] for r in await runs(redis) if r["topic"] == "flaky")
    assert attempts == [1, 2, 3, 3]  # three starts, the third done
    later = [r for r in await runs(redis) if r["topic"] == "retry-later"]
    assert [r["attempt"] for r in later] == [1, 2, 2]
    assert later[1]["t"] - later[0]["t"] >= 1.0  # its delay held

    async def buried() -> bool:
        out = cli(servers, "dlq", "list", TARGET)
        return out.returncode == 0 and "boom" in out.stdout

    await eventually(buried, timeout=20)
    # Replayed, the job goes back to its own shard as attempt 1, and fails there again.
    assert cli(servers, "dlq", "replay", TARGET, "--all").returncode == 0

    async def boomed_twice() -> bool:
        starts = [r for r in await runs(redis) if r["topic"] == "boom"]
        return len(starts) == 2 * 3  # two runs of 1 + RETRIES(2) attempts

    await eventually(boomed_twice, timeout=20)
    boom = [r["attempt"] for r in await runs(redis) if r["topic"] == "boom"]
    assert boom == [1, 2, 3, 1, 2, 3]


async def test_idempotent_enqueue_lookup_cancel_and_counts_across_shards(settings, redis):
    """Through a connected process: a keyed job enqueued twice is one job; a grouped job (in
    its group's shard, not its id's) is found and cancelled; counts add the shards up."""
    p = sharded(4)
    async with connect(p, settings):
        first = await p.enqueue("t", {"n": 1}, key="once", delay=60)
        again = await p.enqueue("t", {"n": 2}, key="once", delay=60)
        assert first == again == "key:once"
        for i in range(20):
            await p.enqueue("t", {"n": i}, delay=60)
        grouped = await p.enqueue("t", {"g": 1}, group="fan-1", delay=60)
        handle = p.queue("q")
        assert (await handle.counts()).delayed == 22
        assert len(await redis.keys("flowline:{q#*}:delayed")) == 4
        info = await handle.job(grouped)
        assert info is not None
        assert info.state == "delayed"
        assert info.queue == p.queues[0].shard_for(grouped, "fan-1")
        assert (await handle.cancel(grouped)).outcome == "cancelled"
        assert (await handle.cancel("no-such-job")).outcome == "unknown"
        assert (await handle.counts()).delayed == 21


async def test_pause_cancel_and_lookup_go_to_every_shard(worker, servers, redis, js):
    proc = worker(TARGET, env=SHARDS)
    await proc.ready()
    out = cli(servers, "queue", TARGET, "pause", "recorder")
    assert out.returncode == 0, out.stderr
    assert sorted(await redis.keys("flowline:{recorder#*}:paused")) == [
        f"flowline:{{recorder#{i}}}:paused".encode() for i in range(4)
    ]
    await asyncio.sleep(0.75)  # a pause holds within half a second of its return
    await publish(js, [job("record", n=i) for i in range(12)])
    await asyncio.sleep(1.5)
    assert [r for r in await runs(redis) if r["event"] == "start"] == []  # paused, every shard
    status = json.loads(cli(servers, "status", TARGET, "--json").stdout)
    (queue,) = status["pipelines"][0]["queues"]
    assert (queue["shards"], queue["paused"], queue["ready"]) == (4, True, 12)
    some = "recorder:3:0"
    shown = cli(servers, "jobs", TARGET, some)
    assert shown.returncode == 0, shown.stderr
    assert "state        queued" in shown.stdout
    cancelled = cli(servers, "jobs", TARGET, "cancel", some)
    assert cancelled.returncode == 0, cancelled.stderr
    assert cli(servers, "queue", TARGET, "resume", "recorder").returncode == 0

    async def rest_ran() -> bool:
        return sum(r["event"] == "done" for r in await runs(redis)) == 11

    await eventually(rest_ran, timeout=20)
    assert some not in {r["id"] for r in await runs(redis)}


async def test_a_queue_rate_is_shared_by_its_shards(worker, redis, settings):
    """Four shards, two processes, a queue rate of 20/s: the shards share one window, so the
    queue starts 20 jobs a second, not 80."""
    from .test_rate_limits import most_in_any_window

    procs = [worker("tests.apps.limited:pipeline", "--concurrency", "10", env=SHARDS)]
    procs.append(worker("tests.apps.limited:pipeline", "--concurrency", "10", env=SHARDS))
    for proc in procs:
        await proc.ready()
    # The same queue as the workers' (same name, same shards): jobs land where they read.
    p = Stream("limited", json.loads) >> Route(lambda e: []) >> Queue("limited", shards=4)
    p.dequeue("work", lambda job: None)
    async with connect(p, settings):
        for n in range(80):
            await p.enqueue("work", {"n": n})

    async def started() -> list[dict[str, Any]] | None:
        rows = [json.loads(x) for x in await redis.lrange("test:starts", 0, -1)]
        return rows if len(rows) >= 80 else None

    rows = await eventually(started, timeout=30)
    times = [r["t"] for r in rows]
    assert most_in_any_window(times, 0.9) <= 20
    reached = (len(times) - 20) / (max(times) - min(times))
    assert 18 <= reached <= 22, reached
    shards = {q.decode().split("}")[0][-1] for q in await redis.keys("flowline:{limited#*}:job:*")}
    assert shards == {"0", "1", "2", "3"}


async def test_jobs_from_before_the_queue_was_sharded_still_run(worker, settings, redis):
    """Jobs enqueued while the queue had one shard (this process's app) run once a worker
    with four shards starts: it drains the old queue too, and new jobs go to the shards."""
    from .apps.recorder import pipeline as unsharded

    async with connect(unsharded, settings):
        old = [await unsharded.enqueue("record", {"n": n}) for n in range(10)]
    proc = worker(TARGET, env=SHARDS)
    await proc.ready()

    async def ran() -> bool:
        return {r["id"] for r in await runs(redis) if r["event"] == "done"} == set(old)

    await eventually(ran, timeout=20)
    assert any("before the queue was sharded" in x.get("event", "") for x in proc.lines())


async def test_priorities_order_the_jobs_of_a_shard(settings):
    """Five normal jobs, then one urgent one, all in one shard, enqueued before any worker
    runs; a worker with one handler at a time runs the urgent one first."""
    order: list[int] = []
    queue = Queue("q", shards=4, concurrency=1)
    p = Stream("s", json.loads) >> Route(lambda e: []) >> queue

    @p.dequeue("t")
    async def record(job: Any) -> None:
        order.append(job.data["n"])

    keys = [f"k{i}" for i in range(200) if queue.shard_for(f"key:k{i}", None) == "q#0"][:6]
    async with connect(p, settings):
        for n, key in enumerate(keys[:5]):
            await p.enqueue("t", {"n": n}, key=key)
        await p.enqueue("t", {"n": 99}, key=keys[5], priority=5)
    async with Runner(p, settings, only=["queue"]):
        await eventually(lambda: len(order) == 6, timeout=10)
    assert order[0] == 99
    assert order[1:] == [0, 1, 2, 3, 4]
