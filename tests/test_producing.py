"""Producing work without a stream: direct enqueue, idempotency keys, delays, publish."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

import flowline
from flowline import Job, PipelineError, Queue, Route, Runner, Stream
from flowline.runtime.runner import connect

from .conftest import eventually


def make_pipeline() -> tuple[flowline.Pipeline, list[dict[str, Any]]]:
    pipeline = (
        Stream("producing", lambda b: b.decode())
        >> Route(lambda e: [Job("echo", e)])
        >> Queue("producing")
    )
    ran: list[dict[str, Any]] = []

    @pipeline.dequeue("echo")
    async def echo(job):
        ran.append({"id": job.id, "data": job.data, "t": time.time()})
        return job.data

    return pipeline, ran


class TestDirectEnqueue:
    async def test_enqueue_runs_the_job_and_stores_its_result(self, settings):
        """pipeline.enqueue puts a job on its queue; the handle shows its record."""
        pipeline, ran = make_pipeline()
        async with Runner(pipeline, settings):
            job_id = await pipeline.enqueue("echo", {"x": 1})
            await eventually(lambda: ran)
            info = await eventually(lambda: _completed(pipeline, job_id))
        assert ran[0]["data"] == {"x": 1}
        assert info.result == {"x": 1}
        assert info.attempt == 1
        assert info.topic == "echo"
        assert info.progress == 100
        assert info.finished is not None

    async def test_same_idempotency_key_enqueues_once(self, settings):
        """A retried request with the same key does not enqueue a second job."""
        pipeline, ran = make_pipeline()
        async with Runner(pipeline, settings):
            first = await pipeline.enqueue("echo", {"n": 1}, key="order-42")
            second = await pipeline.enqueue("echo", {"n": 2}, key="order-42")
            await eventually(lambda: ran)
            await asyncio.sleep(0.3)
        assert first == second == "key:order-42"
        assert [r["data"] for r in ran] == [{"n": 1}]

    async def test_sync_enqueue_needs_no_event_loop_code(self, settings):
        """enqueue_sync (for a Django view) enqueues through a plain Redis client."""
        pipeline, ran = make_pipeline()
        async with Runner(pipeline, settings):
            job_id = await asyncio.to_thread(
                pipeline.enqueue_sync,
                "echo",
                {"sync": True},
                key="k1",
                redis_url=settings.redis_url,
            )
            again = await asyncio.to_thread(
                pipeline.enqueue_sync,
                "echo",
                {"sync": True},
                key="k1",
                redis_url=settings.redis_url,
            )
            await eventually(lambda: ran)
            await asyncio.sleep(0.2)
        assert job_id == again == "key:k1"
        assert len(ran) == 1

    async def test_unknown_topic_is_refused_at_enqueue(self, settings):
        """Enqueueing a topic with no handler raises UnknownTopicError naming the known topics."""
        pipeline, _ = make_pipeline()
        async with connect(pipeline, settings):
            with pytest.raises(flowline.UnknownTopicError, match="dequeued topics: echo"):
                await pipeline.enqueue("nope", {})

    async def test_enqueue_outside_a_runner_says_how_to_connect(self):
        """Using a pipeline that is not connected raises a PipelineError that says what to do."""
        pipeline, _ = make_pipeline()
        with pytest.raises(PipelineError, match="is not connected"):
            await pipeline.enqueue("echo", {})

    async def test_producer_connection_runs_no_workers(self, settings, redis):
        """connect() publishes and enqueues but runs nothing: the job waits for a worker."""
        pipeline, ran = make_pipeline()
        async with connect(pipeline, settings):
            job_id = await pipeline.enqueue("echo", {"later": True})
            await asyncio.sleep(0.5)
            counts = await pipeline.queue("producing").counts()
            assert (await pipeline.queue("producing").job(job_id)).state == "queued"
        assert ran == []
        assert counts.ready == 1
        assert counts.running == 0
        async with Runner(pipeline, settings):
            await eventually(lambda: ran)


class TestDelayed:
    async def test_delayed_job_runs_no_earlier_than_its_delay(self, settings):
        """Job(delay=...) waits in the delayed set, then runs once, after the delay."""
        pipeline, ran = make_pipeline()
        async with Runner(pipeline, settings):
            start = time.time()
            job_id = await pipeline.enqueue("echo", {"d": 1}, delay=1.0)
            info = await pipeline.queue("producing").job(job_id)
            assert info is not None
            assert info.state == "delayed"
            assert (await pipeline.queue("producing").counts()).delayed == 1
            await eventually(lambda: ran)
            await asyncio.sleep(0.3)
        assert len(ran) == 1
        assert 1.0 <= ran[0]["t"] - start < 2.0

    async def test_router_can_delay_jobs(self, settings):
        """A router's Job(delay=...) is honoured for jobs coming from a stream."""
        pipeline = (
            Stream("delays", lambda b: b)
            >> Route(lambda e: [Job("now", None), Job("later", None, delay=0.8)])
            >> Queue("delays")
        )
        seen: dict[str, float] = {}
        pipeline.dequeue("now", lambda job: seen.setdefault("now", time.time()))
        pipeline.dequeue("later", lambda job: seen.setdefault("later", time.time()))
        async with Runner(pipeline, settings):
            await pipeline.publish(b"x")
            await eventually(lambda: len(seen) == 2)
        assert seen["later"] - seen["now"] >= 0.7


