"""Events from every process: the Redis event log, `flowline.listen` and `flowline events`."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import sys
import zlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from structlog.testing import capture_logs

import flowline
from flowline import Backoff, ConfigurationError, Event, Job, Queue, Route, Runner, Stream
from flowline._events import EventBus, matches
from flowline.runtime import eventlog
from flowline.runtime.cron import CronTick
from flowline.runtime.eventlog import LISTENER_CLIENT, EventLog, Recorded, encode, stream_key
from flowline.runtime.job import JobContext

from .apps.eventful import job_id
from .apps.recorder import pipeline as recorder
from .conftest import ROOT, eventually
from .test_cli import run_cli

APP = "tests.apps.eventful:pipeline"


def batch(*topics: str, **data: Any) -> bytes:
    return json.dumps({"jobs": [{"topic": t, "data": data} for t in topics]}).encode()


def ctx(**kw: Any) -> JobContext:
    args = {"id": "p:1:0", "topic": "t", "data": {"n": 1}, "attempt": 1, "queue": "q"}
    return JobContext(**{**args, **kw}, store=None, bus=None)


async def recorded(redis: Redis, pipeline: str) -> list[Recorded]:
    """Every event the log holds for `pipeline`, oldest first."""
    out: list[Recorded] = []
    for entry, fields in await redis.xrange(stream_key(pipeline)):
        out += eventlog._entry(pipeline, entry, fields)
    return out


async def collect(agen: Any, count: int, timeout: float = 15) -> list[Event]:
    """The first `count` events of a `listen` generator, which is closed afterwards."""
    out: list[Event] = []
    async with contextlib.aclosing(agen) as events:
        async with asyncio.timeout(timeout):
            async for event in events:
                out.append(event)
                if len(out) == count:
                    break
    return out


class TestPatterns:
    @pytest.mark.parametrize(
        ("pattern", "name", "heard"),
        [
            ("*", "job:start", True),
            ("job:start", "job:start", True),
            ("job:start", "job:complete", False),
            ("job:*", "job:failed", True),
            ("job:*", "dead-letter", False),
            ("error", "error:route", True),
            ("error", "dead-letter", False),
            ("error:*", "error:job", True),
            ("cron:*", "cron", False),
        ],
    )
    def test_patterns_follow_the_bus_rules(self, pattern: str, name: str, heard: bool) -> None:
        """`*` is everything, `error` every error:<stage>, `job:*` every job:<anything>."""
        assert matches(pattern, name) is heard

    def test_bus_listeners_may_name_a_family(self) -> None:
        """`pipeline.on("job:*")` hears job:start and job:failed, not route or dead-letter."""
        bus, heard = EventBus("p"), []
        bus.on("job:*", heard.append)
        for name in ("job:start", "route", "job:failed", "dead-letter"):
            bus.emit(name, "job")
        assert [e.name for e in heard] == ["job:start", "job:failed"]
        bus.off("job:*")
        assert not bus.wants("job:start")

    def test_a_sink_gets_lifecycle_events_nobody_listens_to(self) -> None:
        """With a sink attached, lifecycle events are wanted and handed over; others are not."""
        bus, got = EventBus("p"), []

        def sink(raw: tuple[Any, ...]) -> None:
            name, stage, seq, _, data = raw
            got.append((name, stage, seq, data))

        assert bus.attach(sink)
        assert not bus.attach(lambda raw: None)  # one sink per bus: the first stays
        assert bus.wants("job:start")
        assert bus.wants("error:decode")
        assert not bus.wants("stream")
        bus.emit("stream", "stream", sequence=1)
        bus.emit("job:complete", "job", id="1")
        bus.emit("error:route", "route", sequence=2)
        assert got == [
            ("job:complete", "job", 1, {"id": "1"}),
            ("error:route", "route", 2, {"sequence": 2}),
        ]
        bus.detach(sink)
        assert not bus.wants("job:start")

    @pytest.mark.parametrize("name", ["jbo:start", "job*", "stream", "route", "cron:daily", ""])
    def test_names_the_log_does_not_record_are_refused(self, name: str) -> None:
        """A typo, a local-only event or a bad pattern is an error, not a silent wait."""
        with pytest.raises(ConfigurationError, match="give \\*, error, job:\\*"):
            eventlog.check_names([name])

    @pytest.mark.parametrize("since", ["yesterday", "1-2-3", "$$", "12/x"])
    def test_bad_since_is_refused(self, since: str) -> None:
        """`since` is $, 0, an entry id or an event id."""
        with pytest.raises(ConfigurationError, match="since must be"):
            eventlog.check_since(since)


class TestEncoding:
    def data(self, **data: Any) -> dict[str, Any]:
        out: dict[str, Any] = json.loads(encode(("x", "s", 1, 2, data)))[4]
        return out

    def test_a_job_becomes_its_id_topic_attempt_queue_and_data(self) -> None:
        """A JobContext is stored as plain JSON, its data included."""
        job = ctx(id='a"b', attempt=2)
        assert self.data(job=job, progress=50.5) == {
            "job": {"id": 'a"b', "topic": "t", "attempt": 2, "queue": "q", "data": {"n": 1}},
            "progress": 50.5,
        }

    def test_errors_ticks_and_the_unencodable(self) -> None:
        """Errors are {type, message}, a cron tick a dict, anything else JSON refuses its repr."""
        tick = CronTick("daily", datetime(2026, 1, 1, tzinfo=UTC))
        assert self.data(error=flowline.JobError("boom", stage="t"), event=tick, s={1}) == {
            "error": {"type": "JobError", "message": "boom [while running stage 't']"},
            "event": {"topic": "daily", "scheduled": "2026-01-01T00:00:00+00:00"},
            "s": "{1}",
        }
        assert self.data(nan=float("nan"), ok=True, n={1: 2}) == {
            "nan": None,
            "ok": True,
            "n": {"1": 2},
        }
        assert self.data(big=2**70, ok=1) == {"big": str(2**70), "ok": "1"}

    def test_large_values_are_left_out_and_a_job_keeps_its_head(self) -> None:
        """An event stays small: big values become a note of their size."""
        data = self.data(job=ctx(data={"blob": "x" * 40_000}), result="y" * 40_000)
        assert data["job"]["id"] == "p:1:0"
        assert data["job"]["data"].endswith("bytes of JSON, left out>")
        assert data["result"] == "<40002 bytes of JSON, left out>"


class TestWriter:
    async def test_a_full_buffer_drops_the_oldest_and_warns_once(self) -> None:
        """While Redis is away the buffer keeps the newest events; drops are counted."""
        pipeline = Stream("w", bytes) >> Route(lambda e: []) >> Queue("w")
        redis = Redis.from_url("redis://127.0.0.1:1")
        log = EventLog(redis, "proc", 100, capacity=10)
        log.attach([pipeline])
        for i in range(25):
            pipeline.bus.emit("job:complete", "job", id=str(i))
        with capture_logs() as logs, pytest.raises(RedisConnectionError):
            await log.flush()
        assert (log.dropped, log.buffered) == (15, 10)
        kept = orjson.loads(b"[" + log._buffers[pipeline.name].pieces[0][1] + b"]")
        assert [e[4]["id"] for e in kept] == [str(i) for i in range(15, 25)]  # newest, in order
        assert [x["event"] for x in logs] == [
            "event log buffer full: oldest events dropped (Redis slow or unreachable)"
        ]
        with pytest.raises(RedisConnectionError):
            await log.flush()
        assert log.dropped == 15  # handing back is no new loss
        await log.close(within=0.1)
        assert pipeline.bus.sink is None
        await redis.aclose()

    async def test_one_odd_event_leaves_the_rest_of_its_flush_as_it_is(self, redis: Redis) -> None:
        """A flush is encoded in pieces; only the piece holding a big or unencodable value
        goes event by event, and every event arrives, in order, with its own view."""
        pipeline = Stream("o", bytes) >> Route(lambda e: []) >> Queue("o")
        log = EventLog(redis, "proc", 10_000)
        log.attach([pipeline])
        odd = {70: {"result": "x" * 40_000}, 71: {"result": {1}}, 140: {"result": {2: "b"}}}
        for i in range(200):
            pipeline.bus.emit("job:complete", "job", id=str(i), **odd.get(i, {"result": i}))
        await log.flush()
        kept = await recorded(redis, pipeline.name)
        assert [r.seq for r in kept] == list(range(1, 201))
        results = {int(r.event.data["id"]): r.event.data["result"] for r in kept}
        assert results[70] == "<40002 bytes of JSON, left out>"
        assert results[71] == "{1}"
        assert results[140] == {"2": "b"}
        assert all(results[i] == i for i in range(200) if i not in odd)
        assert log.written == 200
        await log.close()

    async def test_entries_are_compressed_and_plain_ones_still_read(self, redis: Redis) -> None:
        """A flush writes its events zlib-compressed; an entry of plain JSON (no ``encoding``,
        as flowline 0.1 wrote) reads the same."""
        pipeline = Stream("z", bytes) >> Route(lambda e: []) >> Queue("z")
        log = EventLog(redis, "proc", 100)
        log.attach([pipeline])
        for i in range(300):
            pipeline.bus.emit("job:complete", "job", id=str(i), topic="t", result=None)
        await log.flush()
        [(_, fields)] = await redis.xrange(stream_key(pipeline.name))
        assert fields[b"encoding"] == b"zlib"
        plain = orjson.loads(zlib.decompress(fields[b"events"]))
        assert len(fields[b"events"]) * 5 < len(orjson.dumps(plain))  # repetitive: compresses
        old = [["job:complete", "job", 301, 1_764_600_000_000_000_000, {"id": "old"}]]
        await redis.xadd(
            stream_key(pipeline.name), {"process": "v0.1", "count": 1, "events": orjson.dumps(old)}
        )
        kept = await recorded(redis, pipeline.name)
        assert [r.event.data["id"] for r in kept] == [*map(str, range(300)), "old"]
        assert kept[-1].process == "v0.1"
        await log.close()

    async def test_retention_trims_the_stream_to_about_n_events(self, redis: Redis) -> None:
        """The log keeps the newest `retention` events at least and about one flush more."""
        pipeline = Stream("r", bytes) >> Route(lambda e: []) >> Queue("r")
        log = EventLog(redis, "proc", 100)
        log.attach([pipeline])
        for i in range(1, 1001):
            pipeline.bus.emit("job:complete", "job", id=str(i))
            if i % 30 == 0:
                await log.flush()  # entries of 30 events, as a busy worker's flushes
        await log.flush()
        kept = await recorded(redis, pipeline.name)
        assert 100 <= len(kept) < 130
        assert [r.event.data["id"] for r in kept][-1] == "1000"
        assert [r.seq for r in kept] == list(range(kept[0].seq, 1001))  # newest, no gaps
        await log.close()


async def test_events_of_two_worker_processes_reach_one_listener_in_order(
    worker, servers, js, redis, tmp_path: Path
) -> None:
    """Two workers' events all arrive, each process's in the order it saw them locally."""
    files = [tmp_path / "a.jsonl", tmp_path / "b.jsonl"]
    procs = [
        worker(APP, "--concurrency", "2", env={"FLOWLINE_TEST_EVENTS_FILE": str(f)}) for f in files
    ]
    for proc in procs:
        await proc.ready()
    for i in range(12):
        await js.publish("recorder", batch("record", sleep=0.05, n=i))
    listening = flowline.listen(recorder, "job:*", redis_url=servers.redis_url, since="0")
    events = await collect(listening, 24)
    assert [e.name for e in events].count("job:complete") == 12
    by_process: dict[str, list[Recorded]] = {}
    for rec in await recorded(redis, recorder.name):
        by_process.setdefault(rec.process, []).append(rec)
    assert len(by_process) == 2  # both workers ran jobs
    # A process id is <host>-<pid>-<suffix>.
    local = {
        int(process.rsplit("-", 2)[-2]): [(r.event.name, job_id(r.event.data)) for r in recs]
        for process, recs in by_process.items()
    }
    for proc, path in zip(procs, files, strict=True):
        seen = [(x["name"], x["id"]) for x in map(json.loads, path.read_text().splitlines())]
        assert local[proc.pid] == seen
    for recs in by_process.values():
        assert [r.seq for r in recs] == list(range(1, len(recs) + 1))


async def test_listen_filters_names_and_rebuilds_events(settings) -> None:
    """Names filter as the bus does; events carry plain JSON data (job dict, error dict)."""
    pipeline = (
        Stream("lf", bytes)
        >> Route(lambda e: [Job("ok", {"n": 1}), Job("bad", None)])
        >> Queue("lf", retries=1, backoff=Backoff(base=0.01))
    )
    pipeline.dequeue("ok", lambda job: "done")

    @pipeline.dequeue("bad")
    async def bad(job: JobContext) -> None:
        raise ValueError("nope")

    async with Runner(pipeline, settings):
        await pipeline.publish(b"x")
        failed = await collect(
            flowline.listen(pipeline, "job:failed", "error", settings=settings, since="0"), 3
        )
        jobs = await collect(flowline.listen(pipeline, "job:*", settings=settings, since="0"), 6)
    assert [e.name for e in failed] == ["error:job", "error:job", "job:failed"]
    job = {"id": "lf:1:1", "topic": "bad", "attempt": 2, "queue": "lf", "data": None}
    assert failed[-1].job == job
    assert failed[-1].error["message"].startswith("ValueError: nope")
    assert failed[-1].pipeline == pipeline.name
    assert sorted(e.name for e in jobs) == sorted(
        ["job:start", "job:complete", "job:start", "job:retry", "job:start", "job:failed"]
    )
    complete = next(e for e in jobs if e.name == "job:complete")
    assert (complete.id, complete.result, complete.stage) == ("lf:1:0", "done", "job")


async def test_listen_from_now_skips_history_and_closes_its_connection(settings, redis) -> None:
    """since="$" yields only events recorded after it started; aclose() closes its client."""
    pipeline = Stream("ln", bytes) >> Route(lambda e: [Job("t", e.decode())]) >> Queue("ln")
    pipeline.dequeue("t", lambda job: job.data)
    async with Runner(pipeline, settings):
        await pipeline.publish(b"old")
        await eventually(lambda: _count(redis, pipeline.name, "job:complete", 1))
        events = flowline.listen(pipeline, "job:complete", settings=settings)
        first = asyncio.ensure_future(events.__anext__())
        n = 0
        while not first.done():  # publish until the listener, now positioned, hears one
            n += 1
            await pipeline.publish(f"new-{n}".encode())
            await asyncio.wait({first}, timeout=0.3)
        assert first.result().result.startswith("new-")
        assert await _reading(redis)
        await events.aclose()
        # The client has closed its socket; Redis drops it from CLIENT LIST when it reads the
        # close, a moment later (a fresh-clone CI run once saw it still listed).
        assert await eventually(lambda: _not_reading(redis), timeout=5)


async def _reading(redis: Redis) -> bool:
    """Whether a listener's connection is open (workers block in XREAD too: it is named)."""
    return any(c.get("name") == LISTENER_CLIENT for c in await redis.client_list())


