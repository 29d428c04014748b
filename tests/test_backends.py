"""The backend contracts (`flowline.backends.base`): every test runs on Redis + JetStream (real
servers) and on the in-memory store and source, and expects the same answers of both."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import nats
import pytest

from flowline import Job, Queue, Route, Stream
from flowline.backends.base import CANCELLED, Cancellation, JobStore, Running, StreamSource
from flowline.backends.jetstream import JetStreamSource
from flowline.backends.memory import MemorySource, MemoryStore
from flowline.backends.redis import RedisStore
from flowline.runtime.connections import connect_redis
from flowline.runtime.enqueue import plan
from flowline.runtime.queues import QueueCounts

BACKENDS = ["servers", "memory"]
pipeline = Stream("contract", json.loads) >> Route(lambda e: []) >> Queue("contract")
pipeline.dequeue("work", lambda job: None)
Q = "contract"
NOW = int(time.time() * 1000)  # the calls take their times as arguments: about now


# The Redis store runs the contract on a three-primary Redis Cluster too: each of its script
# calls must name keys of one slot, which redis-py's cluster client checks before sending.
@pytest.fixture(params=["servers", "cluster", "memory"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[JobStore]:
    if request.param == "memory":
        yield MemoryStore()
        return
    settings = request.getfixturevalue("settings")
    if request.param == "cluster":
        cluster = request.getfixturevalue("redis_cluster")
        settings = dataclasses.replace(settings, redis_url=cluster.url)
    real = RedisStore(await connect_redis(settings))
    await real.redis.flushall()
    yield real
    await real.close()


@pytest.fixture(params=BACKENDS)
async def source(request: pytest.FixtureRequest) -> AsyncIterator[StreamSource]:
    if request.param == "memory":
        yield MemorySource()
        return
    servers = request.getfixturevalue("servers")
    nc = await nats.connect(servers.nats_url)
    js = nc.jetstream()
    for info in await js.streams_info():
        await js.delete_stream(info.config.name)

    async def connect() -> Any:
        return js

    yield JetStreamSource(connect)
    await nc.close()


def rows(*ids: str, delay: float | None = None, priority: int = 0) -> list[Any]:
    jobs = [Job("work", {"n": i}, delay=delay, key=i, priority=priority) for i in ids]
    return plan(pipeline, jobs, "base", "direct", "enqueue", now=NOW / 1000)


async def read(store: JobStore, consumer: str = "c1", count: int = 10) -> list[Running]:
    return await store.read(Q, consumer, count, 0.05)


class TestJobs:
    async def test_an_id_is_enqueued_once(self, store: JobStore) -> None:
        await store.setup(Q)
        assert await store.enqueue(Q, rows("a", "b"), NOW) == 2
        assert await store.enqueue(Q, rows("a", "b", "c"), NOW) == 1
        assert sorted(j.job_id for j in await read(store)) == ["key:a", "key:b", "key:c"]
        assert await read(store) == []

    async def test_priority_jobs_are_read_first(self, store: JobStore) -> None:
        """`count` applies to each of the two ready streams, as XREADGROUP's COUNT does."""
        await store.setup(Q)
        await store.enqueue(Q, rows("low1", "low2"), NOW)
        await store.enqueue(Q, rows("high1", "high2", priority=5), NOW)
        got = [j.job_id for j in await read(store, count=1)]
        assert got == ["key:high1", "key:low1"]
        assert [j.job_id for j in await read(store, count=1)] == ["key:high2", "key:low2"]

    async def test_a_read_job_carries_its_fields(self, store: JobStore) -> None:
        await store.setup(Q)
        await store.enqueue(Q, rows("a"), NOW)
        [job] = await read(store)
        assert (job.topic, json.loads(job.data), job.attempt, job.born) == (
            "work",
            {"n": "a"},
            1,
            NOW,
        )
        info = await store.job(pipeline, Q, "key:a")
        assert info is not None
        assert (info.state, info.running_on) == ("running", "c1")
        assert await store.counts(Q) == type(await store.counts(Q))(0, 1, 0, 0)

    async def test_completing_keeps_the_result(self, store: JobStore) -> None:
        await store.setup(Q)
        await store.enqueue(Q, rows("a"), NOW)
        [job] = await read(store)
        await store.complete(Q, [(job, '{"ok":1}')], NOW + 5, 60)
        await store.complete(Q, [(job, '{"ok":1}')], NOW + 5, 60)  # twice is harmless
        info = await store.job(pipeline, Q, "key:a")
        assert info is not None
        assert (info.state, info.result, info.progress, info.finished) == (
            "completed",
            {"ok": 1},
            100.0,
            (NOW + 5) / 1000,
        )
        assert await read(store) == []
        assert await store.enqueue(Q, rows("a"), NOW) == 0  # its record still dedups

    async def test_a_failure_retried_now_is_read_again_with_the_next_attempt(
        self, store: JobStore
    ) -> None:
        await store.setup(Q)
        await store.enqueue(Q, rows("a"), NOW)
        [job] = await read(store)
        got = await store.fail(
            Q, job, consumer="c1", now_ms=NOW, keep=60, due_ms=0, error="boom", record=""
        )
        assert got == ""
        [again] = await read(store)
        assert (again.job_id, again.attempt, again.born) == ("key:a", 2, NOW)
        info = await store.job(pipeline, Q, "key:a")
        assert info is not None
        assert (info.attempt, info.error) == (2, "boom")

    async def test_a_delayed_retry_waits_until_due(self, store: JobStore) -> None:
        await store.setup(Q)
        await store.enqueue(Q, rows("a"), NOW)
        [job] = await read(store)
        due = NOW + 300_000
        args = {"consumer": "c1", "now_ms": NOW, "keep": 60, "error": "later", "record": ""}
        assert await store.fail(Q, job, due_ms=due, **args) == ""
        info = await store.job(pipeline, Q, "key:a")
        assert info is not None
        assert (info.state, info.due) == ("retrying", due / 1000)
        assert await store.promote(Q, due - 1, 500) == (0, due)
        assert await store.promote(Q, due, 500) == (1, -1)
        [again] = await read(store)
        assert again.attempt == 2

    async def test_a_last_failure_is_a_dead_letter(self, store: JobStore) -> None:
        await store.setup(Q)
        await store.enqueue(Q, rows("a"), NOW)
        [job] = await read(store)
        record = json.dumps({"kind": "job", "job_id": "key:a", "queue": Q, "topic": "work"})
        dead = await store.fail(
            Q, job, consumer="c1", now_ms=NOW, keep=60, due_ms=-1, error="no", record=record
        )
        assert dead
        [letter] = await store.dead_letters(pipeline, 10)
        assert (letter.id, letter.store, letter.record["job_id"]) == (
            dead,
            "flowline:{contract}:dead",
            "key:a",
        )
        info = await store.job(pipeline, Q, "key:a")
        assert info is not None
        assert (info.state, info.dead_letter) == ("failed", dead)
        assert (await store.counts(Q)).dead == 1

    async def test_only_the_holder_settles_a_job(self, store: JobStore) -> None:
        await store.setup(Q)
        await store.enqueue(Q, rows("a"), NOW)
        [job] = await read(store)
        args = {"now_ms": NOW, "keep": 60, "due_ms": 0, "error": "x", "record": ""}
        assert await store.fail(Q, job, consumer="c2", **args) is None
        assert await store.heartbeat(Q, "c2", [job]) == [job]
        assert await store.heartbeat(Q, "c1", [job]) == []
        info = await store.job(pipeline, Q, "key:a")
        assert info is not None
        assert (info.state, info.attempt) == ("running", 1)

    async def test_released_jobs_are_readable_at_once(self, store: JobStore) -> None:
        await store.setup(Q)
        await store.enqueue(Q, rows("a", "b"), NOW)
        held = await read(store)
        await store.release(Q, "c1", held)
        again = await read(store, "c2")
        assert sorted((j.job_id, j.attempt) for j in again) == [("key:a", 1), ("key:b", 1)]

    async def test_delayed_jobs_become_ready_when_due(self, store: JobStore) -> None:
        await store.setup(Q)
        await store.enqueue(Q, rows("a", delay=10), NOW)
        counts = await store.counts(Q)
        assert (counts.ready, counts.delayed) == (0, 1)
        info = await store.job(pipeline, Q, "key:a")
        assert info is not None
        assert (info.state, info.due) == ("delayed", NOW / 1000 + 10)
        assert await store.promote(Q, NOW + 10_000, 500) == (1, -1)
        [job] = await read(store)
        assert (job.job_id, job.attempt) == ("key:a", 1)

    async def test_promotion_in_batches_moves_each_due_job_once(self, store: JobStore) -> None:
        """Batches of `limit` take the earliest due first (ties too), each job exactly once,
        skip a cancelled one and leave the jobs not yet due."""
        await store.setup(Q)
        await store.enqueue(Q, rows(*"abcde", delay=1), NOW)
        await store.enqueue(Q, rows("later", delay=5), NOW)
        await store.enqueue(Q, rows("soon", delay=0.5), NOW)
        assert (await store.cancel(Q, "key:c", NOW, 60)).detail == "delayed"
        now = NOW + 1000
        assert await store.promote(Q, now, 2) == (2, NOW + 1000)  # soon, then a
        assert await store.promote(Q, now, 2) == (2, NOW + 1000)  # b, d
        assert await store.promote(Q, now, 2) == (1, NOW + 5000)  # e
        assert await store.promote(Q, now, 2) == (0, NOW + 5000)
        ready = await read(store)
        assert sorted(j.job_id for j in ready) == ["key:a", "key:b", "key:d", "key:e", "key:soon"]
        assert (await store.counts(Q)).delayed == 1
        cancelled = await store.job(pipeline, Q, "key:c")
        assert cancelled is not None
        assert cancelled.state == "cancelled"
        assert await store.promote(Q, NOW + 5000, 2) == (1, -1)
        assert [j.job_id for j in await read(store)] == ["key:later"]

    async def test_a_paused_queue_gives_no_jobs_and_still_takes_them(self, store: JobStore) -> None:
        await store.setup(Q)
        await store.enqueue(Q, rows("a"), NOW)
        assert await store.pause(Q)
        assert not await store.pause(Q)  # already paused
        assert await store.paused(Q)
        assert await store.enqueue(Q, rows("b", "c", priority=1), NOW) == 2
        assert await read(store) == []
        assert (await store.counts(Q)).ready == 3
        assert await store.resume(Q)
        assert not await store.resume(Q)
        assert sorted(j.job_id for j in await read(store)) == ["key:a", "key:b", "key:c"]

    async def test_progress_and_emit_marks_live_on_the_record(self, store: JobStore) -> None:
        await store.setup(Q)
        await store.enqueue(Q, rows("a"), NOW)
        await store.progress(Q, "key:a", 40)
        assert await store.emitted(Q, "key:a", 0) is None
        await store.mark_emitted(Q, "key:a", 0, 17)
        assert await store.emitted(Q, "key:a", 0) == 17
        info = await store.job(pipeline, Q, "key:a")
        assert info is not None
        assert info.progress == 40.0

    async def test_progress_after_the_record_went_leaves_none(self, store: JobStore) -> None:
        """A late progress report or emit mark (after completion with `keep_completed=0`)
        does not make a record with no expiry."""
        await store.setup(Q)
        await store.enqueue(Q, rows("a"), NOW)
        [job] = await read(store)
        await store.complete(Q, [(job, "null")], NOW + 5, 0)
        await store.progress(Q, "key:a", 40)
        await store.mark_emitted(Q, "key:a", 0, 17)
        assert await store.job(pipeline, Q, "key:a") is None
        assert await store.emitted(Q, "key:a", 0) is None


