"""`MemoryStore` and `MemorySource`: the job store and stream source in one process.

They keep the servers' data structures in plain Python (streams of entries with ``<ms>-<n>``
ids, a consumer group's pending entries, a delayed set, hashes for records) and change them
the way the Lua scripts and JetStream do, one call at a time; the runtime above them is the
same code that runs on servers. ``tests/test_backends.py`` holds both to one contract, and
``tests/test_parity.py`` runs whole pipelines on both and compares what users observe.

What they do not model:

- processes and their crashes: one process, nothing restarts, so nothing is reclaimed
  (`MemoryStore.reclaim` finds nothing) and a visibility timeout never expires;
- JetStream's ``ack_wait``: a message delivered and not acked stays delivered (a crash would
  be the only cause of a redelivery by timeout);
- connection faults, server memory and the time servers' calls take;
- Redis's windowed queue statistics (``flowline status``), the process registry and the event
  log, which live only in Redis.

All times come from the stores' `Clock` (a `ManualClock` in `flowline.testing`).
"""

from __future__ import annotations

import asyncio
import collections
import heapq
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ..runtime import deadletters, fanin, jobs
from ..runtime.keys import QueueKeys, stream_dead_letters
from ..runtime.queues import QueueCounts
from .base import CANCELLED, Cancellation, Consumer, JobStore, Running, StreamSource
from .clock import Clock, SystemClock
from .jetstream import stream_name_for

if TYPE_CHECKING:
    from .._pipeline import Pipeline
    from ..runtime.deadletters import DeadLetter
    from ..runtime.enqueue import Planned
    from ..runtime.jobs import JobInfo

# JetStream's duplicate window of the streams flowline creates (`jetstream.ensure_stream`).
DUPLICATE_WINDOW = 120.0


class _Ids:
    """Entry ids as Redis makes them: ``<ms>-<n>``, increasing even when the clock is not."""

    def __init__(self) -> None:
        self.ms = 0
        self.n = 0

    def next(self, now_ms: int) -> str:
        if now_ms > self.ms:
            self.ms, self.n = now_ms, 0
        else:
            self.n += 1
        return f"{self.ms}-{self.n}"