async def _not_reading(redis: Redis) -> bool:
    return not await _reading(redis)


async def _count(redis: Redis, pipeline: str, name: str, at_least: int) -> bool:
    return sum(r.event.name == name for r in await recorded(redis, pipeline)) >= at_least


async def test_events_off_writes_nothing(settings, redis) -> None:
    """events_retention=0: jobs run and no event log exists."""
    pipeline = Stream("off", bytes) >> Route(lambda e: [Job("t", None)]) >> Queue("off")
    ran: list[str] = []
    pipeline.dequeue("t", lambda job: ran.append(job.id))
    async with Runner(pipeline, dataclasses.replace(settings, events_retention=0)):
        await pipeline.publish(b"x")
        await eventually(lambda: ran)
    assert pipeline.bus.sink is None
    assert await redis.exists(stream_key(pipeline.name)) == 0


async def test_the_events_command_prints_a_workers_events_live(worker, servers, js) -> None:
    """`flowline events --json` prints one JSON object per event as the worker runs jobs."""
    proc = worker(APP)
    await proc.ready()
    cli = await _start_cli(servers, "events", APP, "job:complete", "job:failed", "--json")
    assert cli.stdout is not None
    try:
        reading = asyncio.ensure_future(cli.stdout.readline())
        n = 0
        while not reading.done():  # until the command follows the log: probes
            n += 1
            await js.publish("recorder", batch("record", probe=n))
            await asyncio.wait({reading}, timeout=0.5)
        await js.publish("recorder", batch("record", "boom"))
        lines = [json.loads(reading.result())]
        while not any(x["name"] == "job:failed" for x in lines):
            lines.append(json.loads(await asyncio.wait_for(cli.stdout.readline(), 15)))
        assert {x["name"] for x in lines} == {"job:complete", "job:failed"}
        failed = next(x for x in lines if x["name"] == "job:failed")
        assert failed["data"]["job"]["topic"] == "boom"
        assert failed["data"]["error"]["message"].startswith("ValueError: boom")
        assert set(failed) == {"id", "time", "process", "seq", "pipeline", "name", "stage", "data"}
        cli.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(cli.communicate(), 10)
        assert cli.returncode == 0, err
        assert b"Traceback" not in err
    finally:
        if cli.returncode is None:
            cli.kill()
            await cli.wait()


