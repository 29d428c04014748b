"""The stream side writes one batch while it routes the next (real servers): writes stay in
order and one at a time, and no message is acked before its own jobs are in Redis."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import nats.aio.msg
import pytest

from flowline import Job, Queue, Route, Settings, Stream
from flowline.backends.jetstream import JetStreamSource
from flowline.backends.redis import RedisStore
from flowline.runtime.connections import connect_nats, connect_redis
from flowline.runtime.ingest import StreamIngest
from flowline.runtime.keys import QueueKeys

from .conftest import eventually

EVENTS = 600


class Recording(RedisStore):
    """A RedisStore that notes when each enqueue call starts and ends, and is slow to end."""

    def __init__(self, redis: Any, log: list[tuple[str, Any]]) -> None:
        super().__init__(redis)
        self.log = log
        self.busy = False

    async def enqueue(self, queue: str, rows: Any, now_ms: int) -> int:
        assert not self.busy, "two writes at once"
        self.busy = True
        seqs = sorted({r.seq for r in rows})
        self.log.append(("write", seqs))
        try:
            added = await super().enqueue(queue, rows, now_ms)
            await asyncio.sleep(0.01)  # a slow Redis: the next batch is routed meanwhile
            return added
        finally:
            self.log.append(("written", seqs))
            self.busy = False


async def test_a_batch_is_routed_while_the_one_before_is_written(
    settings: Settings, js: Any, redis: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    log: list[tuple[str, Any]] = []

    def route(event: dict[str, Any]) -> list[Job]:
        log.append(("route", event["n"] + 1))  # the message's sequence
        return [Job("work", event), Job("work", {"again": event["n"]})]

    pipeline = (
        Stream("overlap", json.loads, batch=50)
        >> Route(route)
        >> Queue("overlap", keep_completed=0)
    )
    pipeline.dequeue("work", lambda job: None)
    await JetStreamSource(_ready(js)).ensure("overlap")
    for n in range(EVENTS):
        await js.publish("overlap", json.dumps({"n": n}).encode())
    real_ack = nats.aio.msg.Msg.ack

    async def ack(msg: Any) -> None:
        log.append(("ack", msg.metadata.sequence.stream))
        await real_ack(msg)

    monkeypatch.setattr(nats.aio.msg.Msg, "ack", ack)
    nc = await connect_nats(settings)
    store = Recording(await connect_redis(settings), log)
    stream = pipeline.source
    assert isinstance(stream, Stream)
    ingest = StreamIngest(pipeline, stream, JetStreamSource(_ready(nc.jetstream())), store)
    await ingest.setup()
    stop = asyncio.Event()
    task = asyncio.create_task(ingest.run(stop))
    acked = lambda: sum(1 for kind, _ in log if kind == "ack") == EVENTS  # noqa: E731
    await eventually(acked, timeout=30)
    stop.set()
    await task
    await nc.close()
    await store.close()

    written: set[int] = set()
    last = 0
    overlapped = 0
    writing: list[int] = []
    for kind, value in log:
        if kind == "write":
            assert value[0] > last, "writes out of order"
            writing = value
        elif kind == "written":
            written.update(value)
            last = value[-1]
            writing = []
        elif kind == "ack":
            assert value in written, f"message {value} acked before its jobs were written"
        elif kind == "route" and writing:
            overlapped += 1
    assert overlapped > 0, "no batch was routed while another was written"
    assert written == set(range(1, EVENTS + 1))
    assert await redis.xlen(QueueKeys("overlap").jobs) == 2 * EVENTS


def _ready(js: Any) -> Any:
    async def connect() -> Any:
        return js

    return connect
