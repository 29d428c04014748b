"""Connection settings, read from arguments or the environment, and safe to log."""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit, urlunsplit

from .errors import ConfigurationError

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


@dataclass(frozen=True)
class Settings:
    """Where the servers are and how a worker process behaves.

    Args:
        nats_url: NATS server(s), comma-separated; credentials may be in the URL.
        redis_url: Redis URL: ``redis://`` (``rediss://`` for TLS);
            ``redis+sentinel://host:26379,host2:26379/service[/db]`` for a Sentinel-managed
            primary (`SentinelURL`); or a Redis Cluster's ``redis+cluster://host:port,host:port``
            (``rediss+...`` for TLS).
        grace: seconds in-flight jobs get to finish on shutdown before being handed back.
        concurrency: overrides every queue's concurrency in this process when set.
        nats_options: extra keyword arguments for `nats.connect` (tls, user_credentials...).
        redis_options: extra keyword arguments for `redis.asyncio.Redis.from_url` (for
            `redis.asyncio.RedisCluster` with a cluster URL).
        tls_ca: a CA certificate file trusted for ``tls://`` NATS and ``rediss://`` Redis
            (default: the system's trust store).
        http_port: serve ``/metrics``, ``/healthz`` and ``/readyz`` on this port (0: any free
            port); None serves nothing.
        http_host: the address the HTTP endpoint binds (default loopback only).
        metrics: count Prometheus metrics (on by default; off only to measure their cost).
        redis_max_connections: the size of the Redis connection pool; commands wait for a free
            connection instead of failing (default: enough for every loop, plus 32).
        heartbeat: seconds between refreshes of this process's entry in the process registry;
            an entry not refreshed for three of them is gone.
        events_retention: about how many lifecycle events each pipeline's event log in Redis
            keeps (``flowline events``, `flowline.listen`); 0 records none.
        redis_wait_replicas: new jobs count as enqueued only once this many Redis replicas
            have them (Redis WAIT, up to 1 s): a stream message is acked, and an enqueue
            returns, only then, so a failover to a replica cannot lose them. 0 (the default)
            waits for none, as Redis's asynchronous replication does.
    """

    nats_url: str = DEFAULT_NATS_URL
    redis_url: str = DEFAULT_REDIS_URL
    grace: float = 30.0
    concurrency: int | None = None
    nats_options: dict[str, object] = field(default_factory=dict)
    redis_options: dict[str, object] = field(default_factory=dict)
    tls_ca: str | None = None
    http_port: int | None = None
    http_host: str = "127.0.0.1"
    metrics: bool = True
    redis_max_connections: int | None = None
    heartbeat: float = 5.0
    events_retention: int = 10_000
    redis_wait_replicas: int = 0

    def __post_init__(self) -> None:
        for url in self.nats_url.split(","):
            if urlsplit(url.strip()).scheme not in ("nats", "tls", "ws", "wss"):
                raise ConfigurationError(f"not a NATS URL: {redact(url)!r}")
        scheme = urlsplit(self.redis_url).scheme
        if is_cluster_url(self.redis_url):
            cluster_nodes(self.redis_url)  # raises on a bad node list
            if self.redis_wait_replicas:
                raise ConfigurationError(
                    "redis_wait_replicas is not supported on a Redis Cluster (WAIT answers for "
                    "one node's connection, and a cluster pipeline spans nodes)"
                )
        elif scheme in SentinelURL.SCHEMES:
            SentinelURL.parse(self.redis_url)  # raises for a malformed one
        elif scheme not in ("redis", "rediss", "unix"):
            raise ConfigurationError(f"not a Redis URL: {redact(self.redis_url)!r}")
        for url in (*self.nats_url.split(","), *_single(self.redis_url)):
            try:
                _ = urlsplit(url.strip()).port
            except ValueError:
                raise ConfigurationError(f"bad port in {redact(url.strip())!r}") from None
        if self.grace < 0:
            raise ConfigurationError("grace must be >= 0 seconds")
        if self.concurrency is not None and self.concurrency < 1:
            raise ConfigurationError("concurrency must be >= 1")
        if self.http_port is not None and not 0 <= self.http_port <= 65535:
            raise ConfigurationError(f"http_port must be within 0..65535, got {self.http_port}")
        if not self.http_host:
            raise ConfigurationError("http_host must not be empty")
        if not 0.1 <= self.heartbeat <= 300:
            raise ConfigurationError(f"heartbeat must be within 0.1..300 s, got {self.heartbeat}")
        if self.events_retention < 0:
            raise ConfigurationError(
                f"events_retention must be >= 0 (0: off), got {self.events_retention}"
            )
        if not 0 <= self.redis_wait_replicas <= 16:
            raise ConfigurationError(
                f"redis_wait_replicas must be within 0..16, got {self.redis_wait_replicas}"
            )
        if self.redis_max_connections is not None and self.redis_max_connections < 4:
            raise ConfigurationError("redis_max_connections must be >= 4")

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        """Settings from ``FLOWLINE_*`` environment variables; `overrides` win.

        Reads ``FLOWLINE_NATS_URL``, ``FLOWLINE_REDIS_URL``, ``FLOWLINE_TLS_CA``,
        ``FLOWLINE_HTTP_PORT``, ``FLOWLINE_HTTP_HOST``, ``FLOWLINE_HEARTBEAT``,
        ``FLOWLINE_EVENTS_RETENTION`` and ``FLOWLINE_REDIS_WAIT_REPLICAS``.
        """
        values: dict[str, object] = {
            "nats_url": os.environ.get("FLOWLINE_NATS_URL", DEFAULT_NATS_URL),
            "redis_url": os.environ.get("FLOWLINE_REDIS_URL", DEFAULT_REDIS_URL),
            "tls_ca": os.environ.get("FLOWLINE_TLS_CA"),
            "http_host": os.environ.get("FLOWLINE_HTTP_HOST", "127.0.0.1"),
        }
        numbers: tuple[tuple[str, str, type[int] | type[float], str], ...] = (
            ("FLOWLINE_HEARTBEAT", "heartbeat", float, "a number"),
            ("FLOWLINE_HTTP_PORT", "http_port", int, "a port number"),
            ("FLOWLINE_EVENTS_RETENTION", "events_retention", int, "a number of events"),
            ("FLOWLINE_REDIS_WAIT_REPLICAS", "redis_wait_replicas", int, "a number of replicas"),
        )
        for name, key, cast, what in numbers:
            raw = os.environ.get(name, "").strip()
            if raw:
                try:
                    values[key] = cast(raw)
                except ValueError:
                    raise ConfigurationError(f"{name} must be {what}, got {raw!r}") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]

    def nats_connect_options(self) -> dict[str, object]:
        """Keyword arguments for `nats.connect` beyond the servers: TLS, then user options."""
        options: dict[str, object] = {}
        if self.tls_ca is not None:
            options["tls"] = ssl.create_default_context(cafile=self.tls_ca)
        return {**options, **self.nats_options}

    def redis_connect_options(self) -> dict[str, object]:
        """Keyword arguments for `Redis.from_url`: TLS, then user options."""
        options: dict[str, object] = {}
        if self.tls_ca is not None and self.redis_url.startswith(("rediss://", "rediss+")):
            options["ssl_ca_certs"] = self.tls_ca
        return {**options, **self.redis_options}

    def __repr__(self) -> str:
        return f"Settings(nats_url={redact(self.nats_url)!r}, redis_url={redact(self.redis_url)!r})"


