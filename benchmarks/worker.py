"""Figure 2, worker: drain a queue prefilled with N no-op jobs.

flowline's `QueueWorker` (concurrency 50, batch 100) against three loops that do the same job
with less: ``raw`` (XREADGROUP COUNT 100, run, XACK: the floor, ~what Redis allows), ``same``
(the same reads plus flowline's own COMPLETE script per batch, so its ratio isolates flowline's
Python overhead) and ``taskiq`` (stock taskiq: `RedisStreamBroker` drained by its `Receiver`).
Jobs are prefilled before the side starts; the clock runs from the worker's start to the moment
the last job is acknowledged.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from flowline.runtime.keys import GROUP, QueueKeys
from flowline.runtime.scripts import COMPLETE, ENQUEUE

from . import common

QUEUE = "bench"
TOPIC = "noop"
BATCH = 100
CONCURRENCY = 50


async def prepare(nats_url: str, redis_url: str, jobs: int) -> None:
    """Empty Redis, then enqueue `jobs` no-op jobs with flowline's ENQUEUE script."""
    await common.reset(nats_url, redis_url)
    redis = Redis.from_url(redis_url)
    keys = QueueKeys(QUEUE)
    for stream in keys.streams:
        await redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
    script = redis.register_script(ENQUEUE)
    now = str(int(time.time() * 1000))
    pipe = redis.pipeline(transaction=False)
    for first in range(0, jobs, 1000):
        args: list[str | int] = [keys.job_prefix, now]
        for i in range(first, min(jobs, first + 1000)):
            args += (f"bench:{i}", TOPIC, "{}", 0, "direct", now, "")
        await script(keys=[keys.jobs, keys.delayed], args=args, client=pipe)
    await pipe.execute()
    stored = await redis.xlen(keys.jobs)
    if stored != jobs:
        raise RuntimeError(f"prefilled {stored} jobs, not {jobs}")
    await redis.aclose()


async def _acked(redis: Redis, stream: str, group: str) -> None:
    """Wait until `group` has read `stream` to its last entry and has nothing pending.

    Not ``entries-read`` nor XLEN: both go blank or wrong once entries are deleted (flowline
    deletes each job's entry as it completes it, taskiq does not).
    """

    async def done() -> bool:
        pipe = redis.pipeline(transaction=False)
        pipe.xinfo_stream(stream)
        pipe.xinfo_groups(stream)
        try:
            info, groups = await pipe.execute()
        except ResponseError:
            return False  # no stream yet
        ours = next((g for g in groups if g["name"] in (group, group.encode())), None)
        return (
            ours is not None
            and ours["last-delivered-id"] == info["last-generated-id"]
            and ours["pending"] == 0
        )

    await common.until(done, within=300, what=f"every job on {stream} acknowledged")


async def flowline(nats_url: str, redis_url: str, jobs: int) -> dict[str, Any]:
    """flowline's `QueueWorker` with a no-op async handler, default concurrency and batch."""
    from flowline import Queue, Route, Settings, Stream
    from flowline.runtime.runner import connect_redis
    from flowline.runtime.scripts import Scripts
    from flowline.runtime.worker import QueueWorker

    queue = Queue(QUEUE)
    pipeline = Stream("bench-noop", bytes) >> Route(lambda event: None, name="none") >> queue

    @pipeline.dequeue(TOPIC)
    async def noop(job: Any) -> None:
        return None

    redis = await connect_redis(Settings(nats_url=nats_url, redis_url=redis_url))
    worker = QueueWorker(pipeline, queue, redis, Scripts(redis))
    await worker.setup()
    stop = asyncio.Event()
    window = common.Window()
    task = asyncio.create_task(worker.run(stop, 5.0))
    await _acked(redis, QueueKeys(QUEUE).jobs, GROUP)
    window.close()
    stop.set()
    await task
    completed = await _completed(redis)
    await redis.aclose()
    return window.result(jobs, completed=completed)


async def _completed(redis: Redis) -> int:
    """How many job records say completed (every job must, or the figure is void)."""
    keys = QueueKeys(QUEUE)
    pipe = redis.pipeline(transaction=False)
    count = 0
    async for key in redis.scan_iter(match=keys.job_prefix + "*", count=1000):
        pipe.hget(key, "state")
    for state in await pipe.execute():
        count += state == b"completed"
    return count


async def _handler(data: Any) -> None:
    return None


async def raw(nats_url: str, redis_url: str, jobs: int) -> dict[str, Any]:
    """XREADGROUP COUNT 100, decode and await a no-op per job, one XACK per batch."""
    redis = Redis.from_url(redis_url)
    stream = QueueKeys(QUEUE).jobs
    done = 0
    window = common.Window()
    while done < jobs:
        reply = await redis.xreadgroup(GROUP, "raw", {stream: ">"}, count=BATCH, block=500)
        for _, entries in reply or ():
            for _, fields in entries:
                await _handler(json.loads(fields[b"data"]))
            await redis.xack(stream, GROUP, *(entry for entry, _ in entries))
            done += len(entries)
    window.close()
    await redis.aclose()
    return window.result(jobs, completed=done)


async def same(nats_url: str, redis_url: str, jobs: int) -> dict[str, Any]:
    """The raw loop, completing each batch with flowline's COMPLETE script (same Redis work)."""
    redis = Redis.from_url(redis_url)
    keys = QueueKeys(QUEUE)
    complete = redis.register_script(COMPLETE)
    done = 0
    window = common.Window()
    while done < jobs:
        reply = await redis.xreadgroup(GROUP, "same", {keys.jobs: ">"}, count=BATCH, block=500)
        for _, entries in reply or ():
            rows: list[Any] = [GROUP, keys.job_prefix, int(time.time() * 1000), 86400]
            for entry, fields in entries:
                result = await _handler(json.loads(fields[b"data"]))
                rows += (entry, fields[b"id"], json.dumps(result))
            await complete(keys=[keys.jobs], args=rows)
            done += len(entries)
    window.close()
    completed = await _completed(redis)
    await redis.aclose()
    return window.result(jobs, completed=completed)


async def taskiq_kick(nats_url: str, redis_url: str, jobs: int) -> dict[str, Any]:
    """Kick `jobs` no-op taskiq tasks (the prefill of the taskiq side, not measured)."""
    os.environ["FLOWLINE_BENCH_REDIS_URL"] = redis_url
    from .taskiq_app import broker, noop

    await common.reset(nats_url, redis_url)
    await broker.startup()
    for first in range(0, jobs, 500):
        await asyncio.gather(*(noop.kiq() for _ in range(first, min(jobs, first + 500))))
    await broker.shutdown()
    return {"kicked": jobs}


async def taskiq(nats_url: str, redis_url: str, jobs: int) -> dict[str, Any]:
    """Stock taskiq: its own `Receiver` drains the broker, 50 tasks at a time."""
    from taskiq.receiver import Receiver

    os.environ["FLOWLINE_BENCH_REDIS_URL"] = redis_url
    from .taskiq_app import broker

    redis = Redis.from_url(redis_url)
    finish = asyncio.Event()
    receiver = Receiver(broker, max_async_tasks=CONCURRENCY)
    window = common.Window()
    task = asyncio.create_task(receiver.listen(finish))
    await _acked(redis, broker.queue_name, broker.consumer_group_name)
    window.close()
    finish.set()
    await task
    await broker.shutdown()
    await redis.aclose()
    return window.result(jobs, completed=jobs)


SIDES = {
    "flowline": flowline,
    "raw": raw,
    "same": same,
    "taskiq_kick": taskiq_kick,
    "taskiq": taskiq,
}