def routed(seq: int, n: int = 2, source: str = "contract") -> list[Any]:
    """The rows of stream message `seq` of `source`, routed into `n` jobs (one keyed)."""
    jobs = [Job("work", {"n": i}) for i in range(n - 1)] + [Job("work", {}, key=f"k{seq}")]
    return plan(
        pipeline, jobs, f"{source}:{seq}", "stream", "route", now=NOW / 1000,
        source=source, seq=seq,
    )  # fmt: skip


class TestDedupMarks:
    """A routed job is a duplicate while its message is unacked, even with no record left."""

    async def completed(self, store: JobStore, keep: int) -> None:
        for job in await read(store):
            await store.complete(Q, [(job, "null")], NOW + 5, keep)

    async def test_keep_zero_leaves_no_record_and_no_result(self, store: JobStore) -> None:
        await store.setup(Q)
        assert await store.enqueue(Q, routed(1), NOW) == 2
        await self.completed(store, 0)
        assert await store.job(pipeline, Q, "contract:1:0") is None
        assert await store.job(pipeline, Q, "key:k1") is None
        assert await store.counts(Q) == QueueCounts(0, 0, 0, 0)

    async def test_a_redelivered_message_is_skipped_until_its_marks_are_forgotten(
        self, store: JobStore
    ) -> None:
        await store.setup(Q)
        assert await store.enqueue(Q, routed(1) + routed(2), NOW) == 4
        await self.completed(store, 0)
        # The message redelivered (its ack lost): every job of it is known, keyed one too.
        assert await store.enqueue(Q, routed(1) + routed(2), NOW) == 0
        await store.forget([Q], "contract", 1)  # acked up to 1: only message 2 may come again
        assert await store.enqueue(Q, routed(2), NOW) == 0
        assert await store.enqueue(Q, routed(1), NOW) == 2  # never happens: 1 is acked
        assert await read(store) != []

    async def test_a_message_cut_off_between_its_calls_gets_the_rest_written(
        self, store: JobStore
    ) -> None:
        """A message's jobs of one queue may take several calls (priority and grouped jobs
        go by calls of their own): a process that died between them wrote only some, and
        the redelivery writes the rest."""
        await store.setup(Q)
        jobs = [Job("work", {"n": 0}), Job("work", {"n": 1}, priority=5)]
        both = plan(
            pipeline, jobs, "contract:7", "stream", "r", now=NOW / 1000, source="contract", seq=7
        )
        assert await store.enqueue(Q, both[:1], NOW) == 1  # the first call only
        await self.completed(store, 0)
        assert await store.enqueue(Q, both, NOW) == 1
        assert [j.job_id for j in await read(store)] == ["contract:7:1"]

    async def test_marks_are_per_stream_and_per_queue(self, store: JobStore) -> None:
        await store.setup(Q)
        await store.setup("other")
        assert await store.enqueue(Q, routed(1, source="a"), NOW) == 2
        await self.completed(store, 0)
        await store.forget([Q], "b", 10)  # another stream's floor
        await store.forget(["other"], "a", 10)  # another queue's marks
        assert await store.enqueue(Q, routed(1, source="a"), NOW) == 0

    async def test_a_record_still_dedups_without_a_source(self, store: JobStore) -> None:
        """Direct and keyed enqueues (no message) are duplicates while the record exists."""
        await store.setup(Q)
        assert await store.enqueue(Q, rows("a"), NOW) == 1
        assert await store.enqueue(Q, rows("a"), NOW) == 0
        await self.completed(store, 0)
        assert await store.enqueue(Q, rows("a"), NOW) == 1


