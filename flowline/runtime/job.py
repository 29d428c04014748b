"""`JobContext`: what a handler receives, and how jobs are encoded on the wire (JSON only)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import structlog

from ..errors import SerializationError

if TYPE_CHECKING:
    from .._events import EventBus
    from .._pipeline import Pipeline
    from ..backends.base import JobStore
    from .emit import Emitter

log = structlog.get_logger("flowline.job")

Handler = Callable[["JobContext"], Awaitable[Any] | Any]


# json.dumps with options builds a new encoder per call; reusing one halves the cost.
_encode = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


def encode(value: Any) -> str:
    """`dumps` without its error message: raises TypeError or ValueError (the hot path)."""
    return "null" if value is None else _encode(value)


def dumps(value: Any, *, what: str) -> str:
    """JSON-encode job data or a result; anything else is a `SerializationError`."""
    if value is None:
        return "null"
    try:
        return _encode(value)
    except (TypeError, ValueError) as exc:
        raise SerializationError(f"{what} is not JSON-serialisable: {exc}") from exc


def loads(raw: bytes | str) -> Any:
    """Decode job data; payloads are never unpickled or evaluated."""
    # Decoding bytes ourselves spares json the detection of their encoding.
    return json.loads(raw.decode() if isinstance(raw, bytes) else raw)


class JobContext:
    """One running job, as its handler sees it.

    Attributes:
        id: stable across redeliveries and retries (``<stream>:<sequence>:<index>`` for jobs
            routed from a stream message).
        topic: the job's topic.
        data: the decoded JSON payload.
        attempt: 1 on the first run, counting up on retries and after a worker died.
        queue: the queue's name.
    """

    __slots__ = (
        "_bus",
        "_emits",
        "_emitter",
        "_store",
        "attempt",
        "data",
        "id",
        "queue",
        "topic",
    )

    def __init__(
        self,
        *,
        id: str,
        topic: str,
        data: Any,
        attempt: int,
        queue: str,
        store: JobStore | None,
        bus: EventBus | None,
        emitter: Emitter | None = None,
    ) -> None:
        self.id = id
        self.topic = topic
        self.data = data
        self.attempt = attempt
        self.queue = queue
        self._store = store
        self._bus = bus
        self._emitter = emitter
        self._emits = 0

    async def progress(self, percent: float) -> None:
        """Report progress (0..100): stored on the job record and emitted as ``job:progress``.

        Best effort: when the store cannot keep it (a Redis outage), a warning is logged and
        the handler goes on; progress is information, never a reason for the job to fail.
        """
        if not 0 <= percent <= 100:
            raise ValueError(f"progress must be within 0..100, got {percent}")
        if self._store is not None:
            try:
                await self._store.progress(self.queue, self.id, percent)
            except Exception as exc:
                log.warning("progress not stored", job=self.id, progress=percent, error=repr(exc))
        if self._bus is not None:
            self._bus.emit("job:progress", "job", job=self, progress=percent)

    async def emit(self, target: Pipeline | str, event: Any, *, subject: str | None = None) -> int:
        """Publish a follow-up `event` to another pipeline's stream (or a subject).

        Tied to this job: when the job is retried, an emit it already made is not published
        again (emits are matched by their order within the handler, so keep that order
        deterministic). A pipeline that reads several streams needs the `subject` of one.
        Returns the stream sequence.
        """
        if self._emitter is None:
            raise RuntimeError("this job was not started by a flowline worker; it cannot emit")
        n = self._emits
        self._emits += 1
        return await self._emitter.emit(self.queue, self.id, n, target, event, subject)

    def __repr__(self) -> str:
        return f"<Job {self.topic} id={self.id} attempt={self.attempt}>"
