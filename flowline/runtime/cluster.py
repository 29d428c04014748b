"""Redis Cluster clients, for ``redis+cluster://`` URLs: the same commands, routed by slot.

flowline's layout keeps each script call in one slot (every key of a queue shares the hash tag
``{queue}``; see `runtime.keys`), so redis-py's cluster client runs every call flowline makes
on the one primary that owns the slot. What differs from a single Redis is handled where it
happens: reads of several pipelines' event logs (`eventlog.tail`), script calls in a pipeline
(`backends.redis`), and multi-key reads across queues (`inspect.cron_marks`).

redis-py's cluster client keeps one pool per node that raises `MaxConnectionsError` when it
is full. flowline promises that a command waits for a connection instead (see
`connections.connect_redis`), so `WaitingCluster` lets at most `max_connections` commands of
the process run at once, and sizes each node's pool to that: a command that would find a pool
full waits for a free slot instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import AsyncIterator, Sequence
from typing import Any, cast

from redis import RedisCluster as SyncRedisCluster
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, ClusterPipeline, RedisCluster
from redis.cluster import ClusterNode as SyncClusterNode
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError

from .._settings import Settings, cluster_nodes

# How long a command waits for a free connection before it fails like a Redis outage would
# (`connections.POOL_WAIT`: the same wait as a single Redis's blocking pool).
POOL_WAIT = 30.0
# The client one of whose permits the current task holds.
_PERMITTED: contextvars.ContextVar[object] = contextvars.ContextVar("permitted", default=None)


class WaitingCluster(RedisCluster):
    """A cluster client whose commands wait for a free connection instead of failing."""

    def __init__(self, *, max_connections: int, **kwargs: Any) -> None:
        super().__init__(max_connections=max_connections, **kwargs)
        self._flowline_slots = asyncio.Semaphore(max_connections)

    @contextlib.asynccontextmanager
    async def _flowline_permit(self) -> AsyncIterator[None]:
        if _PERMITTED.get() is self:
            # A command sent while this task holds a permit (a pipeline retrying one of its
            # commands after a MOVED): waiting for a second permit could wait forever.
            yield
            return
        try:
            await asyncio.wait_for(self._flowline_slots.acquire(), POOL_WAIT)
        except TimeoutError:
            raise RedisConnectionError("no Redis connection free") from None
        token = _PERMITTED.set(self)
        try:
            yield
        finally:
            _PERMITTED.reset(token)
            self._flowline_slots.release()

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        async with self._flowline_permit():
            return await super().execute_command(*args, **kwargs)

    async def _determine_slot(self, command: str, *args: Any) -> int:
        # redis-py asks a node (COMMAND GETKEYS) for the keys of commands whose keys move,
        # XREADGROUP among them: a second round trip for every read of a worker. Their keys
        # are the first half of what follows STREAMS.
        if command.upper() in ("XREAD", "XREADGROUP"):
            words = [a.upper() if isinstance(a, str | bytes) else a for a in args]
            marker = next((i for i, w in enumerate(words) if w in ("STREAMS", b"STREAMS")), None)
            if marker is not None:
                rest = args[marker + 1 :]
                slots = {self.keyslot(key) for key in rest[: len(rest) // 2]}
                if len(slots) == 1:
                    return slots.pop()
        return await super()._determine_slot(command, *args)

    def pipeline(self, transaction: Any | None = None, shard_hint: Any | None = None) -> Any:
        # One permit for the whole pipeline: it holds at most one connection per node.
        # mypy sees redis-py's pipeline class as abstract; redis-py builds it the same way.
        return _WaitingPipeline(self, transaction)  # type: ignore[abstract]


class _WaitingPipeline(ClusterPipeline):
    async def execute(self, raise_on_error: bool = True, allow_redirections: bool = True) -> Any:
        client = self.cluster_client
        assert isinstance(client, WaitingCluster)
        async with client._flowline_permit():
            return await super().execute(raise_on_error, allow_redirections)


async def run_scripts(
    redis: Redis, script: AsyncScript, calls: Sequence[tuple[list[Any], list[Any]]]
) -> list[Any]:
    """The replies of `script` called with each (KEYS, ARGV) of `calls`, pipelined: one round
    trip on a single Redis, one per node on a cluster.

    redis-py's cluster pipeline refuses EVALSHA and loads no scripts, so on a cluster the
    calls are sent as raw EVALSHA commands and any that found the script missing on its node
    (NOSCRIPT: it did not run) is called again on its own, which loads it.
    """
    pipe = redis.pipeline(transaction=False)
    if not is_cluster(redis):
        for keys, args in calls:
            await script(keys=keys, args=args, client=pipe)
        return list(await pipe.execute())
    for keys, args in calls:
        pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
    replies = list(await pipe.execute(raise_on_error=False))
    for i, reply in enumerate(replies):
        if isinstance(reply, NoScriptError):
            keys, args = calls[i]
            replies[i] = await script(keys=keys, args=args)
        elif isinstance(reply, Exception):
            raise reply
    return replies


def is_cluster(redis: object) -> bool:
    """True for a cluster client (`connect_redis` types both as `Redis`)."""
    return isinstance(redis, RedisCluster)


def connect_cluster(settings: Settings, max_connections: int, options: dict[str, Any]) -> Redis:
    """The cluster client of ``settings.redis_url`` (not connected yet: it connects, and finds
    the cluster's nodes, at its first command).

    Args:
        max_connections: the most commands that run at once, and each node's pool size.
        options: connection options (client name, TLS, health checks...), as for a single Redis.
    """
    nodes, user, password = cluster_nodes(settings.redis_url)
    client = WaitingCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in nodes],
        max_connections=max_connections,
        username=user,
        password=password,
        ssl=settings.redis_url.startswith("rediss+"),
        **options,
    )
    # The cluster client offers every command flowline uses, with the same signatures (keys
    # of one slot per call); typed as `Redis`, every caller keeps one client type.
    return cast(Redis, client)


def sync_cluster(settings: Settings) -> SyncRedisCluster:
    """A synchronous cluster client of ``settings.redis_url`` (`Pipeline.enqueue_sync`)."""
    nodes, user, password = cluster_nodes(settings.redis_url)
    options: dict[str, Any] = settings.redis_connect_options()
    return SyncRedisCluster(
        startup_nodes=[SyncClusterNode(h, p) for h, p in nodes],  # type: ignore[no-untyped-call]
        username=user,
        password=password,
        ssl=settings.redis_url.startswith("rediss+"),
        **options,
    )
