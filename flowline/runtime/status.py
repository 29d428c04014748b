"""The status document: what each pipeline's stream, queues and crons hold, and who runs them.

Read from the servers alone, so it works while no worker runs. A server that does not answer is
reported in ``servers`` and leaves the figures it would have given as ``null``; nothing raises.
`StatusReader` keeps its connections between reads (``flowline status --watch``, the dashboard)
and reconnects on the next read after a failure.

The document (``flowline status --json`` prints it; its keys are stable)::

    {"taken": 1764590000.0,
     "servers": {"redis": "ok", "nats": "ok" | "not used" | "<error>"},
     "processes": [{"id", "host", "pid", "version", "pipelines", "parts", "started",
                    "heartbeat", "expires", "running", "completed", "failed"}],
     "pipelines": [{"name",
                    "streams": [{"subject", "stream", "messages", "first_sequence",
                                 "last_sequence", "durable", "pending", "ack_pending",
                                 "redelivered", "last_acked"}],
                    "stream": <the first of streams> | null,
                    "queues": [{"name", "topics", "paused", "ready", "running", "delayed",
                                "dead", "completed_1m", "failed_1m", "jobs_per_s"}],
                    "crons": [{"topic", "schedule", "tz", "last_fired", "next_tick"}]}]}
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, Any

from .._stages import Cron, Queue, Stream
from ..backends.jetstream import stream_name_for
from ..errors import FlowlineError
from . import registry
from .connections import connect_nats, connect_redis
from .cron import next_tick
from .inspect import cron_marks, queue_totals, stream_state

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS
    from nats.js import JetStreamContext
    from redis.asyncio import Redis

    from .._pipeline import Pipeline
    from .._settings import Settings

TIMEOUT = 3.0


class StatusReader:
    """Reads the status document of `pipelines`, connecting to each server only if needed."""

    def __init__(self, pipelines: tuple[Pipeline, ...], settings: Settings) -> None:
        self.pipelines = pipelines
        self.settings = settings
        self.needs_nats = any(isinstance(s, Stream) for p in pipelines for s in p.sources)
        self._redis: Redis | None = None
        self._nc: NATS | None = None
        self._js: JetStreamContext | None = None

    async def __aenter__(self) -> StatusReader:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None
        if self._nc is not None:
            await self._nc.close()
            self._nc = self._js = None

    async def read(self) -> dict[str, Any]:
        """The document now; never raises for a server that does not answer."""
        redis_state, nats_state = await asyncio.gather(self._connect_redis(), self._connect_nats())
        redis = self._redis if redis_state == "ok" else None
        js = self._js if nats_state == "ok" else None
        doc_pipelines, processes = await asyncio.gather(
            self._pipelines(redis, js), self._processes(redis)
        )
        servers = {"redis": redis_state, "nats": nats_state}
        for problem in doc_pipelines.pop("_errors"):
            key, message = problem
            if servers[key] == "ok":
                servers[key] = message
        return {
            "taken": time.time(),
            "servers": servers,
            "processes": processes,
            "pipelines": doc_pipelines["pipelines"],
        }

    async def _connect_redis(self) -> str:
        if self._redis is not None:
            return "ok"
        try:
            async with asyncio.timeout(TIMEOUT):
                self._redis = await connect_redis(self.settings, max_connections=8)
        except Exception as exc:
            return _message(exc)
        return "ok"

    async def _connect_nats(self) -> str:
        if not self.needs_nats:
            return "not used"
        if self._nc is not None and self._nc.is_connected:
            return "ok"
        if self._nc is not None:
            return "disconnected (reconnecting)"
        try:
            async with asyncio.timeout(TIMEOUT + 5):
                self._nc = await connect_nats(self.settings)
        except Exception as exc:
            return _message(exc)
        self._js = self._nc.jetstream()
        return "ok"

    async def _processes(self, redis: Redis | None) -> list[dict[str, Any]]:
        if redis is None:
            return []
        try:
            async with asyncio.timeout(TIMEOUT):
                return [p.as_dict() for p in await registry.processes(redis)]
        except Exception:
            return []

    async def _pipelines(self, redis: Redis | None, js: JetStreamContext | None) -> dict[str, Any]:
        errors: list[tuple[str, str]] = []
        queues: dict[str, Any] = {}
        marks: dict[tuple[str, str], float] = {}
        if redis is not None:
            every = [q for p in self.pipelines for q in p.queues]
            crons = [(p.name, s.topic) for p in self.pipelines for s in _crons_of(p)]
            try:
                async with asyncio.timeout(TIMEOUT):
                    queues = await queue_totals(redis, every)
                    marks = await cron_marks(redis, crons)
            except Exception as exc:
                errors.append(("redis", _message(exc)))
                await self._drop_redis()
        out = []
        for p in self.pipelines:
            sources = [s for s in p.sources if isinstance(s, Stream)]
            streams = [await self._stream(p, s, js, errors) for s in sources]
            out.append(
                {
                    "name": p.name,
                    "streams": streams,
                    # Before pipelines had several sources: kept, as the keys are stable.
                    "stream": streams[0] if streams else None,
                    "queues": [self._queue(p, q, queues.get(q.name)) for q in p.queues],
                    "crons": self._crons(p, marks, redis is not None),
                }
            )
        return {"pipelines": out, "_errors": errors}

    async def _stream(
        self,
        p: Pipeline,
        source: Stream[Any],
        js: JetStreamContext | None,
        errors: list[tuple[str, str]],
    ) -> dict[str, Any]:
        durable = source.durable or p.name
        doc: dict[str, Any] = {
            "subject": source.subject,
            "stream": None,
            "messages": None,
            "first_sequence": None,
            "last_sequence": None,
            "durable": durable,
            "pending": None,
            "ack_pending": None,
            "redelivered": None,
            "last_acked": None,
        }
        if js is None:
            return doc
        import nats.js.errors

        try:
            async with asyncio.timeout(TIMEOUT):
                try:
                    name = str(await js.find_stream_name_by_subject(source.subject))
                except nats.js.errors.NotFoundError:
                    # No process created it yet: the name it will get, and nothing stored.
                    doc.update(stream=stream_name_for(source.subject), messages=0)
                    return doc
                doc.update(await stream_state(js, name, durable))
        except Exception as exc:
            errors.append(("nats", _message(exc)))
        return doc

    def _queue(self, p: Pipeline, q: Queue, state: Any) -> dict[str, Any]:
        topics = sorted(t for t, topic in p.topics.items() if topic.queue is q)
        doc: dict[str, Any] = {"name": q.name, "topics": topics, "shards": q.shards}
        fields = ("paused", "ready", "running", "delayed", "dead", "completed_1m", "failed_1m")
        for key in fields:
            doc[key] = getattr(state, key) if state is not None else None
        doc["jobs_per_s"] = round(state.jobs_per_s, 3) if state is not None else None
        return doc

    def _crons(self, p: Pipeline, marks: dict[tuple[str, str], float], read: bool) -> list[Any]:
        return [
            {
                "topic": cron.topic,
                "schedule": cron.expression or f"every {cron.interval:g}s",
                "tz": cron.tz,
                "last_fired": marks.get((p.name, cron.topic)) if read else None,
                "next_tick": next_tick(cron, time.time()),
            }
            for cron in _crons_of(p)
        ]

    async def _drop_redis(self) -> None:
        if self._redis is not None:
            redis, self._redis = self._redis, None
            with contextlib.suppress(Exception):  # it is dropped because it failed
                await redis.aclose()


def _message(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {TIMEOUT:g}s"
    if isinstance(exc, FlowlineError):
        return str(exc)
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _crons_of(p: Pipeline) -> list[Cron]:
    return [s for s in p.sources if isinstance(s, Cron)]
