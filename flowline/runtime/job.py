"""`JobContext`: what a handler receives, and how jobs are encoded on the wire (JSON only)."""

from __future__ import annotations

import enum
import json
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson
import structlog

from ..errors import SerializationError

if TYPE_CHECKING:
    from .._events import EventBus
    from .._pipeline import Pipeline
    from ..backends.base import JobStore
    from .emit import Emitter

log = structlog.get_logger("flowline.job")

Handler = Callable[["JobContext"], Awaitable[Any] | Any]


# The wire format is compact JSON, decoded exactly as the standard library decodes it. orjson
# does the work where it gives the same answer, which is nearly always; the standard library
# does it where orjson would differ. `nox -s bench`, figure `payload` (2026-12-02), on a
# 9.5 KB payload: encode 127 -> 25 us and decode 66 -> 38 us per call; 10 KB jobs drained
# 1.34x and routed 2.0x as fast as with the standard library's codec.
#
# Where orjson would write something else (NaN and infinities, as null) or refuses (ints past
# 64 bits, non-str keys, lone surrogates, and str, int and dict subclasses under
# OPT_PASSTHROUGH_SUBCLASS), the standard library encodes the value, giving its own output or
# its own error. So every value the standard library encodes decodes to what it would, and
# every value it refuses is refused, but two that orjson takes: an enum member is written as
# its value and a UUID as its string, on both paths alike.
def _also(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


_std_encode = json.JSONEncoder(separators=(",", ":"), allow_nan=False, default=_also).encode
_OPTIONS = (
    orjson.OPT_PASSTHROUGH_DATACLASS
    | orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_SUBCLASS
)
_orjson_dumps = orjson.dumps
_orjson_loads = orjson.loads
_json_loads = json.loads


def _refuse(value: Any) -> Any:
    raise TypeError  # orjson calls this for what it will not encode: the standard library decides


def encode(value: Any) -> str:
    """`dumps` without its error message: raises TypeError or ValueError (the hot path)."""
    if value is None:
        return "null"
    try:
        out = _orjson_dumps(value, default=_refuse, option=_OPTIONS)
    except TypeError:
        return _std_encode(value)
    # A null is a None, or a NaN or an infinity orjson wrote as null: decoding tells them apart
    # (NaN equals nothing; a tuple, which comes back a list, sends the value the slow way too).
    if b"null" in out and _orjson_loads(out) != value:
        return _std_encode(value)
    return out.decode()


def dumps(value: Any, *, what: str) -> str:
    """JSON-encode job data or a result; anything else is a `SerializationError`."""
    try:
        return encode(value)
    except (TypeError, ValueError) as exc:
        raise SerializationError(f"{what} is not JSON-serialisable: {exc}") from exc


def loads(raw: bytes | str) -> Any:
    """Decode job data; payloads are never unpickled or evaluated.

    orjson's answer is taken only when encoding it again gives back `raw` byte for byte, which
    flowline's own encoding always does. That proves it is the standard library's answer: the
    one thing orjson decodes differently, an integer past 64 bits (it gives a float), would come
    back with a point or an exponent. Anything else (JSON written by other tools, NaN, lone
    surrogates, big integers, invalid JSON and its error) is decoded by the standard library.
    """
    try:
        data = raw if isinstance(raw, bytes) else raw.encode()
        value = _orjson_loads(data)
        if _orjson_dumps(value, option=_OPTIONS) == data:
            return value
    except (TypeError, ValueError):  # orjson.JSONDecodeError is a ValueError
        pass
    # Decoding bytes ourselves spares json the detection of their encoding.
    return _json_loads(raw.decode() if isinstance(raw, bytes) else raw)


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
