"""`RedisStore`: the job store on Redis, each change one Lua script call (`runtime.scripts`).

The layout is `runtime.keys`'s: every key of a queue shares its hash tag, so each call touches
one slot. Reads of ready jobs are XREADGROUP on the queue's streams (urgent first); claims
are the consumer group's pending entries, whose idle time is Redis's own clock.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from redis.exceptions import NoScriptError, ResponseError

from ..errors import NotReplicated
from ..runtime import deadletters, fanin, jobs
from ..runtime.cluster import run_scripts
from ..runtime.enqueue import by_queue
from ..runtime.inspect import STATS_BUCKET
from ..runtime.keys import GROUP, QueueKeys, cron_key, fan_in_keys, stream_dead_letters
from ..runtime.queues import QueueCounts
from ..runtime.scripts import ENQUEUE, ENQUEUE_GROUPED, Scripts, flat
from .base import CANCELLED, LOST, Cancellation, JobStore, Running
from .clock import Clock, SystemClock

# How old a worker's view of its queue's pause flag may be (seconds): a pause or a resume made
# elsewhere takes effect in every process within this.
PAUSED_POLL = 0.25
# Records one CLEAN call looks at: a few hundred microseconds of Redis at a time.
CLEAN_BATCH = 500

if TYPE_CHECKING:
    from redis import Redis as SyncRedis
    from redis.asyncio import Redis

    from .._pipeline import Pipeline
    from ..runtime.deadletters import DeadLetter
    from ..runtime.enqueue import Planned
    from ..runtime.jobs import JobInfo


def from_entry(stream: str, entry: bytes, fields: dict[bytes, bytes]) -> Running:
    """The job a ready stream's entry holds (entries written before `born` existed lack it)."""
    born = fields.get(b"born")
    trace = fields.get(b"trace")
    group = fields.get(b"group")
    return Running(
        stream,
        entry.decode(),
        fields[b"id"].decode(),
        fields[b"topic"].decode(),
        fields[b"data"],
        int(fields[b"attempt"]),
        int(born) if born else 0,
        trace.decode() if trace else "",
        group=group.decode() if group else "",
    )


def from_reclaim(stream: str, row: list[bytes]) -> Running:
    """The job of one row the RECLAIM script returns."""
    entry, job_id, topic, data, attempt, born, trace, group = row
    return Running(
        stream,
        entry.decode(),
        job_id.decode(),
        topic.decode(),
        data,
        int(attempt),
        int(born or 0),
        trace.decode() if trace else "",
        group=group.decode() if group else "",
    )


def release_args(job: Running) -> tuple[str | bytes | int, ...]:
    """The job's row of the RELEASE (and DEFER) script's ARGV."""
    return (job.entry, job.job_id, job.topic, job.data, job.attempt, job.born, job.trace, job.group)


def enqueue_calls(
    queue: str, rows: Sequence[Planned], now_ms: int
) -> list[tuple[bool, list[str], list[str | int]]]:
    """(grouped, KEYS, ARGV) of the enqueue calls of `rows`: one per priority class, and per
    class one more for jobs with a group (ENQUEUE_GROUPED, when `grouped`)."""
    keys = QueueKeys(queue)
    now = str(now_ms)
    calls: dict[tuple[bool, str, str], list[str | int]] = {}
    for r in rows:
        stream = keys.urgent if r.priority > 0 else keys.jobs
        args = calls.get((bool(r.group), stream, r.source))
        if args is None:
            args = calls[(bool(r.group), stream, r.source)] = [keys.job_prefix, now]
        args += (r.id, r.topic, r.data, r.due_ms, r.origin, r.born_ms or now_ms, r.trace, r.seq)
        if r.group:
            args += (r.group, r.group_limit)
    return [
        (
            grouped,
            [stream, keys.delayed, keys.cancels, keys.marks(source)]
            if source
            else [stream, keys.delayed, keys.cancels],
            args,
        )
        for (grouped, stream, source), args in calls.items()
    ]


# How long an enqueue waits for its replicas (`RedisStore.wait_replicas`) before it fails.
WAIT_TIMEOUT_MS = 1000


