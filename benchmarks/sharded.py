"""Figure 8, sharded: the worker figure's no-op jobs on ``Queue(shards=4)`` against one queue.

The parent prefills the jobs, placed as flowline places them (by id, crc32) and counted per
shard; the side drains them as `Runner` does: one `QueueWorker` per shard, each with its share
of the concurrency (``sharded``), or one `QueueWorker` on the unsharded queue (``single``).
Each side also reports Redis's own CPU time per job (INFO cpu, before and after): on one Redis
the shards share its one core, so this is what one primary spends per job, from which the
throughput of a queue spread over more primaries follows.
"""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio import Redis

from flowline import Queue
from flowline.runtime.keys import GROUP, QueueKeys

from . import common, worker

QUEUE = "bench"
SHARDS = 4


def _queue(shards: int) -> Queue:
    return Queue(QUEUE, shards=shards)


async def prepare(nats_url: str, redis_url: str, jobs: int, shards: int) -> dict[str, int]:
    """Empty Redis, then enqueue `jobs` no-op jobs where `Queue(shards=...)` places them;
    returns how many each shard holds."""
    await common.reset(nats_url, redis_url)
    redis = Redis.from_url(redis_url)
    queue = _queue(shards)
    by_shard: dict[str, list[str]] = {name: [] for name in queue.shard_names}
    for i in range(jobs):
        job_id = f"bench:{i}"
        by_shard[queue.shard_for(job_id, None)].append(job_id)
    for name, ids in by_shard.items():
        await common.prefill(redis, name, ids, worker.TOPIC)
    held = {name: int(await redis.xlen(QueueKeys(name).jobs)) for name in queue.shard_names}
    if sum(held.values()) != jobs:
        raise RuntimeError(f"prefilled {sum(held.values())} jobs, not {jobs}")
    await redis.aclose()
    await common.compact(redis_url)
    return held


async def _drain(nats_url: str, redis_url: str, jobs: int, shards: int) -> dict[str, Any]:
    from flowline import Route, Settings, Stream
    from flowline.backends.redis import RedisStore
    from flowline.runtime.connections import connect_redis
    from flowline.runtime.worker import QueueWorker

    common.observe(metrics=False, logs=False)
    queue = _queue(shards)
    pipeline = Stream("bench-noop", bytes) >> Route(lambda event: None, name="none") >> queue

    @pipeline.dequeue(worker.TOPIC)
    async def noop(job: Any) -> None:
        return None

    redis = await connect_redis(Settings(nats_url=nats_url, redis_url=redis_url))
    store = RedisStore(redis)
    workers = [QueueWorker(pipeline, queue, store, shard=name) for name in queue.shard_names]
    for w in workers:
        await w.setup()
    stop = asyncio.Event()
    cpu_before = await common.redis_cpu(redis)
    window = common.Window()
    tasks = [asyncio.create_task(w.run(stop, 5.0)) for w in workers]
    for name in queue.shard_names:
        await worker._acked(redis, QueueKeys(name).jobs, GROUP)
    window.close()
    server_cpu = await common.redis_cpu(redis) - cpu_before
    stop.set()
    await asyncio.gather(*tasks)
    completed = await common.completed(redis, queue.shard_names)
    await redis.aclose()
    return window.result(jobs, completed=completed, redis_us=server_cpu / jobs * 1e6)


async def sharded(nats_url: str, redis_url: str, jobs: int) -> dict[str, Any]:
    return await _drain(nats_url, redis_url, jobs, SHARDS)


async def single(nats_url: str, redis_url: str, jobs: int) -> dict[str, Any]:
    return await _drain(nats_url, redis_url, jobs, 1)


SIDES = {"sharded": sharded, "single": single}
