"""taskiq's result and progress API on a compiled broker, answered from flowline's job records."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from taskiq import AsyncTaskiqTask, TaskiqResult
from taskiq.depends.progress_tracker import TaskProgress, TaskState
from taskiq.exceptions import ResultGetError

from flowline import FlowlineBroker, JobError, compile_broker
from flowline.servers import LocalServers
from tests.apps import recorder

from .conftest import ROOT, eventually
from .test_taskiq import TaskiqWorker, receiving
from .test_taskiq import pipeline as tq_pipeline


@pytest.fixture
async def broker(servers: LocalServers, redis: Any) -> AsyncIterator[FlowlineBroker]:
    """A producer's broker on the recorder queue (which `flowline worker` runs)."""
    b = compile_broker(recorder.pipeline, redis_url=servers.redis_url)
    await b.startup()
    yield b
    await b.shutdown()


async def kiq(broker: FlowlineBroker, topic: str, data: Any) -> AsyncTaskiqTask[Any]:
    task = broker.find_task(topic)
    assert task is not None
    return await task.kiq(data)


def assert_failed_with_boom(result: Any) -> None:
    """A failed job as taskiq reports it: is_err, a JobError, the worker's traceback as a note."""
    assert result.is_err
    assert result.return_value is None
    assert isinstance(result.error, JobError)
    assert str(result.error) == "boom [while running stage 'boom']"
    assert result.error.stage == "boom"
    [note] = result.error.__notes__
    assert note.startswith("Traceback of the job, from the worker that ran it:\nTraceback")
    assert note.rstrip().endswith("ValueError: boom")
    with pytest.raises(JobError):
        result.raise_for_error()


class TestRunByFlowlineWorker:
    async def test_wait_result_returns_the_handlers_return_value(
        self, worker: Any, broker: FlowlineBroker
    ) -> None:
        """`.kiq()` then `wait_result()`: the value the handler returned, no dummy result."""
        proc = worker("tests.apps.recorder:pipeline")
        await proc.ready()
        task = await kiq(broker, "record", {"n": 1})
        result = await task.wait_result(check_interval=0.05, timeout=20)
        assert not result.is_err
        assert result.error is None
        assert result.return_value == {"ok": True, "id": task.task_id}

    async def test_a_failing_task_reports_its_error(
        self, worker: Any, broker: FlowlineBroker
    ) -> None:
        """A job that failed for good is a result with is_err and the handler's error."""
        proc = worker("tests.apps.recorder:pipeline", env={"FLOWLINE_TEST_RETRIES": "0"})
        await proc.ready()
        task = await kiq(broker, "boom", {})
        assert_failed_with_boom(await task.wait_result(check_interval=0.05, timeout=20))

    async def test_progress_follows_the_job(
        self, worker: Any, broker: FlowlineBroker, redis: Any
    ) -> None:
        """get_progress: queued, then STARTED with the handler's percentage, then SUCCESS."""
        task = await kiq(broker, "progress", {"step": 0.5})
        assert await task.get_progress() == TaskProgress(state="queued", meta=0.0)
        assert not await task.is_ready()
        proc = worker("tests.apps.recorder:pipeline")
        await proc.ready()

        async def started() -> TaskProgress[Any] | None:
            progress = await task.get_progress()
            ok = progress is not None and progress.state == TaskState.STARTED and progress.meta
            return progress if ok else None

        assert (await eventually(started)).meta in (25, 50, 75)
        assert not await task.is_ready()
        result = await task.wait_result(check_interval=0.05, timeout=20)
        assert result.return_value == "progressed"
        assert await task.get_progress() == TaskProgress(state=TaskState.SUCCESS, meta=100.0)

    async def test_a_job_waiting_for_its_retry_is_not_ready(
        self, worker: Any, broker: FlowlineBroker, redis: Any
    ) -> None:
        """A failed attempt that will be retried is no result yet: taskiq's RETRY state."""
        proc = worker("tests.apps.recorder:pipeline")
        await proc.ready()
        task = await kiq(broker, "retry-later", {"delay": 600})

        async def retrying() -> bool:
            progress = await task.get_progress()
            return progress is not None and progress.state == TaskState.RETRY

        await eventually(retrying)
        assert not await task.is_ready()
        with pytest.raises(ResultGetError) as info:
            await task.get_result()
        assert "is retrying: it has no result yet" in str(info.value.__cause__)