class TestCancel:
    """`cancel`: waiting jobs are removed; held ones get a request their holder acts on."""

    async def state(self, store: JobStore, job_id: str) -> str | None:
        info = await store.job(pipeline, Q, job_id)
        return None if info is None else info.state

    async def test_a_ready_job_is_removed_and_never_read(self, store: JobStore) -> None:
        await store.setup(Q)
        await store.enqueue(Q, rows("a", "b"), NOW)
        assert await store.cancel(Q, "key:a", NOW + 1, 60) == Cancellation(
            "cancelled", "queued", "work"
        )
        assert [j.job_id for j in await read(store)] == ["key:b"]
        assert await self.state(store, "key:a") == "cancelled"
        assert await store.cancel(Q, "key:a", NOW + 2, 60) == Cancellation(
            "finished", "cancelled", "work"
        )
        assert await store.enqueue(Q, rows("a"), NOW) == 0  # its record still dedups

    async def test_delayed_and_retrying_jobs_are_removed(self, store: JobStore) -> None:
        await store.setup(Q)
        await store.enqueue(Q, rows("later", delay=60), NOW)
        await store.enqueue(Q, rows("again"), NOW)
        [job] = await read(store)
        args: dict[str, Any] = {"consumer": "c1", "now_ms": NOW, "keep": 60, "record": ""}
        await store.fail(Q, job, due_ms=NOW + 60_000, error="boom", **args)
        assert (await store.cancel(Q, "key:later", NOW, 60)).detail == "delayed"
        assert (await store.cancel(Q, "key:again", NOW, 60)).detail == "retrying"
        assert await store.promote(Q, NOW + 120_000, 10) == (0, -1)
        assert await read(store) == []
        assert await store.counts(Q) == QueueCounts(0, 0, 0, 0)

    async def test_a_held_job_gets_a_request_its_holder_settles(self, store: JobStore) -> None:
        await store.setup(Q)
        await store.enqueue(Q, rows("a", "b"), NOW)
        a, _ = await read(store)
        assert await store.cancel_requested(Q, ["key:a", "key:b"]) == set()
        assert await store.cancel(Q, "key:a", NOW, 60) == Cancellation("cancelling", "c1", "work")
        assert await store.cancel_requested(Q, ["key:a", "key:b"]) == {"key:a"}
        assert await self.state(store, "key:a") == "running"
        # Only the holder settles it, once.
        assert not await store.settle_cancelled(Q, a, consumer="c2", now_ms=NOW, keep=60)
        assert await store.settle_cancelled(Q, a, consumer="c1", now_ms=NOW, keep=60)
        assert not await store.settle_cancelled(Q, a, consumer="c1", now_ms=NOW, keep=60)
        assert await self.state(store, "key:a") == "cancelled"
        assert await store.cancel_requested(Q, ["key:a"]) == set()
        assert await store.counts(Q) == QueueCounts(0, 1, 0, 0)

    async def test_a_failure_after_a_request_ends_cancelled(self, store: JobStore) -> None:
        """Neither retried nor dead-lettered, even when the holder missed the request."""
        await store.setup(Q)
        await store.enqueue(Q, rows("a", "b"), NOW)
        a, b = await read(store)
        await store.cancel(Q, "key:a", NOW, 60)
        await store.cancel(Q, "key:b", NOW, 60)
        args: dict[str, Any] = {"consumer": "c1", "now_ms": NOW, "keep": 60, "error": "boom"}
        assert await store.fail(Q, a, due_ms=0, record="", **args) == CANCELLED
        assert await store.fail(Q, b, due_ms=-1, record="{}", **args) == CANCELLED
        assert await read(store) == []
        assert await store.counts(Q) == QueueCounts(0, 0, 0, 0)
        assert await self.state(store, "key:b") == "cancelled"

    async def test_finished_and_unknown_jobs_are_left_alone(self, store: JobStore) -> None:
        await store.setup(Q)
        await store.enqueue(Q, rows("a"), NOW)
        [job] = await read(store)
        await store.complete(Q, [(job, "1")], NOW, 60)
        assert await store.cancel(Q, "key:a", NOW, 60) == Cancellation(
            "finished", "completed", "work"
        )
        assert await store.cancel(Q, "key:nope", NOW, 60) == Cancellation("unknown", "", "")
        assert await self.state(store, "key:a") == "completed"

    async def test_a_released_job_keeps_its_request(self, store: JobStore) -> None:
        """A job handed back on shutdown after a cancel was asked is cancelled by its next
        holder."""
        await store.setup(Q)
        await store.enqueue(Q, rows("a"), NOW)
        [job] = await read(store)
        await store.cancel(Q, "key:a", NOW, 60)
        await store.release(Q, "c1", [job])
        [again] = await read(store, "c2")
        assert await store.cancel_requested(Q, ["key:a"]) == {"key:a"}
        assert await store.settle_cancelled(Q, again, consumer="c2", now_ms=NOW, keep=1)


