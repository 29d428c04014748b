"""Queue side, in real `flowline worker` processes: retries, dead letters, crashes, shutdown."""

from __future__ import annotations

import json
import signal
import time

import pytest

from flowline.backends.jetstream import ensure_stream
from flowline.runtime.keys import GROUP, QueueKeys

from .conftest import eventually, runs

APP = "tests.apps.recorder:pipeline"
Q = QueueKeys("recorder")


async def publish(js, *jobs: dict) -> int:
    await ensure_stream(js, "recorder")  # some tests publish before any worker has started
    ack = await js.publish("recorder", json.dumps({"jobs": list(jobs)}).encode())
    return ack.seq


async def job_hash(redis, job_id: str) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in (await redis.hgetall(Q.job(job_id))).items()}


async def dead(redis) -> list[dict]:
    return [json.loads(f[b"record"]) for _, f in await redis.xrange(Q.dead)]


async def settled(redis) -> bool:
    """No job ready, claimed or waiting in the queue."""
    pending = await redis.xpending(Q.jobs, GROUP)
    return (
        await redis.xlen(Q.jobs) == 0
        and pending["pending"] == 0
        and await redis.zcard(Q.delayed) == 0
    )


async def started(worker, *args: str, env: dict | None = None):
    proc = worker(APP, *args, env=env)
    await proc.ready()
    return proc


class TestRetries:
    async def test_flaky_handler_succeeds_on_a_later_attempt(self, worker, js, redis):
        """A failing handler is retried with backoff; attempt counts up; the result is stored."""
        await started(worker)
        seq = await publish(js, {"topic": "flaky", "data": {"succeed_on": 3}})
        job_id = f"recorder:{seq}:0"
        done = await eventually(lambda: _state(redis, job_id, "completed"))
        assert json.loads(done["result"]) == "recovered"
        assert done["attempt"] == "3"
        attempts = [r["attempt"] for r in await runs(redis) if r["event"] == "start"]
        assert attempts == [1, 2, 3]
        assert await dead(redis) == []

    async def test_exhausted_retries_end_in_the_dead_letter_store(self, worker, js, redis):
        """After retries+1 attempts the job is dead-lettered with payload, error and traceback."""
        proc = await started(worker)
        seq = await publish(js, {"topic": "boom", "data": {"n": 1}}, {"topic": "record"})
        [letter] = await eventually(lambda: dead(redis))
        assert letter["job_id"] == f"recorder:{seq}:0"
        assert letter["topic"] == "boom"
        assert letter["queue"] == "recorder"
        assert json.loads(letter["data"]) == {"n": 1}
        assert letter["attempts"] == 3  # retries=2 in the app
        assert letter["error"] == "ValueError: boom"
        assert 'raise ValueError("boom")' in letter["traceback"]
        assert (await job_hash(redis, f"recorder:{seq}:0"))["state"] == "failed"
        boom_starts = [r for r in await runs(redis) if r["topic"] == "boom"]
        assert [r["attempt"] for r in boom_starts] == [1, 2, 3]
        await eventually(lambda: _state(redis, f"recorder:{seq}:1", "completed"))
        await eventually(lambda: settled(redis))
        assert "job failed" in proc.output()

    async def test_fail_signal_dead_letters_without_retry(self, worker, js, redis):
        """Raising Fail skips the remaining retries."""
        await started(worker)
        await publish(js, {"topic": "fail-fast"})
        [letter] = await eventually(lambda: dead(redis))
        assert letter["attempts"] == 1
        assert "not worth retrying" in letter["error"]
        assert len(await runs(redis)) == 1

    async def test_retry_signal_waits_the_requested_delay(self, worker, js, redis):
        """Raising Retry(delay=...) runs the next attempt no earlier than the delay."""
        await started(worker)
        seq = await publish(js, {"topic": "retry-later", "data": {"delay": 1.0}})
        await eventually(lambda: _state(redis, f"recorder:{seq}:0", "completed"))
        first, second, _ = await runs(redis)
        assert (first["attempt"], second["attempt"]) == (1, 2)
        assert second["t"] - first["t"] >= 1.0

    async def test_handler_past_its_timeout_fails_and_is_dead_lettered(self, worker, js, redis):
        """A handler hanging past the topic timeout fails with JobTimeout on every attempt."""
        await started(worker, env={"FLOWLINE_TEST_TIMEOUT": "0.3", "FLOWLINE_TEST_RETRIES": "1"})
        await publish(js, {"topic": "hang"})
        [letter] = await eventually(lambda: dead(redis))
        assert letter["attempts"] == 2
        assert "JobTimeout" in letter["error"]
        assert "0.3s timeout" in letter["error"]

    async def test_unserialisable_result_is_dead_lettered_at_once(self, worker, js, redis):
        """A result that is not JSON fails the job without retrying (it would fail again)."""
        await started(worker)
        await publish(js, {"topic": "bad-result"})
        [letter] = await eventually(lambda: dead(redis))
        assert letter["attempts"] == 1
        assert "not JSON-serialisable" in letter["error"]


