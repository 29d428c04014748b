"""Figure, delayed: N delayed jobs coming due in the same millisecond.

`prepare` enqueues N no-op jobs with flowline's ENQUEUE script, each delayed (``due`` an hour
ahead), so they wait in the queue's delayed set. A side starts its worker, then moves every
job's due time to `LEAD` seconds from now (one ZADD XX per 5,000 jobs: what enqueueing them
with that delay would have left in Redis, without timing the enqueue), and its handler records
``time.time()`` for each job it starts. Lateness is a job's start minus the due time; the side
ends when every job started, each exactly once (the figure is void otherwise).

``flowline`` runs `QueueWorker` (concurrency 50, as the worker figure) as `Runner` runs it: its
maintenance loop promotes due jobs with the store's `promote`. ``raw`` is a hand-written loop
doing the same Redis work: one task promotes with a script making the very calls of flowline's
PROMOTE (ZRANGEBYSCORE LIMIT, then per job HMGET, XADD, HSET, HDEL, ZREM), as many jobs a call
as flowline moves, back to back while a call comes back full and otherwise sleeping until the
next due time; another reads with XREADGROUP COUNT 100, runs the no-op and completes each batch
with flowline's COMPLETE script. Each side reports its own CPU time and the Redis server's per
job, from the re-scoring to the last start: Redis, one thread, does all the promoting.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from redis.asyncio import Redis

from flowline.runtime.keys import GROUP, QueueKeys
from flowline.runtime.scripts import COMPLETE

from . import common

QUEUE = "delayed"
TOPIC = "noop"
LEAD = 2.0  # seconds from the re-scoring to the due time: the worker is idle and waiting
PROMOTE_LIMIT = 500  # jobs per promote call, as many as flowline's worker asks for

# flowline's PROMOTE without its group branch (no job here has a group).
RAW_PROMOTE = """
local prefix = ARGV[1]
local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[2], 'LIMIT', 0, ARGV[3])
for _, id in ipairs(ids) do
  local key = prefix .. id
  local f = redis.call('HMGET', key, 'topic', 'data', 'attempt', 'stream', 'born', 'trace')
  if f[1] then
    local stream = f[4] or KEYS[1]
    local e = redis.call('XADD', stream, '*', 'id', id, 'topic', f[1], 'data', f[2],
      'attempt', f[3], 'born', f[5] or '0', 'trace', f[6] or '')
    redis.call('HSET', key, 'state', 'queued', 'stream', stream, 'entry', e)
    redis.call('HDEL', key, 'data', 'born', 'trace')
  end
  redis.call('ZREM', KEYS[2], id)