def grouped(group: str, *ids: str) -> list[Any]:
    jobs = [Job("work", {"n": i}, key=i, group=group) for i in ids]
    return plan(pipeline, jobs, "base", "direct", "enqueue", now=NOW / 1000)


class TestGroups:
    """`Job.group`: at most the queue's `group_limit` (here 1) of a group in the streams."""

    async def ids(self, store: JobStore, consumer: str = "c1") -> list[str]:
        return [j.job_id for j in await read(store, consumer)]

    async def test_a_group_waits_its_turn_and_others_pass(self, store: JobStore) -> None:
        await store.setup(Q)
        await store.enqueue(Q, grouped("A", "a1", "a2", "a3"), NOW)
        await store.enqueue(Q, grouped("B", "b1"), NOW)
        a1, b1 = await read(store)
        assert (a1.job_id, a1.group, b1.job_id) == ("key:a1", "A", "key:b1")
        assert await store.counts(Q) == QueueCounts(2, 2, 0, 0)  # a2 and a3 wait, ready
        info = await store.job(pipeline, Q, "key:a2")
        assert info is not None
        assert info.state == "queued"
        assert await read(store) == []
        await store.complete(Q, [(a1, "1")], NOW, 60)
        [a2] = await read(store)
        assert a2.job_id == "key:a2"
        args: dict[str, Any] = {"consumer": "c1", "now_ms": NOW, "keep": 60, "error": "x"}
        await store.fail(Q, a2, due_ms=-1, record="{}", **args)  # dead: the slot goes on
        assert await self.ids(store) == ["key:a3"]

    async def test_completing_twice_hands_on_one_slot(self, store: JobStore) -> None:
        await store.setup(Q)
        await store.enqueue(Q, grouped("A", "a1", "a2", "a3"), NOW)
        [a1] = await read(store)
        await store.complete(Q, [(a1, "1")], NOW, 60)
        await store.complete(Q, [(a1, "1")], NOW, 60)  # the first reply was lost
        assert await self.ids(store) == ["key:a2"]  # not a3 as well

    async def test_a_cancelled_waiting_job_never_runs(self, store: JobStore) -> None:
        await store.setup(Q)
        await store.enqueue(Q, grouped("A", "a1", "a2", "a3"), NOW)
        [a1] = await read(store)
        assert (await store.cancel(Q, "key:a2", NOW, 60)).outcome == "cancelled"
        await store.complete(Q, [(a1, "1")], NOW, 60)
        [a3] = await read(store)
        assert a3.job_id == "key:a3"
        assert await store.settle_cancelled(Q, a3, consumer="c1", now_ms=NOW, keep=60)
        await store.enqueue(Q, grouped("A", "a4"), NOW)
        assert await self.ids(store) == ["key:a4"]  # every slot came back

    async def test_a_delayed_retry_gives_its_slot_back_until_due(self, store: JobStore) -> None:
        await store.setup(Q)
        await store.enqueue(Q, grouped("A", "a1", "a2"), NOW)
        [a1] = await read(store)
        args: dict[str, Any] = {"consumer": "c1", "now_ms": NOW, "keep": 60, "record": ""}
        await store.fail(Q, a1, due_ms=NOW + 1000, error="later", **args)
        [a2] = await read(store)
        assert a2.job_id == "key:a2"
        assert await store.promote(Q, NOW + 1000, 10) == (1, -1)
        assert await read(store) == []  # due, but a2 holds the group's slot
        await store.complete(Q, [(a2, "1")], NOW, 60)
        [again] = await read(store)
        assert (again.job_id, again.attempt) == ("key:a1", 2)

    async def test_released_and_retried_jobs_keep_their_slot(self, store: JobStore) -> None:
        await store.setup(Q)
        await store.enqueue(Q, grouped("A", "a1", "a2"), NOW)
        [a1] = await read(store)
        await store.release(Q, "c1", [a1])
        [back] = await read(store, "c2")
        assert (back.job_id, back.group) == ("key:a1", "A")
        args: dict[str, Any] = {"consumer": "c2", "now_ms": NOW, "keep": 60, "record": ""}
        await store.fail(Q, back, due_ms=0, error="now", **args)
        [again] = await read(store, "c2")
        assert (again.job_id, again.attempt, again.group) == ("key:a1", 2, "A")


