"""Figure 11, payload: 10 KB jobs, through the worker and through ingest, in jobs/s and MB/s.

Every job carries `PAYLOAD`, a 9.9 KB JSON object (a 2,000-character text and 45 records of
numbers, strings, a list and a flag), the size issue 12 names.

- worker: the worker figure's queue prefilled with N such jobs (flowline's encoding of them);
  ``flowline`` is that figure's `QueueWorker` side, ``stdlib`` the same with the job codec's
  decoder replaced by the standard library's (what orjson gains in a real worker), and
  ``same`` the worker figure's hand-written loop: XREADGROUP, `json.loads` per job, one
  COMPLETE per batch.
- ingest: the ingest figure's events, each routed into one job of `PAYLOAD` (a fresh dict per
  event, so nothing is encoded once for many); ``flowline`` is `StreamIngest`, ``stdlib`` the
  same with the codec's encoder replaced by the standard library's, ``raw`` the hand-written
  loop encoding with `json.dumps`, one ENQUEUE per batch.
- ``codec``: the codec alone, on `PAYLOAD`, in a loop: flowline's encode and decode against
  the standard library's, microseconds per call (best of 5 repeats).
"""

from __future__ import annotations

import json
import random
import timeit
from typing import Any

from redis.asyncio import Redis

from examples.fanbase.fanbase_pb2 import FanbaseEvent
from flowline import Job
from flowline.runtime.keys import QueueKeys

from . import common, ingest, worker


def _payload() -> dict[str, Any]:
    rng = random.Random(12)
    return {
        "talent": "talent-0",
        "body": "x" * 2000,
        "items": [
            {
                "id": i,
                "name": f"item-{i}",
                "price": round(rng.random() * 100, 6),
                "tags": ["a", "b", "c"],
                "ok": True,
                "note": "lorem ipsum dolor sit amet " * 3,
            }
            for i in range(45)
        ],
    }


PAYLOAD = _payload()
SIZE = len(json.dumps(PAYLOAD, separators=(",", ":")))
TOPIC = common.FOLLOWED[0]


async def prepare_worker(nats_url: str, redis_url: str, jobs: int) -> None:
    """The worker figure's queue, prefilled with `jobs` jobs of `PAYLOAD`."""
    from flowline.runtime.job import encode

    await common.reset(nats_url, redis_url)
    redis = Redis.from_url(redis_url)
    ids = [f"bench:{i}" for i in range(jobs)]
    await common.prefill(redis, worker.QUEUE, ids, worker.TOPIC, data=encode(PAYLOAD))
    stored = await redis.xlen(QueueKeys(worker.QUEUE).jobs)
    await redis.aclose()
    if stored != jobs:
        raise RuntimeError(f"prefilled {stored} jobs, not {jobs}")
    await common.compact(redis_url)


prepare_ingest = ingest.prepare


def _stdlib_codec() -> None:
    """Replace the job codec where the worker and enqueue bound it: the standard library's."""
    from flowline.runtime import enqueue
    from flowline.runtime import worker as queue_worker

    std = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode
    enqueue.encode = std  # type: ignore[assignment]
    queue_worker.loads = json.loads  # type: ignore[assignment]


async def worker_flowline(nats_url: str, redis_url: str, jobs: int) -> dict[str, Any]:
    return await worker.flowline(nats_url, redis_url, jobs)


async def worker_stdlib(nats_url: str, redis_url: str, jobs: int) -> dict[str, Any]:
    _stdlib_codec()
    return await worker.flowline(nats_url, redis_url, jobs)


async def worker_same(nats_url: str, redis_url: str, jobs: int) -> dict[str, Any]:
    return await worker.same(nats_url, redis_url, jobs)


def route(event: FanbaseEvent) -> Job:
    return Job(TOPIC, {**PAYLOAD, "fan": event.fan})


def rows(stream: str, seq: int, ev: FanbaseEvent, born: int) -> list[str | int]:
    data = json.dumps({**PAYLOAD, "fan": ev.fan}, separators=(",", ":"))
    return [f"{stream}:{seq}:0", TOPIC, data, 0, "stream", born, "", seq]


async def ingest_flowline(nats_url: str, redis_url: str, events: int) -> dict[str, Any]:
    return await ingest._flowline(
        nats_url, redis_url, events, metrics=False, logs=False, route=route
    )


async def ingest_stdlib(nats_url: str, redis_url: str, events: int) -> dict[str, Any]:
    _stdlib_codec()
    return await ingest_flowline(nats_url, redis_url, events)


async def ingest_raw(nats_url: str, redis_url: str, events: int) -> dict[str, Any]:
    return await ingest._raw(nats_url, redis_url, events, rows=rows)


async def codec(nats_url: str, redis_url: str, calls: int) -> dict[str, Any]:
    """Microseconds per call of each codec on `PAYLOAD` (best of 5 repeats of `calls`)."""
    from flowline.runtime.job import encode, loads

    std = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode
    raw = encode(PAYLOAD).encode()
    if loads(raw) != json.loads(raw) or json.loads(encode(PAYLOAD)) != json.loads(std(PAYLOAD)):
        raise RuntimeError("the codecs disagree on the payload")

    def best(fn: Any) -> float:
        return min(timeit.repeat(fn, number=calls, repeat=5)) / calls * 1e6

    return {
        "encode_us": best(lambda: encode(PAYLOAD)),
        "std_encode_us": best(lambda: std(PAYLOAD)),
        "decode_us": best(lambda: loads(raw)),
        "std_decode_us": best(lambda: json.loads(raw.decode())),
        "bytes": len(raw),
    }


SIDES = {
    "worker_flowline": worker_flowline,
    "worker_stdlib": worker_stdlib,
    "worker_same": worker_same,
    "ingest_flowline": ingest_flowline,
    "ingest_stdlib": ingest_stdlib,
    "ingest_raw": ingest_raw,
    "codec": codec,
}
