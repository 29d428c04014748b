"""Figure 2, worker: drain a queue prefilled with N no-op jobs.

flowline's `QueueWorker` (concurrency 50, batch 100) runs three ways: ``flowline`` (off: no
metrics, logging at WARNING so the per-job lines are skipped), ``metrics`` (metrics on, logging
at WARNING) and ``observed`` (metrics on and one JSON "job completed" line per job at INFO, as
``flowline worker --log-format json`` runs; the parent sends its stderr to a file). The sides
with metrics scrape them once at the end, to prove they counted every job; ``logline`` times
the per-job log call alone, in a loop.

Off is set against three loops that do the same job with less: ``raw`` (XREADGROUP COUNT 100,
run, XACK: the floor, ~what Redis allows), ``same`` (the same reads plus flowline's own
COMPLETE script per batch, so its ratio isolates flowline's Python overhead) and ``taskiq``
(stock taskiq: `RedisStreamBroker` drained by its `Receiver`). Jobs are prefilled before the
side starts; the clock runs from the worker's start to the moment the last job is acknowledged.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from flowline.runtime.keys import GROUP, QueueKeys
from flowline.runtime.scripts import COMPLETE

from . import common

QUEUE = "bench"
TOPIC = "noop"
BATCH = 100
CONCURRENCY = 50


async def prepare(nats_url: str, redis_url: str, jobs: int) -> None:
    """Empty Redis, then enqueue `jobs` no-op jobs with flowline's ENQUEUE script."""
    await common.reset(nats_url, redis_url)
    redis = Redis.from_url(redis_url)
    await common.prefill(redis, QUEUE, [f"bench:{i}" for i in range(jobs)], TOPIC)
    stored = await redis.xlen(QueueKeys(QUEUE).jobs)
    if stored != jobs:
        raise RuntimeError(f"prefilled {stored} jobs, not {jobs}")
    await redis.aclose()
    await common.compact(redis_url)


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


async def _flowline(
    nats_url: str, redis_url: str, jobs: int, *, metrics: bool, logs: bool, events: bool = False
) -> dict[str, Any]:
    """flowline's `QueueWorker` with a no-op async handler, default concurrency and batch."""
    from flowline import Queue, Route, Settings, Stream
    from flowline.backends.redis import RedisStore
    from flowline.runtime.connections import connect_redis
    from flowline.runtime.eventlog import EventLog, stream_key
    from flowline.runtime.worker import QueueWorker

    observed = common.observe(metrics=metrics, logs=logs)
    queue = Queue(QUEUE)
    pipeline = Stream("bench-noop", bytes) >> Route(lambda event: None, name="none") >> queue

    @pipeline.dequeue(TOPIC)
    async def noop(job: Any) -> None:
        return None

    redis = await connect_redis(Settings(nats_url=nats_url, redis_url=redis_url))
    worker = QueueWorker(pipeline, queue, RedisStore(redis), metrics=observed)
    await worker.setup()
    log = None
    if events:  # as `Runner` sets it up with the default retention
        log = EventLog(redis, "bench-process", Settings().events_retention)
        log.attach([pipeline])
        log.start()
    stop = asyncio.Event()
    window = common.Window()
    task = asyncio.create_task(worker.run(stop, 5.0))
    await _acked(redis, QueueKeys(QUEUE).jobs, GROUP)
    if log is not None:
        # The clock stops once every job's job:start and job:complete is in Redis, too.
        async def written() -> bool:
            return log.written + log.dropped >= 2 * jobs

        await common.until(written, within=60, what="every event written", every=0.001)
    window.close()
    stop.set()
    await task
    recorded: dict[str, Any] = {}
    if log is not None:
        await log.close()
        recorded = {
            "events": log.written,
            "dropped": log.dropped,
            "kept": sum(
                int(fields[b"count"]) for _, fields in await redis.xrange(stream_key(pipeline.name))
            ),
        }
    completed = await _completed(redis)
    await redis.aclose()
    scraped = common.scrape(observed)
    return window.result(
        jobs,
        completed=completed,
        counted=scraped.get("flowline_jobs_completed_total"),
        scrape_ms=scraped.get("scrape_ms"),
        **recorded,
    )


