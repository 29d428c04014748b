"""How long job records are kept (`keep_completed`, `keep_failed`), and ``flowline jobs TARGET
clean``, which deletes old records of one state while workers run (real servers)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from flowline import PipelineError, Queue, Settings, connect
from flowline.runtime.keys import QueueKeys

from .apps.recorder import pipeline as recorder
from .conftest import eventually, flowline_cli, runs

TARGET = "tests.apps.recorder:pipeline"
Q = QueueKeys("recorder")
DAY = 86400


async def state(redis: Any, job_id: str) -> str | None:
    raw = await redis.hget(Q.job(job_id), "state")
    return None if raw is None else raw.decode()


async def all_in(redis: Any, ids: list[str], wanted: str) -> bool:
    return all([await state(redis, i) == wanted for i in ids])


async def test_failed_and_cancelled_records_are_kept_for_keep_failed(
    worker: Any, redis: Any, settings: Settings
) -> None:
    """The defaults: a completed record for a day, a failed or cancelled one for a week."""
    proc = worker(TARGET)
    await proc.ready()
    async with connect(recorder, settings):
        done = await recorder.enqueue("record", {"n": 1})
        failed = await recorder.enqueue("fail-fast", {"n": 2})
        cancelled = await recorder.enqueue("record", {"n": 3}, delay=60)
        await recorder.queue("recorder").cancel(cancelled)
        await eventually(lambda: all_in(redis, [done], "completed"))
        await eventually(lambda: all_in(redis, [failed], "failed"))
    assert DAY - 60 < await redis.ttl(Q.job(done)) <= DAY
    for job_id in (failed, cancelled):
        assert 7 * DAY - 60 < await redis.ttl(Q.job(job_id)) <= 7 * DAY


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("keep_completed", 0.5, r"keep_completed must be 0 \(keep no record\) or at least 1 "
         r"second, not 0.5$"),
        ("keep_completed", -1, r"keep_completed must be 0 .* not -1$"),
        ("keep_failed", 0.5, r"keep_failed must be at least 1 second$"),
        ("keep_failed", 0, r"keep_failed must be at least 1 second$"),
    ],
)  # fmt: skip
def test_a_keep_under_a_second_is_refused(field: str, value: float, message: str) -> None:
    with pytest.raises(PipelineError, match=message):
        Queue("q", **{field: value})


def test_keep_completed_zero_is_keeping_no_record() -> None:
    assert Queue("q", keep_completed=0).options.keep_completed == 0


async def test_clean_deletes_old_records_of_one_state_while_workers_run(
    worker: Any, redis: Any, servers: Any, settings: Settings
) -> None:
    """Old completed records go; newer ones, failed ones, and jobs waiting or running stay,
    and the running ones still finish."""
    procs = [worker(TARGET, "--concurrency", "4") for _ in range(2)]
    for proc in procs:
        await proc.ready()
    async with connect(recorder, settings):
        old = [await recorder.enqueue("record", {"n": n}) for n in range(20)]
        bad = [await recorder.enqueue("fail-fast", {"n": n}) for n in range(2)]
        await eventually(lambda: all_in(redis, old, "completed"))
        await eventually(lambda: all_in(redis, bad, "failed"))
        await asyncio.sleep(3.0)
        new = [await recorder.enqueue("record", {"n": 100 + n}) for n in range(5)]
        await eventually(lambda: all_in(redis, new, "completed"))
        running = [await recorder.enqueue("record", {"sleep": 3, "n": 200 + n}) for n in range(4)]
        later = await recorder.enqueue("record", {"n": 300}, delay=30)
        result = flowline_cli(
            "jobs", TARGET, "clean", "--state", "completed", "--older-than", "3s",
            env=servers.env(),
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "recorder: deleted 20 completed job record(s) older than 3s"
        assert [await redis.exists(Q.job(i)) for i in old] == [0] * 20
        for job_id in (*new, *bad, later):
            assert await redis.exists(Q.job(job_id)), job_id
        await eventually(lambda: all_in(redis, running, "completed"), timeout=20)
        failed = flowline_cli(
            "jobs", TARGET, "clean", "--state", "failed", "--older-than", "1s",
            env=servers.env(),
        )  # fmt: skip
        assert failed.stdout.strip() == "recorder: deleted 2 failed job record(s) older than 1s"
        letters = json.loads(flowline_cli("jobs", TARGET, "--state", "dead", "--json",
                                          env=servers.env()).stdout)  # fmt: skip
        assert len(letters["dead_letters"]) == 2  # dead letters stay until replayed or purged


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["clean", "--state", "completed", "--older-than", "1x"],
         "Invalid value for --older-than: '1x' is not an age: a positive number and a unit, "
         "e.g. 90s, 15m, 1h, 2d"),
        (["clean", "--state", "completed", "--older-than", "0s"],
         "Invalid value for --older-than: '0s' is not an age: a positive number and a unit, "
         "e.g. 90s, 15m, 1h, 2d"),
        (["clean", "--older-than", "1h"],
         "clean needs --state completed|failed|cancelled and --older-than AGE"),
        (["clean", "--state", "running", "--older-than", "1h"],
         "clean needs --state completed|failed|cancelled and --older-than AGE"),
        (["clean", "x", "--state", "failed", "--older-than", "1h"],
         "clean takes no job ids: it selects by --state and --older-than"),
        (["--state", "failed", "--older-than", "1h"], "--older-than applies to clean"),
        (["--state", "completed"],
         "--state completed applies to clean; to list, pass one of failed|dead|running|delayed"),
    ],
)  # fmt: skip
def test_bad_clean_arguments_are_one_line_errors_that_delete_nothing(
    args: list[str], message: str, servers: Any
) -> None:
    result = flowline_cli("jobs", TARGET, *args, env=servers.env())
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == f"Error: {message}"
    assert "Traceback" not in result.stderr


KEEP_NOTHING = {"FLOWLINE_TEST_KEEP_COMPLETED": "0"}


class TestKeepingNothing:
    """`keep_completed=0` with real `flowline worker` processes: Redis keeps only work in
    flight, and no job runs twice for want of a record."""

    async def publish(self, js: Any, n: int, pause: float = 0.0) -> None:
        for i in range(n):
            await asyncio.sleep(pause)
            jobs = [
                {"topic": "record", "data": {"i": i}},
                {"topic": "record", "data": {"i": i, "keyed": True}, "key": f"k{i}"},
            ]
            await js.publish("recorder", json.dumps({"jobs": jobs}).encode())

    async def drained(self, redis: Any, jobs: int) -> bool:
        done = [r for r in await runs(redis) if r["event"] == "done"]
        return len({r["id"] for r in done}) == jobs

    async def test_completed_jobs_leave_nothing_and_marks_are_forgotten(
        self, worker: Any, js: Any, redis: Any
    ) -> None:
        proc = worker(TARGET, "--concurrency", "10", env=KEEP_NOTHING)
        await proc.ready()
        await self.publish(js, 150)
        await eventually(lambda: self.drained(redis, 300), timeout=30)

        async def nothing_left() -> bool:
            records = [k async for k in redis.scan_iter(match=Q.job_prefix + "*")]
            return not records and await redis.zcard(Q.marks("recorder")) == 0

        await eventually(nothing_left, timeout=10)
        done = [r for r in await runs(redis) if r["event"] == "done"]
        assert len(done) == 300  # each once
        assert (await redis.xlen(Q.jobs), await redis.zcard(Q.delayed)) == (0, 0)

    async def test_a_worker_killed_midway_runs_no_job_twice_as_new(
        self, worker: Any, js: Any, redis: Any
    ) -> None:
        """A SIGKILL while events flow in and jobs run: a job may run again only as a later
        attempt of itself (at least once), never as a second attempt 1 (a duplicate).
        (test_stream_faults shows the kill between enqueue and ack deterministically.)"""
        first = worker(TARGET, "--concurrency", "10", env=KEEP_NOTHING)
        await first.ready()
        publishing = asyncio.create_task(self.publish(js, 400, pause=0.005))

        async def some_done() -> bool:
            return len([r for r in await runs(redis) if r["event"] == "done"]) >= 100

        await eventually(some_done, timeout=30)
        first.kill()
        second = worker(TARGET, "--concurrency", "10", env=KEEP_NOTHING)
        await second.ready()
        await publishing
        await eventually(lambda: self.drained(redis, 800), timeout=60)
        starts = [(r["id"], r["attempt"]) for r in await runs(redis) if r["event"] == "start"]
        assert len(set(starts)) == len(starts), "a job ran twice at the same attempt"
        assert len({job_id for job_id, _ in starts}) == 800
        assert sum(job_id.startswith("key:k") for job_id, _ in set(starts)) >= 400