class TestPublish:
    async def test_publish_with_message_id_is_stored_once(self, settings):
        """A retried publish with the same msg_id becomes one event and one job."""
        pipeline, ran = make_pipeline()
        async with Runner(pipeline, settings):
            a = await pipeline.publish(b"hello", msg_id="req-1")
            b = await pipeline.publish(b"hello", msg_id="req-1")
            c = await pipeline.publish(b"world")
            await eventually(lambda: len(ran) == 2)
            await asyncio.sleep(0.3)
        assert a == b != c
        assert sorted(r["data"] for r in ran) == ["hello", "world"]

    async def test_publish_encodes_protobuf_events_and_dicts(self, settings):
        """A protobuf pipeline's publish accepts the message or a dict of its fields."""
        from examples.fanbase.fanbase_pb2 import FanbaseEvent

        pipeline = Stream("pb", FanbaseEvent) >> Route(lambda e: [Job("got", e.fan)]) >> Queue("pb")
        fans: list[str] = []
        pipeline.dequeue("got", lambda job: fans.append(job.data))
        async with Runner(pipeline, settings):
            await pipeline.publish(FanbaseEvent(fan="f1", talent="t", action="followed"))
            await pipeline.publish({"fan": "f2", "talent": "t", "action": "followed"})
            await eventually(lambda: len(fans) == 2)
        assert sorted(fans) == ["f1", "f2"]


class TestEmit:
    async def test_emit_is_not_repeated_when_the_job_is_retried(self, settings):
        """A job that emits, then fails and is retried, publishes its follow-up once."""
        downstream = (
            Stream("emitted", lambda b: b.decode())
            >> Route(lambda e: [Job("audit", e)])
            >> Queue("audit")
        )
        audited: list[str] = []
        downstream.dequeue("audit", lambda job: audited.append(job.data))
        upstream, _ = make_pipeline()
        upstream.topics.clear()

        @upstream.dequeue("echo", retries=2, backoff=flowline.Backoff(base=0.05))
        async def echo(job):
            await job.emit(downstream, f"sent {job.data}".encode())
            if job.attempt == 1:
                raise ConnectionError("email provider hiccup")
            return "ok"

        async with Runner(flowline.Pipelines(upstream, downstream), settings):
            job_id = await upstream.enqueue("echo", "hi")
            await eventually(lambda: _completed(upstream, job_id))
            await eventually(lambda: audited)
            await asyncio.sleep(0.5)
        assert audited == ["sent hi"]


async def _completed(pipeline, job_id):
    info = await pipeline.queue(pipeline.queues[0].name).job(job_id)
    return info if info is not None and info.state == "completed" else None


class TestFanIn:
    async def test_route_complete_fires_once_when_every_job_of_a_message_finished(self, settings):
        """route:complete comes once per message, after all its jobs (across queues) finished."""
        pipeline = (
            Stream("fanin", lambda b: int(b))
            >> Route(lambda n: [Job("a" if i % 2 else "b", i) for i in range(n)], fan_in=True)
            >> Queue("fanin-a", topics=["a"])
            >> Queue("fanin-b", topics=["b"])
        )
        finished: list[tuple[str, float]] = []
        completes: list[tuple[str, int, float]] = []

        async def work(job):
            await asyncio.sleep(0.05 * job.data)
            finished.append((job.id, time.time()))

        pipeline.dequeue("a", work)

        @pipeline.dequeue("b", retries=0)
        async def b(job):
            if job.data == 2:
                raise ValueError("dead-lettered jobs count as finished")
            await work(job)

        pipeline.on("route:complete", lambda e: completes.append((e.origin, e.jobs, time.time())))
        async with Runner(pipeline, settings):
            await pipeline.publish(b"4")
            await pipeline.publish(b"1")
            await eventually(lambda: len(completes) == 2)
            await asyncio.sleep(0.5)
        assert sorted((o, n) for o, n, _ in completes) == [("fanin:1", 4), ("fanin:2", 1)]
        first_done = next(t for o, _, t in completes if o == "fanin:1")
        assert all(t <= first_done for i, t in finished if i.startswith("fanin:1:"))
        assert len([i for i, _ in finished if i.startswith("fanin:1:")]) == 3


class TestPriority:
    async def test_urgent_jobs_pass_a_backlog_and_concurrency_stays_exact(self, settings):
        """priority > 0 runs before queued normal jobs; concurrency=1 never runs two at once."""
        pipeline = (
            Stream("prio", lambda b: b) >> Route(lambda e: None) >> Queue("prio", concurrency=1)
        )
        order: list[str] = []
        running = [0, 0]  # now, max

        @pipeline.dequeue("work")
        async def work(job):
            running[0] += 1
            running[1] = max(running)
            await asyncio.sleep(0.01)
            order.append(job.data)
            running[0] -= 1

        async with connect(pipeline, settings):
            for i in range(60):
                await pipeline.enqueue("work", f"normal-{i}")
        async with Runner(pipeline, settings):
            await eventually(lambda: len(order) >= 5)
            await pipeline.enqueue("work", "urgent", priority=10)
            await eventually(lambda: len(order) == 61)
        assert running[1] == 1
        position = order.index("urgent")
        assert position < 30, order
        normals = [x for x in order if x != "urgent"]
        assert normals == [f"normal-{i}" for i in range(60)]  # FIFO kept for the rest
