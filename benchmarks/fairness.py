"""Figure 5, fairness: how long one job waits behind a busy group.

A queue is prefilled with N no-op jobs of one group ("hot"), then one job of another ("lone")
is enqueued once a tenth of them ran, while one `QueueWorker` (concurrency 50, batch 100)
drains them. ``grouped`` runs
it with ``Queue(group_limit=10)`` and the jobs carrying their groups, so the hot group has at
most 10 jobs in the ready stream at once; ``fifo`` is the same worker and jobs without groups,
where the lone job waits behind every hot job enqueued before it. The figure is the lone job's
wait, from its enqueue to its handler starting, in ms. Each side also reports how fast the hot
group drained (jobs/s), which a group limit of 10 bounds by design.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from . import common

QUEUE = "fair"
LIMIT = 10
HEAD_START = 0.1  # share of the hot jobs the worker finishes before the lone one comes


async def _side(nats_url: str, redis_url: str, jobs: int, *, grouped: bool) -> dict[str, Any]:
    from flowline import Job, Queue, Route, Settings, Stream
    from flowline.backends.redis import RedisStore
    from flowline.runtime.connections import connect_redis
    from flowline.runtime.enqueue import plan
    from flowline.runtime.worker import QueueWorker

    await common.reset(nats_url, redis_url)
    queue = Queue(QUEUE, group_limit=LIMIT)
    pipeline = Stream("bench-fair", bytes) >> Route(lambda event: None, name="none") >> queue
    lone_started: list[float] = []
    done, under_way = asyncio.Event(), asyncio.Event()
    finished = 0

    @pipeline.dequeue("noop")
    async def noop(job: Any) -> None:
        nonlocal finished
        if job.data.get("lone"):
            lone_started.append(time.time())
        finished += 1
        if finished >= jobs * HEAD_START:
            under_way.set()
        if finished == jobs + 1:
            done.set()

    redis = await connect_redis(Settings(nats_url=nats_url, redis_url=redis_url))
    store = RedisStore(redis)
    await store.setup(QUEUE)
    hot = "hot" if grouped else None
    now = int(time.time() * 1000)
    for first in range(0, jobs, 1000):
        batch = [Job("noop", {"n": i}, group=hot) for i in range(first, min(jobs, first + 1000))]
        await store.enqueue(QUEUE, plan(pipeline, batch, f"hot{first}", "direct", "x"), now)
    worker = QueueWorker(pipeline, queue, store)
    await worker.setup()
    stop = asyncio.Event()
    started = time.time()
    task = asyncio.create_task(worker.run(stop, 5.0))
    await asyncio.wait_for(under_way.wait(), 300)  # the lone job comes in the middle
    lone = Job("noop", {"lone": True}, group="lone" if grouped else None)
    asked = time.time()
    await store.enqueue(QUEUE, plan(pipeline, [lone], "lone", "direct", "x"), int(asked * 1000))
    await asyncio.wait_for(done.wait(), 300)
    drained = time.time()
    stop.set()
    await task
    await redis.aclose()
    return {
        "wait_ms": (lone_started[0] - asked) * 1000,
        "hot_per_s": jobs / (drained - started),
        "behind": worker.completed,
    }


async def grouped(nats_url: str, redis_url: str, jobs: int) -> dict[str, Any]:
    return await _side(nats_url, redis_url, jobs, grouped=True)


async def fifo(nats_url: str, redis_url: str, jobs: int) -> dict[str, Any]:
    return await _side(nats_url, redis_url, jobs, grouped=False)


SIDES = {"grouped": grouped, "fifo": fifo}
