"""Figure 3, latency: publish-to-handler time at a steady publish rate.

A publisher process publishes "followed" events at a steady rate, each carrying the
`time.time()` of its publish in its ``fan`` field; the side runs both halves of the pipeline
(stream ingest and queue worker) in one process, and its handler records ``time.time()`` minus
that stamp for each of the two jobs of every event. Both processes share one clock, so no
offset enters the figure.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import nats
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from redis.asyncio import Redis

from examples.fanbase.fanbase_pb2 import FanbaseEvent
from flowline.runtime.keys import GROUP, QueueKeys
from flowline.runtime.scripts import ENQUEUE

from . import common
from .side import ready

SUBJECT = "bench-latency"
QUEUE = "latency"


async def prepare(nats_url: str, redis_url: str) -> None:
    """Empty Redis and an empty stream for the latency subject."""
    await common.reset(nats_url, redis_url, SUBJECT)


async def publish(
    nats_url: str, events: int, rate: float, pipelined: bool = False
) -> dict[str, Any]:
    """Publish `events` events at `rate` per second on a fixed schedule (no drift).

    With `pipelined`, each publish is sent without waiting for its ack (`publish_async`; the
    acks are all checked at the end): one round trip per publish caps a publisher at a few
    thousand a second, and one that falls behind its schedule would measure its own backlog.
    Returns the rate achieved and ``behind_ms``, the furthest a publish fell behind its slot.
    """
    nc = await nats.connect(nats_url)
    js = nc.jetstream(publish_async_max_pending=100_000)
    acks: list[asyncio.Future[Any]] = []
    behind = 0.0
    start = time.perf_counter()
    for i in range(events):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            behind = max(behind, -delay)
        payload = common.event(i, fan=repr(time.time()))
        if pipelined:
            acks.append(await js.publish_async(SUBJECT, payload))
        else:
            await js.publish(SUBJECT, payload)
    elapsed = time.perf_counter() - start
    await asyncio.gather(*acks)  # every publish was stored (raises if one was not)
    await nc.close()
    return {
        "published": events,
        "rate": (events - 1) / elapsed if elapsed else 0.0,
        "behind_ms": behind * 1000,
    }


async def flowline(nats_url: str, redis_url: str, events: int, limit: float) -> dict[str, Any]:
    """flowline's `Runner` (stream and queue side) with a handler that records latency."""
    from examples.fanbase.pipeline import router
    from flowline import JobContext, Queue, Route, Runner, Settings, Stream

    pipeline = Stream(SUBJECT, FanbaseEvent) >> Route(router) >> Queue(QUEUE)
    latencies: list[float] = []
    expected = 2 * events
    done = asyncio.Event()

    async def record(job: JobContext) -> None:
        latencies.append(time.time() - float(job.data["fan"]))
        if len(latencies) >= expected:
            done.set()

    for topic in common.FOLLOWED:
        pipeline.dequeue(topic, record)
    runner = Runner(pipeline, Settings(nats_url=nats_url, redis_url=redis_url, grace=1.0))
    await runner.start()
    ready()
    window = common.Window()
    try:
        await asyncio.wait_for(done.wait(), limit)
    finally:
        window.close()
        await runner.stop()
    return {**common.summary(latencies), "cpu_us": window.cpu / events * 1e6}


async def raw(nats_url: str, redis_url: str, events: int, limit: float) -> dict[str, Any]:
    """fetch -> FromString -> the same ENQUEUE call -> ack; XREADGROUP -> handler -> XACK."""
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    redis = Redis.from_url(redis_url)
    enqueue = redis.register_script(ENQUEUE)
    keys = QueueKeys(QUEUE)
    await redis.xgroup_create(keys.jobs, GROUP, id="0", mkstream=True)
    stream = await js.find_stream_name_by_subject(SUBJECT)
    durable = "bench-raw"
    config = ConsumerConfig(
        durable_name=durable,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=30,
        max_deliver=-1,
        max_ack_pending=20_000,
        filter_subject=SUBJECT,
    )
    sub = await js.pull_subscribe(SUBJECT, durable=durable, stream=stream, config=config)
    latencies: list[float] = []
    expected = 2 * events
    stop = asyncio.Event()

    async def handler(data: Any) -> None:
        latencies.append(time.time() - float(data["fan"]))

    async def ingest() -> None:
        while not stop.is_set():
            try:
                msgs = await sub.fetch(256, timeout=0.5)
            except (TimeoutError, nats.errors.TimeoutError):
                continue
            args: list[str | int] = [keys.job_prefix, str(int(time.time() * 1000))]
            for msg in msgs:
                ev = FanbaseEvent.FromString(msg.data)
                meta = msg.metadata
                born = int(meta.timestamp.timestamp() * 1000)
                args += common.fanbase_rows(stream, meta.sequence.stream, ev, born)
            await enqueue(
                keys=[keys.jobs, keys.delayed, keys.cancels, keys.marks(stream)], args=args
            )
            for msg in msgs:
                await msg.ack()

    async def work() -> None:
        while len(latencies) < expected:
            reply = await redis.xreadgroup(GROUP, "raw", {keys.jobs: ">"}, count=100, block=500)
            for _, entries in reply or ():
                for _, fields in entries:
                    await handler(json.loads(fields[b"data"]))
                await redis.xack(keys.jobs, GROUP, *(entry for entry, _ in entries))

    consumer = asyncio.create_task(ingest())
    ready()
    window = common.Window()
    try:
        await asyncio.wait_for(work(), limit)
    finally:
        window.close()
        stop.set()
        await consumer
        await nc.close()
        await redis.aclose()
    return {**common.summary(latencies), "cpu_us": window.cpu / events * 1e6}


SIDES = {"publish": publish, "flowline": flowline, "raw": raw}
