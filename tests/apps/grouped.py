"""A queue whose jobs carry groups, at most one running per group (`group_limit=1`), for tests
that run several `flowline worker` processes. The handler appends ``{"id", "group", "pid",
"event": "start"|"done", "t"}`` to the Redis list ``test:groups`` and sleeps ``data.sleep``."""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

from redis.asyncio import Redis

from flowline import Job, JobContext, Queue, Route, Stream


def router(event: dict[str, Any]) -> list[Job]:
    return [Job("visit", j, group=j["group"]) for j in event["jobs"]]


pipeline = (
    Stream("grouped", json.loads)
    >> Route(router)
    >> Queue("grouped", group_limit=1, visibility_timeout=2)
)
_redis: Redis | None = None


async def note(job: JobContext, event: str) -> None:
    global _redis
    if _redis is None:
        _redis = Redis.from_url(os.environ["FLOWLINE_REDIS_URL"])
    row = {"id": job.id, "group": job.data["group"], "pid": os.getpid(), "event": event,
           "t": time.time()}  # fmt: skip
    await _redis.rpush("test:groups", json.dumps(row))


@pipeline.dequeue("visit")
async def visit(job: JobContext) -> None:
    await note(job, "start")
    await asyncio.sleep(job.data.get("sleep", 0))
    await note(job, "done")