async def _start_cli(servers, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "flowline", *args,
        cwd=ROOT, env={**os.environ, **servers.env(), "PYTHONPATH": str(ROOT)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def test_a_late_reader_reads_history_with_since_and_last(worker, servers, js, redis):
    """--since 0 prints what is kept, --last N the newest N, --since ID what came after it."""
    proc = worker(APP)
    await proc.ready()
    await js.publish("recorder", batch("record", "record", "record"))
    await eventually(lambda: _count(redis, recorder.name, "job:complete", 3))
    kept = [r for r in await recorded(redis, recorder.name) if r.event.name == "job:complete"]
    app = "tests.apps.recorder:pipeline"
    args = ("events", app, "job:complete", "--json")
    everything, last, after = await asyncio.gather(
        _until_lines(servers, 3, *args, "--since", "0"),
        _until_lines(servers, 2, *args, "--last", "2"),
        _until_lines(servers, 2, *args, "--since", kept[0].id),
    )
    assert [x["id"] for x in everything] == [r.id for r in kept]
    assert [x["id"] for x in last] == [r.id for r in kept[1:]]
    assert [x["id"] for x in after] == [r.id for r in kept[1:]]
    human = await _until_lines(servers, 1, "events", app, "job:complete", "--last", "1")
    assert "job:complete" in human[0]
    assert kept[-1].event.data["id"] in human[0]


async def _until_lines(servers, count: int, *args: str) -> list[Any]:
    """Run `flowline ARGS`, read `count` lines of its output, then stop it with SIGINT."""
    proc = await _start_cli(servers, *args)
    assert proc.stdout is not None
    lines = [await asyncio.wait_for(proc.stdout.readline(), 20) for _ in range(count)]
    proc.send_signal(signal.SIGINT)
    _, err = await asyncio.wait_for(proc.communicate(), 15)
    assert proc.returncode == 0, err
    text = [line.decode().rstrip("\n") for line in lines]
    return [json.loads(x) for x in text] if "--json" in args else text


class TestBadInput:
    @pytest.mark.parametrize(
        ("args", "says"),
        [
            (("nope.app:pipeline",), "cannot import 'nope.app'"),
            ((APP, "jbo:start"), "'jbo:start' is not an event name"),
            ((APP, "stream"), "delivered only in the process"),
            ((APP, "--since", "yesterday"), "since must be"),
            ((APP, "--redis", "redis://127.0.0.1:1/0"), "cannot connect to Redis"),
        ],
    )
    async def test_bad_input_is_a_one_line_error(self, servers, args: tuple[str, ...], says):
        """An unknown target, a bad pattern or since, or Redis unreachable: one line, exit 1."""
        result = await run_cli(servers, "events", *args)
        assert result.returncode == 1
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert says in lines[0]

    async def test_listen_refuses_bad_names_and_an_unreachable_redis(self) -> None:
        """`listen` raises ConfigurationError at the first iteration, before waiting."""
        with pytest.raises(ConfigurationError, match="not an event name"):
            await anext(flowline.listen("p", "jbo:start"))
        with pytest.raises(ConfigurationError, match="cannot connect to Redis"):
            await anext(flowline.listen("p", redis_url="redis://127.0.0.1:1/0"))
