"""flowline on a three-node NATS cluster: an R3 stream, a seed list of URLs, and the stream
leader's server SIGKILLed and started again while events flow (issue 11).

The short version runs in the regular suite; the long one (more events, every node killed in
turn, two workers) is marked ``cluster`` and runs with ``FLOWLINE_CLUSTER=full``
(``nox -s cluster``).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import nats
import nats.errors
import nats.js.errors
import pytest

from flowline import Settings, Stream, connect
from flowline.errors import PipelineError

from .apps.recorder import pipeline as recorder
from .conftest import eventually, flowline_cli, runs
from .topologies import NatsCluster

TARGET = "tests.apps.recorder:pipeline"
FULL = os.environ.get("FLOWLINE_CLUSTER") == "full"


@pytest.fixture
def cluster() -> Iterator[NatsCluster]:
    with NatsCluster() as c:
        yield c


async def leader_of(cluster: NatsCluster, stream: str) -> str:
    """The name of the node leading `stream`, asked of whichever node answers."""
    nc = await nats.connect(
        cluster.url.split(","), max_reconnect_attempts=2, reconnect_time_wait=0.1
    )
    try:
        info = await nc.jetstream().stream_info(stream)
        assert info.cluster is not None
        assert info.cluster.leader
        return info.cluster.leader
    finally:
        await nc.close()


async def publish_through(
    settings: Settings, events: int, rate: float, during: Any
) -> dict[str, float]:
    """Publish `events` recorder events at about `rate` a second through flowline's producer
    on the seed list, each retried with its own msg id until the stream acknowledges it, as a
    producer that must lose nothing does; `during(i)` is called before event `i`. Returns
    the retries made and the longest wait for one acknowledgement."""
    retries, longest = 0, 0.0
    async with connect(recorder, settings):
        for i in range(events):
            await during(i)
            event = json.dumps({"jobs": [{"topic": "record", "data": {"n": i}}]}).encode()
            began = time.monotonic()
            while True:
                try:
                    await recorder.publish(event, msg_id=f"event-{i}")
                    break
                except (nats.errors.Error, nats.js.errors.Error, TimeoutError):
                    if time.monotonic() - began > 60:
                        raise
                    retries += 1
                    await asyncio.sleep(0.1)
            longest = max(longest, time.monotonic() - began)
            await asyncio.sleep(1 / rate)
    return {"retries": retries, "longest": longest}


async def run_outage(
    cluster: NatsCluster,
    servers: Any,
    worker: Any,
    redis: Any,
    *,
    events: int,
    workers: int,
    kills: int,
) -> dict[str, Any]:
    """Events flow at 100/s into an R3 stream while the leader's node is killed `kills`
    times, evenly over the run, each time restarted 3 s later; returns what the handlers
    did."""
    env = {"FLOWLINE_NATS_URL": cluster.url, "FLOWLINE_TEST_REPLICAS": "3"}
    procs = [worker(TARGET, env=env) for _ in range(workers)]
    for proc in procs:
        await proc.ready(timeout=40)
    stream = "recorder"
    info_nc = await nats.connect(cluster.url.split(","))
    info = await info_nc.jetstream().stream_info(stream)
    await info_nc.close()
    assert info.config.num_replicas == 3
    assert info.cluster is not None
    assert len(info.cluster.replicas or []) == 2

    at = [events * (k + 1) // (kills + 2) for k in range(kills)]  # spread over the run
    killed: list[str] = []

    async def during(i: int) -> None:
        if i in at:
            name = await leader_of(cluster, stream)
            node = cluster.index(name)
            cluster.kill_node(node)
            killed.append(name)
            # Down for a while as events go on, then back on the same port and data.
            asyncio.get_running_loop().call_later(3.0, cluster.start_node, node)

    settings = Settings(nats_url=cluster.url, redis_url=servers.redis_url)
    published = await publish_through(settings, events, rate=100, during=during)

    async def all_done() -> bool:
        return sum(1 for r in await runs(redis) if r["event"] == "done") >= events

    await eventually(all_done, timeout=90, interval=0.2)
    await asyncio.sleep(1.0)  # a duplicate job would run by now
    done = [r for r in await runs(redis) if r["event"] == "done"]
    started = [r for r in await runs(redis) if r["event"] == "start"]
    for proc in procs:
        assert proc.proc.poll() is None, proc.output()  # reconnected on their own
    print(
        f"\nnats cluster: killed {killed}; {events} events, {published['retries']} publish "
        f"retries, longest wait for an ack {published['longest']:.2f} s"
    )
    return {"done": done, "started": started, "killed": killed, "procs": procs}


def assert_exactly_once(result: dict[str, Any], events: int) -> None:
    ids = Counter(r["id"] for r in result["done"])
    assert len(ids) == events, f"{events - len(ids)} events' jobs missing"
    assert max(ids.values()) == 1, [i for i, n in ids.items() if n > 1][:5]
    assert max(Counter(r["id"] for r in result["started"]).values()) == 1  # none created twice


async def test_r3_stream_survives_its_leader_killed_and_restarted(cluster, servers, worker, redis):
    """Short version: 400 events at 100/s; the leader's node is SIGKILLed after 100 of them
    and restarted 3 s later. Every event's job runs exactly once; the worker stays up."""
    events = 400
    result = await run_outage(cluster, servers, worker, redis, events=events, workers=1, kills=1)
    assert len(result["killed"]) == 1
    assert_exactly_once(result, events)
    # The stream has a leader again, and all three copies are current once the node is back.
    nc = await nats.connect(cluster.url.split(","))
    try:

        async def caught_up() -> bool:
            info = await nc.jetstream().stream_info("recorder")
            peers = info.cluster.replicas or [] if info.cluster else []
            return len(peers) == 2 and all(p.current for p in peers)

        await eventually(caught_up, timeout=20, interval=0.2)
    finally:
        await nc.close()


