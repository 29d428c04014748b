"""Chaos: workers SIGKILLed, Redis and NATS restarted while events flow; no job lost or doubled.

Each scenario runs in two sizes. ``small`` (a few hundred events, about 10 s of faults) runs in
the normal test session; ``full`` (thousands of events, 45 s of faults, 4 workers) is marked
``chaos`` and runs with ``FLOWLINE_CHAOS=full`` (``nox -s chaos``). Every run prints one line
of figures; FLOWLINE_CHAOS_SEED replays a run's random choices.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import time
from collections.abc import AsyncIterator, Callable

import pytest
from nats.aio.client import Client as NATS
from redis.asyncio import Redis

from flowline import Queue, Route, Stream
from flowline.backends.redis import RedisStore
from flowline.runtime.keys import GROUP, QueueKeys
from flowline.runtime.scripts import Scripts
from flowline.runtime.worker import QueueWorker, Running
from flowline.servers import LocalServers
from tests.apps.chaos_app import VISIBILITY
from tests.conftest import WorkerProcess, eventually

from .harness import SIZES, ChaosRun, Report, ensure_servers

FULL = os.environ.get("FLOWLINE_CHAOS") == "full"
PARAMS = [
    pytest.param("small", marks=pytest.mark.timeout(240)),
    pytest.param(
        "full",
        marks=[
            pytest.mark.chaos,
            pytest.mark.timeout(1200),
            pytest.mark.skipif(not FULL, reason="set FLOWLINE_CHAOS=full (nox -s chaos)"),
        ],
    ),
]
# A killed worker's jobs become claimable once their claim is older than the visibility timeout
# (at most that long after the kill: the last heartbeat came before it), and live workers look
# every visibility/4 s: the README's "about 1.25 x the visibility timeout". The second of slack
# is for a loaded 2-core machine. How soon *all* of them run again also depends on free slots.
RECLAIM_BOUND = VISIBILITY * 1.25 + 1.0


@pytest.fixture
async def restore(servers: LocalServers, redis: Redis, nc: NATS) -> AsyncIterator[None]:
    """Whatever a scenario did to the session servers, both run again afterwards."""
    try:
        yield
    finally:
        ensure_servers(servers)
        # The session clients outlive the restarts: drop pooled connections to the killed
        # redis-server (the next command on one would fail) and let NATS reconnect.
        await redis.connection_pool.disconnect()
        await eventually(lambda: nc.is_connected, timeout=20)


async def chaos(
    scenario: str, size: str, servers: LocalServers, worker: Callable[..., WorkerProcess]
) -> Report:
    report = await ChaosRun(scenario, size, servers, worker).run()
    print(f"\n{report.line()}")
    return report


def assert_nothing_lost_or_doubled(report: Report) -> None:
    """The guarantees every scenario shares."""
    assert report.settled, f"still pending after the faults stopped: {report.leftovers}"
    assert report.stored_events == report.events  # publisher retries were stored once
    assert report.missing == [], f"{len(report.missing)} jobs never finished; logs: {report.logs}"
    assert report.finished == report.jobs
    assert report.duplicates == []
    assert report.strays == []
    assert report.hash_problems == []
    assert report.overlaps == []
    assert report.lost_mid_run == []  # no live worker had a job taken over while running it
    assert report.dead_letters == 0
    assert report.planned_failures >= 1  # the retry path (delayed set) ran under the faults too
    assert report.leftovers == {}
    assert report.unrecovered == []
    assert report.attempt_regressions == []
    assert report.crashed == []
    assert report.bad_exits == []
    # A loop that backs off logs a few warnings a second; one that spins logs thousands.
    assert report.max_warnings_per_s < 50, report.log_counts
    assert report.max_idle_cpu < 0.3


@pytest.mark.usefixtures("restore")
class TestChaos:
    @pytest.mark.parametrize("size", PARAMS)
    async def test_sigkilled_workers_lose_and_double_nothing(self, size, servers, worker):
        """Workers SIGKILLed at any instant: every job finishes, none twice at once or as a copy."""
        report = await chaos("workers", size, servers, worker)
        assert report.kills >= 4
        assert report.restarts == report.kills
        assert report.interrupted >= 1, "no kill landed while a job ran"
        assert 0 < report.max_first_reclaim < RECLAIM_BOUND
        assert_nothing_lost_or_doubled(report)

    @pytest.mark.parametrize("size", PARAMS)
    async def test_redis_restarts_lose_and_double_nothing(self, size, servers, worker):
        """redis-server SIGKILLed and restarted: ingest backs off, then every job runs."""
        report = await chaos("redis", size, servers, worker)
        assert report.kills == report.restarts == SIZES[size].server_restarts
        assert_nothing_lost_or_doubled(report)

    @pytest.mark.parametrize("size", PARAMS)
    async def test_nats_restarts_lose_and_double_nothing(self, size, servers, worker):
        """nats-server stopped and restarted: consumers reconnect and every job runs once."""
        report = await chaos("nats", size, servers, worker)
        assert report.kills == report.restarts == SIZES[size].server_restarts
        # Every worker saw every outage (and came back: the jobs all ran).
        disconnects = report.log_counts.get("nats disconnected; reconnecting", 0)
        assert disconnects >= report.restarts * SIZES[size].workers
        assert_nothing_lost_or_doubled(report)


class TestLostReplies:
    """The deterministic form of a race the Redis scenario can hit but rarely does.

    When redis-server dies after running a script but before its reply reaches the worker,
    the worker's retry loop sends the same call again to the restarted server. Every script a
    worker retries must therefore be safe to run twice.
    """

    Q = QueueKeys("lost-replies")

    async def claimed(self, redis) -> str:
        """One job enqueued and read by consumer c1; returns its stream entry id."""
        q = self.Q
        await redis.xgroup_create(q.jobs, GROUP, id="0", mkstream=True)
        await Scripts(redis).enqueue(
            keys=[q.jobs, q.delayed, q.cancels],
            args=[q.job_prefix, 1, "j1", "t", "{}", 0, "test", 1, ""],
        )
        [[_, [(entry, _)]]] = await redis.xreadgroup(GROUP, "c1", {q.jobs: ">"}, count=1)
        return entry.decode()

    async def fail(self, redis, entry: str, due: int, consumer: str = "c1") -> None:
        """What `QueueWorker._failed` sends: the job failed at attempt 1 in `consumer`."""
        q = self.Q
        await Scripts(redis).fail(
            keys=[q.jobs, q.delayed, q.dead, q.cancels],
            args=[
                GROUP,
                q.job_prefix,
                2,
                60,
                entry,
                "j1",
                "t",
                "{}",
                2,
                due,
                "boom",
                "{}",
                consumer,
                1,
                "",
            ],
        )

    async def fail_twice(self, redis, due: int) -> QueueKeys:
        entry = await self.claimed(redis)
        for _ in range(2):  # the first reply was lost; the worker's loop sends it again
            await self.fail(redis, entry, due)
        return self.Q

    async def test_a_retried_failure_queues_one_retry(self, redis):
        """Recording a failure twice (retry now) leaves one copy of the job, not two."""
        q = await self.fail_twice(redis, due=0)
        assert [f[b"id"] for _, f in await redis.xrange(q.jobs)] == [b"j1"]

    async def test_a_retried_dead_letter_is_stored_once(self, redis):
        """Recording a final failure twice leaves one dead letter, so a replay runs it once."""
        q = await self.fail_twice(redis, due=-1)
        assert await redis.xlen(q.dead) == 1

    async def test_a_failure_from_a_worker_that_lost_the_job_queues_no_copy(self, redis):
        """A stalled worker's failure of a job another worker took over adds no second copy."""
        entry = await self.claimed(redis)
        q = self.Q
        # c2 takes the job over as RECLAIM does (c1 stopped heart-beating, e.g. stalled).
        await redis.xclaim(q.jobs, GROUP, "c2", 0, [entry], justid=True)
        await self.fail(redis, entry, due=0, consumer="c1")
        assert [e.decode() for e, _ in await redis.xrange(q.jobs)] == [entry]
        assert (await redis.xpending(q.jobs, GROUP))["consumers"] == [{"name": b"c2", "pending": 1}]


