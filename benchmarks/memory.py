"""Figure 9, Redis memory: the bytes Redis keeps per completed job, for each `keep_completed`.

The ingest figure's N events are stored on the stream first (JetStream's disk, not Redis). A side
runs `StreamIngest` and a `QueueWorker` (no-op handlers) in one process, as `Runner` does, until
every job has completed and the stream side has forgotten the acked messages' dedup marks; it
samples Redis's ``used_memory`` every 50 ms. Then the parent sums MEMORY USAGE over every key
left (all elements counted): retained per job = that / jobs. It also gives the growth of
``used_memory`` from just before the side to after it, which adds what a run leaves in Redis
whatever its size (the Lua heap, loaded scripts, the keyspace's grown hash table). Sides:

- ``day``: ``Queue(keep_completed=86400)``, the default: each completed job keeps its record
  (state, result, times) for a day, so Redis holds throughput x a day of them;
- ``none``: ``Queue(keep_completed=0)``: a completed job leaves nothing; a redelivered message's
  jobs are still skipped, by dedup marks that live until the message is acked.

Also reported: the peak above the start while the side ran (the work in flight: queued jobs and
their marks), jobs/s, and Redis's CPU per job. Target (issue 12): with no records kept,
retained memory bounded by work in flight, not by throughput x window: about 0 bytes per job
once drained. The cost of the marks in Redis is its own pair of sides: ``marked`` and ``plain``
write the same jobs with flowline's ENQUEUE, with and without the marks key, in a hand-written
pipelined loop; the difference of Redis CPU per job is what marks cost the server.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from redis.asyncio import Redis

from examples.fanbase.fanbase_pb2 import FanbaseEvent
from flowline.runtime.keys import QueueKeys
from flowline.runtime.scripts import ENQUEUE

from . import common, ingest

QUEUE = ingest.QUEUE
prepare = ingest.prepare
SAMPLE_S = 0.05
ENQUEUE_JOBS = 200_000  # the marks sides: jobs written per side


async def used_memory(redis_url: str) -> int:
    """Redis's ``used_memory``, after giving freed pages back (MEMORY PURGE)."""
    redis = Redis.from_url(redis_url)
    try:
        await redis.execute_command("MEMORY", "PURGE")
        return int((await redis.info("memory"))["used_memory"])
    finally:
        await redis.aclose()


async def key_bytes(redis_url: str) -> int:
    """What every key in Redis takes (MEMORY USAGE, every element counted)."""
    redis = Redis.from_url(redis_url)
    total = 0
    try:
        batch: list[bytes] = []
        async for key in redis.scan_iter(count=1000):
            batch.append(key)
            if len(batch) == 1000:
                total += await _usage(redis, batch)
                batch = []
        return total + await _usage(redis, batch)
    finally:
        await redis.aclose()


async def _usage(redis: Redis, keys: list[bytes]) -> int:
    pipe = redis.pipeline(transaction=False)
    for key in keys:
        pipe.memory_usage(key, samples=0)
    return sum(int(n or 0) for n in await pipe.execute())