@pytest.mark.cluster
@pytest.mark.skipif(not FULL, reason="set FLOWLINE_CLUSTER=full (nox -s cluster)")
@pytest.mark.timeout(300)
async def test_full_every_node_killed_in_turn_two_workers(cluster, servers, worker, redis):
    """3,000 events at 100/s into two workers; the leader is killed three times, each time
    whichever node leads then."""
    events = 3000
    result = await run_outage(cluster, servers, worker, redis, events=events, workers=2, kills=3)
    assert len(result["killed"]) == 3
    assert_exactly_once(result, events)
    pids = Counter(r["pid"] for r in result["done"])
    assert len(pids) == 2  # both workers kept working through the outages


async def test_replicas_on_a_single_server_is_a_one_line_error(servers, worker):
    """A single nats-server cannot keep three copies: the worker says so and exits 1."""
    proc = worker(TARGET, env={"FLOWLINE_TEST_REPLICAS": "3"})
    assert await proc.wait(30) == 1
    out = proc.output()
    assert "Traceback" not in out
    assert (
        "cannot create stream 'recorder': replicas > 1 not supported in non-clustered mode" in out
    )


async def test_an_existing_stream_is_brought_to_the_stages_replicas(cluster):
    """A stream made R1 (by a producer, say) becomes R3 when a Stream(replicas=3) starts; one
    without `replicas` leaves the server's count alone."""
    from flowline.backends.jetstream import ensure_stream

    nc = await nats.connect(cluster.url.split(","))
    try:
        js = nc.jetstream()
        assert await ensure_stream(js, "grow") == "grow"
        assert (await js.stream_info("grow")).config.num_replicas == 1
        await ensure_stream(js, "grow", 3)
        assert (await js.stream_info("grow")).config.num_replicas == 3
        await ensure_stream(js, "grow")
        assert (await js.stream_info("grow")).config.num_replicas == 3
    finally:
        await nc.close()


@pytest.mark.parametrize("replicas", [0, 6, -1])
def test_replicas_out_of_range_is_refused(replicas):
    with pytest.raises(
        PipelineError, match=rf"Stream replicas must be within 1\.\.5, got {replicas}"
    ):
        Stream("x", bytes, replicas=replicas)


async def test_commands_take_the_seed_list(cluster, servers, worker, redis):
    """The producer and `flowline status` reach the cluster through a seed list whose first
    node is down: the client moves on to the next."""
    env = {"FLOWLINE_NATS_URL": cluster.url, "FLOWLINE_TEST_REPLICAS": "3"}
    proc = worker(TARGET, env=env)
    await proc.ready(timeout=40)
    cluster.kill_node(0)
    settings = Settings(nats_url=cluster.url, redis_url=servers.redis_url)

    async def nothing(i: int) -> None:
        pass

    await publish_through(settings, 5, rate=100, during=nothing)

    async def ran() -> bool:
        return sum(r["event"] == "done" for r in await runs(redis)) == 5

    await eventually(ran, timeout=30)
    status = flowline_cli("status", TARGET, "--json", env={**servers.env(), **env})
    assert status.returncode == 0, status.stderr
    doc = json.loads(status.stdout)
    assert doc["servers"]["nats"] == "ok"
