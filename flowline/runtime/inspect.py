"""Reading what the servers hold: queue counts, stream consumers, cron marks.

One door for every reader (``/metrics`` gauges, ``flowline status``, queue handles, the
dashboard): each function reads in one round trip per server where it can, and raises what
the client raised when a server does not answer (callers decide how to report it).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .keys import GROUP, QueueKeys, cron_key

if TYPE_CHECKING:
    from nats.js import JetStreamContext
    from redis.asyncio import Redis

    from .._stages import Queue

# Jobs completed and failed are counted per queue in buckets of this many seconds (by the
# COMPLETE and FAIL scripts), kept for `STATS_KEEP` seconds: enough for "the last minute".
STATS_BUCKET = 10
STATS_KEEP = 180
WINDOW = 60


@dataclass(frozen=True)
class QueueState:
    """What one queue holds now, and what it did in the last minute (all processes)."""

    name: str
    ready: int
    running: int
    delayed: int
    dead: int
    completed_1m: int
    failed_1m: int
    paused: bool = False

    @property
    def jobs_per_s(self) -> float:
        """Completed jobs per second over the last minute."""
        return self.completed_1m / WINDOW


async def queue_totals(redis: Redis, queues: Sequence[Queue]) -> dict[str, QueueState]:
    """`queue_states` of whole queues: a sharded queue's shards added up (paused if any
    shard is), in the same one round trip."""
    states = await queue_states(redis, [n for q in queues for n in q.shard_names])
    out = {}
    for q in queues:
        parts = [states[n] for n in q.shard_names]
        out[q.name] = QueueState(
            name=q.name,
            ready=sum(x.ready for x in parts),
            running=sum(x.running for x in parts),
            delayed=sum(x.delayed for x in parts),
            dead=sum(x.dead for x in parts),
            completed_1m=sum(x.completed_1m for x in parts),
            failed_1m=sum(x.failed_1m for x in parts),
            paused=any(x.paused for x in parts),
        )
    return out


def stats_buckets(now: float) -> list[int]:
    """The buckets covering the last `WINDOW` seconds (the current, partial one included)."""
    current = int(now) // STATS_BUCKET
    return [current - i for i in range(WINDOW // STATS_BUCKET)]


async def queue_states(redis: Redis, names: list[str]) -> dict[str, QueueState]:
    """Every named queue's counts, in one pipelined round trip."""
    if not names:
        return {}
    buckets = stats_buckets(time.time())
    pipe = redis.pipeline(transaction=False)
    for name in names:
        keys = QueueKeys(name)
        for stream in keys.streams:
            pipe.xlen(stream)
            pipe.xpending(stream, GROUP)
        pipe.zcard(keys.delayed)
        pipe.xlen(keys.dead)
        pipe.exists(keys.paused)
        pipe.get(keys.waiting)  # jobs of groups waiting for a slot: ready too
        for bucket in buckets:
            pipe.hmget(keys.stats(bucket), "completed", "failed")
    # A queue no worker has set up yet has no group: XPENDING's error then means 0.
    replies: list[Any] = await pipe.execute(raise_on_error=False)
    if replies and all(isinstance(x, Exception) for x in replies):
        raise replies[0]
    out = {}
    per = 8 + len(buckets)
    for i, name in enumerate(names):
        urgent_len, urgent_pending, jobs_len, jobs_pending, delayed, dead, paused, waiting = (
            replies[i * per : i * per + 8]
        )
        stats = replies[i * per + 8 : (i + 1) * per]
        running = _pending(urgent_pending) + _pending(jobs_pending)
        completed = failed = 0
        for pair in stats:
            if not isinstance(pair, Exception):
                completed += int(pair[0] or 0)
                failed += int(pair[1] or 0)
        out[name] = QueueState(
            name=name,
            ready=_int(urgent_len) + _int(jobs_len) - running + _int(waiting),
            running=running,
            delayed=_int(delayed),
            dead=_int(dead),
            completed_1m=completed,
            failed_1m=failed,
            paused=_int(paused) > 0,
        )
    return out


async def stream_state(js: JetStreamContext, stream: str, durable: str) -> dict[str, Any]:
    """A stream and its durable consumer: stored messages, pending, ack pending, redelivered.

    The consumer's fields are None when no process created it yet.
    """
    import nats.js.errors

    info = await js.stream_info(stream)
    doc: dict[str, Any] = {
        "stream": stream,
        "messages": int(info.state.messages),
        "first_sequence": int(info.state.first_seq),
        "last_sequence": int(info.state.last_seq),
        "durable": durable,
        "pending": None,
        "ack_pending": None,
        "redelivered": None,
        "last_acked": None,
    }
    try:
        consumer = await js.consumer_info(stream, durable)
    except nats.js.errors.NotFoundError:
        return doc
    doc.update(
        pending=int(consumer.num_pending or 0),
        ack_pending=int(consumer.num_ack_pending or 0),
        redelivered=int(consumer.num_redelivered or 0),
        last_acked=int(consumer.ack_floor.stream_seq or 0) if consumer.ack_floor else 0,
    )
    return doc


async def cron_marks(redis: Redis, crons: list[tuple[str, str]]) -> dict[tuple[str, str], float]:
    """The last tick fired (epoch seconds) of each (pipeline, topic); absent if never fired."""
    if not crons:
        return {}
    # GETs in a pipeline, not one MGET: each pipeline's marks have their own hash tag, and a
    # Redis Cluster refuses an MGET across slots. Still one round trip on a single Redis.
    pipe = redis.pipeline(transaction=False)
    for p, t in crons:
        pipe.get(cron_key(p, t))
    values = await pipe.execute()
    return {key: int(v) / 1000 for key, v in zip(crons, values, strict=True) if v is not None}


def _int(value: Any) -> int:
    return 0 if isinstance(value, Exception) or value is None else int(value)


def _pending(value: Any) -> int:
    return 0 if isinstance(value, Exception) else int(value["pending"])
