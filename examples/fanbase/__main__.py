"""Run the fanbase example end to end on local throwaway servers, then exit 0.

    python -m examples.fanbase

Starts nats-server and redis-server in a temporary directory, runs the pipeline's worker in
this process, publishes a handful of follow/unfollow events, prints each job's progress and
result, and exits once every expected notification has been sent.
"""

from __future__ import annotations

import asyncio
import sys

from flowline import Event, Runner, Settings
from flowline.servers import LocalServers

from .fanbase_pb2 import FanbaseEvent
from .pipeline import pipeline

EVENTS = [
    ("fan-1", "talent-1", "followed"),
    ("fan-2", "talent-1", "followed"),
    ("fan-3", "talent-2", "followed"),
    ("fan-1", "talent-1", "unfollowed"),
    ("fan-2", "talent-2", "followed"),
]
EXPECTED_JOBS = sum(2 if action == "followed" else 1 for *_, action in EVENTS)


async def main(settings: Settings) -> int:
    done = asyncio.Event()
    completed: list[Event] = []

    def on_progress(e: Event) -> None:
        print(f"  … {e.job.topic:<24} {e.job.id:<16} {e.progress:>3.0f}%")

    def on_complete(e: Event) -> None:
        completed.append(e)
        print(f"  ✓ {e.topic:<24} {e.id:<16} -> {e.result['to']}: {e.result['subject']}")
        if len(completed) == EXPECTED_JOBS:
            done.set()

    def on_error(e: Event) -> None:
        print(f"  ✗ {e.name}: {e.error}", file=sys.stderr)

    pipeline.on("job:progress", on_progress)
    pipeline.on("job:complete", on_complete)
    pipeline.on("error", on_error)
    async with Runner(pipeline, settings):
        for fan, talent, action in EVENTS:
            seq = await pipeline.publish(FanbaseEvent(fan=fan, talent=talent, action=action))
            print(f"published #{seq}: {fan} {action} {talent}")
        try:
            await asyncio.wait_for(done.wait(), timeout=30)
        except TimeoutError:
            print(f"only {len(completed)} of {EXPECTED_JOBS} jobs completed", file=sys.stderr)
            return 1
    print(f"all {EXPECTED_JOBS} notifications sent")
    return 0


if __name__ == "__main__":
    from flowline import _logging

    _logging.configure(level="WARNING")
    with LocalServers() as servers:
        code = asyncio.run(main(Settings(nats_url=servers.nats_url, redis_url=servers.redis_url)))
    sys.exit(code)
