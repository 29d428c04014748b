"""The parity suite's two ways of running a scenario: in memory (`flowline.testing.run`) and on
the real servers (`OnServers`: the same `App`, on Redis and JetStream), and what is compared.

`observe` reduces a finished run to what a user can see (events, completed jobs, job records,
dead letters), without what must differ between runs: wall-clock times, dead-letter entry ids
(Redis stamps them with its clock) and tracebacks' file paths.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from flowline import Runner, Settings
from flowline.backends.clock import SystemClock
from flowline.testing import App, SettleTimeout


class OnServers(App):
    """`App` on the servers of `settings`; `settle` polls them until nothing is left to do."""

    def __init__(self, target: object, settings: Settings, concurrency: int | None) -> None:
        fast = dataclasses.replace(settings, concurrency=concurrency, grace=5.0)
        super().__init__(Runner(target, fast), SystemClock())  # type: ignore[arg-type]

    async def settle(self, *, within: float = 30.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        quiet = 0
        while quiet < 3:  # idle three polls in a row: nothing was in between two reads
            await asyncio.sleep(0.05)
            quiet = quiet + 1 if await self._idle() else 0
            if loop.time() > deadline:
                raise SettleTimeout("the servers still had work after the time allowed")

    async def _idle(self) -> bool:
        r = self.runner
        for p in self.pipelines:
            await p.bus.drain()
            for q in p.queues:
                c = await r.store.counts(q.name)
                # A paused queue's ready jobs wait for its resume: nothing to do until then.
                ready = c.ready and not await r.store.paused(q.name)
                if ready or c.running or c.delayed:
                    return False
        js = await r.jetstream()
        for ingest in r.ingests:
            info = await js.consumer_info(ingest.stream_name, ingest.durable)
            if info.num_pending or info.num_ack_pending:
                return False
        return not any(w.claims for w in r.workers)


async def observe(app: App) -> dict[str, Any]:
    """What a user sees of a settled run, in an order that does not depend on timing."""
    jobs = {}
    for e in app.events("job:*"):
        if e.name in ("job:complete", "job:failed"):
            info = await app.job(e.id)
            assert info is not None, f"no record of finished job {e.id}"
            jobs[e.id] = (
                info.topic,
                info.state,
                info.attempt,
                info.result,
                info.error,
                info.origin,
                info.message,
                info.dead_letter is not None,
            )
    letters = sorted(
        tuple(
            sorted(
                (k, v)
                for k, v in {**x.record, "store": x.store}.items()
                if k not in ("failed_at", "traceback", "created")
            )
        )
        for x in await app.dead_letters()
    )
    return {
        "events": sorted(_event(e) for e in app.events()),
        "completed": sorted((e.id, e.topic, e.attempt, repr(e.result)) for e in app.completed()),
        "jobs": jobs,
        "dead letters": letters,
    }


def _event(e: Any) -> tuple[Any, ...]:
    d = e.data
    job = d.get("job")
    about: tuple[Any, ...]
    if e.name in ("stream", "route"):
        about = (d.get("sequence"), len(d.get("jobs") or ()))
    elif e.name == "dead-letter":
        about = (d.get("topic"),)  # its id is a Redis entry id (a time), not the job's
    elif e.name == "route:complete":
        about = (d.get("origin"), d.get("jobs"))
    elif e.name.startswith("cron"):
        about = (d.get("topic"),)
    else:
        about = (d.get("id") or (job.id if job is not None else None), job and job.attempt)
    error = d.get("error")
    kind = type(error).__name__ if error else ""
    return (e.pipeline, e.name, e.stage, *about, kind, str(error or ""))
