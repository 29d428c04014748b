"""A pipeline whose handlers record what they did in Redis, for end-to-end and crash tests.

Events are JSON: ``{"jobs": [{"topic": ..., "data": ...}, ...]}`` becomes those jobs;
``{"raise": "why"}`` makes the router raise. Settings come from the environment so one module
serves every test: FLOWLINE_TEST_VISIBILITY, FLOWLINE_TEST_RETRIES, FLOWLINE_TEST_MAX_DELIVER,
FLOWLINE_TEST_ACK_WAIT, FLOWLINE_TEST_REPLICAS, FLOWLINE_TEST_SHARDS, FLOWLINE_TEST_KEEP_COMPLETED.

Every handler run appends ``{"id", "topic", "attempt", "pid", "event", "t"}`` to the Redis list
``test:runs`` (event is "start" or "done"), so tests assert on what handlers really did; in
the Redis at FLOWLINE_TEST_RECORD_URL if set (a failover test keeps its record off the
servers it fails over), else FLOWLINE_REDIS_URL.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

from redis.asyncio import Redis

from flowline import Backoff, Fail, JobContext, Queue, Retry, Route, Settings, Stream
from flowline._settings import is_cluster_url
from flowline.runtime.cluster import connect_cluster

VISIBILITY = float(os.environ.get("FLOWLINE_TEST_VISIBILITY", "2"))
RETRIES = int(os.environ.get("FLOWLINE_TEST_RETRIES", "2"))
MAX_DELIVER = int(os.environ.get("FLOWLINE_TEST_MAX_DELIVER", "2"))
SUBJECT = os.environ.get("FLOWLINE_TEST_SUBJECT", "recorder")

_redis: Redis | None = None


def _client() -> Redis:
    global _redis
    if _redis is None:
        url = os.environ.get("FLOWLINE_TEST_RECORD_URL") or os.environ["FLOWLINE_REDIS_URL"]
        ca = os.environ.get("FLOWLINE_TLS_CA")
        if is_cluster_url(url):  # the worker's own client: the same on a cluster
            settings = Settings(redis_url=url, tls_ca=ca)
            _redis = connect_cluster(settings, 8, settings.redis_connect_options())
        elif url.startswith("rediss"):
            _redis = Redis.from_url(url, ssl_ca_certs=ca)
        else:
            _redis = Redis.from_url(url)
    return _redis


async def record(job: JobContext, event: str, **extra: Any) -> None:
    entry = {
        "id": job.id,
        "topic": job.topic,
        "attempt": job.attempt,
        "pid": os.getpid(),
        "event": event,
        "t": time.time(),
        **extra,
    }
    await _client().rpush("test:runs", json.dumps(entry))


def router(event: dict[str, Any]) -> Any:
    if "raise" in event:
        raise RuntimeError(event["raise"])
    return event.get("jobs", [])


pipeline = (
    Stream(
        SUBJECT,
        json.loads,
        max_deliver=MAX_DELIVER,
        ack_wait=float(os.environ.get("FLOWLINE_TEST_ACK_WAIT", "5")),
        max_payload=64 * 1024,
        replicas=int(os.environ["FLOWLINE_TEST_REPLICAS"])
        if os.environ.get("FLOWLINE_TEST_REPLICAS")
        else None,
    )
    >> Route(router)
    >> Queue(
        "recorder",
        visibility_timeout=VISIBILITY,
        retries=RETRIES,
        backoff=Backoff(base=0.05, cap=0.2),
        timeout=float(os.environ.get("FLOWLINE_TEST_TIMEOUT", "30")),
        shards=int(os.environ.get("FLOWLINE_TEST_SHARDS", "1")),
        keep_completed=float(os.environ.get("FLOWLINE_TEST_KEEP_COMPLETED", "86400")),
    )
)


@pipeline.dequeue("record")
async def record_job(job: JobContext) -> dict[str, Any]:
    await record(job, "start")
    if job.data and job.data.get("sleep"):
        await asyncio.sleep(job.data["sleep"])
    await record(job, "done")
    return {"ok": True, "id": job.id}


@pipeline.dequeue("flaky")
async def flaky(job: JobContext) -> str:
    """Fails until attempt `data.succeed_on`."""
    await record(job, "start")
    if job.attempt < job.data["succeed_on"]:
        raise ConnectionError(f"flaky failure on attempt {job.attempt}")
    await record(job, "done")
    return "recovered"


@pipeline.dequeue("boom")
async def boom(job: JobContext) -> None:
    await record(job, "start")
    raise ValueError("boom")


@pipeline.dequeue("fail-fast")
async def fail_fast(job: JobContext) -> None:
    await record(job, "start")
    raise Fail("not worth retrying")


@pipeline.dequeue("retry-later")
async def retry_later(job: JobContext) -> str:
    await record(job, "start")
    if job.attempt == 1:
        raise Retry(delay=job.data["delay"])
    await record(job, "done")
    return "second time lucky"


@pipeline.dequeue("hang")
async def hang(job: JobContext) -> None:
    await record(job, "start")
    await asyncio.sleep(3600)


@pipeline.dequeue("stubborn")
async def stubborn(job: JobContext) -> str:
    """Ignores a cancellation: goes on `data.after` seconds more, then returns."""
    await record(job, "start")
    try:
        await asyncio.sleep(job.data["sleep"])
    except asyncio.CancelledError:
        await record(job, "ignored-cancel")
        await asyncio.sleep(job.data.get("after", 0.5))
    await record(job, "done")
    return "finished anyway"


@pipeline.dequeue("bad-result")
async def bad_result(job: JobContext) -> object:
    await record(job, "start")
    return {1, 2, 3}


@pipeline.dequeue("progress")
async def progress(job: JobContext) -> str:
    for pct in (25, 50, 75):
        await job.progress(pct)
        await asyncio.sleep(job.data.get("step", 0))
    await record(job, "done")
    return "progressed"