class TestRates:
    async def test_a_window_grants_up_to_its_limit_and_says_when_more_frees(
        self, store: JobStore
    ) -> None:
        assert await store.take(Q, "", 3, 5, 1.0, "a:") == (3, 0.0)
        granted, wait = await store.take(Q, "", 3, 5, 1.0, "b:")
        assert granted == 2
        assert 0 < wait <= 1.0
        assert (await store.take(Q, "", 1, 5, 1.0, "c:"))[0] == 0
        await store.give_back(Q, "", "b:", 2, 1)  # one of b's was not used
        assert (await store.take(Q, "", 5, 5, 1.0, "d:"))[0] == 1
        assert (await store.take(Q, "work", 5, 2, 1.0, "e:"))[0] == 2  # a topic's own window

    async def test_deferred_jobs_wait_delayed_with_their_attempt(self, store: JobStore) -> None:
        await store.setup(Q)
        await store.enqueue(Q, rows("a", "b"), NOW)
        a, b = await read(store)
        await store.defer(Q, "c2", [a], NOW + 5000)  # not c2's: left alone
        await store.defer(Q, "c1", [a, b], NOW + 5000)
        assert await store.counts(Q) == QueueCounts(0, 0, 2, 0)
        info = await store.job(pipeline, Q, "key:a")
        assert info is not None
        assert (info.state, info.attempt, info.due) == ("delayed", 1, (NOW + 5000) / 1000)
        assert await store.promote(Q, NOW + 5000, 10) == (2, -1)
        again = await read(store)
        assert sorted((j.job_id, j.attempt, j.born) for j in again) == [
            ("key:a", 1, NOW),
            ("key:b", 1, NOW),
        ]


