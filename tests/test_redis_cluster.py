"""flowline on a Redis Cluster: real `flowline worker` processes, a real nats-server and a local
three-primary cluster (`tests.redis_cluster`), through a ``redis+cluster://`` URL.

Each test also checks that the session's single Redis holds no flowline key: what it observed
ran on the cluster. The store contract runs on the cluster too (`tests.test_backends`).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from typing import Any

import pytest
from redis import Redis as SyncRedis
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

import flowline
from examples.fanbase.fanbase_pb2 import FanbaseEvent
from flowline import Settings
from flowline.backends.jetstream import ensure_stream
from flowline.runtime.cluster import WaitingCluster
from flowline.runtime.connections import connect_redis
from flowline.runtime.eventlog import stream_key
from flowline.runtime.keys import QueueKeys, stream_dead_letters
from flowline.servers import LocalServers
from tests.apps import recorder

from .conftest import ROOT, eventually, flowline_cli
from .redis_cluster import LocalCluster

APP = "tests.apps.recorder:pipeline"
CHANNELS = "examples.fanbase.channels:app"
Q = QueueKeys("recorder")
FANBASE = {name: QueueKeys(f"fanbase-{name}") for name in ("email", "sms", "social", "audit")}


@pytest.fixture
def cluster_env(redis_cluster: LocalCluster, servers: LocalServers) -> dict[str, str]:
    """The environment of a process on the cluster (and the session's nats-server)."""
    return {**servers.env(), "FLOWLINE_REDIS_URL": redis_cluster.url}


@pytest.fixture
def on_cluster(servers: LocalServers, redis_cluster: LocalCluster) -> Settings:
    return Settings(nats_url=servers.nats_url, redis_url=redis_cluster.url, grace=5.0)


@pytest.fixture(autouse=True)
def nothing_on_the_single_redis(servers: LocalServers) -> Any:
    """After the test: the session's single Redis saw none of it."""
    yield
    with SyncRedis.from_url(servers.redis_url) as single:
        assert single.keys("flowline:*") == []


async def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(flowline_cli, *args, env=env)


async def records(redis: Any, queue: QueueKeys) -> dict[str, dict[str, str]]:
    """Every job record of `queue`, by job id (SCAN over every primary)."""
    out = {}
    async for key in redis.scan_iter(match=queue.job_prefix + "*", count=1000):
        raw = await redis.hgetall(key)
        out[key.decode().removeprefix(queue.job_prefix)] = {
            k.decode(): v.decode() for k, v in raw.items()
        }
    return out


async def completed(redis: Any, queue: QueueKeys, n: int) -> dict[str, dict[str, str]] | None:
    found = await records(redis, queue)
    done = len(found) == n and all(r["state"] == "completed" for r in found.values())
    return found if done else None


async def runs(redis: Any) -> list[dict[str, Any]]:
    return [json.loads(x) for x in await redis.lrange("test:runs", 0, -1)]


def assert_each_queue_on_its_slots_primary(cluster: LocalCluster, queues: list[QueueKeys]) -> set:
    """Every key of each queue is on the primary serving the queue's hash tag; returns the
    ports of the primaries that hold them."""
    held = cluster.keys_by_port()
    ports = set()
    for queue in queues:
        owner = cluster.owner(key_slot(queue.jobs.encode()))
        keys = {port: {k for k in ks if k.startswith(queue.prefix)} for port, ks in held.items()}
        assert keys[owner], (queue.name, owner, held)
        assert all(not ks for port, ks in keys.items() if port != owner), (queue.name, keys)
        ports.add(owner)
    return ports


async def follow_and_unfollow(js: Any) -> None:
    """fan-1 follows talent-1, then fan-2 unfollows talent-2."""
    for fan, talent, action in (
        ("fan-1", "talent-1", "followed"),
        ("fan-2", "talent-2", "unfollowed"),
    ):
        event = FanbaseEvent(fan=fan, talent=talent, action=action)
        await js.publish("fanbase", event.SerializeToString())


async def events_cli(env: dict[str, str], *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "flowline", "events", *args,
        cwd=ROOT, env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def read_lines(proc: asyncio.subprocess.Process, n: int) -> list[dict[str, Any]]:
    assert proc.stdout is not None
    lines = [json.loads(await asyncio.wait_for(proc.stdout.readline(), 20)) for _ in range(n)]
    proc.send_signal(signal.SIGINT)
    _, err = await asyncio.wait_for(proc.communicate(), 15)
    assert proc.returncode == 0, err
    return lines


async def test_fanbase_channels_run_with_their_queues_on_several_primaries(
    worker, js, redis_cluster, cluster_redis, cluster_env
):
    """The fanbase channels example (two pipelines, four queues) sends and audits every
    notification; each queue's keys live on its slot's primary, and the queues use more than
    one primary. `flowline events` follows both pipelines' logs (two slots) as they happen,
    and `flowline status` counts each queue's jobs."""
    proc = worker(CHANNELS, env=cluster_env)
    await proc.ready()
    # --since 0: a follower slow to start (a loaded CI machine) still sees every event, first
    # those already kept, then the rest as they happen.
    follower = await events_cli(cluster_env, CHANNELS, "job:complete", "--json", "--since", "0")
    await asyncio.sleep(1.5)  # most of them arrive while it follows
    await follow_and_unfollow(js)

    want = {"email": 3, "sms": 2, "social": 1, "audit": 6}
    for name, n in want.items():
        await eventually(lambda q=FANBASE[name], n=n: completed(cluster_redis, q, n), timeout=20)
    audited = await records(cluster_redis, FANBASE["audit"])
    channels = Counter(json.loads(r["result"])["channel"] for r in audited.values())
    assert channels == {"email": 3, "sms": 2, "social": 1}

    ports = assert_each_queue_on_its_slots_primary(redis_cluster, list(FANBASE.values()))
    assert len(ports) > 1, ports

    lines = await read_lines(follower, 12)
    by_pipeline = Counter(line["pipeline"] for line in lines)
    assert by_pipeline == {"fanbase-channels": 6, "fanbase-audit": 6}
    slots = {key_slot(stream_key(p).encode()) for p in by_pipeline}
    assert len(slots) == 2  # what a single XREAD on a cluster would have refused

    status = await cli(cluster_env, "status", CHANNELS, "--json")
    assert status.returncode == 0, status.stderr
    doc = json.loads(status.stdout)
    assert doc["servers"] == {"redis": "ok", "nats": "ok"}
    done = {q["name"]: q["completed_1m"] for p in doc["pipelines"] for q in p["queues"]}
    assert done == {f"fanbase-{name}": n for name, n in want.items()}
    assert [p["pid"] for p in doc["processes"]] == [proc.pid]
    # Workers' XREADGROUP and the follower's XREADs found their slots without asking a node
    # for their keys (redis-py would, with COMMAND GETKEYS, once per read).
    assert redis_cluster.command_calls("command|getkeys") == 0


async def test_the_fanbase_example_runs_on_the_cluster(worker, js, cluster_redis, cluster_env):
    """The README's fanbase pipeline: a follow becomes two emails, an unfollow one."""
    proc = worker("examples.fanbase.pipeline:pipeline", env=cluster_env)
    await proc.ready()
    await follow_and_unfollow(js)
    queue = QueueKeys("fanbase-notifications")
    done = await eventually(lambda: completed(cluster_redis, queue, 3))
    topics = sorted(r["topic"] for r in done.values())
    assert topics == ["confirm-fan-unfollowing", "notify-fan-following", "notify-talent-following"]
    assert {r["progress"] for r in done.values()} == {"100"}


async def test_commands_past_the_pool_wait_for_a_connection(redis_cluster, cluster_redis):
    """More concurrent commands than `redis_max_connections` wait their turn instead of
    failing (redis-py's cluster pools raise when full), and no node gets more connections."""
    settings = Settings(redis_url=redis_cluster.url, redis_max_connections=4)
    redis = await connect_redis(settings, name="pool-test")
    try:
        key = QueueKeys("pool").jobs
        replies = await asyncio.gather(
            *(redis.xread({key: "$"}, block=100) for _ in range(40)), return_exceptions=True
        )
        assert [r for r in replies if isinstance(r, Exception)] == []
        by_node = await cluster_redis.client_list(target_nodes=RedisCluster.PRIMARIES)
        ours = {node: sum(c["name"] == "pool-test" for c in cs) for node, cs in by_node.items()}
        # Four for commands, and on a startup node the one that discovered the cluster.
        assert 1 <= max(ours.values()) <= 4 + 1, ours
    finally:
        await redis.aclose()


async def test_a_sigkilled_workers_job_is_taken_over_and_completes_once(
    worker, js, redis_cluster, cluster_redis, cluster_env
):
    """A job whose worker is SIGKILLed mid-run is reclaimed by another worker after the
    visibility timeout (2 s in the app) and completes there, once, as attempt 2."""
    first = worker(APP, env=cluster_env)
    await first.ready()
    await ensure_stream(js, "recorder")
    await js.publish(
        "recorder", json.dumps({"jobs": [{"topic": "record", "data": {"sleep": 2}}]}).encode()
    )
    job_id = "recorder:1:0"

    async def started(attempt: int) -> list[dict[str, Any]]:
        return [
            r
            for r in await runs(cluster_redis)
            if r["event"] == "start" and r["attempt"] == attempt
        ]

    await eventually(lambda: started(1))
    first.kill()
    killed_at = time.time()
    second = worker(APP, env=cluster_env)
    await second.ready()
    [again] = await eventually(lambda: started(2), timeout=20)
    assert again["pid"] == second.pid
    assert 1.5 <= again["t"] - killed_at <= 8
    await eventually(lambda: completed(cluster_redis, Q, 1), timeout=20)
    done = [r for r in await runs(cluster_redis) if r["event"] == "done"]
    assert [(r["id"], r["pid"], r["attempt"]) for r in done] == [(job_id, second.pid, 2)]
    record = (await records(cluster_redis, Q))[job_id]
    assert (record["state"], record["attempt"]) == ("completed", "2")
    assert_each_queue_on_its_slots_primary(redis_cluster, [Q])


@pytest.mark.cluster
async def test_many_jobs_survive_a_killed_worker_none_finishing_twice_per_attempt(
    worker, js, cluster_redis, cluster_env
):
    """200 jobs over two workers, one SIGKILLed midway and replaced: every job completes, none
    twice by one attempt."""
    a = worker(APP, "--concurrency", "10", env=cluster_env)
    b = worker(APP, "--concurrency", "10", env=cluster_env)
    await a.ready()
    await b.ready()
    await ensure_stream(js, "recorder")
    for _ in range(40):
        batch = [{"topic": "record", "data": {"sleep": 0.2}} for _ in range(5)]
        await js.publish("recorder", json.dumps({"jobs": batch}).encode())

    async def done_count() -> int:
        return sum(r["event"] == "done" for r in await runs(cluster_redis))

    await eventually(lambda: _at_least(done_count(), 60), timeout=30)
    a.kill()
    c = worker(APP, "--concurrency", "10", env=cluster_env)
    await c.ready()
    await eventually(lambda: completed(cluster_redis, Q, 200), timeout=60)
    done = [(r["id"], r["attempt"]) for r in await runs(cluster_redis) if r["event"] == "done"]
    assert len({job_id for job_id, _ in done}) == 200
    # Never twice by one attempt (two live workers at once). A job whose worker was killed
    # between its handler's return and the ack may finish again as attempt 2: at least once,
    # as the README says; at most the killed worker's ten.
    assert [pair for pair, n in Counter(done).items() if n > 1] == []
    assert len(done) - 200 <= 10, done
    assert any(r["attempt"] == 2 for r in await runs(cluster_redis))  # a's jobs were taken over


async def _at_least(count: Any, n: int) -> bool:
    return await count >= n


async def test_dead_letters_jobs_and_cancel_through_the_cli(
    worker, js, redis_cluster, cluster_redis, cluster_env, on_cluster
):
    """`flowline dlq` lists and replays a job's and a message's dead letters; `flowline jobs`
    finds a job by id, lists the failed, cancels a delayed job and cleans finished records;
    `dlq purge` empties both stores: each on the cluster."""
    proc = worker(APP, env={**cluster_env, "FLOWLINE_TEST_RETRIES": "0"})
    await proc.ready()
    flaky = {"jobs": [{"topic": "flaky", "data": {"succeed_on": 2}}]}
    await js.publish("recorder", json.dumps(flaky).encode())
    await js.publish("recorder", b"not json")
    stream_side = stream_dead_letters(recorder.pipeline.name).dead
    await eventually(lambda: cluster_redis.xlen(Q.dead))
    await eventually(lambda: cluster_redis.xlen(stream_side))

    listed = await cli(cluster_env, "dlq", "list", APP, "--json")
    assert listed.returncode == 0, listed.stderr
    letters = [json.loads(line) for line in listed.stdout.splitlines()]
    assert sorted(x["stage"] for x in letters) == ["decode", "job"]
    job_letter = next(x for x in letters if x["stage"] == "job")
    replayed = await cli(cluster_env, "dlq", "replay", APP, job_letter["id"])
    assert replayed.returncode == 0, replayed.stderr
    assert "replayed 1" in replayed.stdout

    async def flaky_starts() -> int:
        return sum(
            r["topic"] == "flaky" and r["event"] == "start" for r in await runs(cluster_redis)
        )

    await eventually(lambda: _at_least(flaky_starts(), 2))
    await eventually(lambda: cluster_redis.xlen(Q.dead))

    shown = await cli(cluster_env, "jobs", APP, "recorder:1:0", "--json")
    assert shown.returncode == 0, shown.stderr
    doc = json.loads(shown.stdout)
    assert (doc["state"], doc["topic"], doc["error"]) == (
        "failed",
        "flaky",
        "flaky failure on attempt 1",
    )
    assert "ConnectionError" in doc["traceback"]
    failed = await cli(cluster_env, "jobs", APP, "--state", "failed", "--json")
    assert [j["id"] for j in json.loads(failed.stdout)["jobs"]] == ["recorder:1:0"]

    # A delayed job, written by enqueue_sync's own (sync) cluster client, then cancelled.
    delayed = await asyncio.to_thread(
        recorder.pipeline.enqueue_sync, "record", {}, delay=600, redis_url=redis_cluster.url
    )
    cancelled = await cli(cluster_env, "jobs", APP, "cancel", delayed)
    assert cancelled.returncode == 0, cancelled.stderr
    assert (
        cancelled.stdout.strip()
        == f"cancelled {delayed} (recorder): it was delayed and will not run"
    )

    async with flowline.connect(recorder.pipeline, on_cluster):
        quick = await recorder.pipeline.enqueue("record", {})
    await eventually(lambda: _state(cluster_redis, quick, "completed"))
    await asyncio.sleep(1.1)
    cleaned = await cli(
        cluster_env, "jobs", APP, "clean", "--state", "completed", "--older-than", "1s"
    )
    assert cleaned.returncode == 0, cleaned.stderr
    assert "deleted 1 completed job record(s)" in cleaned.stdout
    assert not await cluster_redis.exists(Q.job(quick))
    assert await cluster_redis.exists(Q.job(delayed))  # cancelled, not completed: kept

    purged = await cli(cluster_env, "dlq", "purge", APP, "--all")
    assert purged.returncode == 0, purged.stderr
    assert "purged 2" in purged.stdout
    assert await cluster_redis.xlen(Q.dead) == await cluster_redis.xlen(stream_side) == 0
    assert_each_queue_on_its_slots_primary(
        redis_cluster, [Q, stream_dead_letters(recorder.pipeline.name)]
    )


async def _state(redis: Any, job_id: str, state: str) -> bool:
    return await redis.hget(Q.job(job_id), "state") == state.encode()


async def test_a_task_holding_a_permit_sends_more_without_waiting(redis_cluster):
    """A command sent while its task holds the client's only permit (as a pipeline retrying a
    redirected command does) goes through instead of waiting for a second one."""
    settings = Settings(redis_url=redis_cluster.url, redis_max_connections=4)
    redis = await connect_redis(settings)
    assert isinstance(redis, WaitingCluster)
    try:
        for _ in range(4):
            await redis._flowline_slots.acquire()  # every other permit is taken
        redis._flowline_slots.release()
        async with redis._flowline_permit():
            assert await asyncio.wait_for(redis.ping(), 2)
    finally:
        for _ in range(3):
            redis._flowline_slots.release()
        await redis.aclose()


async def test_a_worker_on_a_cluster_with_tls_and_a_password(worker, js, servers, tls_cluster):
    """rediss+cluster:// with a password and FLOWLINE_TLS_CA: the worker runs a job; the
    password appears in no log line."""
    tls_cluster.flush()
    env = {
        **servers.env(),
        "FLOWLINE_REDIS_URL": tls_cluster.url,
        "FLOWLINE_TLS_CA": str(tls_cluster.ca_file),
    }
    proc = worker(APP, env=env)
    await proc.ready()
    await ensure_stream(js, "recorder")
    await js.publish("recorder", json.dumps({"jobs": [{"topic": "record"}]}).encode())

    def done() -> bool:
        port = tls_cluster.owner(key_slot(Q.jobs.encode()))
        with tls_cluster.client(port) as r:
            return r.hget(Q.job("recorder:1:0"), "state") == b"completed"

    await eventually(done)
    started = next(x for x in proc.lines() if x.get("event") == "flowline started")
    assert started["redis"] == tls_cluster.url.replace("s3cret-cluster", "***")
    assert "s3cret-cluster" not in proc.output()
    assert tls_cluster.url.startswith("rediss+cluster://:s3cret-cluster@")


pytestmark = pytest.mark.timeout(120)


async def test_a_sharded_queue_spreads_over_the_primaries(
    worker, js, redis_cluster, cluster_redis, cluster_env
):
    """Queue(shards=6) on three primaries: its shards' keys sit on the primaries of their own
    hash tags, more than one primary serves the queue, and two workers run all 300 jobs once
    each (placed by id, so each primary's share follows its shards)."""
    env = {**cluster_env, "FLOWLINE_TEST_SHARDS": "6"}
    procs = [worker(APP, env=env) for _ in range(2)]
    for proc in procs:
        await proc.ready()
    await ensure_stream(js, "recorder")
    for n in range(300):
        await js.publish(
            "recorder", json.dumps({"jobs": [{"topic": "record", "data": {"n": n}}]}).encode()
        )
    shards = [QueueKeys(f"recorder#{i}") for i in range(6)]

    async def all_done() -> bool:
        done = [r for r in await runs(cluster_redis) if r["event"] == "done"]
        return len(done) >= 300

    await eventually(all_done, timeout=60)
    done = Counter(r["id"] for r in await runs(cluster_redis) if r["event"] == "done")
    assert len(done) == 300
    assert set(done.values()) == {1}
    ports = assert_each_queue_on_its_slots_primary(redis_cluster, shards)
    expected = {redis_cluster.owner(key_slot(q.jobs.encode())) for q in shards}
    assert ports == expected
    assert len(ports) >= 2  # one queue, several primaries
    held = redis_cluster.keys_by_port("flowline:{recorder#*}:job:*")
    assert sum(len(keys) for keys in held.values()) == 300
    assert all(held[port] for port in ports)