def write_sync(redis: SyncRedis, rows: list[Planned], wait_replicas: int = 0) -> int:
    """`runtime.enqueue.write` for code that is not async (a Django view, a script); with
    `wait_replicas`, as `RedisStore.wait_replicas` does."""
    scripts = {False: redis.register_script(ENQUEUE), True: redis.register_script(ENQUEUE_GROUPED)}
    now_ms = int(time.time() * 1000)
    calls = [
        call for queue, planned in by_queue(rows).items()
        for call in enqueue_calls(queue, planned, now_ms)
    ]  # fmt: skip
    if not wait_replicas:
        return sum(int(scripts[grouped](keys=keys, args=args)) for grouped, keys, args in calls)
    # The calls and the WAIT on one connection (WAIT answers for its own connection's writes).
    pipe = redis.pipeline(transaction=False)
    for grouped, keys, args in calls:
        scripts[grouped](keys=keys, args=args, client=pipe)
    pipe.execute_command("WAIT", wait_replicas, WAIT_TIMEOUT_MS)  # type: ignore[no-untyped-call]
    *added, acked = pipe.execute()
    if int(acked) < wait_replicas:
        raise NotReplicated(
            f"{len(rows)} jobs reached {acked} of {wait_replicas} replicas within "
            f"{WAIT_TIMEOUT_MS} ms"
        )
    return sum(int(a) for a in added)