async def _run(nats_url: str, redis_url: str, events: int, keep: int) -> dict[str, Any]:
    from examples.fanbase.pipeline import router
    from flowline import Queue, Route, Settings, Stream
    from flowline.backends.jetstream import JetStreamSource
    from flowline.backends.redis import RedisStore
    from flowline.runtime.connections import connect_nats, connect_redis
    from flowline.runtime.ingest import StreamIngest
    from flowline.runtime.worker import QueueWorker

    common.observe(metrics=False, logs=False)
    queue = Queue(QUEUE, keep_completed=keep)
    pipeline = Stream(ingest.SUBJECT, FanbaseEvent) >> Route(router) >> queue
    done = 0

    async def count(job: Any) -> None:
        nonlocal done
        done += 1

    for topic in (*common.FOLLOWED, "confirm-fan-unfollowing"):
        pipeline.dequeue(topic, count)
    settings = Settings(nats_url=nats_url, redis_url=redis_url)
    nc = await connect_nats(settings)
    js = nc.jetstream()
    redis = await connect_redis(settings)
    store = RedisStore(redis)
    source = pipeline.source
    assert isinstance(source, Stream)
    side = StreamIngest(pipeline, source, JetStreamSource(ingest._ready(js)), store)
    await side.setup()
    worker = QueueWorker(pipeline, queue, store)
    await worker.setup()
    marks = QueueKeys(QUEUE).marks(side.stream_name)
    start = peak = int((await redis.info("memory"))["used_memory"])
    stop = asyncio.Event()
    jobs = 2 * events
    cpu_before = await common.redis_cpu(redis)
    window = common.Window()
    tasks = [asyncio.create_task(side.run(stop)), asyncio.create_task(worker.run(stop, 5.0))]
    while done < jobs:
        await asyncio.sleep(SAMPLE_S)
        peak = max(peak, int((await redis.info("memory"))["used_memory"]))
    window.close()
    server_cpu = await common.redis_cpu(redis) - cpu_before

    async def forgotten() -> bool:
        return await redis.zcard(marks) == 0

    forgetting = time.perf_counter()
    await common.until(forgotten, within=30, what="the acked messages' marks forgotten")
    forgot_s = time.perf_counter() - forgetting
    stop.set()
    await asyncio.gather(*tasks)
    records = 0
    async for _ in redis.scan_iter(match=QueueKeys(QUEUE).job_prefix + "*", count=1000):
        records += 1
    await nc.close()
    await redis.aclose()
    return window.result(
        jobs, done=done, records=records, peak=peak - start, forgot_s=forgot_s,
        redis_us=server_cpu / jobs * 1e6,
    )  # fmt: skip


async def day(nats_url: str, redis_url: str, events: int) -> dict[str, Any]:
    return await _run(nats_url, redis_url, events, 86400)


async def none(nats_url: str, redis_url: str, events: int) -> dict[str, Any]:
    return await _run(nats_url, redis_url, events, 0)


async def _enqueue(redis_url: str, marked: bool) -> dict[str, Any]:
    """ENQUEUE of ENQUEUE_JOBS fanbase-like rows, 200 per call, 20 calls per pipeline."""
    redis = Redis.from_url(redis_url)
    keys = QueueKeys("bench-marks")
    script = redis.register_script(ENQUEUE)
    await redis.script_load(ENQUEUE)
    names = [keys.jobs, keys.delayed, keys.cancels] + ([keys.marks("fanbase")] if marked else [])
    now = int(time.time() * 1000)
    ev = FanbaseEvent(fan="fan", talent="talent", action="followed")
    cpu_before = await common.redis_cpu(redis)
    window = common.Window()
    seq = 0
    while seq < ENQUEUE_JOBS // 2:
        pipe = redis.pipeline(transaction=False)
        for _ in range(20):
            args: list[str | int] = [keys.job_prefix, now]
            for _ in range(100):
                seq += 1
                args += common.fanbase_rows("fanbase", seq, ev, now)
            pipe.evalsha(script.sha, len(names), *names, *args)
        await pipe.execute()
    window.close()
    server_cpu = await common.redis_cpu(redis) - cpu_before
    written = int(await redis.xlen(keys.jobs))
    await redis.aclose()
    return window.result(ENQUEUE_JOBS, jobs=written, redis_us=server_cpu / ENQUEUE_JOBS * 1e6)


async def marked(nats_url: str, redis_url: str, events: int) -> dict[str, Any]:
    return await _enqueue(redis_url, True)


async def plain(nats_url: str, redis_url: str, events: int) -> dict[str, Any]:
    return await _enqueue(redis_url, False)


SIDES = {"day": day, "none": none, "marked": marked, "plain": plain}
