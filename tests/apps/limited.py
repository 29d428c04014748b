"""A queue with rate limits, for tests that run several `flowline worker` processes: the queue
starts at most 20 jobs a second, topic ``api`` at most 5 a second. Every handler appends
``{"id", "topic", "pid", "t"}`` (its start, epoch seconds) to the Redis list ``test:starts``.
FLOWLINE_TEST_SHARDS shards the queue."""

from __future__ import annotations

import json
import os
import time

from redis.asyncio import Redis

from flowline import JobContext, Queue, Rate, Route, Stream

QUEUE_RATE = Rate(20, per=1.0)
API_RATE = Rate(5, per=1.0)

pipeline = (
    Stream("limited", json.loads)
    >> Route(lambda e: [])
    >> Queue(
        "limited",
        rate=QUEUE_RATE,
        visibility_timeout=2,
        shards=int(os.environ.get("FLOWLINE_TEST_SHARDS", "1")),
    )
)
_redis: Redis | None = None


async def started(job: JobContext) -> None:
    global _redis
    if _redis is None:
        _redis = Redis.from_url(os.environ["FLOWLINE_REDIS_URL"])
    entry = {"id": job.id, "topic": job.topic, "pid": os.getpid(), "t": time.time()}
    await _redis.rpush("test:starts", json.dumps(entry))


@pipeline.dequeue("work")
async def work(job: JobContext) -> None:
    await started(job)


@pipeline.dequeue("api", rate="5/s")
async def api(job: JobContext) -> None:
    await started(job)