@dataclass
class _Queue:
    keys: QueueKeys
    ready: dict[str, collections.deque[Running]] = field(default_factory=dict)
    ids: dict[str, _Ids] = field(default_factory=dict)
    pending: dict[tuple[str, str], str] = field(default_factory=dict)  # job key -> consumer
    held: dict[tuple[str, str], Running] = field(default_factory=dict)
    delayed: dict[str, int] = field(default_factory=dict)  # job id -> due ms
    dead: list[tuple[str, str, str]] = field(default_factory=list)  # entry, job id, record
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    paused: bool = False
    cancels: dict[str, int] = field(default_factory=dict)  # job id -> when asked (ms)
    # Rate windows: scope ('' the queue, else a topic) -> {member: start ms}.
    windows: dict[str, dict[str, int]] = field(default_factory=dict)
    blocked_until: int = 0  # ms: the queue's rate lets no job start before then
    active: dict[str, int] = field(default_factory=dict)  # group -> its jobs in the streams
    waiting: dict[str, collections.deque[str]] = field(default_factory=dict)  # group -> ids
    # Dedup marks: source -> {(sequence, call class): sequence}, as ENQUEUE keeps them.
    marks: dict[str, dict[tuple[int, str], int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for stream in (*self.keys.streams, self.keys.dead):
            self.ready[stream] = collections.deque()
            self.ids[stream] = _Ids()


class MemoryStore(JobStore):
    """Queues in this process's memory, changed as `RedisStore`'s scripts change Redis.

    Args:
        clock: where times come from (default: the machine's).
    """

    def __init__(self, clock: Clock | None = None) -> None:
        self.clock = clock or SystemClock()
        self._queues: dict[str, _Queue] = {}
        self._records: dict[tuple[str, str], dict[str, str]] = {}
        self._expires: dict[tuple[str, str], int] = {}
        self._dead_ids: dict[str, _Ids] = {}
        self._stream_dead: dict[str, list[tuple[str, str, str]]] = {}
        self._fan_in: dict[tuple[str, str], tuple[int, set[str], bool]] = {}
        self._marks: dict[tuple[str, str], int] = {}
        self._leases: dict[tuple[str, str, int], int] = {}
        self.changes = 0  # calls that changed something, for `flowline.testing`'s settle

    # -- what `flowline.testing` asks --------------------------------------------------------

    def _startable(self, q: _Queue) -> bool:
        """Whether the queue's ready jobs may start now: not paused, its rate not used up."""
        return not q.paused and q.blocked_until <= self._now()

    def busy(self) -> bool:
        """Whether a job is held by a worker, or ready in a queue that may start it now. While
        a queue's rate lets nothing start, the jobs its workers hold wait for the rate (the
        harness asks the workers whether a handler runs)."""
        now = self._now()
        return any(
            (q.pending and q.blocked_until <= now)
            or (self._startable(q) and any(q.ready[s] for s in q.keys.streams))
            for q in self._queues.values()
        )

    def backlog(self) -> dict[str, tuple[int, int]]:
        """Each queue with work: (jobs ready, jobs held by a worker); a paused queue's ready
        jobs wait for its resume, and a rate-limited one's for its rate: not counted."""
        out = {}
        for name, q in self._queues.items():
            ready = sum(len(q.ready[s]) for s in q.keys.streams) if self._startable(q) else 0
            if ready or q.pending:
                out[name] = (ready, len(q.pending))
        return out

    def next_due(self) -> int | None:
        """When the soonest delayed job is due, or a rate lets ready jobs start (ms); None
        when nothing waits."""
        due = [d for q in self._queues.values() for d in q.delayed.values()]
        now = self._now()
        due += [
            q.blocked_until
            for q in self._queues.values()
            if q.blocked_until > now and (q.pending or any(q.ready[s] for s in q.keys.streams))
        ]
        return min(due) if due else None

    # -- helpers --------------------------------------------------------------------------------

    def _q(self, queue: str) -> _Queue:
        q = self._queues.get(queue)
        if q is None:
            q = self._queues[queue] = _Queue(QueueKeys(queue))
        return q

    def _now(self) -> int:
        return int(self.clock.time() * 1000)

    def _record(self, queue: str, job_id: str) -> dict[str, str] | None:
        key = (queue, job_id)
        expires = self._expires.get(key)
        if expires is not None and expires <= self._now():
            self._records.pop(key, None)
            del self._expires[key]
        return self._records.get(key)

    def _write(self, queue: str, job_id: str, **fields: Any) -> dict[str, str]:
        record = self._record(queue, job_id)
        if record is None:
            record = self._records[(queue, job_id)] = {}
        record.update({k: str(v) for k, v in fields.items()})
        return record

    def _expire(self, queue: str, job_id: str, seconds: int) -> None:
        self._expires[(queue, job_id)] = self._now() + seconds * 1000

    def _add(self, q: _Queue, stream: str, job: Running) -> None:
        job.stream, job.entry = stream, q.ids[stream].next(self._now())
        q.ready[stream].append(job)
        q.wake.set()

    def _claim(self, q: _Queue, consumer: str, stream: str, count: int) -> list[Running]:
        out: list[Running] = []
        ready = q.ready[stream]
        while ready and len(out) < count:
            job = ready.popleft()
            q.pending[job.key] = consumer
            q.held[job.key] = job
            out.append(_copy(job))
        return out

    def _settled(self, q: _Queue, job: Running) -> None:
        q.pending.pop(job.key, None)
        q.held.pop(job.key, None)

    @staticmethod
    def _from_record(job_id: str, rec: dict[str, str]) -> Running:
        """A job waiting on its record (delayed, or waiting in its group's list)."""
        return Running(
            "", "", job_id, rec["topic"], rec.get("data", "").encode(), int(rec.get("attempt", 1)),
            int(rec.get("born") or 0), rec.get("trace", ""), group=rec.get("group", ""),
        )  # fmt: skip

    def _admit(self, queue: str, stream: str, job: Running, limit: int) -> None:
        """Make a job ready: into `stream`, unless its group has `limit` jobs there already,
        then it waits its turn in the group's list (as the GROUPS Lua does)."""
        q = self._q(queue)
        rec = self._record(queue, job.job_id)
        if job.group and q.active.get(job.group, 0) >= limit:
            if rec is not None:
                rec.update(data=job.data.decode(), born=str(job.born), trace=job.trace,
                           stream=stream, state="queued")  # fmt: skip
            q.waiting.setdefault(job.group, collections.deque()).append(job.job_id)
            return
        if job.group:
            q.active[job.group] = q.active.get(job.group, 0) + 1
        if rec is not None:
            for name in ("data", "born", "trace"):
                rec.pop(name, None)
        self._add(q, stream, job)

    def _leave(self, queue: str, group: str) -> None:
        """A job of `group` left the ready streams: its slot goes to the next waiting job."""
        if not group:
            return
        q = self._q(queue)
        waiting = q.waiting.get(group)
        while waiting:
            job_id = waiting.popleft()
            rec = self._record(queue, job_id)
            if rec is not None and rec.get("state") == "queued" and "data" in rec:
                job = self._from_record(job_id, rec)
                for name in ("data", "born", "trace"):
                    rec.pop(name, None)
                self._add(q, rec.get("stream") or q.keys.jobs, job)
                return
        q.active[group] = q.active.get(group, 0) - 1
        if q.active[group] <= 0:
            del q.active[group]

    # -- the contract ---------------------------------------------------------------------------

    async def close(self) -> None:
        for q in self._queues.values():
            q.wake.set()

    async def setup(self, queue: str) -> None:
        self._q(queue)

    async def enqueue(self, queue: str, rows: Sequence[Planned], now_ms: int) -> int:
        q = self._q(queue)
        added = 0
        fresh: dict[tuple[int, str], bool] = {}  # as ENQUEUE's marks: per message and class
        for r in rows:
            if r.source:
                mark = (r.seq, ("g" if r.group else "") + ("t" if r.priority > 0 else "s"))
                new = fresh.get(mark)
                if new is None:
                    marks = q.marks.setdefault(r.source, {})
                    new = fresh[mark] = mark not in marks
                    marks[mark] = r.seq
                if not new:
                    continue
            if self._record(queue, r.id) is not None:
                continue
            q.cancels.pop(r.id, None)
            stream = q.keys.urgent if r.priority > 0 else q.keys.jobs
            born = r.born_ms or now_ms
            if r.group:
                self._write(queue, r.id, group=r.group, glimit=r.group_limit)
            if r.due_ms > 0:
                self._write(
                    queue, r.id, state="delayed", topic=r.topic, data=r.data, attempt=1,
                    created=now_ms, origin=r.origin, stream=stream, born=born, trace=r.trace,
                )  # fmt: skip
                q.delayed[r.id] = r.due_ms
            else:
                self._write(
                    queue, r.id, state="queued", topic=r.topic, attempt=1, created=now_ms,
                    origin=r.origin,
                )  # fmt: skip
                job = Running(
                    "", "", r.id, r.topic, r.data.encode(), 1, born, r.trace, group=r.group
                )
                self._admit(queue, stream, job, r.group_limit)
            added += 1
        self.changes += 1
        return added

    async def read(self, queue: str, consumer: str, count: int, block: float) -> list[Running]:
        q = self._q(queue)
        urgent, normal = q.keys.streams
        if q.paused or not (q.ready[urgent] or q.ready[normal]):
            q.wake.clear()
            await self.clock.wait(q.wake, block)
        if q.paused:
            return []
        # As XREADGROUP's COUNT: up to `count` from each stream, urgent first.
        out = self._claim(q, consumer, urgent, count) + self._claim(q, consumer, normal, count)
        if out:
            self.changes += 1
        return out

    async def pause(self, queue: str) -> bool:
        q = self._q(queue)
        was, q.paused = q.paused, True
        return not was

    async def resume(self, queue: str) -> bool:
        q = self._q(queue)
        was, q.paused = q.paused, False
        q.wake.set()
        return was

    async def paused(self, queue: str, *, within: float = 0.0) -> bool:
        return self._q(queue).paused

    async def complete(
        self, queue: str, done: Sequence[tuple[Running, str]], now_ms: int, keep: int
    ) -> None:
        q = self._q(queue)
        for job, result in done:
            held = job.key in q.pending  # completing twice hands on one group slot, not two
            self._settled(q, job)
            if keep == 0:
                self._records.pop((queue, job.job_id), None)
                self._expires.pop((queue, job.job_id), None)
            else:
                self._write(
                    queue, job.job_id, state="completed", result=result, finished=now_ms,
                    progress=100,
                )  # fmt: skip
                self._expire(queue, job.job_id, keep)
            if held:
                self._leave(queue, job.group)
        self.changes += 1

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
        q = self._q(queue)
        if job.entry:
            if q.pending.get(job.key) != consumer:
                return None
            self._settled(q, job)
        self.changes += 1
        if q.cancels.pop(job.job_id, None) is not None:
            self._cancelled(queue, job.job_id, now_ms, keep, error=error)
            self._leave(queue, job.group)
            return CANCELLED
        if due_ms < 0:
            rec = self._write(queue, job.job_id, state="failed", error=error, finished=now_ms)
            rec.pop("data", None)
            self._expire(queue, job.job_id, keep)
            self._leave(queue, job.group)
            entry = q.ids[q.keys.dead].next(now_ms)
            q.dead.append((entry, job.job_id, record))
            return entry
        attempt = job.attempt + 1
        self._write(queue, job.job_id, attempt=attempt, error=error)
        if due_ms == 0:
            self._write(queue, job.job_id, state="queued")
            again = Running(
                "", "", job.job_id, job.topic, job.data, attempt, job.born, job.trace,
                group=job.group,
            )  # fmt: skip
            self._add(q, job.stream, again)
        else:
            self._write(
                queue, job.job_id, state="retrying", data=job.data.decode(), topic=job.topic,
                stream=job.stream, born=job.born, trace=job.trace,
            )  # fmt: skip
            q.delayed[job.job_id] = due_ms
            self._leave(queue, job.group)  # back through the group's gate when due
        return ""

    async def promote(self, queue: str, now_ms: int, limit: int) -> tuple[int, int]:
        q = self._q(queue)
        due = sorted((d, job_id) for job_id, d in q.delayed.items() if d <= now_ms)[:limit]
        for _, job_id in due:
            rec = self._record(queue, job_id)
            if rec is not None and "topic" in rec:
                job = self._from_record(job_id, rec)
                rec["state"] = "queued"
                self._admit(queue, rec.get("stream") or q.keys.jobs, job, int(rec.get("glimit", 0)))
            del q.delayed[job_id]
        if due:
            self.changes += 1
        return len(due), min(q.delayed.values(), default=-1)

    async def reclaim(self, queue: str, consumer: str, idle_ms: int, count: int) -> list[Running]:
        # One process that never dies: every claim belongs to a live worker (module docstring).
        return []

    async def heartbeat(self, queue: str, consumer: str, jobs: Sequence[Running]) -> list[Running]:
        q = self._q(queue)
        return [job for job in jobs if q.pending.get(job.key) != consumer]

    async def release(self, queue: str, consumer: str, jobs: Sequence[Running]) -> None:
        q = self._q(queue)
        for job in jobs:
            if job.key in q.pending:
                self._settled(q, job)
                self._add(q, job.stream, _copy(job))
        self.changes += 1

    async def progress(self, queue: str, job_id: str, percent: float) -> None:
        if self._record(queue, job_id) is not None:  # as Redis: no record made by a late write
            self._write(queue, job_id, progress=percent)

    def _cancelled(self, queue: str, job_id: str, now_ms: int, keep: int, **more: str) -> None:
        rec = self._write(queue, job_id, state="cancelled", finished=now_ms, **more)
        for name in ("data", "born", "trace"):
            rec.pop(name, None)
        self._expire(queue, job_id, keep)
        self._q(queue).cancels.pop(job_id, None)

    async def cancel(self, queue: str, job_id: str, now_ms: int, keep: int) -> Cancellation:
        q = self._q(queue)
        rec = self._record(queue, job_id)
        if rec is None:
            return Cancellation("unknown", "", "")
        state, topic = rec.get("state", ""), rec.get("topic", "")
        if state in ("completed", "failed", "cancelled"):
            return Cancellation("finished", state, topic)
        self.changes += 1
        if state in ("delayed", "retrying"):
            q.delayed.pop(job_id, None)
            self._cancelled(queue, job_id, now_ms, keep)
            return Cancellation("cancelled", state, topic)
        for stream in q.keys.streams:
            for job in q.ready[stream]:
                if job.job_id == job_id:
                    q.ready[stream].remove(job)
                    self._cancelled(queue, job_id, now_ms, keep)
                    self._leave(queue, job.group)
                    return Cancellation("cancelled", state, topic)
        waiting = q.waiting.get(rec.get("group", ""))
        if waiting and job_id in waiting:
            waiting.remove(job_id)
            self._cancelled(queue, job_id, now_ms, keep)
            return Cancellation("cancelled", state, topic)
        holder = next((q.pending[k] for k, j in q.held.items() if j.job_id == job_id), "")
        q.cancels[job_id] = now_ms
        return Cancellation("cancelling", holder, topic)

    async def cancel_requested(self, queue: str, job_ids: Sequence[str]) -> set[str]:
        cancels = self._q(queue).cancels
        return {job_id for job_id in job_ids if job_id in cancels}

    async def settle_cancelled(
        self, queue: str, job: Running, *, consumer: str, now_ms: int, keep: int
    ) -> bool:
        q = self._q(queue)
        if q.pending.get(job.key) != consumer:
            return False
        self._settled(q, job)
        self._cancelled(queue, job.job_id, now_ms, keep)
        self._leave(queue, job.group)
        self.changes += 1
        return True

    async def take(
        self, queue: str, topic: str, wanted: int, limit: int, period: float, token: str
    ) -> tuple[int, float]:
        q = self._q(queue)
        now, span = self._now(), max(1, int(period * 1000))
        window = q.windows.setdefault(topic, {})
        for member in [m for m, at in window.items() if at <= now - span]:
            del window[member]
        granted = max(0, min(wanted, limit - len(window)))
        window.update({f"{token}{i}": now for i in range(1, granted + 1)})
        if granted == wanted:
            return granted, 0.0
        wait_ms = max(1, min(window.values()) + span - now)
        if not topic and not granted:
            q.blocked_until = now + wait_ms
        return granted, wait_ms / 1000

    async def give_back(self, queue: str, topic: str, token: str, granted: int, used: int) -> None:
        window = self._q(queue).windows.get(topic, {})
        for i in range(used + 1, granted + 1):
            window.pop(f"{token}{i}", None)

    async def defer(self, queue: str, consumer: str, jobs: Sequence[Running], due_ms: int) -> None:
        q = self._q(queue)
        for job in jobs:
            if q.pending.get(job.key) != consumer:
                continue
            self._settled(q, job)
            self._write(
                queue, job.job_id, state="delayed", topic=job.topic, data=job.data.decode(),
                attempt=job.attempt, stream=job.stream, born=job.born, trace=job.trace,
            )  # fmt: skip
            q.delayed[job.job_id] = due_ms
            self._leave(queue, job.group)
        self.changes += 1

    async def clean(self, queue: str, state: str, before_ms: int) -> int:
        gone = [
            key
            for key, rec in list(self._records.items())
            if key[0] == queue
            and self._record(*key) is not None
            and rec.get("state") == state
            and int(rec.get("finished") or 0) < before_ms
        ]
        for key in gone:
            del self._records[key]
            self._expires.pop(key, None)
        self.changes += 1
        return len(gone)

    async def emitted(self, queue: str, job_id: str, n: int) -> int | None:
        rec = self._record(queue, job_id) or {}
        done = rec.get(f"emitted:{n}")
        return None if done is None else int(done)

    async def mark_emitted(self, queue: str, job_id: str, n: int, sequence: int) -> None:
        if self._record(queue, job_id) is not None:
            self._write(queue, job_id, **{f"emitted:{n}": sequence})

    async def forget(self, queues: Sequence[str], source: str, floor: int) -> None:
        for queue in queues:
            marks = self._q(queue).marks.get(source)
            if marks:
                for mark in [m for m, seq in marks.items() if seq <= floor]:
                    del marks[mark]

    async def fan_in_totals(self, pipeline: str, totals: dict[str, int], keep: int) -> None:
        for origin, total in totals.items():
            self._fan_in.setdefault((pipeline, origin), (total, set(), False))

    async def fan_in_finished(
        self, pipeline: str, job_ids: Sequence[str], keep: int
    ) -> list[tuple[str, int]]:
        out = []
        for job_id in job_ids:
            key = (pipeline, fanin.origin_of(job_id))
            entry = self._fan_in.get(key)
            if entry is None:
                continue
            total, done, fired = entry
            done.add(job_id)
            if len(done) >= total and not fired:
                self._fan_in[key] = (total, done, True)
                out.append((key[1], total))
        return out

    async def bury(self, pipeline: str, record: str) -> str:
        store = stream_dead_letters(pipeline).dead
        entry = self._dead_ids.setdefault(store, _Ids()).next(self._now())
        self._stream_dead.setdefault(store, []).append((entry, "", record))
        self.changes += 1
        return entry

    def _letters(self, store: str) -> list[tuple[str, str, str]]:
        for q in self._queues.values():
            if q.keys.dead == store:
                return q.dead
        return self._stream_dead.get(store, [])

    async def dead_letters(self, pipeline: Pipeline, limit: int) -> list[DeadLetter]:
        return [
            deadletters.DeadLetter(entry, store, json.loads(record))
            for store in deadletters.stores(pipeline)
            for entry, _, record in self._letters(store)[:limit]
        ]

    async def job(self, pipeline: Pipeline, queue: str, job_id: str) -> JobInfo | None:
        rec = self._record(queue, job_id)
        if rec is None:
            return None
        q = self._q(queue)
        holder = next((q.pending[k] for k, j in q.held.items() if j.job_id == job_id), "")
        due = q.delayed.get(job_id)
        letter = None
        if rec.get("state") == "failed":
            found = [(e, r) for e, i, r in q.dead if i == job_id]
            if found:
                entry, record = found[-1]
                letter = deadletters.DeadLetter(entry, q.keys.dead, json.loads(record))
        subjects = jobs.subjects_of(pipeline)
        return jobs.job_info(
            job_id, queue, subjects, dict(rec), holder, None if due is None else str(due), letter
        )

    async def counts(self, queue: str) -> QueueCounts:
        q = self._q(queue)
        ready = sum(len(q.ready[s]) for s in q.keys.streams)
        ready += sum(len(w) for w in q.waiting.values())
        return QueueCounts(ready, len(q.pending), len(q.delayed), len(q.dead))

    async def cron_mark(self, pipeline: str, topic: str) -> int | None:
        return self._marks.get((pipeline, topic))

    async def raise_cron_mark(self, pipeline: str, topic: str, tick_ms: int) -> None:
        if tick_ms > self._marks.get((pipeline, topic), -1):
            self._marks[(pipeline, topic)] = tick_ms

    async def lease_tick(self, pipeline: str, topic: str, tick_ms: int, ms: int) -> bool:
        key, now = (pipeline, topic, tick_ms), self._now()
        if self._leases.get(key, 0) > now:
            return False
        self._leases[key] = now + ms
        return True

    async def drop_tick_lease(self, pipeline: str, topic: str, tick_ms: int) -> None:
        self._leases.pop((pipeline, topic, tick_ms), None)


def _copy(job: Running) -> Running:
    """What a read hands out: the stored job's fields, never the stored object itself."""
    return Running(
        job.stream, job.entry, job.job_id, job.topic, job.data, job.attempt, job.born, job.trace,
        group=job.group,
    )  # fmt: skip


# -- streams ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Sequence:
    stream: int
    consumer: int


@dataclass(frozen=True)
class _Metadata:
    """The fields of nats-py's ``Msg.Metadata`` the runtime reads."""

    sequence: _Sequence
    num_delivered: int
    timestamp: datetime
    stream: str
    consumer: str


@dataclass
class _Stored:
    sequence: int
    subject: str
    data: bytes
    headers: dict[str, str] | None
    at: float  # epoch seconds


class MemoryMessage:
    """A delivered message, with nats-py ``Msg``'s attributes and acknowledgements."""

    def __init__(self, consumer: MemoryConsumer, stored: _Stored, deliveries: int, n: int) -> None:
        self._consumer = consumer
        self.subject = stored.subject
        self.data = stored.data
        self.headers = stored.headers
        self._ackd = False
        self.metadata = _Metadata(
            _Sequence(stored.sequence, n),
            deliveries,
            datetime.fromtimestamp(stored.at, UTC),
            consumer.stream.name,
            consumer.durable,
        )

    async def ack(self) -> None:
        self._settle(None)

    async def nak(self, delay: float | None = None) -> None:
        self._settle(max(0.0, delay or 0.0))

    async def term(self) -> None:
        self._settle(None)

    async def in_progress(self) -> None:
        """Nothing to do: ``ack_wait`` is not modeled (see the module docstring)."""

    def _settle(self, again: float | None) -> None:
        if self._ackd:
            return  # as JetStream: a second ack of one delivery changes nothing
        self._ackd = True
        self._consumer.settled(self.metadata.sequence.stream, again)


class _Stream:
    def __init__(self, name: str, subject: str) -> None:
        self.name = name
        self.subject = subject
        self.messages: list[_Stored] = []
        self.seen: dict[str, tuple[int, float]] = {}  # Nats-Msg-Id -> (sequence, when)
        self.consumers: dict[str, MemoryConsumer] = {}


class MemoryConsumer:
    """A durable pull consumer: delivers each message until it is acked or terminated."""

    def __init__(self, stream: _Stream, durable: str, clock: Clock) -> None:
        self.stream = stream
        self.durable = durable
        self.clock = clock
        self.next = 0  # index of the first message never delivered
        self.delivered: dict[int, int] = {}  # sequence -> deliveries, while not settled
        self.out: set[int] = set()  # delivered and not settled yet
        self.again: list[tuple[float, int]] = []  # (when, sequence) handed back to redeliver
        self.count = 0
        self.wake = asyncio.Event()

    def busy(self) -> bool:
        """Whether a message waits to be delivered now, or is out and unsettled."""
        now = self.clock.time()
        return (
            self.next < len(self.stream.messages)
            or bool(self.out)
            or any(when <= now for when, _ in self.again)
        )

    def next_due(self) -> float | None:
        """When the soonest handed-back message is to be delivered again (epoch seconds)."""
        return min((when for when, _ in self.again), default=None)

    def settled(self, sequence: int, again: float | None) -> None:
        self.out.discard(sequence)
        if again is None:
            self.delivered.pop(sequence, None)
        else:
            heapq.heappush(self.again, (self.clock.time() + again, sequence))
            self.wake.set()

    def ack_floor(self) -> int:
        """As JetStream's: every message at or below it is acked or terminated."""
        unsettled = [*self.out, *(sequence for _, sequence in self.again)]
        messages = self.stream.messages
        if self.next < len(messages):
            unsettled.append(messages[self.next].sequence)
        last = messages[-1].sequence if messages else 0
        return min(unsettled, default=last + 1) - 1

    def _take(self, batch: int) -> list[MemoryMessage]:
        now = self.clock.time()
        picked: list[int] = []
        while self.again and self.again[0][0] <= now and len(picked) < batch:
            picked.append(heapq.heappop(self.again)[1])
        messages = self.stream.messages
        while self.next < len(messages) and len(picked) < batch:
            picked.append(messages[self.next].sequence)
            self.next += 1
        out = []
        for sequence in picked:
            deliveries = self.delivered.get(sequence, 0) + 1
            self.delivered[sequence] = deliveries
            self.out.add(sequence)
            self.count += 1
            out.append(MemoryMessage(self, messages[sequence - 1], deliveries, self.count))
        return out

    async def fetch(self, batch: int, timeout: float) -> list[Any]:  # noqa: ASYNC109 - nats-py's
        msgs = self._take(batch)
        if not msgs:
            self.wake.clear()
            soonest = self.next_due()
            wait = timeout if soonest is None else min(timeout, soonest - self.clock.time())
            await self.clock.wait(self.wake, max(0.0, wait))
            msgs = self._take(batch)
        if not msgs:
            raise TimeoutError("no messages")
        return msgs


class MemorySource(StreamSource):
    """Streams in this process's memory, with JetStream's sequences, deduplication by
    ``Nats-Msg-Id`` (within 120 s) and durable consumers.

    Args:
        clock: where times come from (default: the machine's).
    """

    def __init__(self, clock: Clock | None = None) -> None:
        self.clock = clock or SystemClock()
        self._streams: dict[str, _Stream] = {}  # by subject

    def busy(self) -> bool:
        """Whether a consumer has a message to deliver now, or one out and unsettled."""
        return any(c.busy() for s in self._streams.values() for c in s.consumers.values())

    def next_due(self) -> float | None:
        """When the soonest handed-back message is due again (epoch seconds), or None."""
        due = [
            d
            for s in self._streams.values()
            for c in s.consumers.values()
            if (d := c.next_due()) is not None
        ]
        return min(due) if due else None

    def messages(self, subject: str) -> list[bytes]:
        """The payloads stored on `subject`, in order."""
        stream = self._streams.get(subject)
        return [m.data for m in stream.messages] if stream is not None else []

    async def close(self) -> None:
        for s in self._streams.values():
            for c in s.consumers.values():
                c.wake.set()

    def _stream(self, subject: str) -> _Stream:
        stream = self._streams.get(subject)
        if stream is None:
            stream = self._streams[subject] = _Stream(stream_name_for(subject), subject)
        return stream

    async def ensure(self, subject: str, replicas: int | None = None) -> str:
        return self._stream(subject).name  # one process's memory: a single copy whatever asked

    async def publish(
        self, subject: str, payload: bytes, headers: dict[str, str] | None = None
    ) -> int:
        stream = self._stream(subject)
        now = self.clock.time()
        msg_id = (headers or {}).get("Nats-Msg-Id")
        if msg_id is not None:
            seen = stream.seen.get(msg_id)
            if seen is not None and now - seen[1] < DUPLICATE_WINDOW:
                return seen[0]
        sequence = len(stream.messages) + 1
        stream.messages.append(_Stored(sequence, subject, payload, headers, now))
        if msg_id is not None:
            stream.seen[msg_id] = (sequence, now)
        for consumer in stream.consumers.values():
            consumer.wake.set()
        return sequence

    async def ack_floor(self, stream: str, durable: str) -> int:
        for s in self._streams.values():
            if s.name == stream and durable in s.consumers:
                return s.consumers[durable].ack_floor()
        return 0

    async def consumer(
        self, stream: str, subject: str, durable: str, *, ack_wait: float, max_ack_pending: int
    ) -> Consumer:
        s = self._stream(subject)
        found = s.consumers.get(durable)
        if found is None:
            found = s.consumers[durable] = MemoryConsumer(s, durable, self.clock)
        return found
