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
from .conftest import eventually, flowline_cli

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
