"""Figure 7, fan-out: one event routed into 100 jobs, jobs enqueued per second.

The ingest figure's events and stream, routed by a fan-out router: each "followed" event
becomes `FANOUT` jobs, one per follower of the talent, each with data of its own (so each is
encoded). ``flowline`` runs `StreamIngest` with that router; ``raw`` is the hand-written loop
making the same jobs (same ids, same compact JSON) and writing a whole fetched batch with one
ENQUEUE call, as a batched enqueue written by hand would. Target: >= 0.9x (issue 12).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from examples.fanbase.fanbase_pb2 import FanbaseEvent
from flowline import Job

from . import common, ingest

FANOUT = 100
TOPIC = common.FOLLOWED[0]

prepare = ingest.prepare


def route(event: FanbaseEvent) -> Iterator[Job]:
    for k in range(FANOUT):
        yield Job(TOPIC, {"talent": event.talent, "follower": f"{event.fan}-{k}"})


def rows(stream: str, seq: int, ev: FanbaseEvent, born: int) -> list[str | int]:
    out: list[str | int] = []
    for k in range(FANOUT):
        data = json.dumps({"talent": ev.talent, "follower": f"{ev.fan}-{k}"}, separators=(",", ":"))
        out += (f"{stream}:{seq}:{k}", TOPIC, data, 0, "stream", born, "", seq)
    return out


def _jobs_per_s(res: dict[str, Any]) -> dict[str, Any]:
    return {**res, "rate": res["rate"] * FANOUT}


async def flowline(nats_url: str, redis_url: str, events: int) -> dict[str, Any]:
    res = await ingest._flowline(
        nats_url, redis_url, events, metrics=False, logs=False, route=route
    )
    return _jobs_per_s(res)


async def raw(nats_url: str, redis_url: str, events: int) -> dict[str, Any]:
    return _jobs_per_s(await ingest._raw(nats_url, redis_url, events, rows=rows))


SIDES = {"flowline": flowline, "raw": raw}
