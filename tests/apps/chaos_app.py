"""The chaos suite's pipeline: events fan out into jobs whose handlers record every run in Redis.

An event is JSON ``{"n": <event number>, "jobs": k}``; the router turns it into k ``work``
jobs with data ``{"n": n, "i": index}`` that take 0-20 ms each. Optional fields vary the path a
job takes: ``"slow": seconds`` makes job 0 sleep that long (so a SIGKILL often lands while a
job runs), ``"flaky": true`` makes job 0 raise on its first attempt (a retry through the
delayed set), ``"urgent": true`` gives the last job priority 1 (the urgent stream).

Every run writes records into the Redis hash ``chaos:runs``: ``<run>:start`` and, if the
handler got that far, ``<run>:done`` (or ``<run>:failed`` for a planned failure), where
``<run>`` is a token unique to that one call of the handler. Each record is JSON with ``run``,
``id``, ``n``, ``i``, ``attempt``, ``pid``, ``created``, ``event`` and ``t``; ``created`` is the
``created`` field of the job's own hash, written once by the enqueue script. Records are field
writes, not list pushes, so a write retried after Redis dropped the connection (the reply lost,
the write perhaps applied) cannot count one run twice.

Settings come from the environment: FLOWLINE_CHAOS_VISIBILITY (queue visibility timeout,
default 3 s), FLOWLINE_CHAOS_ACK_WAIT (stream ack wait, default 3 s), FLOWLINE_CHAOS_SUBJECT.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
import uuid
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from flowline import Backoff, Job, JobContext, Queue, Route, Stream
from flowline.runtime.keys import QueueKeys

VISIBILITY = float(os.environ.get("FLOWLINE_CHAOS_VISIBILITY", "3"))
ACK_WAIT = float(os.environ.get("FLOWLINE_CHAOS_ACK_WAIT", "3"))
SUBJECT = os.environ.get("FLOWLINE_CHAOS_SUBJECT", "chaos")
QUEUE = "chaos"
RUNS = "chaos:runs"
FAST = 0.020

_redis: Redis | None = None


def _client() -> Redis:
    global _redis
    if _redis is None:
        _redis = Redis.from_url(os.environ["FLOWLINE_REDIS_URL"])
    return _redis


async def _persist(call: Any, deadline: float = 60.0) -> Any:
    """Run one idempotent Redis call, retrying while Redis restarts.

    The records are the suite's instrument, not the system under test: a handler must not
    fail because its bookkeeping could not reach Redis for a second.
    """
    give_up = time.monotonic() + deadline
    while True:
        try:
            return await call(_client())
        except (RedisError, OSError):
            if time.monotonic() > give_up:
                raise
            await asyncio.sleep(0.1)


async def _record(run: str, event: str, job: JobContext, created: str) -> None:
    entry = {
        "run": run,
        "id": job.id,
        "n": job.data["n"],
        "i": job.data["i"],
        "attempt": job.attempt,
        "pid": os.getpid(),
        "created": created,
        "event": event,
        "t": time.time(),
    }
    await _persist(lambda r: r.hset(RUNS, f"{run}:{event}", json.dumps(entry)))


def router(event: dict[str, Any]) -> list[Job]:
    k = event["jobs"]
    return [
        Job(
            "work",
            {
                "n": event["n"],
                "i": i,
                "slow": event.get("slow", 0) if i == 0 else 0,
                "flaky": bool(event.get("flaky")) and i == 0,
            },
            priority=1 if event.get("urgent") and i == k - 1 else 0,
        )
        for i in range(k)
    ]


class PlannedFailure(Exception):
    """Raised by a flaky job on its first attempt."""


pipeline = (
    Stream(SUBJECT, json.loads, ack_wait=ACK_WAIT, batch=64)
    >> Route(router)
    >> Queue(
        QUEUE,
        visibility_timeout=VISIBILITY,
        concurrency=20,
        retries=20,  # a long job may be hit by several kills in a row; none may end dead
        backoff=Backoff(base=0.05, cap=0.2),
        timeout=90,
    )
).named("chaos")


@pipeline.dequeue("work")
async def work(job: JobContext) -> dict[str, Any]:
    run = uuid.uuid4().hex
    raw = await _persist(lambda r: r.hget(QueueKeys(QUEUE).job(job.id), "created"))
    created = raw.decode() if raw is not None else ""
    await _record(run, "start", job, created)
    await asyncio.sleep(job.data["slow"] or random.uniform(0, FAST))
    if job.data["flaky"] and job.attempt == 1:
        await _record(run, "failed", job, created)
        raise PlannedFailure(f"{job.id} fails its first attempt")
    await _record(run, "done", job, created)
    return {"n": job.data["n"], "i": job.data["i"]}
