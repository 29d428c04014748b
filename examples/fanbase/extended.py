"""Run the extended fanbase example (channels, audit stream, digest) end to end, then exit 0.

    python -m examples.fanbase.extended

Starts nats-server and redis-server in a temporary directory and runs every pipeline of
`channels` in this process, with the digest every second instead of daily at 9:00. Publishes
follow/unfollow events, prints each notification as its channel sends it, each audit record,
each digest, and exits once every notification is sent and audited and a digest tick has run.

The same app is a worker target too: ``flowline worker examples.fanbase.extended:app``.
"""

from __future__ import annotations

import asyncio
import sys
from collections import Counter, defaultdict

from flowline import Event, Pipelines, Runner, Settings
from flowline.servers import LocalServers

from . import services as svc
from .channels import DIGEST_JOB, audit, channel_of, notifications_pipeline, route_channels
from .fanbase_pb2 import FanbaseEvent

DIGEST_EVERY = 1.0  # seconds; the real app's schedule is "0 9 * * *"

notifications = notifications_pipeline(DIGEST_EVERY)
app = Pipelines(notifications, audit)

EVENTS = [
    ("fan-1", "talent-1", "followed"),
    ("fan-2", "talent-1", "followed"),
    ("fan-3", "talent-2", "followed"),
    ("fan-1", "talent-1", "unfollowed"),
    ("fan-2", "talent-2", "followed"),
]
# Per channel, what the router makes of EVENTS: the numbers the run must reach.
EXPECTED = Counter(
    channel_of(job.topic)
    for fan, talent, action in EVENTS
    for job in route_channels(FanbaseEvent(fan=fan, talent=talent, action=action))
)


class Progress:
    """What has been sent, audited and digested so far; `done` is set when the run is complete."""

    def __init__(self, talents: int) -> None:
        self.talents = talents
        self.sent: Counter[str] = Counter()
        self.notified: set[str] = set()  # ids of every notification sent, digests included
        self.audited: list[str] = []
        self.digests: defaultdict[str, list[str]] = defaultdict(list)  # tick -> talents
        self.done = asyncio.Event()

    def check(self) -> None:
        complete_ticks = [t for t, talents in self.digests.items() if len(talents) == self.talents]
        if self.sent == EXPECTED and complete_ticks and self.notified <= set(self.audited):
            self.done.set()


async def main(settings: Settings) -> int:
    progress = Progress(talents=sum(u.is_talent for u in svc.USERS.values()))

    def on_sent(e: Event) -> None:
        if e.topic == DIGEST_JOB:  # the digest is sent through the email queue too
            on_digest(e)
            return
        channel = channel_of(e.topic)
        progress.sent[channel] += 1
        progress.notified.add(e.id)
        print(
            f"  ✓ {channel:<6} {e.topic:<24} {e.id:<14} -> {e.result['to']}: {e.result['subject']}"
        )
        progress.check()

    def on_audited(e: Event) -> None:
        record = e.result
        progress.audited.append(record["notification"])
        print(f"  ≡ audit  {record['channel']:<6} {record['topic']:<24} {record['notification']}")
        progress.check()

    def on_tick(e: Event) -> None:
        print(f"  ⏰ tick   {e.event.scheduled.isoformat()}")

    def on_digest(e: Event) -> None:
        progress.digests[e.result["scheduled"]].append(e.result["talent"])
        progress.notified.add(e.id)
        print(f"  ✉ digest {e.id:<30} -> {e.result['to']}: {e.result['subject']}")
        progress.check()

    def on_error(e: Event) -> None:
        print(f"  ✗ {e.pipeline} {e.name}: {e.error}", file=sys.stderr)

    notifications.on("job:complete", on_sent)
    notifications.on("cron", on_tick)
    audit.on("job:complete", on_audited)
    for pipeline in app:
        pipeline.on("error", on_error)

    async with Runner(app, settings):
        for fan, talent, action in EVENTS:
            seq = await notifications.publish(FanbaseEvent(fan=fan, talent=talent, action=action))
            print(f"published #{seq}: {fan} {action} {talent}")
        try:
            await asyncio.wait_for(progress.done.wait(), timeout=30)
        except TimeoutError:
            print(
                f"incomplete: sent {dict(progress.sent)} of {dict(EXPECTED)}, "
                f"{len(progress.audited)} audited, digests {dict(progress.digests)}",
                file=sys.stderr,
            )
            return 1

    duplicates = len(progress.audited) - len(set(progress.audited))
    if duplicates:
        print(f"{duplicates} notifications were audited twice", file=sys.stderr)
        return 1
    channels = ", ".join(f"{progress.sent[c]} {c}" for c in sorted(EXPECTED))
    print(f"sent {sum(progress.sent.values())} notifications: {channels}")
    print(f"audited {len(progress.audited)} notifications, each exactly once")
    ticks = [t for t, talents in progress.digests.items() if len(talents) == progress.talents]
    print(f"digests for {progress.talents} talents on {len(ticks)} tick(s), first {ticks[0]}")
    return 0


if __name__ == "__main__":
    from flowline import _logging

    _logging.configure(level="WARNING")
    with LocalServers() as servers:
        code = asyncio.run(main(Settings(nats_url=servers.nats_url, redis_url=servers.redis_url)))
    sys.exit(code)