class TestWorkerCrash:
    async def test_sigkilled_worker_job_runs_again_elsewhere(self, worker, js, redis):
        """A job whose worker is SIGKILLed mid-run is run by another worker, attempt 2."""
        first = await started(worker)
        seq = await publish(js, {"topic": "record", "data": {"sleep": 30}})
        job_id = f"recorder:{seq}:0"
        await eventually(lambda: _has_run(redis, job_id, 1))
        first.kill()
        killed_at = time.time()
        second = await started(worker)
        # A second, quick job on the new worker proves it reads while the dead claim ages.
        await publish(js, {"topic": "record"})
        await eventually(lambda: _has_run(redis, job_id, 2), timeout=20)
        recovered = next(r for r in await runs(redis) if r["attempt"] == 2)
        assert recovered["pid"] == second.pid
        assert 1.5 <= recovered["t"] - killed_at <= 8  # visibility timeout is 2 s in the app
        assert (await job_hash(redis, job_id))["attempt"] == "2"

    async def test_live_worker_keeps_a_long_job_past_the_visibility_timeout(
        self, worker, js, redis
    ):
        """A job running longer than the visibility timeout is not taken by another live worker."""
        await started(worker)
        await started(worker)
        seq = await publish(js, {"topic": "record", "data": {"sleep": 5}})
        job_id = f"recorder:{seq}:0"
        await eventually(lambda: _state(redis, job_id, "completed"), timeout=20)
        starts = [r for r in await runs(redis) if r["event"] == "start"]
        assert len(starts) == 1
        assert starts[0]["attempt"] == 1

    async def test_job_that_kills_every_worker_is_dead_lettered(self, worker, js, redis):
        """A job whose workers keep dying stops being retried after retries+1 attempts."""
        seq = await publish(js, {"topic": "record", "data": {"sleep": 30}})
        job_id = f"recorder:{seq}:0"
        for attempt in (1, 2, 3):
            proc = await started(worker, env={"FLOWLINE_TEST_VISIBILITY": "1"})
            await eventually(lambda a=attempt: _has_run(redis, job_id, a), timeout=20)
            proc.kill()
        await started(worker, env={"FLOWLINE_TEST_VISIBILITY": "1"})
        [letter] = await eventually(lambda: dead(redis), timeout=20)
        assert letter["job_id"] == job_id
        assert "worker stopped while running it 3 times" in letter["error"]


class TestShutdown:
    async def test_sigterm_lets_jobs_in_flight_finish(self, worker, js, redis):
        """On SIGTERM a job shorter than the grace period finishes, and the worker exits 0."""
        proc = await started(worker, "--grace", "10")
        seq = await publish(js, {"topic": "record", "data": {"sleep": 1}})
        job_id = f"recorder:{seq}:0"
        await eventually(lambda: _has_run(redis, job_id, 1))
        proc.signal(signal.SIGTERM)
        assert await proc.wait() == 0
        assert (await job_hash(redis, job_id))["state"] == "completed"
        assert await settled(redis)

    async def test_sigterm_hands_back_jobs_that_outlive_the_grace_period(self, worker, js, redis):
        """A job still running when the grace period ends is handed back, then run elsewhere."""
        proc = await started(worker, "--grace", "0.5")
        seq = await publish(js, {"topic": "record", "data": {"sleep": 3}})
        job_id = f"recorder:{seq}:0"
        await eventually(lambda: _has_run(redis, job_id, 1))
        proc.signal(signal.SIGTERM)
        assert await proc.wait() == 0
        assert await redis.xlen(Q.jobs) == 1  # back on the queue, ready, not waiting to time out
        handed_back_at = time.time()
        await started(worker)
        await eventually(lambda: _state(redis, job_id, "completed"), timeout=20)
        restarted = [r for r in await runs(redis) if r["event"] == "start"][-1]
        assert restarted["t"] - handed_back_at < 10
        assert len([r for r in await runs(redis) if r["event"] == "done"]) == 1


class TestJobs:
    async def test_progress_is_observable_while_the_job_runs(self, worker, js, redis):
        """job.progress() updates the job record while the handler is still running."""
        await started(worker)
        seq = await publish(js, {"topic": "progress", "data": {"step": 0.5}})
        job_id = f"recorder:{seq}:0"
        seen = set()

        async def progressed():
            h = await job_hash(redis, job_id)
            seen.add(h.get("progress"))
            return h.get("state") == "completed"

        await eventually(progressed, interval=0.02)
        assert {"25", "50", "75"} <= seen
        assert (await job_hash(redis, job_id))["progress"] == "100"

    async def test_job_for_a_topic_nobody_handles_is_dead_lettered(self, worker, redis):
        """A queued job with no handler (a version skew) is dead-lettered, never silently lost."""
        from flowline.runtime.scripts import Scripts

        await started(worker)
        await Scripts(redis).enqueue(
            keys=[Q.jobs, Q.delayed, Q.cancels],
            args=[Q.job_prefix, 0, "ghost-1", "ghost", "{}", 0, "test", 1, ""],
        )
        [letter] = await eventually(lambda: dead(redis))
        assert letter["job_id"] == "ghost-1"
        assert "has no handler for topic 'ghost'" in letter["error"]

    async def test_two_workers_share_the_load_without_running_a_job_twice(self, worker, js, redis):
        """Jobs spread over two processes; every job runs exactly once."""
        a = await started(worker)
        b = await started(worker)
        for _i in range(40):
            await publish(js, *({"topic": "record", "data": {"sleep": 0.05}} for _ in range(5)))
        await eventually(lambda: _count_done(redis, 200), timeout=30)
        done = [r for r in await runs(redis) if r["event"] == "done"]
        assert len({r["id"] for r in done}) == 200 == len(done)
        assert {r["pid"] for r in done} == {a.pid, b.pid}


async def _state(redis, job_id: str, state: str) -> dict[str, str] | None:
    h = await job_hash(redis, job_id)
    return h if h.get("state") == state else None


async def _has_run(redis, job_id: str, attempt: int) -> bool:
    return any(
        r["id"] == job_id and r["attempt"] == attempt and r["event"] == "start"
        for r in await runs(redis)
    )


async def _count_done(redis, n: int) -> bool:
    return len([r for r in await runs(redis) if r["event"] == "done"]) >= n


pytestmark = pytest.mark.timeout(90)
