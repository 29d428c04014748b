"""The contracts between the runtime and its servers: a job store and a stream source.

A `JobStore` keeps queues: ready jobs (priority ones first), jobs a worker holds (its claims),
delayed jobs, job records and dead letters, plus the small shared state of fan-in, emits and
cron. Every method is one atomic change: a job is never in two places, or in none.

A `StreamSource` keeps subjects' streams: it stores published events (deduplicating by message
id) and hands them to durable consumers, which acknowledge, hand back (``nak``) or terminate
each message.

`flowline.backends.redis` and `flowline.backends.jetstream` implement them on servers;
`flowline.backends.memory` in one process. Each method below says what every implementation
must do; ``tests/test_backends.py`` checks both against it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .._pipeline import Pipeline
    from ..runtime.deadletters import DeadLetter
    from ..runtime.enqueue import Planned
    from ..runtime.jobs import JobInfo
    from ..runtime.queues import QueueCounts
    from .clock import Clock


@dataclass(slots=True)
class Running:
    """A job a worker holds a claim on: running, or finished and waiting to be settled."""

    stream: str  # which of the queue's ready streams it was read from (urgent or not)
    entry: str  # its entry id there, ``<ms>-<n>``: unique per stream
    job_id: str
    topic: str
    data: bytes
    attempt: int
    born: int = 0  # when its work began (ms): the stream message's stored time, or enqueue
    trace: str = ""  # the W3C traceparent its span continues, when tracing
    group: str = ""  # its group (`Job.group`), whose slots it holds while in a ready stream
    task: asyncio.Task[None] | None = None
    settling: bool = False  # its failure is being recorded
    cancel: bool = False  # its cancel was asked for: it ends 'cancelled', whatever it does
    started: float = 0.0  # wall-clock start of the handler
    duration: float = 0.0  # how long the handler ran (seconds)

    @property
    def ready_at(self) -> float:
        """When the job became ready (epoch seconds): the store stamps it in the entry id."""
        return int(self.entry.partition("-")[0]) / 1000

    @property
    def key(self) -> tuple[str, str]:
        """Entry ids are unique per stream only: urgent and normal entries may share one."""
        return (self.stream, self.entry)


# What `JobStore.fail` answers besides a dead letter's id.
LOST = None  # the caller no longer holds the job: nothing was changed
RESCHEDULED = ""  # the job waits for its next attempt (ready now, or delayed)
CANCELLED = "cancelled"  # its cancel was asked for while the attempt ran: it ended cancelled


@dataclass(frozen=True, slots=True)
class Cancellation:
    """What `JobStore.cancel` did.

    `outcome` is ``cancelled`` (it was waiting and never runs; `detail` is the state it was
    in: ``queued``, ``delayed`` or ``retrying``), ``cancelling`` (a worker holds it and stops
    it; `detail` names that worker's consumer, or is '' when no worker has read it yet),
    ``finished`` (`detail`: ``completed``, ``failed`` or ``cancelled``) or ``unknown`` (no
    record: never enqueued, or expired).
    """

    outcome: str
    detail: str
    topic: str


class JobStore:
    """Where queues live. Times are epoch milliseconds, given by the caller (`clock`)."""

    clock: Clock

    async def close(self) -> None:
        """Release connections."""
        raise NotImplementedError

    # -- jobs in -------------------------------------------------------------------------------

    async def setup(self, queue: str) -> None:
        """Make `queue` ready to be read (idempotent)."""
        raise NotImplementedError

    async def enqueue(self, queue: str, rows: Sequence[Planned], now_ms: int) -> int:
        """Add the jobs of `rows` (all of `queue`) whose id has no record yet; returns how many.

        A job with ``due_ms`` > 0 waits until then; priority > 0 is read before the others. A
        row with a `source` (routed from a stream message) is also skipped while its id has a
        dedup mark, and leaves one: so a redelivered message's jobs are skipped even after
        their records are gone, until `forget` drops the marks of that message's sequence.
        """
        raise NotImplementedError

    async def forget(self, queues: Sequence[str], source: str, floor: int) -> None:
        """Drop the dedup marks of `source`'s messages with sequence <= `floor` in `queues`:
        the stream's consumer has acked every one of them, so none is delivered again."""
        raise NotImplementedError

    # -- a worker's jobs -----------------------------------------------------------------------

    async def read(self, queue: str, consumer: str, count: int, block: float) -> list[Running]:
        """Claim ready jobs for `consumer`, waiting up to `block` seconds for one; an empty
        list when none came. Claims nothing while the queue is paused (a store may take up to
        a quarter of a second to see a pause made through another process's store).

        Up to `count` priority jobs come first, then up to `count` others (as Redis's COUNT,
        which applies per stream): a worker keeps what exceeds its free slots for later.
        """
        raise NotImplementedError

    async def pause(self, queue: str) -> bool:
        """Stop every process from claiming `queue`'s jobs (jobs already running go on);
        enqueueing goes on. True if it was not paused."""
        raise NotImplementedError

    async def resume(self, queue: str) -> bool:
        """Let `queue`'s jobs be claimed again; True if it was paused."""
        raise NotImplementedError

    async def paused(self, queue: str, *, within: float = 0.0) -> bool:
        """Whether `queue` is paused; an answer up to `within` seconds old will do."""
        raise NotImplementedError

    async def complete(
        self, queue: str, done: Sequence[tuple[Running, str]], now_ms: int, keep: int
    ) -> None:
        """Finish jobs with their JSON results, keeping each record `keep` seconds (0: the
        record goes at once, result and all). Completing a job twice is harmless."""
        raise NotImplementedError

    async def fail(
        self,
        queue: str,
        job: Running,
        *,
        consumer: str,
        now_ms: int,
        keep: int,
        due_ms: int,
        error: str,
        record: str,
    ) -> str | None:
        """Settle a failed attempt that `consumer` holds.

        `due_ms` 0 makes the next attempt ready now, > 0 delays it until then, -1 ends the job:
        its record says ``failed`` and `record` (JSON) becomes a dead letter.

        A job with a cancel request (`cancel`) ends ``cancelled`` instead: neither retried nor
        dead-lettered.

        Returns:
            the dead letter's id; `RESCHEDULED` (''); `CANCELLED`; or `LOST` (None) when
            `consumer` does not hold the job (another took it over, or this very call already
            went through).
        """
        raise NotImplementedError

    async def promote(self, queue: str, now_ms: int, limit: int) -> tuple[int, int]:
        """Make delayed jobs due by `now_ms` ready (at most `limit`); returns how many, and the
        next due time (-1 when none waits)."""
        raise NotImplementedError

    async def reclaim(self, queue: str, consumer: str, idle_ms: int, count: int) -> list[Running]:
        """Take over up to `count` jobs whose holder has not refreshed them for `idle_ms`,
        counting their attempt up; none while the queue is paused."""
        raise NotImplementedError

    async def heartbeat(self, queue: str, consumer: str, jobs: Sequence[Running]) -> list[Running]:
        """Refresh `consumer`'s claims; returns the jobs it no longer holds."""
        raise NotImplementedError

    async def release(self, queue: str, consumer: str, jobs: Sequence[Running]) -> None:
        """Hand unfinished jobs back, readable at once (same id and attempt)."""
        raise NotImplementedError

    async def progress(self, queue: str, job_id: str, percent: float) -> None:
        """Store a running job's progress on its record."""
        raise NotImplementedError

    # -- cancelling ----------------------------------------------------------------------------

    async def cancel(self, queue: str, job_id: str, now_ms: int, keep: int) -> Cancellation:
        """Cancel a job: one that waits (ready and unread, delayed, retrying) is removed and
        its record says ``cancelled`` (kept `keep` seconds); one a worker holds gets a request
        that the worker sees through `cancel_requested`. Asking twice is harmless."""
        raise NotImplementedError

    async def cancel_requested(self, queue: str, job_ids: Sequence[str]) -> set[str]:
        """Which of `job_ids` (jobs the caller holds) have a cancel request."""
        raise NotImplementedError

    async def settle_cancelled(
        self, queue: str, job: Running, *, consumer: str, now_ms: int, keep: int
    ) -> bool:
        """End a job `consumer` holds as ``cancelled`` (record kept `keep` seconds), dropping
        its request; False (nothing changed) when `consumer` no longer holds it."""
        raise NotImplementedError

    # -- rate limits ---------------------------------------------------------------------------

    async def take(
        self, queue: str, topic: str, wanted: int, limit: int, period: float, token: str
    ) -> tuple[int, float]:
        """Take up to `wanted` job starts of a rate: the queue's (`topic` '') or a topic's, at
        most `limit` in any `period` seconds across every process. Returns how many were
        granted and, when fewer than wanted, the seconds until one more frees (else 0).
        `token` (unique per call) names them for `give_back`."""
        raise NotImplementedError

    async def give_back(self, queue: str, topic: str, token: str, granted: int, used: int) -> None:
        """Return the starts of a `take` that were not used (`used` of `granted` were)."""
        raise NotImplementedError

    async def defer(self, queue: str, consumer: str, jobs: Sequence[Running], due_ms: int) -> None:
        """Make jobs `consumer` holds wait until `due_ms` (delayed, same attempt): their
        topic's rate is used up."""
        raise NotImplementedError

    async def clean(self, queue: str, state: str, before_ms: int) -> int:
        """Delete the records of `queue`'s jobs in `state` (``completed``, ``failed`` or
        ``cancelled``) that finished before `before_ms`; returns how many. Never touches a job
        that waits or runs, so it is safe while workers run. A deleted job's id is new again:
        enqueueing it again makes a new job."""
        raise NotImplementedError

    # -- what jobs share -----------------------------------------------------------------------

    async def emitted(self, queue: str, job_id: str, n: int) -> int | None:
        """The sequence of the job's `n`-th emit, if it was marked (`mark_emitted`)."""
        raise NotImplementedError

    async def mark_emitted(self, queue: str, job_id: str, n: int, sequence: int) -> None:
        """Remember that the job's `n`-th emit was stored as `sequence`."""
        raise NotImplementedError

    async def fan_in_totals(self, pipeline: str, totals: dict[str, int], keep: int) -> None:
        """Record how many jobs each message (``<stream>:<sequence>``) produced; the first
        record of a message wins, so a redelivery cannot change it."""
        raise NotImplementedError

    async def fan_in_finished(
        self, pipeline: str, job_ids: Sequence[str], keep: int
    ) -> list[tuple[str, int]]:
        """Count routed jobs finished (each once); returns (message, total) for every message
        whose last job this call finished, once per message ever."""
        raise NotImplementedError

    # -- dead letters and lookups --------------------------------------------------------------

    async def bury(self, pipeline: str, record: str) -> str:
        """Keep a stream message that could not be decoded or routed; returns its id."""
        raise NotImplementedError

    async def dead_letters(self, pipeline: Pipeline, limit: int) -> list[DeadLetter]:
        """The pipeline's dead letters (stream side, then each queue), oldest first."""
        raise NotImplementedError

    async def job(self, pipeline: Pipeline, queue: str, job_id: str) -> JobInfo | None:
        """The job's record as it is now, or None when it has none (never, or expired)."""
        raise NotImplementedError

    async def counts(self, queue: str) -> QueueCounts:
        """How many jobs `queue` holds: ready, running, delayed, dead."""
        raise NotImplementedError

    # -- cron ----------------------------------------------------------------------------------

    async def cron_mark(self, pipeline: str, topic: str) -> int | None:
        """The last tick (ms) fired of a cron, by any process; None before the first."""
        raise NotImplementedError

    async def raise_cron_mark(self, pipeline: str, topic: str, tick_ms: int) -> None:
        """Move the cron's mark to `tick_ms` unless it is already later."""
        raise NotImplementedError

    async def lease_tick(self, pipeline: str, topic: str, tick_ms: int, ms: int) -> bool:
        """Take the lease on firing one tick for `ms` unless a process holds it; True if
        taken."""
        raise NotImplementedError

    async def drop_tick_lease(self, pipeline: str, topic: str, tick_ms: int) -> None:
        """Give a tick's lease up before it runs out (its firing failed)."""
        raise NotImplementedError


# -- streams ------------------------------------------------------------------------------------


class Sequences(Protocol):
    stream: int


class Metadata(Protocol):
    """What a message says about itself (nats-py's ``Msg.Metadata`` has these)."""

    @property
    def sequence(self) -> Sequences: ...

    @property
    def num_delivered(self) -> int: ...

    @property
    def timestamp(self) -> datetime: ...


class Message(Protocol):
    """One delivered stream message; a nats-py ``Msg`` is one as it is.

    `_ackd` is nats-py's own flag (set once acked, handed back or terminated): the keep-alive
    of a long batch skips settled messages by it.
    """

    subject: str
    data: bytes
    headers: dict[str, str] | None
    _ackd: bool

    @property
    def metadata(self) -> Any: ...  # a `Metadata`

    async def ack(self) -> None: ...

    async def nak(self, delay: float | None = None) -> None: ...

    async def term(self) -> None: ...

    async def in_progress(self) -> None: ...


class Consumer(Protocol):
    """A durable consumer of one subject, shared by every process that names it."""

    async def fetch(self, batch: int, timeout: float) -> list[Any]:  # noqa: ASYNC109 - nats-py's signature
        """Up to `batch` messages (`Message`s); raises `TimeoutError` when none came within
        `timeout` seconds."""
        ...


class StreamSource:
    """Where events are published and read from."""

    async def close(self) -> None:
        """Release connections."""
        raise NotImplementedError

    async def ensure(self, subject: str, replicas: int | None = None) -> str:
        """The name of the stream that captures `subject`, creating one if none does; with
        `replicas`, the stream keeps that many copies on a clustered server."""
        raise NotImplementedError

    async def publish(
        self, subject: str, payload: bytes, headers: dict[str, str] | None = None
    ) -> int:
        """Store a message; returns its sequence in its stream. A ``Nats-Msg-Id`` header seen
        within the stream's duplicate window stores nothing and returns the first sequence."""
        raise NotImplementedError

    async def consumer(
        self, stream: str, subject: str, durable: str, *, ack_wait: float, max_ack_pending: int
    ) -> Consumer:
        """The durable consumer `durable` of `subject` (created, delivering from the start, if
        it does not exist): messages not acked within `ack_wait` are delivered again."""
        raise NotImplementedError

    async def ack_floor(self, stream: str, durable: str) -> int:
        """The highest sequence at or below which `durable` has acked (or terminated) every
        message of `stream`: JetStream delivers none of those again."""
        raise NotImplementedError
