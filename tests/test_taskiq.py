"""A queue compiled to a taskiq broker: taskiq and flowline workers run each other's jobs."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from taskiq import BrokerMessage, TaskiqMessage, TaskiqMiddleware, TaskiqResult
from taskiq.exceptions import SendTaskError
from taskiq.receiver import Receiver

from flowline import (
    Backoff,
    Event,
    FlowlineBroker,
    JobContext,
    PipelineError,
    Queue,
    Route,
    SerializationError,
    Stream,
    compile_broker,
)
from flowline.runtime import eventlog, registry
from flowline.runtime.eventlog import Recorded
from flowline.runtime.keys import GROUP, QueueKeys
from flowline.runtime.registry import ProcessInfo
from flowline.servers import LocalServers
from tests.apps import recorder

from .conftest import ROOT, eventually, runs

RECORDER = QueueKeys("recorder")
TQ = QueueKeys("tq")

pipeline = (
    Stream("taskiq-test", json.loads)
    >> Route(lambda event: [])
    >> Queue("tq", retries=1, backoff=Backoff(base=0.05, cap=0.1), visibility_timeout=1)
)
slow_runs: list[tuple[str, int]] = []


@pipeline.dequeue("double")
async def double(job: JobContext) -> dict[str, int]:
    await job.progress(50)
    return {"doubled": job.data["x"] * 2, "attempt": job.attempt}


@pipeline.dequeue("slow")
async def slow(job: JobContext) -> int:
    slow_runs.append((job.id, job.attempt))
    await asyncio.sleep(job.data["sleep"])
    return job.attempt


@pipeline.dequeue("boom")
def boom(job: JobContext) -> None:
    raise ValueError(f"boom on attempt {job.attempt}")


async def job_hash(redis: Any, keys: QueueKeys, job_id: str) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in (await redis.hgetall(keys.job(job_id))).items()}


async def in_state(redis: Any, keys: QueueKeys, job_id: str, state: str) -> dict[str, str] | None:
    h = await job_hash(redis, keys, job_id)
    return h if h.get("state") == state else None


@pytest.fixture
async def broker(servers: LocalServers) -> AsyncIterator[FlowlineBroker]:
    b = compile_broker(pipeline, redis_url=servers.redis_url)
    await b.startup()
    yield b
    await b.shutdown()


@contextlib.asynccontextmanager
async def receiving(broker: FlowlineBroker, concurrency: int = 10) -> AsyncIterator[None]:
    """Run taskiq's own Receiver (what `taskiq worker` runs) on `broker` in this process."""
    broker.is_worker_process = True
    stop = asyncio.Event()
    receiver = Receiver(broker, max_async_tasks=concurrency)
    listening = asyncio.create_task(receiver.listen(stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(listening, 10)


class TaskiqWorker:
    """A real `taskiq worker module:broker` process (and its child), output in a file."""

    def __init__(self, target: str, env: dict[str, str], log: Path) -> None:
        self.log_path = log
        self._log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "taskiq", "worker", target, "--workers", "1"],
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # one process group: stop() reaches the worker child too
        )

    def stop(self) -> None:
        """SIGINT, then SIGKILL after a timeout: taskiq worker can hang on shutdown."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
            os.killpg(self.proc.pid, signal.SIGKILL)  # a child left behind
        self._log.close()


@pytest.fixture
def taskiq_worker(servers: LocalServers, tmp_path: Path) -> Iterator[Callable[[str], TaskiqWorker]]:
    started: list[TaskiqWorker] = []

    def start(target: str) -> TaskiqWorker:
        env = {**os.environ, **servers.env(), "PYTHONPATH": str(ROOT)}
        proc = TaskiqWorker(target, env, tmp_path / f"taskiq-{len(started)}.log")
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


class TestAcrossWorkers:
    async def test_a_job_kicked_through_taskiq_is_run_by_a_flowline_worker(
        self, worker: Any, servers: LocalServers, redis: Any
    ) -> None:
        """`.kiq(data)` lands in flowline's queue; `flowline worker` runs it, storing the result."""
        proc = worker("tests.apps.recorder:pipeline")
        await proc.ready()
        b = compile_broker(recorder.pipeline, redis_url=servers.redis_url)
        await b.startup()
        try:
            task = await b.find_task("record").kiq({"n": 1})
        finally:
            await b.shutdown()
        job_id = task.task_id
        done = await eventually(lambda: in_state(redis, RECORDER, job_id, "completed"))
        assert json.loads(done["result"]) == {"ok": True, "id": job_id}
        assert done["origin"] == "taskiq"
        assert [(r["id"], r["event"], r["pid"]) for r in await runs(redis)] == [
            (job_id, "start", proc.pid),
            (job_id, "done", proc.pid),
        ]

    async def test_a_job_enqueued_by_flowline_is_run_by_a_taskiq_worker(
        self, taskiq_worker: Any, servers: LocalServers, redis: Any
    ) -> None:
        """`taskiq worker module:broker` runs flowline jobs in its middlewares; SIGTERM stops it."""
        record = recorder.pipeline.enqueue_sync("record", {"n": 2}, redis_url=servers.redis_url)
        flaky = recorder.pipeline.enqueue_sync(
            "flaky", {"succeed_on": 2}, redis_url=servers.redis_url
        )
        proc = taskiq_worker("tests.apps.taskiq_app:broker")
        done = await eventually(lambda: in_state(redis, RECORDER, record, "completed"), 30)
        assert json.loads(done["result"]) == {"ok": True, "id": record}
        recovered = await eventually(lambda: in_state(redis, RECORDER, flaky, "completed"))
        assert json.loads(recovered["result"]) == "recovered"
        assert recovered["attempt"] == "2"
        record_runs = [r for r in await runs(redis) if r["id"] == record]
        assert [r["event"] for r in record_runs] == ["start", "done"]
        assert record_runs[0]["pid"] != os.getpid()
        hooks = [json.loads(x) for x in await redis.lrange("test:taskiq", 0, -1)]
        assert [h for h in hooks if h["id"] == record] == [
            {"hook": "pre_execute", "task": "record", "id": record, "args": [{"n": 2}]},
            {
                "hook": "post_execute",
                "task": "record",
                "id": record,
                "result": {"ok": True, "id": record},
                "is_err": False,
            },
        ]
        assert [(h["hook"], h.get("is_err")) for h in hooks if h["id"] == flaky] == [
            ("pre_execute", None),
            ("post_execute", True),
            ("pre_execute", None),
            ("post_execute", False),
        ]
        assert await redis.xpending(RECORDER.jobs, GROUP) == {
            "pending": 0,
            "min": None,
            "max": None,
            "consumers": [],
        }
        proc.proc.send_signal(signal.SIGTERM)  # to the parent only, as a supervisor would
        assert await asyncio.to_thread(proc.proc.wait, 10) == 0

    async def test_a_taskiq_worker_registers_and_records_its_events(
        self, taskiq_worker: Any, servers: LocalServers, redis: Any
    ) -> None:
        """`taskiq worker` shows in the process registry and writes the pipeline's event log."""
        proc = taskiq_worker("tests.apps.taskiq_app:broker")
        entry = await eventually(lambda: taskiq_entry(redis), 30)
        assert (entry.pipelines, entry.parts) == ([recorder.pipeline.name], ["queue:recorder"])
        job_id = recorder.pipeline.enqueue_sync("record", {"n": 3}, redis_url=servers.redis_url)
        await eventually(lambda: in_state(redis, RECORDER, job_id, "completed"), 30)
        (run,) = [r for r in await runs(redis) if r["id"] == job_id and r["event"] == "start"]
        assert entry.pid == run["pid"]  # the entry is the process that ran the job

        async def recorded() -> list[Recorded] | None:
            found = [
                rec
                async for rec in eventlog.tail(
                    redis, [recorder.pipeline.name], last=100, stop=STOPPED
                )
                if (rec.event.data.get("job") or rec.event.data).get("id") == job_id
            ]
            return found if len(found) == 2 else None

        start, complete = await eventually(recorded)
        assert (start.event.name, complete.event.name) == ("job:start", "job:complete")
        assert start.process == complete.process == entry.id
        assert start.event.data["job"]["data"] == {"n": 3}
        assert complete.event.data["result"] == {"ok": True, "id": job_id}
        proc.proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.proc.wait, 10) == 0
        assert await taskiq_entry(redis) is None  # a clean stop removes its entry