@dataclass(frozen=True)
class SentinelURL:
    """A ``redis+sentinel://[user:password@]host[:port][,host[:port]...]/service[/db]`` URL:
    the Sentinels to ask (port 26379 by default), the name of the primary they watch, and the
    database. Credentials are the primary's; ``rediss+sentinel://`` reaches the primary, and
    the Sentinels, over TLS."""

    SCHEMES = ("redis+sentinel", "rediss+sentinel")

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False

    @classmethod
    def parse(cls, url: str) -> SentinelURL:
        s = urlsplit(url)
        userinfo, at, hosts = s.netloc.rpartition("@")
        user, colon, password = userinfo.partition(":") if at else ("", "", "")
        sentinels = []
        for one in hosts.split(","):
            try:
                port = urlsplit(f"//{one}").port or 26379
            except ValueError:
                raise ConfigurationError(f"bad port in {redact(url)!r}") from None
            host = urlsplit(f"//{one}").hostname
            if not host:
                raise ConfigurationError(f"a Sentinel URL needs host:port, got {redact(url)!r}")
            sentinels.append((host, port))
        parts = [p for p in s.path.split("/") if p]
        if not parts or len(parts) > 2 or (len(parts) == 2 and not parts[1].isdigit()):
            raise ConfigurationError(
                f"a Sentinel URL ends in /service or /service/db, got {redact(url)!r}"
            )
        return cls(
            sentinels=tuple(sentinels),
            service=parts[0],
            db=int(parts[1]) if len(parts) == 2 else 0,
            username=unquote(user) or None,
            password=unquote(password) if colon else None,
            tls=s.scheme == "rediss+sentinel",
        )


