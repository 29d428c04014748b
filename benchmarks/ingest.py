"""Figure 1, ingest: JetStream -> protobuf decode -> route into 2 jobs -> idempotent enqueue -> ack.

The parent pre-publishes N "followed" events on an empty ``fanbase`` stream; each side then
consumes all of them through its own durable pull consumer. The clock runs from the first fetch
to the moment JetStream's ack floor reaches N (both sides poll ``consumer_info`` alike).

flowline's `StreamIngest` runs two ways: ``flowline`` (off: no metrics, logging at WARNING) and
``observed`` (metrics on, JSON logging at INFO with stderr sent to a file, as ``flowline worker
--log-format json`` runs; ingest writes no line per message, so its cost is the metrics').
``observed`` scrapes its metrics once at the end, to prove they counted every event.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import nats
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from redis.asyncio import Redis

from examples.fanbase.fanbase_pb2 import FanbaseEvent
from flowline.runtime.keys import QueueKeys
from flowline.runtime.scripts import ENQUEUE

from . import common

SUBJECT = "fanbase"
QUEUE = "fanbase-notifications"
BATCH = 256


async def prepare(nats_url: str, redis_url: str, events: int) -> None:
    """Empty Redis and the stream, then store `events` events on it."""
    await common.reset(nats_url, redis_url, SUBJECT)
    await common.prepublish(nats_url, SUBJECT, [common.event(i) for i in range(events)])


async def _acked_all(js: Any, stream: str, durable: str, events: int) -> None:
    async def acked() -> bool:
        info = await js.consumer_info(stream, durable)
        return bool(info.ack_floor.stream_seq >= events)

    await common.until(acked, within=300, what=f"{events} acks")


def _ready(js: Any) -> Any:
    """The connect callable `JetStreamSource` takes, for a context already connected."""

    async def connect() -> Any:
        return js

    return connect


async def _noop(job: Any) -> None:
    return None


async def _jobs(redis: Redis) -> int:
    return int(await redis.xlen(QueueKeys(QUEUE).jobs))


async def _flowline(
    nats_url: str,
    redis_url: str,
    events: int,
    *,
    metrics: bool,
    logs: bool,
    wait: int = 0,
    route: Callable[[FanbaseEvent], Any] | None = None,
) -> dict[str, Any]:
    """flowline's `StreamIngest` on the fanbase example's stream and router (stream side only).

    The pipeline is rebuilt here, not imported, so the example may grow without changing what
    this figure measures; its handlers never run, so they are no-ops.
    """
    from examples.fanbase.pipeline import router
    from flowline import Queue, Route, Settings, Stream
    from flowline.backends.jetstream import JetStreamSource
    from flowline.backends.redis import RedisStore
    from flowline.runtime.connections import connect_nats, connect_redis
    from flowline.runtime.ingest import StreamIngest

    observed = common.observe(metrics=metrics, logs=logs)
    pipeline = Stream(SUBJECT, FanbaseEvent) >> Route(route or router) >> Queue(QUEUE)
    for topic in (*common.FOLLOWED, "confirm-fan-unfollowing"):
        pipeline.dequeue(topic, _noop)
    settings = Settings(nats_url=nats_url, redis_url=redis_url)
    nc = await connect_nats(settings)
    js = nc.jetstream()
    redis = await connect_redis(settings)
    source = pipeline.source
    assert isinstance(source, Stream)
    streams = JetStreamSource(_ready(js))
    store = RedisStore(redis, wait_replicas=wait)
    ingest = StreamIngest(pipeline, source, streams, store, metrics=observed)
    await ingest.setup()
    stop = asyncio.Event()
    window = common.Window()
    task = asyncio.create_task(ingest.run(stop))
    await _acked_all(js, ingest.stream_name, ingest.durable, events)
    window.close()
    stop.set()
    await task
    jobs = await _jobs(redis)
    await nc.close()
    await redis.aclose()
    scraped = common.scrape(observed)
    return window.result(
        events,
        jobs=jobs,
        routed=scraped.get("flowline_stream_messages_total:routed"),
        enqueued=scraped.get("flowline_jobs_enqueued_total"),
        scrape_ms=scraped.get("scrape_ms"),
    )


async def flowline(nats_url: str, redis_url: str, events: int) -> dict[str, Any]:
    """Off: no metrics, logging at WARNING."""
    return await _flowline(nats_url, redis_url, events, metrics=False, logs=False)


async def observed(nats_url: str, redis_url: str, events: int) -> dict[str, Any]:
    """As production runs it: metrics on, JSON logging at INFO."""
    return await _flowline(nats_url, redis_url, events, metrics=True, logs=True)


async def raw(nats_url: str, redis_url: str, events: int) -> dict[str, Any]:
    """Hand-written nats-py + redis-py: fetch, FromString, the same ENQUEUE call, ack."""
    return await _raw(nats_url, redis_url, events)


async def _raw(
    nats_url: str,
    redis_url: str,
    events: int,
    wait: int = 0,
    rows: Callable[[str, int, FanbaseEvent, int], list[str | int]] = common.fanbase_rows,
) -> dict[str, Any]:
    """The hand-written loop, one ENQUEUE call per batch of the ARGV `rows` makes of each
    event; with `wait`, the call and a WAIT share one pipeline (WAIT counts the replicas that
    have its own connection's writes) before the acks."""
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    redis = Redis.from_url(redis_url)
    script = redis.register_script(ENQUEUE)
    keys = QueueKeys(QUEUE)
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
    await redis.script_load(ENQUEUE)  # the WAIT loop sends EVALSHA itself
    marked = [keys.jobs, keys.delayed, keys.cancels, keys.marks(stream)]  # as StreamIngest's
    stop = asyncio.Event()

    async def consume() -> None:
        while not stop.is_set():
            try:
                msgs = await sub.fetch(BATCH, timeout=0.5)
            except (TimeoutError, nats.errors.TimeoutError):
                continue
            args: list[str | int] = [keys.job_prefix, str(int(time.time() * 1000))]
            for msg in msgs:
                ev = FanbaseEvent.FromString(msg.data)
                meta = msg.metadata
                born = int(meta.timestamp.timestamp() * 1000)
                args += rows(stream, meta.sequence.stream, ev, born)
            if wait:
                pipe = redis.pipeline(transaction=False)
                pipe.evalsha(script.sha, 4, *marked, *args)
                pipe.execute_command("WAIT", wait, 1000)
                if (await pipe.execute())[-1] < wait:
                    raise RuntimeError("a replica did not acknowledge within 1 s")
            else:
                await script(keys=marked, args=args)
            for msg in msgs:
                await msg.ack()

    window = common.Window()
    task = asyncio.create_task(consume())
    await _acked_all(js, stream, durable, events)
    window.close()
    stop.set()
    await task
    jobs = await _jobs(redis)
    await nc.close()
    await redis.aclose()
    return window.result(events, jobs=jobs)


SIDES = {"flowline": flowline, "observed": observed, "raw": raw}
