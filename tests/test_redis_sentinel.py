"""flowline on a Sentinel-managed Redis: the primary SIGKILLed under load, Sentinel promoting
the replica, and workers following it without a restart (issue 11).

What an asynchronous failover lost or repeated is measured, not assumed: the handlers record
their runs in a separate Redis (FLOWLINE_TEST_RECORD_URL), so the record survives the failover
it describes. The short version runs in the regular suite; the long one (two failovers, two
workers) is marked ``cluster`` and runs with ``FLOWLINE_CLUSTER=full`` (``nox -s cluster``).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from redis.asyncio import Redis

from flowline import Settings, connect
from flowline.errors import ConfigurationError

from .apps.recorder import pipeline as recorder
from .conftest import eventually, flowline_cli, runs
from .topologies import RedisSentinels

TARGET = "tests.apps.recorder:pipeline"
FULL = os.environ.get("FLOWLINE_CLUSTER") == "full"


@pytest.fixture
def sentinels() -> Iterator[RedisSentinels]:
    with RedisSentinels() as s:
        yield s


async def run_failover(
    sentinels: RedisSentinels,
    servers: Any,
    worker: Any,
    redis: Any,
    *,
    events: int,
    workers: int,
    failovers: int,
    wait: int = 0,
) -> dict[str, Any]:
    """Events flow at 200/s while the primary is SIGKILLed `failovers` times, evenly over
    the run; each killed primary comes back 3 s later as a replica. Returns what the handlers
    did and how the failovers went."""
    env = {
        "FLOWLINE_REDIS_URL": sentinels.url,
        "FLOWLINE_TEST_RECORD_URL": servers.redis_url,
        "FLOWLINE_TEST_VISIBILITY": "2",
        "FLOWLINE_REDIS_WAIT_REPLICAS": str(wait),
    }
    procs = [worker(TARGET, env=env) for _ in range(workers)]
    for proc in procs:
        await proc.ready()
    pids = [p.pid for p in procs]
    at = [events * (k + 1) // (failovers + 1) for k in range(failovers)]
    promoted: list[float] = []  # seconds from each kill to the Sentinels naming a new primary

    async def fail_over() -> None:
        old = sentinels.primary_port()
        node = sentinels.data_ports.index(old)
        killed = time.monotonic()
        sentinels.kill_data(node)
        await eventually(lambda: sentinels.primary_port() != old, timeout=30)
        promoted.append(time.monotonic() - killed)
        await asyncio.sleep(3.0)
        sentinels.start_data(node, replica_of=1 - node)

    settings = Settings(nats_url=servers.nats_url, redis_url=sentinels.url)
    outages = []
    async with connect(recorder, settings):
        for i in range(events):
            if i in at:
                outages.append(asyncio.create_task(fail_over()))
            event = {"jobs": [{"topic": "record", "data": {"n": i}}]}
            await recorder.publish(json.dumps(event).encode(), msg_id=f"event-{i}")
            await asyncio.sleep(1 / 200)
            if i in at:
                await outages[-1]  # the next failover starts from a healthy pair

    async def all_done() -> bool:
        ids = {r["id"] for r in await runs(redis) if r["event"] == "done"}
        return len(ids) >= events

    await eventually(all_done, timeout=60, interval=0.2)
    await asyncio.sleep(2.5)  # past the visibility timeout: a repeat would have run by now
    done = Counter(r["id"] for r in await runs(redis) if r["event"] == "done")
    for proc in procs:
        assert proc.proc.poll() is None, proc.output()  # followed the new primary, no restart
        assert "Traceback" not in proc.output()
    assert [p.pid for p in procs] == pids
    lost = events - len(done)
    repeated = sum(n - 1 for n in done.values())
    print(
        f"\nsentinel (wait {wait}): {failovers} failover(s), promoted after "
        f"{', '.join(f'{s:.1f}' for s in promoted)} s; {events} events, {lost} lost, "
        f"{repeated} repeated"
    )
    return {"done": done, "lost": lost, "repeated": repeated, "promoted": promoted}


async def test_workers_follow_a_failover_under_load(sentinels, servers, worker, redis):
    """Short version: 600 events, one failover after 300 of them."""
    result = await run_failover(
        sentinels, servers, worker, redis, events=600, workers=1, failovers=1
    )
    assert len(result["promoted"]) == 1
    assert result["lost"] == 0
    assert len(result["done"]) == 600


@pytest.mark.cluster
@pytest.mark.skipif(not FULL, reason="set FLOWLINE_CLUSTER=full (nox -s cluster)")
@pytest.mark.timeout(300)
async def test_full_two_failovers_two_workers(sentinels, servers, worker, redis):
    """4,000 events at 200/s into two workers acking only what the replica has; the primary
    is killed twice, so each data node is killed once and comes back as the other's
    replica."""
    result = await run_failover(
        sentinels, servers, worker, redis, events=4000, workers=2, failovers=2, wait=1
    )
    assert len(result["promoted"]) == 2
    assert result["lost"] == 0


async def test_enqueue_sync_and_the_cli_on_a_sentinel_url(sentinels, servers):
    """The sync producer and a command reach the primary the Sentinels name."""
    env = {"FLOWLINE_REDIS_URL": sentinels.url}
    os.environ["FLOWLINE_REDIS_URL"] = sentinels.url
    try:
        job_id = recorder.enqueue_sync("record", {"n": 1}, key="sync-1")
    finally:
        del os.environ["FLOWLINE_REDIS_URL"]
    out = flowline_cli("jobs", TARGET, job_id, env=env)
    assert out.returncode == 0, out.stderr
    assert "state        queued" in out.stdout


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis+sentinel://127.0.0.1:1/", "a Sentinel URL ends in /service or /service/db"),
        ("redis+sentinel://127.0.0.1:x/s", "bad port in 'redis+sentinel://127.0.0.1:x/s'"),
        ("redis+sentinel:///s", "a Sentinel URL needs host:port"),
        ("redis+sentinel://h/s/zero", "a Sentinel URL ends in /service or /service/db"),
    ],
)
def test_malformed_sentinel_urls_are_refused(url, message):
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        Settings(redis_url=url)


def test_a_sentinel_urls_password_is_redacted():
    s = Settings(redis_url="redis+sentinel://:hunter2@127.0.0.1:26379,127.0.0.1:26380/svc/1")
    assert "hunter2" not in repr(s)
    assert "redis+sentinel://:***@127.0.0.1:26379,127.0.0.1:26380/svc/1" in repr(s)


async def test_an_unknown_service_is_a_one_line_error(sentinels, servers):
    """A service no Sentinel watches: the command names it in one line, and exits 1."""
    url = sentinels.url.replace(f"/{sentinels.SERVICE}/", "/nosuch/")
    out = flowline_cli("jobs", TARGET, "some-id", env={"FLOWLINE_REDIS_URL": url})
    assert out.returncode == 1
    assert out.stderr == (
        f"Error: cannot connect to Redis at {url}: MasterNotFoundError: "
        "No master found for 'nosuch'\n"
    )


async def test_wait_replicas_acks_only_what_the_replica_has(sentinels, servers, worker, redis, js):
    """With FLOWLINE_REDIS_WAIT_REPLICAS=1, a stopped replica holds every ack back: the stream
    messages stay pending and come again, and once the replica is back they are acked and
    each job has run exactly once."""
    env = {
        "FLOWLINE_REDIS_URL": sentinels.url,
        "FLOWLINE_TEST_RECORD_URL": servers.redis_url,
        "FLOWLINE_REDIS_WAIT_REPLICAS": "1",
    }
    proc = worker(TARGET, env=env)
    await proc.ready()
    replica = sentinels.data[1 - sentinels.data_ports.index(sentinels.primary_port())]
    assert replica is not None
    replica.send_signal(signal.SIGSTOP)
    try:
        for i in range(10):
            event = {"jobs": [{"topic": "record", "data": {"n": i}}]}
            await js.publish("recorder", json.dumps(event).encode())

        def refused() -> bool:
            return any(
                "enqueue failed" in x.get("event", "") and "NotReplicated" in x.get("error", "")
                for x in proc.lines()
            )

        await eventually(refused, timeout=20)
        durable = (await js.consumers_info("recorder"))[0].name
        await asyncio.sleep(1.5)  # past a few redeliveries: none of them may be acked either
        info = await js.consumer_info("recorder", durable)
        assert info.ack_floor.stream_seq == 0  # not one message acked while the replica lags
        assert info.num_ack_pending + info.num_pending == 10
    finally:
        replica.send_signal(signal.SIGCONT)

    async def settled() -> bool:
        info = await js.consumer_info("recorder", durable)
        return info.num_ack_pending == 0 and info.num_pending == 0

    await eventually(settled, timeout=30, interval=0.2)
    done = Counter(r["id"] for r in await runs(redis) if r["event"] == "done")
    assert len(done) == 10
    assert set(done.values()) == {1}


def test_wait_replicas_out_of_range_is_refused():
    with pytest.raises(ConfigurationError, match=r"redis_wait_replicas must be within 0\.\.16"):
        Settings(redis_wait_replicas=-1)


def test_wait_replicas_from_the_environment_must_be_a_number():
    out = flowline_cli("status", TARGET, env={"FLOWLINE_REDIS_WAIT_REPLICAS": "one"})
    assert out.returncode != 0
    assert "Traceback" not in out.stderr
    assert "FLOWLINE_REDIS_WAIT_REPLICAS must be a number of replicas, got 'one'" in out.stderr


@pytest.mark.parametrize(("wait", "lost"), [(0, 20), (1, 0)])
async def test_what_a_failover_to_a_lagging_replica_loses(
    sentinels, servers, worker, redis, js, wait, lost
):
    """The replica is cut off, 20 events are routed (their jobs queued, not yet run), the
    primary is killed and the lagging replica promoted. Without waiting for replicas the
    stream acked all 20 and the new primary never had their jobs: all 20 are lost. With
    FLOWLINE_REDIS_WAIT_REPLICAS=1 nothing was acked, JetStream delivers the events again to
    the new primary, and all 20 run."""
    env = {
        "FLOWLINE_REDIS_URL": sentinels.url,
        "FLOWLINE_TEST_RECORD_URL": servers.redis_url,
        "FLOWLINE_REDIS_WAIT_REPLICAS": str(wait),
        "FLOWLINE_TEST_ACK_WAIT": "2",
    }
    ingest = worker(TARGET, "--only", "stream", env=env)
    await ingest.ready()
    primary = sentinels.data_ports.index(sentinels.primary_port())
    replica = sentinels.data[1 - primary]
    assert replica is not None
    primary_client = Redis(port=sentinels.data_ports[primary])
    # Stopped, and its link cut, so it cannot read what the primary writes from now on (a
    # stopped process would still find the bytes in its socket buffer when continued).
    replica.send_signal(signal.SIGSTOP)
    try:
        await primary_client.client_kill_filter(_type="replica")
        for i in range(20):
            event = {"jobs": [{"topic": "record", "data": {"n": i}}]}
            await js.publish("recorder", json.dumps(event).encode())

        async def queued() -> bool:
            return len(await primary_client.keys("flowline:{recorder}:job:*")) == 20

        await eventually(queued, timeout=20)
        await primary_client.aclose()
        await asyncio.sleep(0.5)  # the acks (or the refusals) are sent
        sentinels.kill_data(primary)
    finally:
        replica.send_signal(signal.SIGCONT)
    await eventually(lambda: sentinels.primary_port() != sentinels.data_ports[primary], timeout=30)
    runner = worker(TARGET, "--only", "queue", env=env)
    await runner.ready()

    async def finished() -> Counter[str]:
        return Counter(r["id"] for r in await runs(redis) if r["event"] == "done")

    if lost:
        # Acked messages never come again: once the consumer holds nothing back, whatever the
        # new primary has is all there will be, and the runner has had time to run it.
        durable = (await js.consumers_info("recorder"))[0].name

        async def settled() -> bool:
            info = await js.consumer_info("recorder", durable)
            return info.num_ack_pending == 0 and info.num_pending == 0

        await eventually(settled, timeout=30)
        await asyncio.sleep(3)
    else:
        # Unacked messages come again, but only as fast as the stream side's write backoff (up
        # to 5 s after a run of refused writes; the new primary has no replica, so every WAIT
        # still fails and each message is written, not acked, on its next delivery).
        async def all_ran() -> bool:
            return len(await finished()) == 20

        await eventually(all_ran, timeout=60, interval=0.5)
    done = await finished()
    assert 20 - len(done) == lost
    assert set(done.values()) <= {1}
