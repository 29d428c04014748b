"""Figure 12, queues: the worker figure's no-op jobs spread over 20 queues in one process.

Twenty pipelines, each ending in a queue of its own (``bench-0`` ... ``bench-19``), run by one
process as `Runner` runs them: a `QueueWorker` per queue, each with the default concurrency,
all on one Redis client and its pool (``many``); against the same jobs on one queue
(``single``). Each side reports the Redis connections its process held at the end of the run
(``CLIENT LIST``, by the client name its pool gives every connection) and the pool's bound.
Target: >= 0.8x the one-queue figure, with connections bounded by the pool.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from redis.asyncio import Redis

from flowline.runtime.keys import GROUP, QueueKeys

from . import common, worker

QUEUES = 20


def _names(queues: int) -> list[str]:
    return [f"{worker.QUEUE}-{i}" for i in range(queues)]


async def prepare(nats_url: str, redis_url: str, jobs: int, queues: int) -> None:
    """Empty Redis, then enqueue `jobs` no-op jobs dealt round the queues in turn."""
    await common.reset(nats_url, redis_url)
    redis = Redis.from_url(redis_url)
    names = _names(queues)
    for k, name in enumerate(names):
        await common.prefill(redis, name, [f"bench:{i}" for i in range(k, jobs, queues)], "noop")
    held = sum([int(await redis.xlen(QueueKeys(name).jobs)) for name in names])
    await redis.aclose()
    if held != jobs:
        raise RuntimeError(f"prefilled {held} jobs, not {jobs}")
    await common.compact(redis_url)


async def _drain(nats_url: str, redis_url: str, jobs: int, queues: int) -> dict[str, Any]:
    from flowline import Queue, Route, Settings, Stream
    from flowline.backends.redis import RedisStore
    from flowline.runtime.connections import connect_redis
    from flowline.runtime.worker import QueueWorker

    common.observe(metrics=False, logs=False)
    name = f"bench-side-{os.getpid()}"
    settings = Settings(nats_url=nats_url, redis_url=redis_url)
    # The pool `Runner._pool_size` gives a process running these queues.
    redis = await connect_redis(settings, 32 + 4 * queues, name=name)
    store = RedisStore(redis)
    workers = []
    for queue_name in _names(queues):
        queue = Queue(queue_name)
        pipeline = (
            Stream(f"src-{queue_name}", bytes) >> Route(lambda event: None, name="none") >> queue
        )

        @pipeline.dequeue("noop")
        async def noop(job: Any) -> None:
            return None

        workers.append(QueueWorker(pipeline, queue, store))
    for w in workers:
        await w.setup()
    stop = asyncio.Event()
    window = common.Window()
    tasks = [asyncio.create_task(w.run(stop, 5.0)) for w in workers]
    for queue_name in _names(queues):
        await worker._acked(redis, QueueKeys(queue_name).jobs, GROUP)
    window.close()
    held = sum(1 for c in await redis.client_list() if c.get("name") == name)
    stop.set()
    await asyncio.gather(*tasks)
    completed = await common.completed(redis, _names(queues))
    bound = redis.connection_pool.max_connections
    await redis.aclose()
    return window.result(jobs, completed=completed, connections=held, pool=bound)


async def many(nats_url: str, redis_url: str, jobs: int) -> dict[str, Any]:
    return await _drain(nats_url, redis_url, jobs, QUEUES)


async def single(nats_url: str, redis_url: str, jobs: int) -> dict[str, Any]:
    return await _drain(nats_url, redis_url, jobs, 1)


SIDES = {"many": many, "single": single}
