"""`pipeline.preview(event)`: the jobs one event makes, with no server, as the runtime does."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from redis.asyncio import Redis

from examples.fanbase.channels import app
from examples.fanbase.fanbase_pb2 import FanbaseEvent
from examples.fanbase.pipeline import pipeline as fanbase
from flowline import (
    Cron,
    Job,
    Pipeline,
    PipelineError,
    Queue,
    Route,
    RouteError,
    SerializationError,
    Stream,
    UnknownTopicError,
)
from flowline.runtime.cron import CronTick
from flowline.runtime.keys import QueueKeys

from .conftest import eventually

FOLLOWED = {"fan": "fan-1", "talent": "talent-2", "action": "followed"}


async def test_the_preview_is_what_a_real_worker_enqueues(worker: Any, js: Any, redis: Redis):
    """Same ids, topics, queues and data as `flowline worker` writes for the published event."""
    proc = worker("examples.fanbase.pipeline:pipeline", "--only", "stream")  # jobs stay queued
    await proc.ready()
    ack = await js.publish("fanbase", FanbaseEvent(**FOLLOWED).SerializeToString())
    expected = fanbase.preview(FOLLOWED, sequence=ack.seq)
    assert [p.id for p in expected] == [f"fanbase:{ack.seq}:0", f"fanbase:{ack.seq}:1"]

    async def queued() -> list[tuple[str, str, str, Any]] | None:
        keys = QueueKeys("fanbase-notifications")
        entries = await redis.xrange(keys.jobs)
        rows = [
            (f[b"id"].decode(), f[b"topic"].decode(), keys.name, json.loads(f[b"data"]))
            for _, f in entries
        ]
        return rows if len(rows) == len(expected) else None

    assert await eventually(queued) == [(p.id, p.topic, p.queue, p.data) for p in expected]


class TestPreview:
    def test_message_dict_and_bytes_give_the_same_jobs(self) -> None:
        event = FanbaseEvent(**FOLLOWED)
        by_message = fanbase.preview(event)
        assert fanbase.preview(FOLLOWED) == by_message
        assert fanbase.preview(event.SerializeToString()) == by_message
        assert [(p.topic, p.queue, p.handler) for p in by_message] == [
            ("notify-fan-following", "fanbase-notifications", "welcome_fan"),
            ("notify-talent-following", "fanbase-notifications", "engage_talent"),
        ]
        assert by_message[0].data == {"fan": "fan-1", "talent": "talent-2"}

    def test_each_job_goes_to_the_queue_that_owns_its_topic(self) -> None:
        channels = app.pipelines[0]
        queues = {p.topic: p.queue for p in channels.preview(FOLLOWED)}
        assert queues == {
            "notify-fan-following": "fanbase-email",
            "notify-talent-following": "fanbase-email",
            "text-fan-following": "fanbase-sms",
            "post-talent-following": "fanbase-social",
        }

    def test_cron_ticks_key_and_delay(self) -> None:
        pipeline = Cron(timedelta(minutes=5), topic="tick") >> Route(cron_router) >> Queue("c")
        pipeline.dequeue("later")(noop)
        tick = CronTick("tick", datetime(2026, 1, 1, tzinfo=UTC))
        (keyed, delayed) = pipeline.preview(tick)
        assert (keyed.id, keyed.key, keyed.priority) == ("key:daily-1", "daily-1", 5)
        assert (delayed.id, delayed.delay) == ("cron:tick:1767225600000:1", 90.0)
        assert len(pipeline.preview()) == 2  # a tick of now

    async def test_an_async_router_runs_inside_a_running_loop(self) -> None:
        """In a notebook cell (a running loop) the async router still runs."""
        pipeline = Stream("a", json.loads) >> Route(async_router) >> Queue("a")
        pipeline.dequeue("later")(noop)
        (job,) = pipeline.preview({"n": 2})
        assert (job.id, job.data) == ("a:1:0", {"n": 4})

    @pytest.mark.parametrize(
        ("router", "error", "message"),
        [
            (
                lambda e: [Job("nobody", {})],
                UnknownTopicError,
                "no handler dequeues topic 'nobody'",
            ),
            (lambda e: 1 / 0, RouteError, "router raised ZeroDivisionError"),
            (lambda e: [Job("later", {1, 2})], SerializationError, "not JSON-serialisable"),
            (lambda e: "oops", RouteError, "router returned str"),
        ],
    )
    def test_it_raises_what_the_stream_side_would(
        self, router: Any, error: type[Exception], message: str
    ) -> None:
        pipeline = Stream("e", json.loads) >> Route(router, name="r") >> Queue("e")
        pipeline.dequeue("later")(noop)
        with pytest.raises(error, match=message):
            pipeline.preview({})

    def test_a_pipeline_without_a_route_says_so(self) -> None:
        with pytest.raises(PipelineError, match="has no Route to preview"):
            Pipeline([Stream("n", bytes)]).preview(b"x")


def cron_router(tick: CronTick) -> list[Job]:
    return [Job("later", {}, key="daily-1", priority=5), Job("later", {}, delay=90)]


async def async_router(event: dict[str, int]) -> list[Job]:
    await asyncio.sleep(0)
    return [Job("later", {"n": event["n"] * 2})]


def noop(job: Any) -> None:
    return None
