"""Connecting to the servers: NATS and Redis clients configured the one way flowline uses them."""

from __future__ import annotations

from typing import Any, cast
from urllib.parse import urlsplit

import nats
import structlog
from nats.aio.client import Client as NATS
from redis import Redis as SyncRedis
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.sentinel import Sentinel as SyncSentinel

from .._settings import SentinelURL, Settings, is_cluster_url, redact
from ..errors import ConfigurationError
from .cluster import connect_cluster

log = structlog.get_logger("flowline.connections")

# How long a command waits for a pooled connection before it fails like a Redis outage would.
POOL_WAIT = 30.0


async def connect_nats(settings: Settings) -> NATS:
    """A NATS connection that reconnects forever; credentials never reach the logs."""
    nc: NATS | None = None

    async def on_error(exc: Exception) -> None:
        if nc is None:
            return  # still connecting: a failure to connect is raised below, once
        log.warning("nats error", error=repr(exc))

    async def on_disconnect() -> None:
        if nc is not None and (nc.is_closed or nc.is_draining):
            return
        log.warning("nats disconnected; reconnecting", url=redact(settings.nats_url))

    async def on_reconnect() -> None:
        log.info("nats reconnected", url=redact(settings.nats_url))

    try:
        nc = await nats.connect(
            servers=[u.strip() for u in settings.nats_url.split(",")],
            name="flowline",
            # A few attempts at start, so wrong credentials or URLs fail instead of hanging...
            max_reconnect_attempts=3,
            reconnect_time_wait=0.5,
            connect_timeout=5,
            allow_reconnect=True,
            error_cb=on_error,
            disconnected_cb=on_disconnect,
            reconnected_cb=on_reconnect,
            **settings.nats_connect_options(),
        )
        # ...then, once connected, reconnect forever: a NATS restart must never stop a worker.
        nc.options["max_reconnect_attempts"] = -1
        return nc
    except Exception as exc:
        raise ConfigurationError(
            f"cannot connect to NATS at {redact(settings.nats_url)}: {type(exc).__name__}: {exc}"
        ) from None


async def connect_redis(
    settings: Settings, max_connections: int = 32, *, check: bool = True, name: str = "flowline"
) -> Redis:
    """A Redis client, checked with PING so a wrong URL fails at start, not mid-stream.

    Without `check` no connection is made until the first command (redis-py connects lazily):
    a process that may never need Redis does not fail for want of it.

    Its pool is a blocking one: past `max_connections` (or ``settings.redis_max_connections``)
    a command waits for a free connection instead of failing, so no number of queues, handlers
    or concurrent enqueues can make flowline's own Redis calls fail for want of connections.

    Every connection carries `name` (``CLIENT SETNAME``), so ``CLIENT LIST`` tells which
    process holds which connections; a ``client_name`` in ``redis_options`` wins.

    A ``redis+cluster://`` URL gives a Redis Cluster client (`runtime.cluster`).
    """
    size = settings.redis_max_connections or max_connections
    options: dict[str, Any] = {
        "health_check_interval": 10,
        "socket_keepalive": True,
        **{"client_name": name, **settings.redis_connect_options()},
    }
    if is_cluster_url(settings.redis_url):
        redis = connect_cluster(settings, size, options)  # a pool of `size` per node
    else:
        options.update(max_connections=size, timeout=POOL_WAIT, retry_on_timeout=True)
        if urlsplit(settings.redis_url).scheme in SentinelURL.SCHEMES:
            pool = _sentinel_pool(SentinelURL.parse(settings.redis_url), options)
        else:
            pool = BlockingConnectionPool.from_url(settings.redis_url, **options)
        redis = Redis.from_pool(pool)
    if check:
        try:
            await ping_redis(redis, settings)
        except ConfigurationError:
            await redis.aclose()
            raise
    return redis


class _SentinelBlockingPool(SentinelConnectionPool, BlockingConnectionPool):
    """A pool whose connections go to the primary the Sentinels name, asked again at every
    (re)connect, and which waits for a free connection like the plain one does."""


def _sentinel_kwargs(url: SentinelURL, options: dict[str, Any]) -> dict[str, Any]:
    """How to reach the Sentinels themselves, taken out of `options`: the same socket and TLS
    settings, without the primary's credentials (a Sentinel has its own, if any:
    ``redis_options={"sentinel_kwargs": {...}}``)."""
    given = options.pop("sentinel_kwargs", None)
    kwargs = dict(given) if given else {
        k: v for k, v in options.items() if k.startswith(("socket_", "ssl"))
    }  # fmt: skip
    return {"ssl": True, **kwargs} if url.tls else kwargs


def _sentinel_pool(url: SentinelURL, options: dict[str, Any]) -> BlockingConnectionPool:
    auth = {"username": url.username, "password": url.password, "ssl": url.tls}
    sentinels = _sentinel_kwargs(url, options)
    # redis-py's Sentinel classes are untyped.
    manager = Sentinel(list(url.sentinels), sentinel_kwargs=sentinels)  # type: ignore[no-untyped-call]
    return _SentinelBlockingPool(url.service, manager, db=url.db, **auth, **options)  # type: ignore[no-untyped-call]


def connect_redis_sync(settings: Settings) -> SyncRedis:
    """A synchronous client for `enqueue_sync`, on any URL form flowline takes."""
    if is_cluster_url(settings.redis_url):
        from .cluster import sync_cluster

        # The cluster client offers the commands `write_sync` sends (script calls, routed by key).
        return cast(SyncRedis, sync_cluster(settings))
    options: dict[str, Any] = {"client_name": "flowline", **settings.redis_connect_options()}
    if urlsplit(settings.redis_url).scheme not in SentinelURL.SCHEMES:
        return SyncRedis.from_url(settings.redis_url, **options)
    url = SentinelURL.parse(settings.redis_url)
    sentinels = _sentinel_kwargs(url, options)
    manager = SyncSentinel(list(url.sentinels), sentinel_kwargs=sentinels)  # type: ignore[no-untyped-call]
    client: SyncRedis = manager.master_for(  # type: ignore[no-untyped-call]
        url.service,
        db=url.db,
        username=url.username,
        password=url.password,
        ssl=url.tls,
        **options,
    )
    return client


async def ping_redis(redis: Redis, settings: Settings) -> None:
    """PING `redis`; raises `ConfigurationError` naming the (redacted) URL if it fails."""
    try:
        await redis.ping()
    except Exception as exc:
        raise ConfigurationError(
            f"cannot connect to Redis at {redact(settings.redis_url)}: {type(exc).__name__}: {exc}"
        ) from None