end
local nxt = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
return {#ids, nxt[2] or '-1'}
"""


def job_id(i: int) -> str:
    return f"delayed:{i}"


async def prepare(nats_url: str, redis_url: str, jobs: int) -> None:
    """Empty Redis, then enqueue `jobs` no-op jobs due in an hour (flowline's ENQUEUE)."""
    await common.reset(nats_url, redis_url)
    redis = Redis.from_url(redis_url)
    later = int(time.time() * 1000) + 3_600_000
    await common.prefill(redis, QUEUE, [job_id(i) for i in range(jobs)], TOPIC, later)
    held = await redis.zcard(QueueKeys(QUEUE).delayed)
    await redis.aclose()
    if held != jobs:
        raise RuntimeError(f"delayed {held} jobs, not {jobs}")
    await common.compact(redis_url)


async def come_due(redis: Redis, jobs: int) -> float:
    """Make every job due `LEAD` seconds from now; returns that due time (epoch seconds)."""
    due_ms = int((time.time() + LEAD) * 1000)
    delayed = QueueKeys(QUEUE).delayed
    pipe = redis.pipeline(transaction=False)
    for first in range(0, jobs, 5000):
        pipe.zadd(
            delayed, {job_id(i): due_ms for i in range(first, min(jobs, first + 5000))}, xx=True
        )
    await pipe.execute()
    return due_ms / 1000


async def promoted(redis: Redis, due: float) -> float:
    """Seconds from `due` until the delayed set is empty (polled every 20 ms: one ZCARD)."""
    delayed = QueueKeys(QUEUE).delayed

    async def empty() -> bool:
        return not await redis.zcard(delayed)

    await common.until(empty, within=300, what="every delayed job promoted", every=0.02)
    return time.time() - due


def result(
    due: float,
    started: dict[str, float],
    runs: int,
    window: common.Window,
    promoted: float,
    server_cpu: float,
) -> dict[str, Any]:
    """Lateness of each start behind the due time (ms), and whether each job ran once."""
    late = [t - due for t in started.values()]
    first, last = min(started.values()), max(started.values())
    return {
        **common.summary(late),
        "promoted": promoted * 1000,
        "start_rate": (len(started) - 1) / (last - first) if last > first else 0.0,
        "jobs": len(started),
        "runs": runs,
        "early": sum(x < 0 for x in late),
        "first": min(late) * 1000,
        "cpu_us": window.cpu / len(started) * 1e6,
        "redis_us": server_cpu / len(started) * 1e6,
    }


async def flowline(nats_url: str, redis_url: str, jobs: int) -> dict[str, Any]:
    """flowline's `QueueWorker`, concurrency 50 and batch 100, promoting as it always does."""
    from flowline import JobContext, Queue, Route, Settings, Stream
    from flowline.backends.redis import RedisStore
    from flowline.runtime.connections import connect_redis
    from flowline.runtime.worker import QueueWorker

    queue = Queue(QUEUE, concurrency=50)
    pipeline = Stream("bench-delayed", bytes) >> Route(lambda event: None, name="none") >> queue
    started: dict[str, float] = {}
    runs = 0
    done = asyncio.Event()

    @pipeline.dequeue(TOPIC)
    async def noop(job: JobContext) -> None:
        nonlocal runs
        started.setdefault(job.id, time.time())
        runs += 1
        if len(started) >= jobs:
            done.set()

    redis = await connect_redis(Settings(nats_url=nats_url, redis_url=redis_url))
    worker = QueueWorker(pipeline, queue, RedisStore(redis))
    await worker.setup()
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop, 5.0))
    await asyncio.sleep(0.3)  # the worker's first promote call: nothing is due yet
    window = common.Window()
    cpu = await common.redis_cpu(redis)
    due = await come_due(redis, jobs)
    watch = asyncio.create_task(promoted(redis, due))
    await asyncio.wait_for(done.wait(), 300)
    window.close()
    cpu = await common.redis_cpu(redis) - cpu
    await asyncio.sleep(0.5)  # long enough for a second run of any job to show
    stop.set()
    await task
    await redis.aclose()
    return result(due, started, runs, window, await watch, cpu)


async def raw(nats_url: str, redis_url: str, jobs: int) -> dict[str, Any]:
    """A promote loop and a read/complete loop, as hand-written, on one connection pool."""
    redis = Redis.from_url(redis_url)
    keys = QueueKeys(QUEUE)
    promote = redis.register_script(RAW_PROMOTE)
    complete = redis.register_script(COMPLETE)
    started: dict[str, float] = {}
    runs = 0
    stop = asyncio.Event()

    async def promoter() -> None:
        while not stop.is_set():
            now = time.time()
            moved, nxt = await promote(
                keys=[keys.jobs, keys.delayed],
                args=[keys.job_prefix, int(now * 1000), PROMOTE_LIMIT],
            )
            if int(moved) == PROMOTE_LIMIT:
                continue
            wait = 0.25 if float(nxt) < 0 else min(0.25, max(0.0, float(nxt) / 1000 - now))
            await asyncio.sleep(wait)

    async def work() -> None:
        nonlocal runs
        while len(started) < jobs:
            reply = await redis.xreadgroup(GROUP, "raw", {keys.jobs: ">"}, count=100, block=500)
            for _, entries in reply or ():
                rows: list[Any] = [GROUP, keys.job_prefix, int(time.time() * 1000), 86400]
                for entry, fields in entries:
                    started.setdefault(fields[b"id"].decode(), time.time())
                    runs += 1
                    rows += (entry, fields[b"id"], "null")
                await complete(keys=[keys.jobs], args=rows)

    promoting = asyncio.create_task(promoter())
    await asyncio.sleep(0.3)
    window = common.Window()
    cpu = await common.redis_cpu(redis)
    due = await come_due(redis, jobs)
    watch = asyncio.create_task(promoted(redis, due))
    await asyncio.wait_for(work(), 300)
    window.close()
    cpu = await common.redis_cpu(redis) - cpu
    stop.set()
    await promoting
    await redis.aclose()
    return result(due, started, runs, window, await watch, cpu)


SIDES = {"flowline": flowline, "raw": raw}