class TestClaims:
    """A worker heart-beats exactly the jobs it holds, and gives up the ones it no longer holds."""

    Q = QueueKeys("claims")

    async def start(self, redis, ran: list[tuple[str, int]], *, urgent_id: str, concurrency: int):
        """Worker c1 (visibility 1 s) on an urgent job of 1 s and a normal one of 3 s.

        XSETID pins the entry ids: the normal job gets ``<ms>-1``, the urgent one the id after
        `urgent_id` (``<ms>`` is a millisecond a minute ahead).
        """
        pipeline = (
            Stream("claims", json.loads)
            >> Route(lambda e: [])
            >> Queue("claims", concurrency=concurrency, visibility_timeout=1)
        )

        @pipeline.dequeue("work")
        async def work(job):
            ran.append((job.id, job.attempt))
            await asyncio.sleep(job.data["sleep"])

        q = self.Q
        scripts = Scripts(redis)
        worker = QueueWorker(pipeline, pipeline.queues[0], RedisStore(redis), consumer="c1")
        await worker.setup()
        later = int(time.time() * 1000) + 60_000  # ahead of the clock: XADD * then uses it
        await redis.execute_command("XSETID", q.jobs, f"{later}-0")
        await redis.execute_command("XSETID", q.urgent, urgent_id.replace("<ms>", str(later)))
        # "short" outlasts a heartbeat interval (1/3 s); "long" outlives the visibility timeout.
        for stream, job_id, sleep in ((q.urgent, "short", 1.0), (q.jobs, "long", 3.0)):
            await scripts.enqueue(
                keys=[stream, q.delayed, q.cancels],
                args=[
                    q.job_prefix,
                    1,
                    job_id,
                    "work",
                    json.dumps({"sleep": sleep}),
                    0,
                    "t",
                    1,
                    "",
                    0,
                ],
            )
        stop = asyncio.Event()
        return worker, stop, asyncio.create_task(worker.run(stop, grace=5))

    async def test_jobs_whose_entries_share_an_id_are_both_kept(self, redis):
        """Entry ids repeat across the urgent and normal streams; each job keeps its own claim."""
        ran: list[tuple[str, int]] = []
        # Both streams hand out the same entry id (<ms>-1), as two XADDs in one millisecond do.
        _, stop, task = await self.start(redis, ran, urgent_id="<ms>-0", concurrency=2)
        await asyncio.sleep(4.0)  # both end; "long" must not be taken over while it runs
        stop.set()
        await task
        assert sorted(ran) == [("long", 1), ("short", 1)]

    async def test_a_read_ahead_job_taken_over_is_not_started_here(self, redis):
        """A job in c1's read-ahead backlog that another worker took over never runs in c1."""
        ran: list[tuple[str, int]] = []
        # One slot: "short" (urgent, read first) runs, "long" waits in the backlog, claimed.
        worker, stop, task = await self.start(redis, ran, urgent_id="<ms>-5", concurrency=1)
        await eventually(lambda: ran == [("short", 1)])
        [(entry, _)] = await redis.xrange(self.Q.jobs)
        assert not any(j.task for j in worker.claims.values() if j.job_id == "long")

        async def c2_holds_it() -> None:
            # Another worker took "long" over (c1 looked dead) and heart-beats its claim.
            while not stop.is_set():
                await redis.xclaim(self.Q.jobs, GROUP, "c2", 0, [entry], justid=True)
                await asyncio.sleep(0.2)

        holder = asyncio.create_task(c2_holds_it())
        await asyncio.sleep(2.0)  # c1's heartbeat sees the loss, then "short" ends
        stop.set()
        await asyncio.gather(task, holder)
        assert ran == [("short", 1)]

    async def test_taken_over_claims_without_a_run_stop_no_heartbeat(self, redis):
        """Lost claims with no run here (the taskiq broker's kind) leave the others refreshed."""
        pipeline = Stream("claims", json.loads) >> Route(lambda e: []) >> Queue("claims")
        q = self.Q
        worker = QueueWorker(pipeline, pipeline.queues[0], RedisStore(redis), consumer="c1")
        await worker.setup()
        held = []
        for stream in (q.jobs, q.jobs, q.jobs, q.urgent):
            entry = await redis.xadd(stream, {"id": "j", "topic": "t", "data": "{}"})
            await redis.xreadgroup(GROUP, "c1", {stream: ">"})
            job = Running(stream, entry.decode(), "j", "t", b"{}", 1)
            worker.claims[job.key] = job  # claimed, run elsewhere (as FlowlineBroker does)
            held.append(job)
        # c2 took over the three normal-stream jobs; the urgent one is still c1's.
        await redis.xclaim(q.jobs, GROUP, "c2", 0, [j.entry for j in held[:3]], justid=True)
        await asyncio.sleep(1.0)
        worker.opts = dataclasses.replace(worker.opts, visibility_timeout=1)
        beating = asyncio.create_task(worker._heartbeat())
        await asyncio.sleep(0.8)  # two heartbeat rounds (one every 1/3 s)
        worker._closing.set()
        await beating
        assert list(worker.claims) == [held[3].key]
        [urgent] = await redis.xpending_range(q.urgent, GROUP, "-", "+", 10)
        assert urgent["time_since_delivered"] < 600  # refreshed despite the lost ones before it