def redact(url: str) -> str:
    """The URL with any password or token replaced by ``***`` (for logs and events)."""
    parts = []
    # A cluster or Sentinel URL is one URL whose netloc lists the nodes: a comma in its
    # password must not split it (NATS lists whole URLs).
    whole = is_cluster_url(url) or urlsplit(url).scheme in SentinelURL.SCHEMES
    for one in [url] if whole else url.split(","):
        s = urlsplit(one.strip())
        # Split the netloc by hand: .hostname drops IPv6 brackets and .port raises on bad ports.
        userinfo, at, host = s.netloc.rpartition("@")
        if at:
            user, colon, _ = userinfo.partition(":")
            cred = f"{user}:***" if colon else "***"
            one = urlunsplit((s.scheme, f"{cred}@{host}", s.path, s.query, s.fragment))
        parts.append(one)
    return ",".join(parts)


CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")


def is_cluster_url(url: str) -> bool:
    """True for a Redis Cluster URL: ``redis+cluster://`` or ``rediss+cluster://`` (TLS)."""
    return urlsplit(url.split(",", 1)[0].strip()).scheme in CLUSTER_SCHEMES


def cluster_nodes(url: str) -> tuple[list[tuple[str, int]], str | None, str | None]:
    """The startup nodes, user and password of ``redis+cluster://[user:pass@]h:p[,h:p...]``.

    Raises:
        ConfigurationError: a node without a host or with a bad port, a database number (a
            cluster has database 0 only), or ``?options`` (which would be ignored).
    """
    s = urlsplit(url.strip())
    userinfo, at, hosts = s.netloc.rpartition("@")
    user = password = None
    if at:
        name, colon, secret = userinfo.partition(":")
        user, password = unquote(name) or None, unquote(secret) if colon else None
    if s.path.strip("/") not in ("", "0"):
        raise ConfigurationError(f"a Redis Cluster has database 0 only: {redact(url)!r}")
    if s.query:
        raise ConfigurationError(
            f"options in a Redis Cluster URL are not read; pass them as "
            f"Settings(redis_options=...): {redact(url)!r}"
        )
    nodes = []
    for one in hosts.split(","):
        node = urlsplit("//" + one.strip())
        try:
            port = node.port or 6379
        except ValueError:
            raise ConfigurationError(f"bad port in {redact(url)!r}") from None
        if not node.hostname:
            raise ConfigurationError(f"no host in Redis Cluster URL {redact(url)!r}")
        nodes.append((node.hostname, port))
    return nodes, user, password


def _single(redis_url: str) -> list[str]:
    """`redis_url` for the port check of single-server URLs (a cluster's and a Sentinel
    URL's parsers check their own)."""
    if is_cluster_url(redis_url) or urlsplit(redis_url).scheme in SentinelURL.SCHEMES:
        return []
    return [redis_url]
