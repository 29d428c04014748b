"""Stream-side bad input: each gets a clear error event and a dead letter, and blocks nothing."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import pytest

from examples.fanbase.fanbase_pb2 import FanbaseEvent
from flowline import (
    DecodeError,
    Event,
    Job,
    Queue,
    Route,
    RouteError,
    Runner,
    SerializationError,
    Stream,
    UnknownTopicError,
)
from flowline.backends.redis import RedisStore
from flowline.runtime.enqueue import plan, write
from flowline.runtime.keys import QueueKeys

from .conftest import eventually


def fanbase(router: Any = None, keep_completed: float = 86400, **stream_opts: Any):
    """A fresh fanbase-like pipeline whose one handler records the jobs it ran."""

    def default_router(event: FanbaseEvent) -> Any:
        yield Job("notify", {"fan": event.fan})

    pipeline = (
        Stream("faults", FanbaseEvent, **stream_opts)
        >> Route(router or default_router)
        >> Queue("faults", visibility_timeout=5, keep_completed=keep_completed)
    )
    ran: list[dict[str, Any]] = []

    @pipeline.dequeue("notify")
    async def notify(job):
        ran.append({"id": job.id, **job.data})

    events: list[Event] = []
    pipeline.on("*", events.append)
    return pipeline, ran, events


def good(fan: str) -> bytes:
    return FanbaseEvent(fan=fan, talent="t", action="followed").SerializeToString()


async def consumer_idle(js, pipeline) -> bool:
    info = await js.consumer_info("faults", pipeline.name)
    return info.num_pending == 0 and info.num_ack_pending == 0


class TestUndecodable:
    @pytest.mark.parametrize(
        ("payload", "message"),
        [
            (b"\xff\xff\xff\xff", "could not decode message"),
            (b"", "empty message"),
            (b"\x0a" + b"x" * 200, "exceeds max_payload"),
        ],
        ids=["garbage", "empty", "too-large"],
    )
    async def test_is_dead_lettered_and_later_messages_still_flow(
        self, settings, js, payload, message
    ):
        """A bad message emits error:decode, is dead-lettered with its payload, blocks nothing."""
        pipeline, ran, events = fanbase(max_payload=100)
        async with Runner(pipeline, settings) as app:
            await js.publish("faults", payload)
            await js.publish("faults", good("after"))
            await eventually(lambda: ran)
            letters = await eventually(lambda: app.dead_letters(pipeline))
            await eventually(lambda: consumer_idle(js, pipeline))
        assert [r["fan"] for r in ran] == ["after"]
        [err] = [e for e in events if e.name == "error:decode"]
        assert isinstance(err.error, DecodeError)
        assert message in str(err.error)
        assert err.stage == "decode"
        assert err.pipeline == pipeline.name
        assert [e.name for e in events].count("error:decode") == 1  # not retried forever
        [letter] = letters
        assert letter.record["stage"] == "decode"
        assert base64.b64decode(letter.record["payload_b64"]) == payload
        assert message in letter.record["error"]
        assert "Traceback" in letter.record["traceback"]


class TestRouterFailures:
    async def test_router_that_keeps_raising_is_dead_lettered_after_max_deliver(self, settings, js):
        """Each delivery emits error:route; after max_deliver it is dead-lettered, not retried."""
        calls: list[str] = []

        def router(event):
            calls.append(event.fan)
            if event.fan == "bad":
                raise LookupError("no such fan")
            return [Job("notify", {"fan": event.fan})]

        pipeline, ran, events = fanbase(router, max_deliver=3)
        async with Runner(pipeline, settings) as app:
            await js.publish("faults", good("bad"))
            await js.publish("faults", good("fine"))
            letters = await eventually(lambda: app.dead_letters(pipeline), timeout=20)
            await eventually(lambda: consumer_idle(js, pipeline))
        assert calls.count("bad") == 3
        assert [r["fan"] for r in ran] == ["fine"]
        route_errors = [e for e in events if e.name == "error:route"]
        assert len(route_errors) == 3
        assert isinstance(route_errors[0].error, RouteError)
        assert "LookupError: no such fan" in str(route_errors[0].error)
        assert isinstance(route_errors[0].error.__cause__, LookupError)
        assert route_errors[0].event.fan == "bad"
        [letter] = letters
        assert letter.record["stage"] == "route"
        assert letter.record["attempts"] == 3

    async def test_router_that_fails_once_is_retried_and_its_jobs_run_once(self, settings, js):
        """A transient router failure redelivers the message; its jobs then run exactly once."""
        failed: list[bool] = []

        def router(event):
            if not failed:
                failed.append(True)
                raise TimeoutError("users service timed out")
            return [Job("notify", {"fan": event.fan}), Job("notify", {"fan": event.fan + "!"})]

        pipeline, ran, _ = fanbase(router)
        async with Runner(pipeline, settings):
            await js.publish("faults", good("x"))
            await eventually(lambda: len(ran) == 2)
            await eventually(lambda: consumer_idle(js, pipeline))
            await asyncio.sleep(0.3)
        assert sorted(r["id"] for r in ran) == ["faults:1:0", "faults:1:1"]

    @pytest.mark.parametrize(
        ("produced", "error_type", "text"),
        [
            (Job("nobody-handles-this"), UnknownTopicError, "no handler dequeues topic"),
            (Job("notify", {"when": object()}), SerializationError, "not JSON-serialisable"),
            ("notify", RouteError, "router returned str"),
        ],
        ids=["unknown-topic", "unserialisable-data", "not-a-job"],
    )
    async def test_bad_router_output_is_an_error_and_a_dead_letter(
        self, settings, js, produced, error_type, text
    ):
        """Unknown topics, non-JSON data and non-jobs are caught at routing time, never orphaned."""

        def router(event):
            if event.fan == "bad":
                return [produced] if isinstance(produced, Job) else produced
            return [Job("notify", {"fan": event.fan})]

        pipeline, ran, events = fanbase(router, max_deliver=2)
        async with Runner(pipeline, settings) as app:
            await js.publish("faults", good("bad"))
            await js.publish("faults", good("ok"))
            [letter] = await eventually(lambda: app.dead_letters(pipeline), timeout=20)
            await eventually(lambda: ran)
        errors = [e for e in events if e.name == "error:route"]
        assert errors
        assert isinstance(errors[0].error, error_type)
        assert text in str(errors[0].error)
        assert letter.record["stage"] == "route"
        assert [r["fan"] for r in ran] == ["ok"]


class TestRedelivery:
    async def test_redelivered_message_does_not_duplicate_jobs_already_queued(
        self, settings, js, redis
    ):
        """If a process died after enqueueing but before acking, redelivery adds no second copy."""
        pipeline, ran, _ = fanbase(lambda e: [Job("notify", {"fan": e.fan})] * 3)
        ack = await js.publish("faults", good("once")) if await _stream(js) else None
        assert ack is not None
        # What the crashed process had written: the same ids the redelivery will compute.
        rows = plan(
            pipeline, [Job("notify", {"fan": "once"})] * 3, f"faults:{ack.seq}", "stream", "r"
        )
        assert await write(RedisStore(redis), rows) == 3
        async with Runner(pipeline, settings):
            await eventually(lambda: consumer_idle(js, pipeline))
            await eventually(lambda: len(ran) == 3)
            await asyncio.sleep(0.3)
        assert sorted(r["id"] for r in ran) == ["faults:1:0", "faults:1:1", "faults:1:2"]
        assert await write(RedisStore(redis), rows) == 0
        assert await redis.xlen(QueueKeys("faults").jobs) == 0

    async def test_with_no_records_kept_a_message_whose_jobs_finished_runs_nothing_again(
        self, settings, js, redis
    ):
        """With `keep_completed=0` no record is left to recognise a job by: its dedup mark
        skips a redelivered message's jobs that already ran, keyed ones too; once the message
        is acked the stream side forgets the marks, and Redis keeps nothing of the jobs."""
        jobs = [Job("notify", {"fan": "once", "n": n}) for n in range(2)]
        jobs.append(Job("notify", {"fan": "once", "n": 2}, key="once"))
        pipeline, ran, _ = fanbase(lambda e: jobs, keep_completed=0)
        ack = await js.publish("faults", good("once")) if await _stream(js) else None
        assert ack is not None
        # What a process that died before its ack had written, then its jobs all ran.
        rows = plan(pipeline, jobs, f"faults:{ack.seq}", "stream", "r", source="faults", seq=1)
        assert await write(RedisStore(redis), rows) == 3
        async with Runner(pipeline, settings, only=["queue"]):
            await eventually(lambda: len(ran) == 3)
        keys = QueueKeys("faults")
        assert [await redis.exists(keys.job(r.id)) for r in rows] == [0, 0, 0]
        assert await redis.zrange(keys.marks("faults"), 0, -1) == [b"1:s"]  # one per message
        # The redelivery: routed again into the same ids, and skipped.
        async with Runner(pipeline, settings):
            await eventually(lambda: consumer_idle(js, pipeline))

            async def forgotten() -> bool:
                return await redis.zcard(keys.marks("faults")) == 0

            await eventually(forgotten, timeout=5)
            await asyncio.sleep(0.3)
        assert sorted(r["id"] for r in ran) == ["faults:1:0", "faults:1:1", "key:once"]
        assert await redis.keys("flowline:{faults}:job:*") == []

    async def test_without_marks_a_finished_job_would_run_again(self, settings, js, redis):
        """What the marks prevent: the same rows written with no source have no mark, so
        once their records are gone the same ids are new again."""
        pipeline, ran, _ = fanbase(keep_completed=0)
        rows = plan(pipeline, [Job("notify", {"fan": "x"})], "faults:9", "stream", "r")
        assert await write(RedisStore(redis), rows) == 1
        async with Runner(pipeline, settings, only=["queue"]):
            await eventually(lambda: len(ran) == 1)
        assert await write(RedisStore(redis), rows) == 1


async def _stream(js) -> bool:
    from flowline.backends.jetstream import ensure_stream

    await ensure_stream(js, "faults")
    return True


async def test_listener_that_raises_never_breaks_the_pipeline(settings, js):
    """A listener raising on every event is logged; jobs still run, other listeners still hear."""
    pipeline, ran, events = fanbase()

    def bad_listener(event: Event) -> None:
        raise RuntimeError("listener bug")

    async def bad_async_listener(event: Event) -> None:
        raise RuntimeError("async listener bug")

    pipeline.on("*", bad_listener)
    pipeline.on("job:complete", bad_async_listener)
    async with Runner(pipeline, settings):
        await js.publish("faults", good("a"))
        await eventually(lambda: [e for e in events if e.name == "job:complete"])
    assert [r["fan"] for r in ran] == ["a"]
    names = [e.name for e in events]
    for name in ("stream", "route", "job:start", "job:complete"):
        assert name in names
    complete = next(e for e in events if e.name == "job:complete")
    assert complete.stage == "job"
    assert complete.pipeline == pipeline.name
    assert complete.id == "faults:1:0"
    json.dumps(complete.result)