class TestRunByTaskiq:
    async def test_in_taskiqs_receiver(self, servers: LocalServers, redis: Any) -> None:
        """Jobs run by taskiq's own Receiver give the same results, value or error."""
        b = compile_broker(tq_pipeline, redis_url=servers.redis_url)
        await b.startup()
        try:
            double = await kiq(b, "double", {"x": 21})
            boom = await kiq(b, "boom", {"n": 1})
            async with receiving(b):
                value = await double.wait_result(check_interval=0.05, timeout=20)
                error = await boom.wait_result(check_interval=0.05, timeout=20)
        finally:
            await b.shutdown()
        assert value.return_value == {"doubled": 42, "attempt": 1}
        assert not value.is_err
        assert error.is_err
        assert isinstance(error.error, JobError)
        assert str(error.error) == "boom on attempt 2 [while running stage 'boom']"
        assert "ValueError: boom on attempt 2" in error.error.__notes__[0]

    async def test_in_a_taskiq_worker_process(
        self, servers: LocalServers, tmp_path: Path, broker: FlowlineBroker
    ) -> None:
        """`taskiq worker module:broker` runs the kicked jobs; wait_result sees both outcomes."""
        env = {**os.environ, **servers.env(), "PYTHONPATH": str(ROOT)}
        proc = TaskiqWorker("tests.apps.taskiq_app:broker", env, tmp_path / "taskiq.log")
        try:
            record = await kiq(broker, "record", {"n": 2})
            boom = await kiq(broker, "boom", {})
            value = await record.wait_result(check_interval=0.05, timeout=30)
            error = await boom.wait_result(check_interval=0.05, timeout=30)
        finally:
            proc.stop()
        assert value.return_value == {"ok": True, "id": record.task_id}
        assert_failed_with_boom(error)


class TestBackend:
    async def test_an_unknown_task_id_fails_instead_of_waiting_forever(
        self, broker: FlowlineBroker
    ) -> None:
        """No record (never enqueued, or expired): ready at once, and getting it says why."""
        task: AsyncTaskiqTask[Any] = AsyncTaskiqTask("nope", broker.result_backend)
        assert await task.is_ready()
        assert await task.get_progress() is None
        with pytest.raises(ResultGetError) as info:
            await task.wait_result(timeout=5)
        cause = info.value.__cause__
        assert isinstance(cause, LookupError)
        assert str(cause) == (
            "job 'nope' has no record in Queue('recorder'): never enqueued, or expired 86400s "
            "after it finished"
        )

    async def test_set_progress_stores_a_percentage_on_the_record(
        self, broker: FlowlineBroker, redis: Any
    ) -> None:
        """taskiq's set_progress with a number is the job's progress; other meta is refused."""
        task = await kiq(broker, "record", {})
        backend = broker.result_backend
        await backend.set_progress(task.task_id, TaskProgress(state=TaskState.STARTED, meta=40))
        assert await task.get_progress() == TaskProgress(state="queued", meta=40.0)
        with pytest.raises(ValueError, match=r"a number within 0\.\.100, got \{'step': 2\}"):
            await backend.set_progress(
                task.task_id, TaskProgress(state=TaskState.STARTED, meta={"step": 2})
            )
        await backend.set_progress("nope", TaskProgress(state=TaskState.STARTED, meta=10))
        assert await redis.exists("flowline:{recorder}:job:nope") == 0

    async def test_set_result_stores_nothing_twice(
        self, broker: FlowlineBroker, redis: Any
    ) -> None:
        """Results live on the job record only: the broker adds no keys of taskiq's own."""
        task = await kiq(broker, "record", {})
        before = sorted(await redis.keys("*"))
        result = TaskiqResult(is_err=False, return_value=1, execution_time=0.0)
        await broker.result_backend.set_result(task.task_id, result)
        assert sorted(await redis.keys("*")) == before