async def flowline(nats_url: str, redis_url: str, jobs: int) -> dict[str, Any]:
    """Off: no metrics, logging at WARNING, so the per-job lines are skipped."""
    return await _flowline(nats_url, redis_url, jobs, metrics=False, logs=False)


async def events(nats_url: str, redis_url: str, jobs: int) -> dict[str, Any]:
    """Off, plus the event log: every job:start and job:complete appended to Redis."""
    return await _flowline(nats_url, redis_url, jobs, metrics=False, logs=False, events=True)


async def metrics(nats_url: str, redis_url: str, jobs: int) -> dict[str, Any]:
    """Metrics on, logging at WARNING: what the counters alone cost."""
    return await _flowline(nats_url, redis_url, jobs, metrics=True, logs=False)


async def observed(nats_url: str, redis_url: str, jobs: int) -> dict[str, Any]:
    """As production runs it: metrics on, and one JSON "job completed" line per job at INFO."""
    return await _flowline(nats_url, redis_url, jobs, metrics=True, logs=True)


async def logline(nats_url: str, redis_url: str, jobs: int) -> dict[str, Any]:
    """The worker's "job completed" call alone, `jobs` times in a row: microseconds per line.

    ``line_us`` is the whole call, written to stderr as the worker writes it; ``render_us`` the
    same call with structlog's output discarded (so ``line_us - render_us`` is the write), and
    ``processors_us`` each configured processor's own share of the rendering. The calls are
    timed in five stretches and the fastest counts, as a busy machine only ever slows one down.
    """
    import structlog

    common.observe(metrics=False, logs=True)
    bound = {"pipeline": "bench-noop", "stage": "job", "queue": QUEUE}
    ids = [f"bench:{i}" for i in range(jobs)]
    duration = 0.000123456

    def calls(info: Any) -> float:
        fastest = float("inf")
        for part in range(5):
            stretch = ids[part::5]
            started = time.perf_counter()
            for job in stretch:  # the very call `QueueWorker` makes per completed job
                info(
                    "job completed",
                    topic=TOPIC,
                    job=job,
                    attempt=1,
                    duration=round(duration, 6),
                    outcome="completed",
                )
            fastest = min(fastest, (time.perf_counter() - started) * 1e6 / len(stretch))
        return fastest

    line = calls(structlog.get_logger("flowline.worker").bind(**bound).info)
    config = structlog.get_config()
    silent = structlog.wrap_logger(
        structlog.ReturnLogger(),
        processors=config["processors"],
        wrapper_class=config["wrapper_class"],
    ).bind(**bound)
    render = calls(silent.info)
    shares: dict[str, float] = {}
    dicts: list[Any] = [
        {**bound, "topic": TOPIC, "job": job, "attempt": 1, "duration": round(duration, 6),
         "outcome": "completed", "event": "job completed"}
        for job in ids
    ]  # fmt: skip
    for processor in config["processors"]:
        name = getattr(processor, "__name__", None) or type(processor).__name__
        started = time.perf_counter()
        dicts = [processor(None, "info", d) for d in dicts]
        shares[name] = (time.perf_counter() - started) * 1e6 / jobs
    return {"line_us": line, "render_us": render, "processors_us": shares}


async def _completed(redis: Redis) -> int:
    return await common.completed(redis, [QUEUE])


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
    # Now and then taskiq's receiver never returns once finished: its prefetcher's cancelled
    # XREADGROUP hangs. Closing the broker's connections ends that read; the figure is taken
    # already, so the error taskiq then logs is silenced.
    _, stuck = await asyncio.wait({task}, timeout=2.0)
    if stuck:
        logging.getLogger("taskiq").setLevel(logging.CRITICAL)
    await broker.shutdown()
    await asyncio.wait({task}, timeout=10.0)
    if not task.done():
        raise RuntimeError("taskiq's receiver did not stop, even with its connections closed")
    if stuck:
        task.exception()  # the error of the closed connection, retrieved so it is not reported
    else:
        task.result()
    await redis.aclose()
    return window.result(jobs, completed=jobs)


SIDES = {
    "flowline": flowline,
    "events": events,
    "metrics": metrics,
    "observed": observed,
    "logline": logline,
    "raw": raw,
    "same": same,
    "taskiq_kick": taskiq_kick,
    "taskiq": taskiq,
}
