"""Stages: pure descriptions of a pipeline's parts. Nothing here touches a server.

``Stream >> Route >> Queue`` flattens into one `Pipeline` (see `_pipeline`); each stage only
records what it is, its name and its options, in the spirit of Beam's ``PTransform``.
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Generic, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from google.protobuf import json_format

from .errors import PipelineError, SerializationError

T = TypeVar("T")

_NAME_OK = re.compile(r"^[A-Za-z0-9_-]+$")


def label_from_callable(fn: Callable[..., Any]) -> str:
    """A readable default name: the function's qualified name, or ``<lambda at file:line>``."""
    name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    # A lambda inside a function has the qualname "f.<locals>.<lambda>"; __name__ is always bare.
    if getattr(fn, "__name__", None) == "<lambda>":
        code = getattr(fn, "__code__", None)
        if code is not None:
            return f"<lambda at {code.co_filename.rsplit('/', 1)[-1]}:{code.co_firstlineno}>"
    return name


def seconds(value: float | timedelta) -> float:
    """Durations are accepted as seconds or `timedelta`."""
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


@dataclass(frozen=True, slots=True)
class Job:
    """A unit of work a router asks for: a topic and JSON-serialisable data.

    Args:
        topic: which handler runs it (``pipeline.dequeue(topic)``).
        data: JSON-serialisable payload handed to the handler as ``job.data``.
        delay: run no earlier than this many seconds (or `timedelta`) from now.
        priority: higher runs first when a queue has a backlog (0 is normal).
        key: an idempotency key; two jobs with the same key on one queue are one job.
        group: its group (a fan, a tenant): at most the queue's `group_limit` jobs of one
            group run at once, across every process, and groups are served in turn.
    """

    topic: str
    data: Any = None
    delay: float | timedelta | None = None
    priority: int = 0
    key: str | None = None
    group: str | None = None

    def __post_init__(self) -> None:
        if self.group is not None and (not isinstance(self.group, str) or not self.group):
            raise PipelineError(f"Job({self.topic!r}): group must be a non-empty string, got "
                                f"{self.group!r}")  # fmt: skip


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with full jitter: attempt n waits up to ``base * factor**(n-1)``."""

    base: float = 1.0
    factor: float = 2.0
    cap: float = 300.0
    jitter: bool = True

    def delay(self, attempt: int, rand: float) -> float:
        """Seconds to wait after failed attempt `attempt` (1-based); `rand` is uniform in [0, 1)."""
        try:
            grown = self.base * math.pow(self.factor, max(0, attempt - 1))
        except OverflowError:  # ~1000+ attempts of a never-give-up policy: the cap applies
            grown = math.inf
        ceiling = min(self.cap, grown)
        return ceiling * rand if self.jitter else ceiling


_RATE = re.compile(r"\s*(\d+)\s*/\s*(\d*(?:\.\d+)?)\s*(s|sec|second|m|min|minute|h|hour)s?\s*")
_RATE_UNITS = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600,
               "hour": 3600}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Rate:
    """At most `limit` job starts in any `per` seconds, across every process together.

    ``Queue(..., rate=Rate(100, per=60))``, or the string ``"100/m"`` (``/s``, ``/m``,
    ``/h``; ``"5/10s"`` is 5 per 10 seconds), as Celery spells its rate limits.
    """

    limit: int
    per: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.limit, int) or self.limit < 1 or not self.per > 0:
            raise PipelineError(
                f"Rate({self.limit!r}, per={self.per!r}): the limit must be a whole number >= 1 "
                "and the period positive"
            )

    @classmethod
    def of(cls, value: Rate | str | None) -> Rate | None:
        """A `Rate` from what an option accepts: a `Rate`, ``"N/unit"``, or None."""
        if value is None or isinstance(value, Rate):
            return value
        match = _RATE.fullmatch(value) if isinstance(value, str) else None
        if match is None:
            raise PipelineError(
                f"rate {value!r} is not a rate: write it as '100/s', '10/m', '5/10s' or "
                "Rate(100, per=1)"
            )
        count = float(match[2]) if match[2] else 1.0
        return cls(int(match[1]), count * _RATE_UNITS[match[3]])

    def describe(self) -> str:
        return f"{self.limit}/{self.per:g}s"


class Stage:
    """Base of every stage; ``a >> b`` builds a `Pipeline` from the flattened chain."""

    kind: str = "stage"
    name: str

    # What `a >> b` builds (a `Pipeline` from a source, else a `Chain`) and the classes it
    # takes besides stages: `_pipeline` sets both when imported, so that this module, below
    # it, needs no import of it.
    chain: Callable[[tuple[Any, ...]], Any]
    composites: tuple[type, ...] = ()

    def __rshift__(self, other: object) -> Any:
        if not isinstance(other, (Stage, *self.composites)):
            return NotImplemented
        return self.chain((self, other))

    def describe(self) -> str:
        """One line for `repr` and diagrams."""
        return f"{type(self).__name__}({self.name!r})"

    def __repr__(self) -> str:
        return self.describe()


class Source(Stage):
    """A stage that produces events: a `Stream` or a `Cron`."""

    def __or__(self, other: object) -> Any:
        """This source and `other` feeding one pipeline (see `Pipeline`)."""
        if not isinstance(other, (Source, *self.composites)):
            return NotImplemented
        return self.chain((self,)) | other


class Stream(Source, Generic[T]):
    """A NATS JetStream subject carrying encoded events.

    Args:
        subject: the subject events are published on, e.g. ``"fanbase"``.
        decoder: a protobuf message class, or any callable ``bytes -> event``.
        durable: the JetStream consumer's name; defaults to the pipeline's name.
        max_deliver: deliveries of one message before it is dead-lettered (router keeps failing).
        ack_wait: seconds JetStream waits for an ack before redelivering.
        max_payload: messages larger than this many bytes are rejected as undecodable.
        batch: messages fetched per round trip.
        replicas: copies of the stream on a NATS cluster (1 to 5; 3 survives one server's
            loss). The stream is created with them, and an existing one changed to them at
            start; None (the default) leaves an existing stream's count as it is.
    """

    kind = "stream"

    def __init__(
        self,
        subject: str,
        decoder: type[T] | Callable[[bytes], T],
        *,
        durable: str | None = None,
        max_deliver: int = 5,
        ack_wait: float | timedelta = 30.0,
        max_payload: int = 1 << 20,
        batch: int = 256,
        replicas: int | None = None,
    ) -> None:
        if not subject or any(c in subject for c in " \t\r\n"):
            raise PipelineError(f"Stream subject {subject!r} must be a non-empty NATS subject")
        if max_deliver < 1 or batch < 1 or max_payload < 1:
            raise PipelineError("Stream max_deliver, batch and max_payload must be positive")
        if replicas is not None and not 1 <= replicas <= 5:
            raise PipelineError(f"Stream replicas must be within 1..5, got {replicas}")
        self.subject = subject
        self.name = subject
        self.decoder = decoder
        self.decode = _decoder_for(decoder)
        self.encode = _encoder_for(decoder)
        self.durable = durable
        self.max_deliver = max_deliver
        self.ack_wait = seconds(ack_wait)
        self.max_payload = max_payload
        self.batch = batch
        self.replicas = replicas

    def describe(self) -> str:
        return f"Stream({self.subject!r}, {label_from_callable(self.decoder)})"


class Route(Stage, Generic[T]):
    """A plain function (sync or async) turning one event into jobs.

    The function may return or yield `Job` objects, dicts ``{"topic", "data"}``, a dict
    ``{"jobs": [...]}`` (pipelinejs routers port unchanged), or nothing.

    Args:
        fn: the router.
        name: the stage's name (default: the function's qualified name).
        fan_in: track each message's jobs and emit ``route:complete`` when all have finished.
    """

    kind = "route"

    def __init__(
        self, fn: Callable[[T], Any], *, name: str | None = None, fan_in: bool = False
    ) -> None:
        if not callable(fn):
            raise PipelineError(f"Route needs a callable router, got {fn!r}")
        self.fn = fn
        self.name = name or label_from_callable(fn)
        self.fan_in = fan_in

    def describe(self) -> str:
        return f"Route({self.name})"


@dataclass(frozen=True)
class QueueOptions:
    """Per-queue defaults; each topic may override retries, backoff and timeout."""

    concurrency: int = 50
    visibility_timeout: float = 30.0
    retries: int = 3
    backoff: Backoff = field(default_factory=Backoff)
    timeout: float | None = None
    keep_completed: float = 24 * 3600.0
    batch: int = 100
    keep_failed: float = 7 * 24 * 3600.0
    rate: Rate | None = None
    group_limit: int = 1


class Queue(Stage):
    """A Redis-backed job queue, compiled onto a taskiq broker.

    Args:
        name: the queue's name; its Redis keys are ``flowline:{name}:...``.
        topics: topics this queue owns when a route feeds several queues (default: the rest).
        concurrency: handlers run at once per worker process.
        visibility_timeout: seconds after which a job whose worker died is run again (<= 60 s
            by default; live workers keep their jobs claimed with a heartbeat).
        retries: further attempts after a failure (per topic overridable).
        backoff: delay between attempts.
        timeout: seconds a handler may run before it fails with `JobTimeout`.
        keep_completed: seconds a completed job's record (state, result) is kept; 0 keeps
            none, so Redis holds only work in flight. A job routed from a stream is a
            duplicate while its message is unacked, whatever this says; a direct or keyed
            enqueue of the same id is a duplicate while the record exists.
        keep_failed: seconds the record of a job that failed for good or was cancelled is
            kept (its dead letter stays until replayed or purged).
        rate: at most this many job starts per period across every process (`Rate`, or
            ``"100/s"``); jobs past it wait their turn.
        group_limit: how many jobs of one group (`Job.group`) may run at once across every
            process (1: strictly one at a time per group).
        shards: spread the queue over this many Redis hash slots (so over a Redis Cluster's
            primaries), each a queue of its own named ``<name>#<i>``: a job goes to the shard
            of its group when it has one (so `group_limit` holds), else of its id (a keyed
            job's id is its key, so a repeat finds its first copy). Every process reads every
            shard, with `concurrency` handlers for each.
    """

    kind = "queue"

    def __init__(
        self,
        name: str,
        *,
        topics: Iterable[str] | None = None,
        concurrency: int = 50,
        visibility_timeout: float | timedelta = 30.0,
        retries: int = 3,
        backoff: Backoff | None = None,
        timeout: float | timedelta | None = None,
        keep_completed: float | timedelta = 24 * 3600.0,
        batch: int = 100,
        keep_failed: float | timedelta = 7 * 24 * 3600.0,
        rate: Rate | str | None = None,
        group_limit: int = 1,
        shards: int = 1,
    ) -> None:
        if not _NAME_OK.match(name):
            raise PipelineError(f"Queue name {name!r} may hold only letters, digits, '-' and '_'")
        if concurrency < 1 or retries < 0 or batch < 1:
            raise PipelineError(f"Queue {name!r}: concurrency and batch must be >= 1, retries >= 0")
        self.name = name
        self.topics = frozenset(topics) if topics is not None else None
        self.options = QueueOptions(
            concurrency=concurrency,
            visibility_timeout=seconds(visibility_timeout),
            retries=retries,
            backoff=backoff or Backoff(),
            timeout=None if timeout is None else seconds(timeout),
            keep_completed=seconds(keep_completed),
            batch=batch,
            keep_failed=seconds(keep_failed),
            rate=Rate.of(rate),
            group_limit=group_limit,
        )
        if not isinstance(group_limit, int) or group_limit < 1:
            raise PipelineError(f"Queue {name!r}: group_limit must be a whole number >= 1")
        if not isinstance(shards, int) or not 1 <= shards <= 1024:
            raise PipelineError(f"Queue {name!r}: shards must be a whole number within 1..1024")
        self.shards = shards
        # The physical queues, each with keys of its own hash tag: just the queue when unsharded.
        self.shard_names = [name] if shards == 1 else [f"{name}#{i}" for i in range(shards)]
        if self.options.visibility_timeout < 1:
            raise PipelineError(f"Queue {name!r}: visibility_timeout must be at least 1 second")
        keep = self.options.keep_completed
        if keep != 0 and keep < 1:
            raise PipelineError(
                f"Queue {name!r}: keep_completed must be 0 (keep no record) or at least 1 second,"
                f" not {keep:g}"
            )
        if self.options.keep_failed < 1:
            raise PipelineError(f"Queue {name!r}: keep_failed must be at least 1 second")

    def shard_for(self, job_id: str, group: str | None) -> str:
        """The physical queue of a job: the shard of its group, else of its id (crc32, the
        same in every process)."""
        if self.shards == 1:
            return self.name
        return self.shard_names[zlib.crc32((group or job_id).encode()) % self.shards]


class Cron(Source):
    """A schedule that emits an event on every tick; each tick fires once across all processes.

    Args:
        schedule: a cron expression (``"*/5 * * * *"``) or an interval in seconds / `timedelta`.
        topic: names the tick; events ``cron`` and ``cron:<topic>`` are emitted.
        tz: time zone name for cron expressions (default UTC).
        catch_up: on start, fire the most recent tick missed while no process ran (once).
    """

    kind = "cron"

    def __init__(
        self,
        schedule: str | float | timedelta,
        *,
        topic: str,
        tz: str = "UTC",
        catch_up: bool = True,
    ) -> None:
        if not _NAME_OK.match(topic):
            raise PipelineError(f"Cron topic {topic!r} may hold only letters, digits, '-' and '_'")
        try:
            ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            # Otherwise the first tick fails, and every tick after it, far from this line.
            raise PipelineError(
                f"Cron time zone {tz!r} is unknown; use an IANA name such as 'Europe/Paris'"
            ) from None
        self.topic = topic
        self.name = f"cron:{topic}"
        self.tz = tz
        self.catch_up = catch_up
        if isinstance(schedule, str):
            from croniter import croniter

            if not croniter.is_valid(schedule):
                raise PipelineError(f"Cron({schedule!r}): not a valid cron expression")
            self.expression: str | None = schedule
            self.interval: float | None = None
        else:
            interval = seconds(schedule)
            if interval <= 0:
                raise PipelineError("Cron interval must be positive")
            self.expression = None
            self.interval = interval

    def describe(self) -> str:
        what = self.expression if self.expression is not None else f"every {self.interval:g}s"
        return f"Cron({what!r}, topic={self.topic!r})"


def _decoder_for(decoder: Any) -> Callable[[bytes], Any]:
    from_string = getattr(decoder, "FromString", None)
    if isinstance(decoder, type) and callable(from_string):
        return from_string  # type: ignore[no-any-return]
    if not callable(decoder):
        raise PipelineError(
            f"Stream decoder must be a protobuf message class or a callable bytes -> object, "
            f"got {decoder!r}"
        )
    return decoder  # type: ignore[no-any-return]


def _encoder_for(decoder: Any) -> Callable[[Any], bytes] | None:
    """How `publish` encodes an event: protobuf messages serialise themselves; bytes pass.

    A dict is read with protobuf's own JSON mapping (`json_format.ParseDict`: nested messages,
    enums by name, repeated fields, JSON or proto field names), so ``flowline publish --json``
    takes what ``MessageToJson`` prints.
    """
    if isinstance(decoder, type) and hasattr(decoder, "SerializeToString"):

        def encode(event: Any) -> bytes:
            if isinstance(event, Mapping):
                try:
                    event = json_format.ParseDict(dict(event), decoder())
                except json_format.ParseError as exc:
                    # One line, naming the field ("Failed to parse fan field: ...").
                    reason = " ".join(str(exc).split())
                    raise SerializationError(f"not a {decoder.__name__}: {reason}") from None
            elif not isinstance(event, decoder):
                raise SerializationError(
                    f"not a {decoder.__name__}: expected the message or a dict of its fields, "
                    f"got {type(event).__name__}"
                )
            return event.SerializeToString()  # type: ignore[no-any-return]

        return encode
    return None
