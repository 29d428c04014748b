"""What every figure shares: the fanbase events and jobs, resetting the servers, waiting, and
switching metrics and per-job logs on or off as production would."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nats
import nats.js.errors
from nats.js.api import StorageType, StreamConfig
from redis.asyncio import Redis

from examples.fanbase.fanbase_pb2 import FanbaseEvent
from flowline.backends.jetstream import stream_name_for

if TYPE_CHECKING:
    from flowline.observability.metrics import Metrics
    from flowline.servers import LocalServers

FOLLOWED = ("notify-fan-following", "notify-talent-following")


def event(i: int, *, fan: str | None = None) -> bytes:
    """The i-th "followed" event, encoded."""
    return FanbaseEvent(
        fan=fan or f"fan-{i}", talent=f"talent-{i % 100}", action="followed"
    ).SerializeToString()


def fanbase_rows(stream: str, seq: int, ev: FanbaseEvent, born: int) -> list[str | int]:
    """ENQUEUE ARGV rows (id, topic, data, due, origin, born, trace, seq) of the fanbase router.

    Same ids (``<stream>:<seq>:<index>``) and the same compact JSON as flowline writes, so the
    Redis work of a baseline equals flowline's.
    """
    if ev.action != "followed":
        return []
    data = json.dumps({"fan": ev.fan, "talent": ev.talent}, separators=(",", ":"))
    return [
        f"{stream}:{seq}:0", FOLLOWED[0], data, 0, "stream", born, "", seq,
        f"{stream}:{seq}:1", FOLLOWED[1], data, 0, "stream", born, "", seq,
    ]  # fmt: skip


async def reset(nats_url: str, redis_url: str, subject: str | None = None) -> None:
    """Empty Redis, and recreate `subject`'s stream as flowline would create it (empty)."""
    redis = Redis.from_url(redis_url)
    await redis.flushall()
    await redis.aclose()
    await compact(redis_url)
    if subject is None:
        return
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    name = stream_name_for(subject)
    with contextlib.suppress(nats.js.errors.NotFoundError):
        await js.delete_stream(name)
    config = StreamConfig(
        name=name, subjects=[subject], storage=StorageType.FILE, duplicate_window=120.0
    )
    await js.add_stream(config)
    await nc.close()


async def compact(redis_url: str) -> None:
    """Rewrite Redis's append-only file now and wait for it, so that no side pays for one.

    Redis rewrites its AOF by itself once the file passes twice its last rewritten size (and
    64 MB): a fork and a write of the dataset, on a core the sides share. Left alone it lands on
    whichever side pushes the file over; measured here, 3 of 4 such rewrites in a worker run fell
    on the event log's sides, which write more to the AOF. So every side starts from a rewritten
    file, with automatic rewrites held off below 1 GB: every side still writes and fsyncs all it
    writes, but none pays for a rewrite that the run's earlier sides made due.
    """
    redis = Redis.from_url(redis_url)
    try:
        await redis.config_set("auto-aof-rewrite-min-size", "1gb")
        await redis.bgrewriteaof()
        while True:
            info = await redis.info("persistence")
            if not info["aof_rewrite_in_progress"] and not info["aof_rewrite_scheduled"]:
                return
            await asyncio.sleep(0.05)
    finally:
        await redis.aclose()


async def prepublish(nats_url: str, subject: str, payloads: list[bytes]) -> None:
    """Put `payloads` on `subject`'s stream fast (core publish), then wait until all are stored."""
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    name = await js.find_stream_name_by_subject(subject)
    for i, payload in enumerate(payloads):
        await nc.publish(subject, payload)
        if i % 5000 == 4999:
            await nc.flush()
    await nc.flush()

    async def stored() -> bool:
        return (await js.stream_info(name)).state.messages >= len(payloads)

    await until(stored, within=60, what=f"{len(payloads)} messages stored on {name}")
    await nc.close()


class Window:
    """The measured stretch of a side: wall-clock time and this process's CPU time."""

    def __init__(self) -> None:
        self._wall = time.perf_counter()
        self._cpu = time.process_time()
        self.wall = self.cpu = 0.0

    def close(self) -> None:
        self.wall = time.perf_counter() - self._wall
        self.cpu = time.process_time() - self._cpu

    def result(self, count: int, **extra: Any) -> dict[str, Any]:
        """Throughput, and how many cores this process kept busy (1.0: CPU-bound)."""
        return {"rate": count / self.wall, "cpu": self.cpu / self.wall, **extra}


async def until(
    check: Callable[[], Awaitable[bool]], *, within: float, what: str, every: float = 0.01
) -> None:
    """Poll `check` until it is true."""
    deadline = time.perf_counter() + within
    while True:
        if await check():
            return
        if time.perf_counter() > deadline:
            raise TimeoutError(f"timed out after {within:g} s waiting for {what}")
        await asyncio.sleep(every)


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100), nearest rank."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]


def summary(latencies_s: list[float]) -> dict[str, Any]:
    """p50 / p99 / max in milliseconds."""
    ms = [x * 1000 for x in latencies_s]
    return {
        "count": len(ms),
        "p50": percentile(ms, 50),
        "p99": percentile(ms, 99),
        "max": max(ms),
    }


