"""Parity: each scenario runs in memory (`flowline.testing`) and on real Redis and JetStream, and
users see the same of both: the same job ids, attempts, results, records, events and dead
letters (`tests/parity.py` says what is compared). Each scenario also asserts what it is about,
so that two equally broken runs cannot pass."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from flowline import Backoff, Fail, Job, Pipelines, Queue, Retry, Route, Settings, Stream
from flowline.testing import App, run

from .parity import OnServers, observe

FAST = Backoff(base=0.05, factor=2.0)


def event(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


@dataclass
class Scenario:
    build: Callable[[], object]
    drive: Callable[[App, Any], Awaitable[None]]
    concurrency: int | None = None


# -- the scenarios ------------------------------------------------------------------------------


def happy() -> object:
    p = (
        Stream("parity", json.loads)
        >> Route(lambda e: [Job("greet", e), Job("count", {"n": e["n"]})])
        >> Queue("parity")
    )

    @p.dequeue("greet")
    async def greet(job: Any) -> dict[str, Any]:
        await job.progress(50)
        return {"hello": job.data["fan"]}

    @p.dequeue("count")
    def count(job: Any) -> int:  # a sync handler runs in a thread
        return int(job.data["n"]) * 2

    return p


async def drive_happy(app: App, target: Any) -> None:
    for n in range(3):
        await app.publish(event(fan=f"f{n}", n=n))
    await app.settle()
    assert len(app.completed()) == 6
    assert app.events("error") == []


def retries() -> object:
    p = Stream("parity", json.loads) >> Route(lambda e: [Job("flaky", e), Job("later", e)])
    p = p >> Queue("parity")

    @p.dequeue("flaky", retries=3, backoff=FAST)
    async def flaky(job: Any) -> int:
        return job.attempt

    @p.dequeue("later", retries=2)
    async def later(job: Any) -> int:
        if job.attempt == 1:
            raise Retry(delay=0.2)
        return job.attempt

    return p


async def drive_retries(app: App, target: Any) -> None:
    app.fail("flaky", on=[1, 2])
    await app.publish(event(fan="f"))
    await app.settle()
    assert sorted((e.topic, e.attempt, e.result) for e in app.completed()) == [
        ("flaky", 3, 3),
        ("later", 2, 2),
    ]
    assert len(app.retried()) == 3


def dead_letters() -> object:
    def router(e: dict[str, Any]) -> list[Job]:
        if e.get("unknown"):
            return [Job("nobody-dequeues-this", e)]
        if e.get("unserialisable"):
            return [Job("doomed", {"when": object()})]
        return [Job("doomed", e), Job("refused", e)]

    p = Stream("parity", json.loads, max_payload=200) >> Route(router) >> Queue("parity")

    @p.dequeue("doomed", retries=1, backoff=FAST)
    async def doomed(job: Any) -> None:
        raise ValueError(f"cannot handle {job.data}")

    @p.dequeue("refused", retries=5)
    async def refused(job: Any) -> None:
        raise Fail("not for us")

    return p


async def drive_dead_letters(app: App, target: Any) -> None:
    await app.publish(event(fan="f"))
    await app.publish(b"not json")  # undecodable
    await app.publish(b"")  # empty
    await app.publish(event(pad="x" * 300))  # past max_payload
    await app.publish(event(unknown=True))  # routes to a topic nobody dequeues
    await app.publish(event(unserialisable=True))  # job data that is not JSON
    await app.settle()
    letters = await app.dead_letters()
    assert sorted(x.record["stage"] for x in letters) == [
        "decode",
        "decode",
        "decode",
        "job",
        "job",
        "route",
        "route",
    ]
    assert sorted(e.topic for e in app.failed()) == ["doomed", "refused"]


def delays() -> object:
    p = (
        Stream("parity", json.loads)
        >> Route(lambda e: [Job("soon", e), Job("later", e, delay=0.4)])
        >> Queue("parity")
    )
    for topic in ("soon", "later", "direct"):
        p.dequeue(topic, lambda job: job.topic)
    return p


async def drive_delays(app: App, target: Any) -> None:
    await app.publish(event(fan="f"))
    job_id = await app.enqueue("direct", {"x": 1}, key="d-1", delay=0.3)
    assert job_id == "key:d-1"
    await app.settle()
    assert sorted(e.topic for e in app.completed()) == ["direct", "later", "soon"]


def fan_in() -> object:
    p = (
        Stream("parity", json.loads)
        >> Route(lambda e: [Job("part", {"i": i}) for i in range(e["parts"])], fan_in=True)
        >> Queue("parity")
    )

    @p.dequeue("part", retries=1, backoff=FAST)
    async def part(job: Any) -> int:
        return int(job.data["i"])

    return p


async def drive_fan_in(app: App, target: Any) -> None:
    app.fail("part", on=1)
    await app.publish(event(parts=3))
    await app.publish(event(parts=2))
    await app.settle()
    done = sorted((e.origin, e.jobs) for e in app.events("route:complete"))
    assert done == [("parity:1", 3), ("parity:2", 2)]


def emit() -> object:
    downstream = Stream("parity-out", json.loads) >> Route(lambda e: [Job("receive", e)])
    downstream = downstream >> Queue("parity-out")
    downstream.dequeue("receive", lambda job: job.data)
    upstream = Stream("parity", json.loads) >> Route(lambda e: [Job("relay", e)]) >> Queue("parity")

    @upstream.dequeue("relay", retries=2, backoff=FAST)
    async def relay(job: Any) -> int:
        seq = await job.emit(downstream, event(**{"from": job.id}))
        if job.attempt == 1:
            raise RuntimeError("failed after emitting")  # the retry must not emit again
        return seq

    return Pipelines(upstream, downstream)


async def drive_emit(app: App, target: Any) -> None:
    upstream = target.pipelines[0]
    await app.publish(event(fan="f"), pipeline=upstream)
    await app.settle()
    assert [(e.topic, e.result) for e in app.completed("receive")] == [
        ("receive", {"from": "parity:1:0"})
    ]
    assert [(e.topic, e.result) for e in app.completed("relay")] == [("relay", 1)]


def idempotent() -> object:
    p = Stream("parity", json.loads) >> Route(lambda e: [Job("once", e, key=e["k"])])
    p = p >> Queue("parity")
    p.dequeue("once", lambda job: job.data)
    p.dequeue("direct", lambda job: job.data)
    return p


async def drive_idempotent(app: App, target: Any) -> None:
    first = await app.publish(event(k="a"), msg_id="m-1")
    again = await app.publish(event(k="a"), msg_id="m-1")  # a retried publish: stored once
    other = await app.publish(event(k="a"))  # a new message with the same job key
    assert (first, again, other) == (1, 1, 2)
    ids = [await app.enqueue("direct", {"n": n}, key="same") for n in range(3)]
    assert ids == ["key:same"] * 3
    await app.settle()
    assert sorted(e.id for e in app.completed()) == ["key:a", "key:same"]


def paused() -> object:
    p = Stream("parity", json.loads) >> Route(lambda e: [Job("held", e)]) >> Queue("parity")
    p.dequeue("held", lambda job: job.data)
    return p


async def drive_paused(app: App, target: Any) -> None:
    handle = target.queue("parity")
    assert await handle.pause()
    await app.publish(event(n=1))  # the stream side keeps routing into a paused queue
    await app.enqueue("held", {"n": 2}, key="two")
    await app.settle()
    assert app.events("job:start") == []
    assert (await handle.counts()).ready == 2
    assert await handle.resume()
    await app.settle()
    assert sorted(e.id for e in app.completed()) == ["key:two", "parity:1:0"]


def groups() -> object:
    p = (
        Stream("parity", json.loads)
        >> Route(lambda e: [Job("grouped", {"n": n, "g": e["g"]}, group=e["g"]) for n in range(3)])
        >> Queue("parity", group_limit=1)
    )

    @p.dequeue("grouped", retries=1, backoff=FAST)
    async def grouped(job: Any) -> Any:
        if job.data["n"] == 1 and job.attempt == 1:
            raise RuntimeError("once")  # its retry goes back through the group's gate
        return job.data

    return p


async def drive_groups(app: App, target: Any) -> None:
    handle = target.queue("parity")
    await handle.pause()  # so that the jobs are all routed, and wait, before any runs
    await app.publish(event(g="a"))
    await app.publish(event(g="b"))
    await app.settle()
    assert (await handle.counts()).ready == 6  # one of each group in the stream, four waiting
    waiting = await app.cancel("parity:2:2")  # b's last job waits its turn: removed at once
    assert waiting.outcome == "cancelled"
    await handle.resume()
    await app.settle()
    assert sorted(e.id for e in app.completed()) == [
        "parity:1:0", "parity:1:1", "parity:1:2", "parity:2:0", "parity:2:1",
    ]  # fmt: skip
    assert (await handle.counts()).ready == 0


SCENARIOS = {
    "happy path": Scenario(happy, drive_happy),
    "retries": Scenario(retries, drive_retries),
    "dead letters and bad input": Scenario(dead_letters, drive_dead_letters),
    "delays": Scenario(delays, drive_delays),
    "fan-in": Scenario(fan_in, drive_fan_in),
    "emit": Scenario(emit, drive_emit),
    "idempotent enqueue": Scenario(idempotent, drive_idempotent),
    "pause and resume": Scenario(paused, drive_paused),
    "groups": Scenario(groups, drive_groups),
}


@pytest.mark.parametrize("name", list(SCENARIOS))
async def test_memory_and_servers_agree(name: str, settings: Settings) -> None:
    """The scenario's outcome in memory is the same as on Redis and JetStream."""
    scenario = SCENARIOS[name]
    target = scenario.build()
    async with run(target, concurrency=scenario.concurrency) as app:
        await scenario.drive(app, target)
        in_memory = await observe(app)
    target = scenario.build()
    on_servers = OnServers(target, settings, scenario.concurrency)
    await on_servers.start()
    try:
        await scenario.drive(on_servers, target)
        served = await observe(on_servers)
    finally:
        await on_servers.stop()
    assert in_memory["events"], "the scenario saw nothing"
    for part in ("completed", "jobs", "dead letters", "events"):
        assert in_memory[part] == served[part], f"{part} differ"
