"""Who is running: every flowline process registers itself in Redis and refreshes the entry.

    flowline:{processes}        hash: process id -> JSON (host, pid, version, parts, counts...)
    flowline:{processes}:seen   zset: process id -> when its entry expires (ms)

A process refreshes its entry every heartbeat (`Settings.heartbeat`, 5 s by default); an entry
not refreshed for three heartbeats belongs to a process that died, and the next heartbeat of any
process removes it (one script call prunes and refreshes, atomically). A process that stops
cleanly removes its own.

The same heartbeat removes the Redis stream consumers that killed processes left behind in
their queues' consumer groups, once they hold no pending job (a consumer holding one is how
its job is reclaimed, so it stays until then).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import json
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog
from redis.exceptions import ResponseError

from .keys import GROUP, QueueKeys

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = structlog.get_logger("flowline.registry")

HASH = "flowline:{processes}"
SEEN = "flowline:{processes}:seen"
# An entry is fresh for this many of its process's heartbeats.
EXPIRES_AFTER = 3

# KEYS: hash, seen. ARGV: id, entry json, its expiry ms, now ms (entries expired by then go).
# Refreshes one entry and drops the ones whose process stopped heart-beating.
_REFRESH = """
local dead = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[4])
for _, id in ipairs(dead) do
  redis.call('HDEL', KEYS[1], id)
  redis.call('ZREM', KEYS[2], id)
end
if ARGV[2] ~= '' then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
end
return #dead
"""


def version() -> str:
    try:
        return importlib.metadata.version("flowline")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


@dataclass(frozen=True)
class ProcessInfo:
    """One live flowline process, as it last described itself."""

    id: str
    host: str
    pid: int
    version: str
    pipelines: list[str]
    parts: list[str]  # its loops: stream:<pipeline>, queue:<name>, cron:<topic>
    started: float
    heartbeat: float
    expires: float  # when the entry is stale unless refreshed again
    running: int
    completed: int
    failed: int

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


async def processes(redis: Redis) -> list[ProcessInfo]:
    """The processes whose entry is fresh, oldest first."""
    now_ms = int(time.time() * 1000)
    # Scores are expiry times: each process says how long its own entry stays fresh.
    ids: list[bytes] = await redis.zrangebyscore(SEEN, now_ms, "+inf")  # type: ignore[assignment]
    if not ids:
        return []
    raw = await redis.hmget(HASH, ids)
    out = []
    for one in raw:
        if one is None:
            continue
        doc = json.loads(one)
        out.append(ProcessInfo(**doc))
    return sorted(out, key=lambda p: p.started)


class Registration:
    """This process's entry: refreshed by `beat`, removed by `remove`."""

    def __init__(
        self, redis: Redis, process_id: str, pipelines: list[str], heartbeat: float
    ) -> None:
        self.redis = redis
        self.id = process_id
        self.pipelines = pipelines
        self.heartbeat = heartbeat
        self.started = time.time()
        self._refresh = redis.register_script(_REFRESH)

    async def beat(self, parts: list[str], running: int, completed: int, failed: int) -> None:
        """Refresh this process's entry (and prune the entries of dead processes)."""
        now = time.time()
        info = ProcessInfo(
            id=self.id,
            host=socket.gethostname(),
            pid=os.getpid(),
            version=version(),
            pipelines=self.pipelines,
            parts=parts,
            started=self.started,
            heartbeat=now,
            expires=now + EXPIRES_AFTER * self.heartbeat,
            running=running,
            completed=completed,
            failed=failed,
        )
        await self._refresh(
            keys=[HASH, SEEN],
            args=[self.id, json.dumps(info.as_dict()), int(info.expires * 1000), int(now * 1000)],
        )

    async def remove(self) -> None:
        """Take this process's entry out (a clean stop)."""
        await self.redis.hdel(HASH, self.id)
        await self.redis.zrem(SEEN, self.id)


async def remove_dead_consumers(
    redis: Redis, queues: list[str], live: set[str], idle: float
) -> int:
    """Delete group consumers of `queues` whose process is not live and that hold no job.

    Consumer names are ``<process id>-<queue>`` (see `Runner`); a consumer of another naming
    (taskiq's broker, older versions) is removed once it has held nothing for `idle` seconds.
    """
    removed = 0
    for name in queues:
        for stream in QueueKeys(name).streams:
            try:
                consumers = await redis.xinfo_consumers(stream, GROUP)
            except ResponseError:
                continue  # no stream or group yet
            for c in consumers:
                consumer = c["name"].decode() if isinstance(c["name"], bytes) else c["name"]
                owner = consumer.removesuffix(f"-{name}")
                if owner in live or int(c["pending"]) > 0:
                    continue
                if int(c["idle"]) < idle * 1000:
                    continue
                await redis.xgroup_delconsumer(stream, GROUP, consumer)
                removed += 1
    return removed


# What a process reports at each heartbeat: its parts, and jobs running, completed and failed.
State = Callable[[], tuple[list[str], int, int, int]]


class Presence:
    """A process's registry entry, refreshed every heartbeat until `stop`, which removes it.

    Each heartbeat also removes the consumers of `queues` that dead processes left behind.
    `Runner` and the taskiq broker's worker process both keep one.
    """

    def __init__(
        self,
        redis: Redis,
        process_id: str,
        pipelines: list[str],
        heartbeat: float,
        queues: list[str],
        state: State,
    ) -> None:
        self.registration = Registration(redis, process_id, pipelines, heartbeat)
        self.redis, self.heartbeat, self.queues, self.state = redis, heartbeat, queues, state
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def register(self) -> None:
        """The first entry, written before any consumer exists (no live one looks abandoned)."""
        await self.registration.beat(*self.state())

    def start(self) -> None:
        """Refresh the entry every heartbeat from now on."""
        self._task = asyncio.create_task(self._run(), name="registry")

    async def stop(self) -> None:
        """Stop refreshing and remove the entry (a dead Redis: it expires by itself)."""
        self._stop.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self.registration.remove()

    async def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=self.heartbeat)
            if self._stop.is_set():
                break
            try:
                await self.registration.beat(*self.state())
                if self.queues:
                    live = {p.id for p in await processes(self.redis)}
                    idle = EXPIRES_AFTER * self.heartbeat
                    await remove_dead_consumers(self.redis, self.queues, live, idle)
            except Exception as exc:
                log.warning("process registry not refreshed", error=repr(exc))