class TestClean:
    async def test_only_finished_records_of_the_state_and_age_go(self, store: JobStore) -> None:
        await store.setup(Q)
        await store.enqueue(Q, rows("old", "new", "bad", "held", "waiting"), NOW)
        old, new, bad, _held = await read(store, count=4)
        await store.complete(Q, [(old, "1")], NOW + 10, 3600)
        await store.complete(Q, [(new, "1")], NOW + 20, 3600)
        args: dict[str, Any] = {"consumer": "c1", "keep": 3600, "error": "x", "record": "{}"}
        await store.fail(Q, bad, now_ms=NOW + 10, due_ms=-1, **args)
        assert await store.clean(Q, "completed", NOW + 15) == 1
        assert await store.job(pipeline, Q, "key:old") is None
        for job_id in ("key:new", "key:bad", "key:held", "key:waiting"):
            assert await store.job(pipeline, Q, job_id) is not None, job_id
        assert await store.clean(Q, "failed", NOW + 15) == 1
        assert await store.clean(Q, "completed", NOW + 15) == 0
        assert await store.enqueue(Q, rows("old"), NOW) == 1  # a deleted id is new again


class TestShared:
    async def test_fan_in_completes_a_message_once(self, store: JobStore) -> None:
        await store.fan_in_totals("p", {"s:1": 2}, 60)
        await store.fan_in_totals("p", {"s:1": 5}, 60)  # a redelivery does not change it
        assert await store.fan_in_finished("p", ["s:1:0", "s:1:0"], 60) == []
        assert await store.fan_in_finished("p", ["s:1:1"], 60) == [("s:1", 2)]
        assert await store.fan_in_finished("p", ["s:1:1"], 60) == []
        assert await store.fan_in_finished("p", ["s:9:0"], 60) == []  # never registered

    async def test_a_cron_mark_only_goes_up(self, store: JobStore) -> None:
        assert await store.cron_mark("p", "tick") is None
        await store.raise_cron_mark("p", "tick", 2000)
        await store.raise_cron_mark("p", "tick", 1000)
        assert await store.cron_mark("p", "tick") == 2000

    async def test_one_process_holds_a_tick_lease(self, store: JobStore) -> None:
        assert await store.lease_tick("p", "tick", 1000, 30_000)
        assert not await store.lease_tick("p", "tick", 1000, 30_000)
        assert await store.lease_tick("p", "tick", 2000, 30_000)
        await store.drop_tick_lease("p", "tick", 1000)
        assert await store.lease_tick("p", "tick", 1000, 30_000)

    async def test_buried_messages_are_the_stream_sides_dead_letters(self, store: JobStore) -> None:
        first = await store.bury(pipeline.name, json.dumps({"kind": "message", "sequence": 1}))
        await store.bury(pipeline.name, json.dumps({"kind": "message", "sequence": 2}))
        letters = await store.dead_letters(pipeline, 10)
        assert [(x.kind, x.record["sequence"]) for x in letters] == [("message", 1), ("message", 2)]
        assert letters[0].id == first
        assert letters[0].store == f"flowline:{{stream:{pipeline.name}}}:dead"


