"""Fan-in: knowing when every job routed from one stream message has finished.

Opt in with ``Route(router, fan_in=True)``; then ``route:complete`` is emitted (once, by the
worker that finishes the last job) when all jobs of a message have completed or been
dead-lettered. Before a message's jobs are enqueued its total is recorded with HSETNX, so a
redelivery cannot reset it; each finished job adds its id to a set, so a job that runs twice
counts once. Both keys of a message share one hash tag: each call touches a single slot.
Jobs given an explicit idempotency ``key`` are not counted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from redis.asyncio import Redis

# KEYS: meta hash, done set. ARGV: job id, keep seconds.
# Returns the total when this finish completes the message (once), else 0.
FINISH = """
local total = tonumber(redis.call('HGET', KEYS[1], 'total') or '0')
if total == 0 then return 0 end
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[2])
if redis.call('SCARD', KEYS[2]) >= total and redis.call('HSETNX', KEYS[1], 'fired', 1) == 1 then
  return total
end
return 0
"""


def keys(pipeline: str, origin: str) -> tuple[str, str]:
    """The meta hash and done set of the message `origin` (``<stream>:<sequence>``)."""
    base = f"flowline:fanin:{{{pipeline}:{origin}}}"
    return base, base + ":done"


def origin_of(job_id: str) -> str:
    """``<stream>:<sequence>`` of a routed job id ``<stream>:<sequence>:<index>``."""
    return job_id.rsplit(":", 1)[0]


async def register(redis: Redis, pipeline: str, totals: dict[str, int], keep: int) -> None:
    """Record how many jobs each message produced (first write wins)."""
    pipe = redis.pipeline(transaction=False)
    for origin, total in totals.items():
        meta, _ = keys(pipeline, origin)
        pipe.hsetnx(meta, "total", total)
        pipe.expire(meta, keep)
    await pipe.execute()


class FanIn:
    """Counts finished jobs for one pipeline; says which messages just completed."""

    def __init__(self, redis: Redis, pipeline: str, keep: int) -> None:
        self.pipeline = pipeline
        self.keep = keep
        self.script = redis.register_script(FINISH)
        self.redis = redis

    async def finished(self, job_ids: list[str]) -> list[tuple[str, int]]:
        """Mark jobs finished; returns (origin, total) for each message now complete."""
        pipe = self.redis.pipeline(transaction=False)
        origins = []
        for job_id in job_ids:
            # Only routed jobs (<stream>:<seq>:<index>) have a registered total; FINISH would
            # answer 0 for the others too, this just spares the round trip.
            if job_id.startswith(("key:", "direct:", "cron:")):
                continue
            origin = origin_of(job_id)
            origins.append(origin)
            meta, done = keys(self.pipeline, origin)
            await self.script(keys=[meta, done], args=[job_id, self.keep], client=pipe)
        if not origins:
            return []
        results = await pipe.execute()
        return [(o, int(t)) for o, t in zip(origins, results, strict=True) if int(t)]
