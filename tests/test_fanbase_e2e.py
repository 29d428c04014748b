"""The fanbase example, run by a real `flowline worker` process, fed by plain nats-py."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

from redis.asyncio import Redis

from examples.fanbase.fanbase_pb2 import FanbaseEvent
from flowline.runtime.keys import QueueKeys

from .conftest import ROOT, eventually

QUEUE = QueueKeys("fanbase-notifications")


async def publish(js, fan: str, talent: str, action: str) -> int:
    ack = await js.publish(
        "fanbase", FanbaseEvent(fan=fan, talent=talent, action=action).SerializeToString()
    )
    return ack.seq


async def job(redis: Redis, job_id: str) -> dict[str, str]:
    raw = await redis.hgetall(QUEUE.job(job_id))
    return {k.decode(): v.decode() for k, v in raw.items()}


async def test_follow_and_unfollow_notify_the_right_people(worker, js, redis):
    """A follow becomes two emails (fan, talent), an unfollow one (fan); results are stored."""
    proc = worker("examples.fanbase.pipeline:pipeline")
    await proc.ready()
    follow = await publish(js, "fan-1", "talent-1", "followed")
    unfollow = await publish(js, "fan-2", "talent-2", "unfollowed")

    async def all_done():
        jobs = [
            await job(redis, f"fanbase:{follow}:0"),
            await job(redis, f"fanbase:{follow}:1"),
            await job(redis, f"fanbase:{unfollow}:0"),
        ]
        return jobs if all(j.get("state") == "completed" for j in jobs) else None

    welcome, engage, confirm = await eventually(all_done)
    assert welcome["topic"] == "notify-fan-following"
    assert json.loads(welcome["result"])["to"] == "ada@example.com"
    assert json.loads(welcome["result"])["subject"] == "You've started following Nina Simone!"
    assert engage["topic"] == "notify-talent-following"
    assert json.loads(engage["result"])["to"] == "nina@example.com"
    assert confirm["topic"] == "confirm-fan-unfollowing"
    assert json.loads(confirm["result"])["subject"] == "You've stopped following Miles Davis!"
    assert welcome["progress"] == "100"
    assert await redis.exists(QUEUE.job(f"fanbase:{unfollow}:1")) == 0


async def test_sigterm_exits_zero(worker):
    """SIGTERM stops the worker gracefully with exit status 0."""
    proc = worker("examples.fanbase.pipeline:pipeline")
    await proc.ready()
    proc.signal(signal.SIGTERM)
    assert await proc.wait() == 0


def test_example_command_runs_end_to_end():
    """`python -m examples.fanbase` (the README's first command) prints every notification."""
    result = subprocess.run(
        [sys.executable, "-m", "examples.fanbase"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert result.returncode == 0, result.stderr
    assert "all 9 notifications sent" in result.stdout
    assert result.stdout.count("✓") == 9
    assert "Grace started following you!" in result.stdout
