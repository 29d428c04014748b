"""Cancelling jobs: in memory (`flowline.testing`), and across real `flowline worker` processes
on real servers, from the API and from ``flowline jobs TARGET cancel``; a cancel survives the
death of the worker that held the job."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import time
from typing import Any

import pytest

from flowline import Job, Queue, Route, Settings, Stream, connect
from flowline.runtime import eventlog
from flowline.runtime.worker import CANCEL_POLL
from flowline.testing import run

from .apps.recorder import pipeline as recorder
from .conftest import eventually, flowline_cli
from .conftest import runs as recorded_runs

TARGET = "tests.apps.recorder:pipeline"
# A running job ends cancelled this soon after the cancel returns, in another process: the
# worker's poll (`CANCEL_POLL`) plus one store call, with room for this noisy machine.
CANCELLED_WITHIN = 1.0
STOPPED = asyncio.Event()
STOPPED.set()


# -- in memory -----------------------------------------------------------------------------------


def waiting_pipeline(started: asyncio.Event) -> Any:
    """Handlers that wait for ever (on an event nobody sets) once they set `started`."""
    never = asyncio.Event()
    p = Stream("cancels", json.loads) >> Route(lambda e: [Job("slow", e)]) >> Queue("cancels")

    @p.dequeue("slow")
    async def slow(job: Any) -> str:
        started.set()
        await never.wait()
        return "done"

    @p.dequeue("swallow")
    async def swallow(job: Any) -> str:
        started.set()
        try:
            await never.wait()
        except asyncio.CancelledError:
            return "ignored the cancel"
        return "done"

    return p


async def test_in_memory_a_running_job_is_cancelled_and_not_retried() -> None:
    started = asyncio.Event()
    async with run(waiting_pipeline(started), concurrency=1) as app:
        queue = app.pipelines[0].queue("cancels")
        running = await queue.enqueue("slow", {"n": 1})
        waiting = await queue.enqueue("slow", {"n": 2})
        later = await queue.enqueue("slow", {"n": 3}, delay=60)
        await asyncio.wait_for(started.wait(), 5)
        assert (await app.cancel(waiting)).outcome == "cancelled"
        assert (await app.cancel(later)).detail == "delayed"
        cancelling = await app.cancel(running)
        assert (cancelling.outcome, cancelling.topic) == ("cancelling", "slow")
        await app.settle()
        for job_id in (running, waiting, later):
            info = await app.job(job_id)
            assert info is not None
            assert info.state == "cancelled", info
        assert sorted(e.id for e in app.cancelled()) == sorted([running, waiting, later])
        assert [e.attempt for e in app.cancelled() if e.id == running] == [1]
        assert app.completed() == app.retried() == app.failed() == []
        assert (await app.cancel(running)).outcome == "finished"
        metrics = app.runner.metrics
        assert metrics is not None
        assert metrics.job(app.pipelines[0].name, "cancels", "slow").cancelled == 1  # held one
        assert (await app.cancel("nope")).outcome == "unknown"


async def test_in_memory_a_handler_that_swallows_the_cancel_still_ends_cancelled() -> None:
    started = asyncio.Event()
    async with run(waiting_pipeline(started)) as app:
        job_id = await app.pipelines[0].queue("cancels").enqueue("swallow")
        await asyncio.wait_for(started.wait(), 5)
        await app.cancel(job_id)
        await app.settle()
        info = await app.job(job_id)
        assert info is not None
        assert (info.state, info.result) == ("cancelled", None)  # its return value is dropped
        assert app.completed() == []


# -- real processes --------------------------------------------------------------------------


async def state_of(job_id: str) -> str | None:
    info = await recorder.queue("recorder").job(job_id)
    return None if info is None else info.state


async def starts(redis: Any, job_id: str) -> list[dict[str, Any]]:
    return [r for r in await recorded_runs(redis) if r["id"] == job_id and r["event"] == "start"]


async def test_a_running_job_is_cancelled_in_another_process_within_a_second(
    worker: Any, redis: Any, settings: Settings
) -> None:
    """The handler is cancelled where it runs, the job ends `cancelled` (not retried, not
    dead-lettered), `job:cancelled` reaches the event log; other jobs go on."""
    proc = worker(TARGET, "--concurrency", "2")
    await proc.ready()
    async with connect(recorder, settings):
        job_id = await recorder.enqueue("record", {"sleep": 30})
        other = await recorder.enqueue("record", {"sleep": 0.5})
        await eventually(lambda: starts(redis, job_id))
        asked = time.monotonic()
        got = await recorder.queue("recorder").cancel(job_id)
        assert (got.outcome, got.topic) == ("cancelling", "record")
        assert got.detail.startswith(f"{socket.gethostname()}-{proc.proc.pid}-")  # its holder
        while await state_of(job_id) != "cancelled":
            assert time.monotonic() - asked < CANCELLED_WITHIN, await state_of(job_id)
            await asyncio.sleep(0.02)
        took = time.monotonic() - asked
        await eventually(lambda: _is(state_of(other), "completed"))
        await asyncio.sleep(2.5)  # past the visibility timeout: nothing runs it again
        assert len(await starts(redis, job_id)) == 1
        assert [
            r for r in await recorded_runs(redis) if r["id"] == job_id and r["event"] == "done"
        ] == []
        assert await state_of(job_id) == "cancelled"
        assert (await recorder.queue("recorder").counts()).dead == 0
        lines = [x for x in proc.lines() if x.get("event") == "job cancelled"]
        assert [(x["job"], x["outcome"]) for x in lines] == [(job_id, "cancelled")]
        recorded = [
            rec
            async for rec in eventlog.tail(
                redis, [recorder.name], ["job:cancelled"], last=10, stop=STOPPED
            )
        ]
        assert [r.event.data["id"] for r in recorded] == [job_id]
        print(f"cancelled a running job in another process {took * 1000:.0f} ms after asking")
    assert took < CANCEL_POLL + 0.5


async def test_the_cli_cancels_waiting_jobs_and_says_what_it_did(
    worker: Any, redis: Any, servers: Any, settings: Settings
) -> None:
    env = servers.env()
    proc = worker(TARGET, "--concurrency", "1")
    await proc.ready()
    async with connect(recorder, settings):
        busy = await recorder.enqueue("record", {"sleep": 30})
        await eventually(lambda: starts(redis, busy))
        queued = await recorder.enqueue("record", {"n": "queued"})
        delayed = await recorder.enqueue("record", {"n": "delayed"}, delay=60)
        result = flowline_cli("jobs", TARGET, "cancel", queued, delayed, env=env)
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines() == [
            f"cancelled {queued} (recorder): it was queued and will not run",
            f"cancelled {delayed} (recorder): it was delayed and will not run",
        ]
        result = flowline_cli("jobs", TARGET, "cancel", busy, env=env)
        assert result.returncode == 0, result.stderr
        first, outcome = result.stdout.splitlines()
        assert first.startswith(f"cancelling {busy} (recorder): running on ")
        assert outcome == f"{busy}: cancelled"
        # The one slot is free again: a new job runs; the cancelled ones never do.
        after = await recorder.enqueue("record", {"n": "after"})
        await eventually(lambda: _is(state_of(after), "completed"))
        assert await starts(redis, queued) == await starts(redis, delayed) == []
        again = flowline_cli("jobs", TARGET, "cancel", queued, env=env)
        assert (again.returncode, again.stdout.strip()) == (
            0,
            f"{queued} (recorder) was already cancelled",
        )
        done = flowline_cli("jobs", TARGET, "cancel", after, env=env)
        assert done.returncode == 1
        assert done.stdout.strip() == f"{after} (recorder) already completed: nothing to cancel"
        unknown = flowline_cli("jobs", TARGET, "cancel", "nope", env=env)
        assert unknown.returncode == 1
        assert unknown.stderr.strip() == (
            "no job 'nope' in queue(s) recorder: never enqueued, or its record expired"
        )
        show = flowline_cli("jobs", TARGET, queued, env=env)
        assert "state        cancelled" in show.stdout
        names = [
            r.event.data["id"]
            async for r in eventlog.tail(
                redis, [recorder.name], ["job:cancelled"], last=10, stop=STOPPED
            )
        ]
        assert sorted(names) == sorted([queued, delayed, busy])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["cancel"], "name the job ID(s) to cancel: jobs TARGET cancel ID..."),
        (["cancel", "x", "--state", "failed"], "--state does not apply to cancel"),
        (["cancel", "x", "--json"], "--limit and --json do not apply to cancel"),
        (["a", "b"], "name one job ID, got 2: a b"),
    ],
)
def test_bad_cancel_arguments_are_one_line_usage_errors(
    args: list[str], message: str, servers: Any
) -> None:
    result = flowline_cli("jobs", TARGET, *args, env=servers.env())
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == f"Error: {message}"


async def test_a_cancel_outlives_the_worker_that_held_the_job(
    worker: Any, redis: Any, settings: Settings
) -> None:
    """Asked while the holder is frozen, which then dies: the worker that reclaims the job
    cancels it instead of running it again."""
    holder = worker(TARGET, "--concurrency", "2")
    await holder.ready()
    async with connect(recorder, settings):
        job_id = await recorder.enqueue("record", {"sleep": 30})
        await eventually(lambda: starts(redis, job_id))
        holder.signal(signal.SIGSTOP)
        got = await recorder.queue("recorder").cancel(job_id)
        assert got.outcome == "cancelling"
        holder.kill()
        taker = worker(TARGET, "--concurrency", "2")
        await taker.ready()
        await eventually(lambda: _is(state_of(job_id), "cancelled"), timeout=15)
        assert len(await starts(redis, job_id)) == 1  # never started again
        lines = [x for x in taker.lines() if x.get("event") == "job cancelled"]
        assert [x["job"] for x in lines] == [job_id]


async def test_a_handler_that_ignores_the_cancel_ends_cancelled_when_it_returns(
    worker: Any, redis: Any, settings: Settings
) -> None:
    proc = worker(TARGET)
    await proc.ready()
    async with connect(recorder, settings):
        job_id = await recorder.enqueue("stubborn", {"sleep": 30, "after": 1.0})
        await eventually(lambda: starts(redis, job_id))
        await recorder.queue("recorder").cancel(job_id)
        await eventually(lambda: _event(redis, job_id, "ignored-cancel"))
        assert await state_of(job_id) == "running"  # it goes on; its worker waits for it
        await eventually(lambda: _is(state_of(job_id), "cancelled"))
        info = await recorder.queue("recorder").job(job_id)
        assert info is not None
        assert info.result is None  # "finished anyway" was dropped
        assert await _event(redis, job_id, "done")


async def _is(value: Any, expected: Any) -> bool:
    return bool(await value == expected)


async def _event(redis: Any, job_id: str, event: str) -> bool:
    return any(r["id"] == job_id and r["event"] == event for r in await recorded_runs(redis))