STOPPED = asyncio.Event()
STOPPED.set()  # tail: the kept events, then stop


async def taskiq_entry(redis: Any) -> ProcessInfo | None:
    found = [p for p in await registry.processes(redis) if p.pipelines == [recorder.pipeline.name]]
    return found[0] if found else None


class TestTaskiqPath:
    async def test_middlewares_wrap_jobs_and_the_ack_completes_them(
        self, broker: FlowlineBroker, redis: Any
    ) -> None:
        """Middlewares see topic, id and data; acking stores the result and emits events."""
        seen: list[tuple[Any, ...]] = []
        events: list[Event] = []

        class Recording(TaskiqMiddleware):
            def pre_execute(self, message: TaskiqMessage) -> TaskiqMessage:
                seen.append(("pre", message.task_name, message.task_id, message.args))
                return message

            def post_execute(self, message: TaskiqMessage, result: TaskiqResult[Any]) -> None:
                seen.append(("post", message.task_id, result.return_value, result.is_err))

        broker.add_middlewares(Recording())
        pipeline.on("job:progress", events.append)
        pipeline.on("job:complete", events.append)
        try:
            job_id = (await broker.find_task("double").kiq({"x": 21})).task_id
            async with receiving(broker):
                done = await eventually(lambda: in_state(redis, TQ, job_id, "completed"))
        finally:
            pipeline.off("job:progress")
            pipeline.off("job:complete")
        result = {"doubled": 42, "attempt": 1}
        assert seen == [
            ("pre", "double", job_id, [{"x": 21}]),
            ("post", job_id, result, False),
        ]
        assert json.loads(done["result"]) == result
        assert done["progress"] == "100"
        assert [(e.name, e.data.get("progress"), e.data.get("result")) for e in events] == [
            ("job:progress", 50, None),
            ("job:complete", None, result),
        ]
        assert await redis.xlen(TQ.jobs) == 0

    async def test_a_failing_task_is_retried_then_dead_lettered(
        self, broker: FlowlineBroker, redis: Any
    ) -> None:
        """The topic's retries and dead letters apply on the taskiq path as on flowline's."""
        job_id = (await broker.find_task("boom").kiq({"n": 1})).task_id
        async with receiving(broker):
            failed = await eventually(lambda: in_state(redis, TQ, job_id, "failed"))
        assert failed["attempt"] == "2"
        assert failed["error"] == "boom on attempt 2"
        [(_, fields)] = await redis.xrange(TQ.dead)
        letter = json.loads(fields[b"record"])
        assert (letter["job_id"], letter["topic"], letter["attempts"]) == (job_id, "boom", 2)
        assert json.loads(letter["data"]) == {"n": 1}
        assert letter["error"] == "ValueError: boom on attempt 2"

    async def test_a_long_job_keeps_its_claim_past_the_visibility_timeout(
        self, broker: FlowlineBroker, redis: Any
    ) -> None:
        """The heartbeat keeps a running job claimed: it is not reclaimed and run twice."""
        slow_runs.clear()
        job_id = (await broker.find_task("slow").kiq({"sleep": 2.5})).task_id
        async with receiving(broker):
            done = await eventually(lambda: in_state(redis, TQ, job_id, "completed"))
        assert json.loads(done["result"]) == 1
        assert slow_runs == [(job_id, 1)]

    async def test_jobs_read_but_not_started_are_handed_back_on_shutdown(
        self, broker: FlowlineBroker, redis: Any
    ) -> None:
        """Stopping the receiver leaves every job completed or ready again, none claimed."""
        task = broker.find_task("slow")
        assert task is not None
        ids = [(await task.kiq({"sleep": 0.3})).task_id for _ in range(6)]
        async with receiving(broker, concurrency=1):
            await eventually(lambda: in_state(redis, TQ, ids[0], "completed"))
        states = [(await job_hash(redis, TQ, i))["state"] for i in ids]
        ready = [f[b"id"].decode() for _, f in await redis.xrange(TQ.jobs)]
        assert states[0] == "completed"
        assert set(states) == {"completed", "queued"}
        assert sorted(ready) == sorted(i for i, s in zip(ids, states, strict=True) if s == "queued")
        assert (await redis.xpending(TQ.jobs, GROUP))["pending"] == 0