class TestStreams:
    async def test_sequences_count_up_and_message_ids_dedup(self, source: StreamSource) -> None:
        assert await source.ensure("contract") == "contract"
        assert await source.publish("contract", b"1") == 1
        assert await source.publish("contract", b"2", {"Nats-Msg-Id": "m"}) == 2
        assert await source.publish("contract", b"2", {"Nats-Msg-Id": "m"}) == 2
        assert await source.publish("contract", b"3") == 3

    async def test_a_consumer_delivers_until_acked(self, source: StreamSource) -> None:
        name = await source.ensure("contract")
        consumer = await source.consumer(name, "contract", "c", ack_wait=30, max_ack_pending=1000)
        for n in (b"a", b"b"):
            await source.publish("contract", n)
        msgs = await consumer.fetch(10, timeout=1)
        assert [(m.data, m.metadata.sequence.stream, m.metadata.num_delivered) for m in msgs] == [
            (b"a", 1, 1),
            (b"b", 2, 1),
        ]
        await msgs[0].ack()
        await msgs[1].nak(delay=0)
        [again] = await consumer.fetch(10, timeout=1)
        assert (again.data, again.metadata.num_delivered) == (b"b", 2)
        await again.term()
        with pytest.raises(TimeoutError):
            await consumer.fetch(10, timeout=0.2)

    async def test_the_ack_floor_is_below_the_first_unsettled_message(
        self, source: StreamSource
    ) -> None:
        name = await source.ensure("contract")
        consumer = await source.consumer(name, "contract", "c", ack_wait=30, max_ack_pending=1000)
        assert await source.ack_floor(name, "c") == 0
        for n in range(4):
            await source.publish("contract", b"%d" % n)
        one, two, three, four = await consumer.fetch(10, timeout=1)
        await one.ack()
        await three.ack()
        await four.term()
        await wait_for_floor(source, name, 1)
        await two.nak(delay=0)
        [again] = await consumer.fetch(10, timeout=1)
        await wait_for_floor(source, name, 1)  # handed back is not settled
        await again.ack()
        await wait_for_floor(source, name, 4)

    async def test_each_durable_gets_every_message(self, source: StreamSource) -> None:
        name = await source.ensure("contract")
        await source.publish("contract", b"x")
        for durable in ("one", "two"):
            c = await source.consumer(name, "contract", durable, ack_wait=30, max_ack_pending=10)
            [msg] = await c.fetch(10, timeout=1)
            assert msg.data == b"x"
            await msg.ack()


async def wait_for_floor(source: StreamSource, stream: str, floor: int) -> None:
    """JetStream applies acks as they arrive: the floor may take a moment to reach `floor`,
    and must never pass it."""
    for _ in range(100):
        got = await source.ack_floor(stream, "c")
        assert got <= floor
        if got == floor:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"ack floor {got}, not {floor}")
