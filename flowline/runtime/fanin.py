"""Fan-in: knowing when every job routed from one stream message has finished.

Opt in with ``Route(router, fan_in=True)``; then ``route:complete`` is emitted (once, by the
worker that finishes the last job) when all jobs of a message have completed or been
dead-lettered. Before a message's jobs are enqueued its total is recorded, first write wins,
so a redelivery cannot reset it; each finished job is counted by id, so a job that runs twice
counts once (`JobStore.fan_in_totals`, `JobStore.fan_in_finished`). In Redis both keys of a
message share one hash tag: each call touches a single slot. Jobs given an explicit
idempotency ``key`` are not counted.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .enqueue import Planned


def origin_of(job_id: str) -> str:
    """``<stream>:<sequence>`` of a routed job id ``<stream>:<sequence>:<index>``."""
    return job_id.rsplit(":", 1)[0]


def routed(job_id: str) -> bool:
    """Whether a job id is one of a routed message's (``<stream>:<sequence>:<index>``)."""
    return not job_id.startswith(("key:", "direct:", "cron:"))


def totals(rows: Iterable[Planned]) -> dict[str, int]:
    """How many jobs each stream message of `rows` produced."""
    counts: dict[str, int] = {}
    for row in rows:
        if row.origin == "stream" and routed(row.id):
            origin = origin_of(row.id)
            counts[origin] = counts.get(origin, 0) + 1
    return counts
