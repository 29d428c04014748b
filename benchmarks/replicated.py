"""Figure 6, replicated ingest: the ingest figure with a replica attached to the Redis, and
enqueues that count only once the replica has them (``redis_wait_replicas=1``).

The parent starts a replica of the benchmark's redis-server before the first round. Sides:
``flowline`` runs `StreamIngest` with ``RedisStore(wait_replicas=1)`` (an ENQUEUE and a WAIT
down one pipeline per batch, acks only after); ``nowait`` is the same ingest without waiting
(what the option costs, against the same replica); ``raw`` is the hand-written loop making the
same ENQUEUE + WAIT pipeline (flowline's own overhead).
"""

from __future__ import annotations

from typing import Any

from . import ingest

prepare = ingest.prepare


async def flowline(nats_url: str, redis_url: str, events: int) -> dict[str, Any]:
    return await ingest._flowline(nats_url, redis_url, events, metrics=False, logs=False, wait=1)


async def nowait(nats_url: str, redis_url: str, events: int) -> dict[str, Any]:
    return await ingest._flowline(nats_url, redis_url, events, metrics=False, logs=False)


async def raw(nats_url: str, redis_url: str, events: int) -> dict[str, Any]:
    return await ingest._raw(nats_url, redis_url, events, wait=1)


SIDES = {"flowline": flowline, "nowait": nowait, "raw": raw}
