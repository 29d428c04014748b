"""A pipeline with a repeatable job (`pipeline.cron`): every second, one `beat` job, whose
handler appends ``{"id", "data", "pid"}`` to the Redis list ``test:beats``."""

from __future__ import annotations

import json
import os
from typing import Any

from redis.asyncio import Redis

from flowline import CronTick, JobContext, Queue, Route, Stream

pipeline = Stream("repeating", json.loads) >> Route(lambda e: []) >> Queue("repeating")


def beat_data(tick: CronTick) -> dict[str, Any]:
    return {"second": tick.scheduled.second}


pipeline.cron("beat", 1, on_emit=beat_data)


@pipeline.dequeue("beat")
async def beat(job: JobContext) -> dict[str, Any]:
    redis = Redis.from_url(os.environ["FLOWLINE_REDIS_URL"])
    entry = {"id": job.id, "data": job.data, "pid": os.getpid()}
    await redis.rpush("test:beats", json.dumps(entry))
    await redis.aclose()
    return job.data  # type: ignore[no-any-return]