class RedisStore(JobStore):
    """Queues in Redis.

    Args:
        redis: the client (its pool is the runner's, sized for its queues).
        clock: where times come from (`SystemClock`).
        wait_replicas: an enqueue returns only once this many replicas have its jobs (Redis
            WAIT on the connection that wrote them), and raises `NotReplicated` otherwise.
    """

    def __init__(self, redis: Redis, clock: Clock | None = None, *, wait_replicas: int = 0) -> None:
        self.redis = redis
        self.wait_replicas = wait_replicas
        self.scripts = Scripts(redis)
        self.clock = clock or SystemClock()
        self._keys: dict[str, QueueKeys] = {}
        self._pause_seen: dict[str, tuple[bool, float]] = {}  # queue -> (paused, when read)

    def _k(self, queue: str) -> QueueKeys:
        keys = self._keys.get(queue)
        if keys is None:
            keys = self._keys[queue] = QueueKeys(queue)
        return keys

    def _stats(self, queue: str) -> str:
        """This time window's counts of the queue (``flowline status`` reads the last minute)."""
        return self._k(queue).stats(int(self.clock.time()) // STATS_BUCKET)

    async def close(self) -> None:
        await self.redis.aclose()

    async def setup(self, queue: str) -> None:
        for stream in self._k(queue).streams:
            try:
                await self.redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    async def enqueue(self, queue: str, rows: Sequence[Planned], now_ms: int) -> int:
        if self.wait_replicas:
            return await self._enqueue_replicated(queue, rows, now_ms)
        added = 0
        for grouped, keys, args in enqueue_calls(queue, rows, now_ms):
            script = self.scripts.enqueue_grouped if grouped else self.scripts.enqueue
            added += int(await script(keys=keys, args=args))
        return added

    async def _enqueue_replicated(self, queue: str, rows: Sequence[Planned], now_ms: int) -> int:
        # WAIT counts the replicas that have every write of its own connection: the calls and
        # the WAIT go down one pipeline, so one connection. EVALSHA by hand: a Script in a
        # pipeline costs a SCRIPT EXISTS round trip per pipeline.
        calls = enqueue_calls(queue, rows, now_ms)
        for attempt in (1, 2):
            pipe = self.redis.pipeline(transaction=False)
            for grouped, keys, args in calls:
                script = self.scripts.enqueue_grouped if grouped else self.scripts.enqueue
                pipe.evalsha(script.sha, len(keys), *keys, *args)
            pipe.execute_command("WAIT", self.wait_replicas, WAIT_TIMEOUT_MS)
            try:
                *added, acked = await pipe.execute()
                break
            except NoScriptError:
                # A new primary (Sentinel promoted a replica) has no scripts cached: load
                # them and send again; ENQUEUE is idempotent, so a call that ran is a no-op.
                if attempt == 2:
                    raise
                for one in (self.scripts.enqueue, self.scripts.enqueue_grouped):
                    await self.redis.script_load(one.script)
        if int(acked) < self.wait_replicas:
            raise NotReplicated(
                f"{len(rows)} jobs of queue {queue!r} reached {acked} of "
                f"{self.wait_replicas} replicas within {WAIT_TIMEOUT_MS} ms"
            )
        return sum(int(a) for a in added)

    async def read(self, queue: str, consumer: str, count: int, block: float) -> list[Running]:
        if await self._paused(queue):
            await self.clock.sleep(min(block, PAUSED_POLL))  # a resume is seen this soon
            return []
        # Urgent first: XREADGROUP answers streams in the order given.
        streams: Any = dict.fromkeys(self._k(queue).streams, ">")
        try:
            reply: Any = await self.redis.xreadgroup(
                # BLOCK 0 would wait forever: no block is a read that does not wait.
                GROUP,
                consumer,
                streams,
                count=count,
                block=min(int(block * 1000), int(PAUSED_POLL * 1000)) or None,
            )
        except ResponseError as exc:
            if "NOGROUP" in str(exc) or "UNBLOCKED" in str(exc):
                # Someone deleted the queue (FLUSHALL in tests, or an operator): recreate it.
                await self.setup(queue)
                return []
            raise
        # COUNT applies per stream, so both streams together may give more than `count`.
        return [
            from_entry(raw.decode(), entry, fields)
            for raw, entries in reply or ()
            for entry, fields in entries
        ]

    async def _paused(self, queue: str) -> bool:
        """The queue's pause flag, read again once it is `PAUSED_POLL` old: a worker sees a
        pause made elsewhere within that, for four EXISTS a second instead of one per read."""
        now = self.clock.monotonic()
        cached = self._pause_seen.get(queue)
        if cached is not None and now - cached[1] < PAUSED_POLL:
            return cached[0]
        paused = bool(await self.redis.exists(self._k(queue).paused))
        seen = self._pause_seen.get(queue)
        if seen is None or seen[1] <= now:  # a pause or resume made meanwhile here wins
            self._pause_seen[queue] = (paused, now)
        return paused

    async def pause(self, queue: str) -> bool:
        changed = bool(await self.redis.set(self._k(queue).paused, "1", nx=True))
        # After the write, so a read that was in flight cannot cache the state before it.
        self._pause_seen[queue] = (True, self.clock.monotonic())
        return changed

    async def resume(self, queue: str) -> bool:
        changed = bool(await self.redis.delete(self._k(queue).paused))
        self._pause_seen[queue] = (False, self.clock.monotonic())
        return changed

    async def paused(self, queue: str, *, within: float = 0.0) -> bool:
        if within > 0:
            return await self._paused(queue)
        return bool(await self.redis.exists(self._k(queue).paused))

    async def complete(
        self, queue: str, done: Sequence[tuple[Running, str]], now_ms: int, keep: int
    ) -> None:
        by_stream: dict[tuple[str, bool], list[Any]] = {}
        for job, encoded in done:
            if job.group:  # its group's slot is handed on in the same call
                row: tuple[Any, ...] = (job.entry, job.job_id, encoded, job.group)
            else:
                row = (job.entry, job.job_id, encoded)
            by_stream.setdefault((job.stream, bool(job.group)), []).extend(row)
        keys = self._k(queue)
        stats = self._stats(queue)
        for (stream, grouped), rows in by_stream.items():
            script = self.scripts.complete_grouped if grouped else self.scripts.complete
            await script(keys=[stream, stats], args=[GROUP, keys.job_prefix, now_ms, keep, *rows])

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
        keys = self._k(queue)
        reply = await self.scripts.fail(
            keys=[job.stream, keys.delayed, keys.dead, keys.cancels, self._stats(queue)],
            args=[
                GROUP,
                keys.job_prefix,
                now_ms,
                keep,
                job.entry,
                job.job_id,
                job.topic,
                job.data,
                job.attempt + 1,
                due_ms,
                error,
                record,
                consumer,
                job.born,
                job.trace,
                job.group,
            ],
        )
        if reply == b"lost":
            return LOST
        if reply == b"cancelled":
            return CANCELLED
        return reply.decode() if isinstance(reply, bytes) else str(reply or "")

    async def promote(self, queue: str, now_ms: int, limit: int) -> tuple[int, int]:
        keys = self._k(queue)
        moved, next_due = await self.scripts.promote(
            keys=[keys.jobs, keys.delayed], args=[keys.job_prefix, now_ms, limit]
        )
        return int(moved), int(float(next_due))

    async def reclaim(self, queue: str, consumer: str, idle_ms: int, count: int) -> list[Running]:
        keys = self._k(queue)
        out: list[Running] = []
        for stream in keys.streams:
            if len(out) >= count:
                break
            rows = await self.scripts.reclaim(
                keys=[stream, keys.paused],
                args=[GROUP, consumer, idle_ms, count - len(out), keys.job_prefix],
            )
            out += [from_reclaim(stream, row) for row in rows]
        return out

    async def heartbeat(self, queue: str, consumer: str, jobs: Sequence[Running]) -> list[Running]:
        by_stream: dict[str, dict[str, Running]] = {}
        for job in jobs:
            by_stream.setdefault(job.stream, {})[job.entry] = job
        lost: list[Running] = []
        for stream, held in by_stream.items():
            entries = list(held)
            for i in range(0, len(entries), 500):
                gone = await self.scripts.heartbeat(
                    keys=[stream], args=[GROUP, consumer, *entries[i : i + 500]]
                )
                lost += [held[raw.decode()] for raw in gone]
        return lost

    async def release(self, queue: str, consumer: str, jobs: Sequence[Running]) -> None:
        by_stream: dict[str, list[Running]] = {}
        for job in jobs:
            by_stream.setdefault(job.stream, []).append(job)
        prefix = self._k(queue).job_prefix
        for stream, held in by_stream.items():
            await self.scripts.release(
                keys=[stream], args=[GROUP, prefix, *flat(release_args(j) for j in held)]
            )

    async def cancel(self, queue: str, job_id: str, now_ms: int, keep: int) -> Cancellation:
        keys = self._k(queue)
        outcome, detail, topic = await self.scripts.cancel(
            keys=[keys.job(job_id), keys.delayed, keys.cancels, *keys.streams],
            args=[GROUP, job_id, now_ms, keep],
        )
        return Cancellation(outcome.decode(), detail.decode(), topic.decode())

    async def cancel_requested(self, queue: str, job_ids: Sequence[str]) -> set[str]:
        if not job_ids:
            return set()
        scores = await self.redis.zmscore(self._k(queue).cancels, list(job_ids))
        return {job_id for job_id, score in zip(job_ids, scores, strict=True) if score is not None}

    async def settle_cancelled(
        self, queue: str, job: Running, *, consumer: str, now_ms: int, keep: int
    ) -> bool:
        keys = self._k(queue)
        done = await self.scripts.cancelled(
            keys=[job.stream, keys.cancels],
            args=[GROUP, keys.job_prefix, now_ms, keep, consumer, job.entry, job.job_id, job.group],
        )
        return bool(done)

    async def progress(self, queue: str, job_id: str, percent: float) -> None:
        await self.scripts.note(keys=[self._k(queue).job(job_id)], args=["progress", percent])

    async def take(
        self, queue: str, topic: str, wanted: int, limit: int, period: float, token: str
    ) -> tuple[int, float]:
        granted, wait_ms = await self.scripts.take(
            keys=[self._k(queue).rate(topic)],
            args=[max(1, int(period * 1000)), limit, wanted, token],
        )
        return int(granted), int(wait_ms) / 1000

    async def give_back(self, queue: str, topic: str, token: str, granted: int, used: int) -> None:
        if used < granted:
            unused = [f"{token}{i}" for i in range(used + 1, granted + 1)]
            await self.redis.zrem(self._k(queue).rate(topic), *unused)

    async def defer(self, queue: str, consumer: str, jobs: Sequence[Running], due_ms: int) -> None:
        keys = self._k(queue)
        by_stream: dict[str, list[Running]] = {}
        for job in jobs:
            by_stream.setdefault(job.stream, []).append(job)
        for stream, held in by_stream.items():
            await self.scripts.defer(
                keys=[stream, keys.delayed],
                args=[
                    GROUP,
                    keys.job_prefix,
                    due_ms,
                    consumer,
                    *flat(release_args(j) for j in held),
                ],
            )

    async def clean(self, queue: str, state: str, before_ms: int) -> int:
        removed = 0
        batch: list[Any] = []
        # SCAN walks the keyspace a slice at a time: Redis serves other clients in between.
        async for key in self.redis.scan_iter(match=self._k(queue).job_prefix + "*", count=1000):
            batch.append(key)
            if len(batch) == CLEAN_BATCH:
                removed += int(await self.scripts.clean(keys=batch, args=[state, before_ms]))
                batch = []
        if batch:
            removed += int(await self.scripts.clean(keys=batch, args=[state, before_ms]))
        return removed

    async def emitted(self, queue: str, job_id: str, n: int) -> int | None:
        done = await self.redis.hget(self._k(queue).job(job_id), f"emitted:{n}")
        return None if done is None else int(done)

    async def mark_emitted(self, queue: str, job_id: str, n: int, sequence: int) -> None:
        await self.scripts.note(keys=[self._k(queue).job(job_id)], args=[f"emitted:{n}", sequence])

    async def forget(self, queues: Sequence[str], source: str, floor: int) -> None:
        for queue in queues:
            await self.redis.zremrangebyscore(self._k(queue).marks(source), "-inf", floor)

    async def fan_in_totals(self, pipeline: str, totals: dict[str, int], keep: int) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for origin, total in totals.items():
            meta, _ = fan_in_keys(pipeline, origin)
            pipe.hsetnx(meta, "total", total)
            pipe.expire(meta, keep)
        await pipe.execute()

    async def fan_in_finished(
        self, pipeline: str, job_ids: Sequence[str], keep: int
    ) -> list[tuple[str, int]]:
        origins = [fanin.origin_of(job_id) for job_id in job_ids]
        if not origins:
            return []
        calls = [
            (list(fan_in_keys(pipeline, origin)), [job_id, keep])
            for origin, job_id in zip(origins, job_ids, strict=True)
        ]
        results = await run_scripts(self.redis, self.scripts.fan_in, calls)
        return [(o, int(t)) for o, t in zip(origins, results, strict=True) if int(t)]

    async def bury(self, pipeline: str, record: str) -> str:
        entry = await self.redis.xadd(stream_dead_letters(pipeline).dead, {"record": record})
        return entry.decode() if isinstance(entry, bytes) else str(entry)

    async def dead_letters(self, pipeline: Pipeline, limit: int) -> list[DeadLetter]:
        out = []
        for store in deadletters.stores(pipeline):
            entries: Any = await self.redis.xrange(store, count=limit)
            for entry_id, fields in entries:
                out.append(
                    deadletters.DeadLetter(entry_id.decode(), store, json.loads(fields[b"record"]))
                )
        return out

    async def job(self, pipeline: Pipeline, queue: str, job_id: str) -> JobInfo | None:
        found = await jobs.find(self.redis, {queue: jobs.subjects_of(pipeline)}, job_id)
        return found[0] if found else None

    async def counts(self, queue: str) -> QueueCounts:
        r, keys = self.redis, self._k(queue)
        in_streams = running = 0
        for stream in keys.streams:
            in_streams += int(await r.xlen(stream))
            groups = await r.xinfo_groups(stream) if await r.exists(stream) else []
            running += sum(int(g["pending"]) for g in groups if g["name"] == GROUP.encode())
        delayed = int(await r.zcard(keys.delayed))
        dead = int(await r.xlen(keys.dead))
        # Jobs waiting in their group's list for a slot are ready too.
        waiting = int(await r.get(keys.waiting) or 0)
        return QueueCounts(in_streams - running + waiting, running, delayed, dead)

    async def cron_mark(self, pipeline: str, topic: str) -> int | None:
        last = await self.redis.get(cron_key(pipeline, topic))
        return None if last is None else int(last)

    async def raise_cron_mark(self, pipeline: str, topic: str, tick_ms: int) -> None:
        await self.scripts.raise_mark(keys=[cron_key(pipeline, topic)], args=[tick_ms])

    async def lease_tick(self, pipeline: str, topic: str, tick_ms: int, ms: int) -> bool:
        lease = f"{cron_key(pipeline, topic)}:lease:{tick_ms}"
        return bool(await self.redis.set(lease, "1", nx=True, px=ms))

    async def drop_tick_lease(self, pipeline: str, topic: str, tick_ms: int) -> None:
        await self.redis.delete(f"{cron_key(pipeline, topic)}:lease:{tick_ms}")