class TestKick:
    async def test_kicking_one_task_id_twice_enqueues_one_job(
        self, broker: FlowlineBroker, redis: Any
    ) -> None:
        """The task id is the job id, so a repeated kick is a no-op, as flowline's enqueue is."""
        task = broker.find_task("double")
        assert task is not None
        await task.kicker().with_task_id("same").kiq({"x": 1})
        first = await job_hash(redis, TQ, "same")
        await task.kicker().with_task_id("same").kiq({"x": 2})
        entries = await redis.xrange(TQ.jobs)
        assert [(f[b"id"], f[b"topic"], f[b"data"]) for _, f in entries] == [
            (b"same", b"double", b'{"x":1}')
        ]
        assert await job_hash(redis, TQ, "same") == first
        assert first["state"] == "queued"

    async def test_data_is_the_one_argument_or_the_keyword_arguments(
        self, broker: FlowlineBroker, redis: Any
    ) -> None:
        """One positional argument, keyword arguments (as a dict), or nothing (None)."""
        task = broker.find_task("double")
        assert task is not None
        await task.kicker().with_task_id("one").kiq([1, 2])
        await task.kicker().with_task_id("kw").kiq(x=1, y="b")
        await task.kicker().with_task_id("none").kiq()
        data = {f[b"id"]: json.loads(f[b"data"]) for _, f in await redis.xrange(TQ.jobs)}
        assert data == {b"one": [1, 2], b"kw": {"x": 1, "y": "b"}, b"none": None}

    async def test_priority_and_delay_labels_place_the_job(
        self, broker: FlowlineBroker, redis: Any
    ) -> None:
        """Label ``priority`` > 0 uses the urgent stream; ``delay`` parks the job until due."""
        task = broker.find_task("double")
        assert task is not None
        await task.kicker().with_task_id("urgent").with_labels(priority=5).kiq({"x": 1})
        await task.kicker().with_task_id("later").with_labels(delay=60).kiq({"x": 1})
        assert [f[b"id"] for _, f in await redis.xrange(TQ.urgent)] == [b"urgent"]
        assert await redis.xlen(TQ.jobs) == 0
        assert await redis.zrange(TQ.delayed, 0, -1) == [b"later"]
        assert (await job_hash(redis, TQ, "later"))["state"] == "delayed"

    async def test_several_positional_arguments_are_refused(self, broker: FlowlineBroker) -> None:
        """A job has one data value: `.kiq(a, b)` fails with a PipelineError saying so."""
        task = broker.find_task("double")
        assert task is not None
        with pytest.raises(SendTaskError) as info:
            await task.kiq(1, 2)
        assert isinstance(info.value.__cause__, PipelineError)
        assert "one argument" in str(info.value.__cause__)
        assert "got 2 positional and 0 keyword" in str(info.value.__cause__)

    async def test_a_task_of_another_queue_is_refused(self, broker: FlowlineBroker) -> None:
        """Kicking a task name that is no topic of the queue names the queue's topics."""
        message = BrokerMessage(task_id="x", task_name="nope", message=b"{}", labels={})
        with pytest.raises(PipelineError, match=r"'nope' is no topic of Queue\('tq'\)") as info:
            await broker.kick(message)
        assert "its topics: double, slow, boom" in str(info.value)

    async def test_data_json_cannot_carry_is_refused(self, broker: FlowlineBroker) -> None:
        """A payload the serializer let through but JSON cannot carry is a SerializationError."""
        body = b'{"task_id": "x", "task_name": "double", "labels": {}, "args": [NaN], "kwargs": {}}'
        message = BrokerMessage(task_id="x", task_name="double", message=body, labels={})
        with pytest.raises(SerializationError, match="data of task 'double'"):
            await broker.kick(message)


