"""Steering queues while workers run: pause and resume across several `flowline worker`
processes (real servers), from the API and from ``flowline queue``."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from flowline import Settings, connect
from flowline.runtime import registry

from .apps.recorder import pipeline as recorder
from .conftest import eventually, flowline_cli, runs

TARGET = "tests.apps.recorder:pipeline"
PAUSE_SEEN_WITHIN = 0.5


def jobs_event(*jobs: dict[str, Any]) -> bytes:
    return json.dumps({"jobs": list(jobs)}).encode()


async def started(redis: Any) -> list[dict[str, Any]]:
    return [r for r in await runs(redis) if r["event"] == "start"]


async def test_a_pause_holds_every_process_and_loses_nothing(
    worker: Any, servers: Any, redis: Any, settings: Settings
) -> None:
    """Paused: jobs in flight finish, none starts in any process (one restarted meanwhile),
    the stream side keeps routing into the queue; resumed: every job runs once."""
    env = servers.env()
    procs = [worker(TARGET, "--concurrency", "4") for _ in range(2)]
    await eventually(lambda: _count_processes(redis, 2))
    async with connect(recorder, settings):
        for n in range(4):  # fewer than the free slots: all four start at once
            await recorder.enqueue("record", {"sleep": 1.0, "n": n})
        await eventually(lambda: _has(started(redis), 4))
        result = flowline_cli("queue", TARGET, "pause", "recorder", env=env)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("paused recorder: no process starts its jobs until")
        # Every process sees the pause within half a second (the README's bound); from then on
        # nothing may start.
        await asyncio.sleep(PAUSE_SEEN_WITHIN)
        paused_at = time.time()
        for n in range(10):
            await recorder.enqueue("record", {"n": 100 + n})
        for n in range(5):
            await recorder.publish(jobs_event({"topic": "record", "data": {"m": n}}))
        # One process dies and another takes its place: the pause is the queue's, in Redis.
        procs[0].kill()
        procs.append(worker(TARGET, "--concurrency", "4"))
        handle = recorder.queue("recorder")
        await eventually(lambda: _ready(handle, 15))
        status = flowline_cli("status", TARGET, "--json", env=env)
        [queue] = json.loads(status.stdout)["pipelines"][0]["queues"]
        assert queue["paused"] is True
        table = flowline_cli("status", TARGET, env={**env, "COLUMNS": "200"})
        assert "recorder (paused)" in table.stdout
        await asyncio.sleep(2.0)  # the live processes had every chance to start a job
        starts = await started(redis)
        assert [r for r in starts if r["t"] > paused_at] == []
        assert len(starts) == 4
        assert await handle.paused()
        result = flowline_cli("queue", TARGET, "resume", "recorder", env=env)
        assert result.stdout.strip() == "resumed recorder"
        # All 19: the killed process's jobs too, reclaimed only once the queue was resumed.
        done = await eventually(lambda: _done(redis, 4 + 15), timeout=30)
        ids = [r["id"] for r in done]
        assert len(ids) == len(set(ids))  # each job once, none lost
        assert not await handle.paused()


async def test_pausing_twice_and_resuming_what_runs_say_so(servers: Any) -> None:
    env = servers.env()
    first = flowline_cli("queue", TARGET, "pause", "recorder", env=env)
    again = flowline_cli("queue", TARGET, "pause", "recorder", env=env)
    assert again.stdout.strip() == "recorder was already paused", first.stdout
    flowline_cli("queue", TARGET, "resume", "recorder", env=env)
    running = flowline_cli("queue", TARGET, "resume", "recorder", env=env)
    assert running.stdout.strip() == "recorder was not paused"


async def test_an_unknown_queue_is_a_one_line_error_that_changes_nothing(
    servers: Any, redis: Any
) -> None:
    result = flowline_cli("queue", TARGET, "pause", "recorder", "nope", env=servers.env())
    assert result.returncode == 1
    assert result.stderr.strip() == (f"Error: no queue 'nope' in {TARGET} (its queues: recorder)")
    assert not await redis.exists("flowline:{recorder}:paused")  # not even the known one
    missing = flowline_cli("queue", TARGET, "pause", env=servers.env())
    assert missing.returncode == 2
    assert "Missing argument 'NAMES...'" in missing.stderr


async def _count_processes(redis: Any, n: int) -> bool:
    return len(await registry.processes(redis)) >= n


async def _has(rows: Any, n: int) -> bool:
    return len(await rows) >= n


async def _ready(handle: Any, n: int) -> bool:
    return (await handle.counts()).ready == n


async def _done(redis: Any, n: int) -> list[dict[str, Any]] | None:
    done = [r for r in await runs(redis) if r["event"] == "done"]
    return done if len(done) >= n else None
