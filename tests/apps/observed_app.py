"""Four queues at full concurrency whose handlers report progress: the observability app.

Events are JSON ``{"n": <int>, "fail": <bool>}``; each becomes one job per queue (topics
``a``..``d``). Handlers report progress five times, sleeping a little in between, so a worker
at the default concurrency (50 per queue) holds 200 handlers calling Redis at once. A job
whose data says ``fail`` raises on every attempt (and is dead-lettered).
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

from flowline import Backoff, Job, JobContext, Queue, Route, Stream

SUBJECT = os.environ.get("FLOWLINE_TEST_SUBJECT", "observed")
TOPICS = ("a", "b", "c", "d")
STEP = float(os.environ.get("FLOWLINE_TEST_STEP", "0.01"))


def router(event: dict[str, Any]) -> Any:
    for topic in TOPICS:
        yield Job(topic, event)


def _queue(topic: str) -> Queue:
    return Queue(
        f"observed-{topic}",
        topics=[topic],
        visibility_timeout=5,
        retries=1,
        backoff=Backoff(base=0.05),
    )


pipeline = Stream(SUBJECT, json.loads, ack_wait=5) >> Route(router)
for _topic in TOPICS:
    pipeline = pipeline >> _queue(_topic)
pipeline = pipeline.named("observed")


async def handle(job: JobContext) -> dict[str, Any]:
    for step in range(5):
        await job.progress(step * 20)
        await asyncio.sleep(STEP)
    if job.data.get("fail"):
        raise RuntimeError("asked to fail")
    return {"n": job.data.get("n")}


for _topic in TOPICS:
    pipeline.dequeue(_topic)(handle)