class TestCompile:
    def test_every_topic_of_the_queue_is_a_task_named_after_it(self) -> None:
        """The broker's tasks are exactly the queue's topics."""
        b = compile_broker(recorder.pipeline, "recorder")
        assert sorted(b.local_task_registry) == sorted(recorder.pipeline.topics)

    def test_a_pipeline_with_several_queues_needs_a_queue_name(self) -> None:
        """Without a name the queue is ambiguous; an unknown name lists the queues."""
        two = (
            Stream("two", json.loads)
            >> Route(lambda e: [])
            >> Queue("a", topics=["x"])
            >> Queue("b")
        )
        two.dequeue("x", lambda job: None)
        with pytest.raises(PipelineError, match="has queues a, b: pass queue_name"):
            compile_broker(two)
        with pytest.raises(PipelineError, match=r"has no Queue\('c'\): a, b"):
            compile_broker(two, "c")
        assert sorted(compile_broker(two, "a").local_task_registry) == ["x"]

    def test_a_queue_without_handlers_is_refused(self) -> None:
        """A broker with no task could run nothing: register handlers first."""
        bare = Stream("bare", json.loads) >> Route(lambda e: []) >> Queue("bare")
        with pytest.raises(PipelineError, match="no handlers yet"):
            compile_broker(bare)
