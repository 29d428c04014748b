"""The process registry: who is running, and what killed workers leave behind in Redis."""

from __future__ import annotations

import json

from flowline.backends.jetstream import ensure_stream
from flowline.runtime import registry
from flowline.runtime.keys import GROUP, QueueKeys
from tests.apps.recorder import pipeline

from .conftest import eventually

APP = "tests.apps.recorder:pipeline"
FAST = {"FLOWLINE_HEARTBEAT": "0.3", "FLOWLINE_TEST_VISIBILITY": "1"}
Q = QueueKeys("recorder")


async def test_live_processes_are_listed_and_a_killed_one_disappears(worker, redis):
    """Each worker registers host, pid, version and parts; a SIGKILLed one is gone in ~3 beats."""
    a, b = worker(APP, env=FAST), worker(APP, "--only", "queue", env=FAST)
    await a.ready()
    await b.ready()
    listed = await eventually(lambda: _count(redis, 2))
    by_pid = {p.pid: p for p in listed}
    assert set(by_pid) == {a.pid, b.pid}
    assert by_pid[a.pid].parts == [f"stream:{pipeline.name}", "queue:recorder"]
    assert by_pid[b.pid].parts == ["queue:recorder"]
    assert by_pid[a.pid].pipelines == [pipeline.name]
    assert by_pid[a.pid].version == registry.version()
    assert by_pid[a.pid].expires > by_pid[a.pid].heartbeat >= by_pid[a.pid].started
    a.kill()
    [left] = await eventually(lambda: _count(redis, 1), timeout=5)
    assert left.pid == b.pid
    # The dead entry is pruned from Redis by the next heartbeat too, not only hidden.
    await eventually(lambda: _hlen_is(redis, 1), timeout=2)


async def test_a_clean_stop_removes_its_entry_at_once(worker, redis):
    """SIGTERM: the process deletes its own entry before it exits."""
    proc = worker(APP, env=FAST)
    await proc.ready()
    await eventually(lambda: _count(redis, 1))
    proc.signal(15)
    assert await proc.wait() == 0
    assert await registry.processes(redis) == []
    assert await redis.hlen(registry.HASH) == 0


async def test_a_killed_workers_consumers_are_removed_once_they_hold_nothing(worker, js, redis):
    """The SIGKILLed worker's consumer stays while it holds a job, and goes once reclaimed."""
    victim = worker(APP, "--only", "queue", env=FAST)
    await victim.ready()
    await ensure_stream(js, "recorder")
    await js.publish(
        "recorder", json.dumps({"jobs": [{"topic": "record", "data": {"sleep": 30}}]}).encode()
    )
    router = worker(APP, "--only", "stream", env=FAST)
    await router.ready()

    async def held() -> bool:
        consumers = await redis.xinfo_consumers(Q.jobs, GROUP)
        return any(int(c["pending"]) == 1 for c in consumers)

    await eventually(held)
    victim.kill()
    # Its consumer holds the job: it must stay until another worker reclaims it.
    consumers = {
        c["name"].decode(): int(c["pending"]) for c in await redis.xinfo_consumers(Q.jobs, GROUP)
    }
    [dead] = [name for name, pending in consumers.items() if pending == 1]
    rescuer = worker(APP, "--only", "queue", env=FAST)
    await rescuer.ready()

    async def gone() -> bool:
        names = {c["name"].decode() for c in await redis.xinfo_consumers(Q.jobs, GROUP)}
        return dead not in names

    await eventually(gone, timeout=15)
    [survivor] = await redis.xinfo_consumers(Q.jobs, GROUP)
    assert int(survivor["pending"]) == 1  # the rescuer runs the reclaimed job


async def _count(redis, n: int) -> list[registry.ProcessInfo] | None:
    found = await registry.processes(redis)
    return found if len(found) == n else None


async def _hlen_is(redis, n: int) -> bool:
    return await redis.hlen(registry.HASH) == n
