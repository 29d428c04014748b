"""What a runner tells its HTTP endpoint: readiness, and the gauges read from the servers.

Readiness asks each server once per request (a PING, a NATS flush), each bounded by
`CHECK_TIMEOUT`, so ``/readyz`` turns 503 within seconds of a server going away and back to
200 as soon as it answers again. The gauges are read in one round trip per server (a Redis
pipeline; one JetStream consumer-info request per stream consumer) and cached for
`SAMPLE_EVERY`, so a scrape storm does not load the servers.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import structlog

from ..backends.jetstream import JetStreamSource, describe_drift, drift
from ..observability.metrics import ServerSnapshot
from .inspect import queue_totals

if TYPE_CHECKING:
    from .runner import Runner

log = structlog.get_logger("flowline.probe")

CHECK_TIMEOUT = 2
SAMPLE_EVERY = 1.0


class Probe:
    """Answers ``/readyz`` and refreshes the server gauges of one runner."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self._sampled = -SAMPLE_EVERY
        self._lock = asyncio.Lock()

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        """(ready, body): body is ``{"status", "nats", "redis", "loops": {name: state},
        "settings": [...]}``; `settings` says where a server's consumer differs from this
        process's Stream (one line each, naming the option and both values: during a rolling
        deploy the last process to start set it). A difference does not make it unready."""
        r = self.runner
        redis, nats = await asyncio.gather(self._redis(), self._nats())
        settings = await self._settings() if nats == "ok" else []
        loops = {name: _state(task) for name, task in r.loops.items()}
        if r.stop_event.is_set():
            status = "stopping"
        elif not r.started:
            status = "starting"
        else:
            status = "ok"
        ready = (
            status == "ok"
            and redis == "ok"
            and nats in ("ok", "not used")
            and all(state == "running" for state in loops.values())
        )
        if status == "ok" and not ready:
            status = "degraded"
        body = {"status": status, "nats": nats, "redis": redis, "loops": loops}
        return ready, {**body, "settings": settings}

    async def _settings(self) -> list[str]:
        """Where the server's consumers differ from what this process's Streams say."""
        r = self.runner
        source = r.streams
        if not r.ingests or r.js is None or not isinstance(source, JetStreamSource):
            return []
        out: list[str] = []
        try:
            async with asyncio.timeout(CHECK_TIMEOUT):
                for ingest in r.ingests:
                    key = (ingest.stream_name, ingest.durable)
                    wanted = source.wanted.get(key)
                    if wanted is None:
                        continue
                    info = await r.js.consumer_info(*key)
                    out += describe_drift(*key, drift(wanted, info.config))
        except Exception as exc:
            out.append(f"consumer settings not read: {_failure(exc)}")
        return out

    async def _redis(self) -> str:
        redis = self.runner.redis
        if redis is None:
            return "not connected"
        try:
            async with asyncio.timeout(CHECK_TIMEOUT):
                await redis.ping()
        except Exception as exc:
            return _failure(exc)
        return "ok"

    async def _nats(self) -> str:
        r = self.runner
        if r.nc is None:
            return "not connected" if r.plan.streams else "not used"
        if not r.nc.is_connected:
            return "disconnected"
        try:
            await r.nc.flush(timeout=CHECK_TIMEOUT)
        except Exception as exc:
            return _failure(exc)
        return "ok"

    async def sample(self) -> None:
        """Refresh the server gauges unless they were read within `SAMPLE_EVERY`."""
        metrics = self.runner.metrics
        if metrics is None:
            return
        async with self._lock:  # concurrent scrapes share one read
            if time.monotonic() - self._sampled < SAMPLE_EVERY:
                return
            queues, streams = await asyncio.gather(self._queues(), self._streams())
            self._sampled = time.monotonic()
            metrics.server = ServerSnapshot(self._sampled, queues, streams)

    async def _queues(self) -> dict[tuple[str, str], dict[str, int]] | None:
        """Every queue of the runner's pipelines, in one pipelined round trip."""
        redis = self.runner.redis
        if redis is None:
            return None
        queues = [(p.name, q) for p in self.runner.plan.pipelines for q in p.queues]
        targets = [(p, q.name) for p, q in queues]
        try:
            async with asyncio.timeout(CHECK_TIMEOUT):
                states = await queue_totals(redis, [q for _, q in queues])
        except Exception as exc:
            log.debug("queue gauges not read", error=repr(exc))
            return None
        return {
            labels: {
                "ready": states[labels[1]].ready,
                "running": states[labels[1]].running,
                "delayed": states[labels[1]].delayed,
                "dead": states[labels[1]].dead,
                "paused": int(states[labels[1]].paused),
            }
            for labels in targets
        }

    async def _streams(self) -> dict[tuple[str, str], tuple[int, int]] | None:
        """The durable consumer of each stream this runner consumes."""
        r = self.runner
        if not r.ingests:
            return {}
        if r.js is None or r.nc is None or not r.nc.is_connected:
            return None
        out = {}
        try:
            async with asyncio.timeout(CHECK_TIMEOUT):
                for ingest in r.ingests:
                    info = await r.js.consumer_info(ingest.stream_name, ingest.durable)
                    key = (ingest.pipeline.name, ingest.stream.subject)
                    out[key] = (int(info.num_pending or 0), int(info.num_ack_pending or 0))
        except Exception as exc:
            log.debug("stream gauges not read", error=repr(exc))
            return None
        return out


def _state(task: asyncio.Task[None]) -> str:
    if not task.done():
        return "running"
    if task.cancelled():
        return "stopped"
    exc = task.exception()
    return "stopped" if exc is None else f"crashed: {type(exc).__name__}: {exc}"


def _failure(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {CHECK_TIMEOUT:g}s"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