def observe(*, metrics: bool, logs: bool) -> Metrics | None:
    """Set up a flowline side as ``flowline worker --log-format json`` would run it.

    Logging is configured as that command configures it (JSON lines on stderr), at INFO when
    `logs` (one line per finished job) or at WARNING (those lines are skipped). Returns the
    `Metrics` to hand to the runtime, or None (metrics off). Call it before building the
    worker or ingest: structlog loggers are bound, and cached, with the configuration of then.
    """
    from flowline import _logging
    from flowline.observability.metrics import Metrics

    _logging.configure(json=True, level="INFO" if logs else "WARNING")
    return Metrics() if metrics else None


def scrape(metrics: Metrics | None) -> dict[str, float]:
    """Scrape `metrics` once as Prometheus would (``generate_latest``): sample -> value.

    Keys are the sample name, with the ``outcome`` label when it has one
    (``flowline_stream_messages_total:routed``); values are summed over the other labels.
    ``scrape_ms`` is how long the scrape took. Empty when metrics are off.
    """
    if metrics is None:
        return {}
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    started = time.perf_counter()
    text = generate_latest(metrics.registry).decode()
    took = (time.perf_counter() - started) * 1000
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            outcome = sample.labels.get("outcome")
            key = f"{sample.name}:{outcome}" if outcome else sample.name
            values[key] = values.get(key, 0.0) + sample.value
    values["scrape_ms"] = took
    return values


def log_lines(path: Path) -> dict[str, int]:
    """Count what a side wrote to its stderr file: all lines, and each JSON ``event``'s lines."""
    counts: dict[str, int] = {"lines": 0, "bytes": path.stat().st_size}
    with path.open("rb") as f:
        for line in f:
            counts["lines"] += 1
            try:
                event = str(json.loads(line).get("event"))
            except (ValueError, AttributeError):
                event = "(not JSON)"
            counts[event] = counts.get(event, 0) + 1
    return counts


class Replica:
    """A redis-server replicating the benchmark's Redis (no persistence of its own), for as
    long as the ``with`` block runs."""

    def __init__(self, servers: LocalServers) -> None:
        self.servers = servers
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Replica:
        import redis

        from flowline.servers import free_port, redis_server_binary

        port = free_port()
        self.dir = tempfile.TemporaryDirectory(prefix="flowline-bench-replica-")
        self.proc = subprocess.Popen(
            [
                redis_server_binary(),
                *("--port", str(port), "--bind", "127.0.0.1", "--dir", self.dir.name),
                *("--save", "", "--appendonly", "no", "--repl-diskless-sync-delay", "0"),
                *("--replicaof", "127.0.0.1", str(self.servers.redis_port)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.primary = redis.Redis.from_url(self.servers.redis_url)
        self.caught_up()
        return self

    def caught_up(self, within: float = 60) -> None:
        """Until the replica is online and has every write the primary made."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            info = self.primary.info("replication")
            replica = info.get("slave0")
            online = replica and replica["state"] == "online"
            if online and replica["offset"] >= info["master_repl_offset"]:
                return
            time.sleep(0.05)
        raise RuntimeError(f"the replica did not catch up within {within:.0f} s")

    def __exit__(self, *exc: object) -> None:
        self.primary.close()
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
        self.dir.cleanup()


async def redis_cpu(redis: Redis) -> float:
    """Seconds of CPU the Redis server has used (user + system), for per-job figures."""
    info = await redis.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def completed(redis: Redis, queues: list[str]) -> int:
    """How many job records of `queues` say completed (every job must, or a figure is void)."""
    from flowline.runtime.keys import QueueKeys

    count = 0
    for name in queues:
        pipe = redis.pipeline(transaction=False)
        async for key in redis.scan_iter(match=QueueKeys(name).job_prefix + "*", count=1000):
            pipe.hget(key, "state")
        count += sum(state == b"completed" for state in await pipe.execute())
    return count


async def prefill(
    redis: Redis, queue: str, job_ids: list[str], topic: str, due_ms: int = 0, data: str = "{}"
) -> None:
    """Enqueue no-op jobs `job_ids` on `queue` with flowline's ENQUEUE, 1,000 per call in one
    pipeline (due at `due_ms`, 0: ready now; each with `data`), creating the consumer group
    first."""
    from flowline.runtime.keys import GROUP, QueueKeys
    from flowline.runtime.scripts import ENQUEUE

    keys = QueueKeys(queue)
    for stream in keys.streams:
        await redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
    script = redis.register_script(ENQUEUE)
    now = int(time.time() * 1000)
    pipe = redis.pipeline(transaction=False)
    per_call = max(1, min(1000, 1_000_000 // len(data)))  # about 1 MB of data per call at most
    for first in range(0, len(job_ids), per_call):
        args: list[str | int] = [keys.job_prefix, now]
        for job_id in job_ids[first : first + per_call]:
            args += (job_id, topic, data, due_ms, "direct", now, "", 0)
        await script(keys=[keys.jobs, keys.delayed, keys.cancels], args=args, client=pipe)
        if len(pipe) >= 20:
            await pipe.execute()
    await pipe.execute()
