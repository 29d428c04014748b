"""The `flowline` command: dead-letter inspection, replay and purge, and publishing."""

from __future__ import annotations

import asyncio
import json
import subprocess

import pytest

from flowline.runtime.keys import QueueKeys, stream_dead_letters

from .conftest import eventually, flowline_cli, runs

APP = "tests.apps.recorder:pipeline"
Q = QueueKeys("recorder")


def cli(servers, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return flowline_cli(*args, env={**servers.env(), **(env or {})})


async def run_cli(servers, *args: str, env: dict[str, str] | None = None):
    return await asyncio.to_thread(cli, servers, *args, env=env)


async def test_dlq_list_replay_and_purge(worker, servers, js, redis):
    """Dead letters are listed, a replayed job runs again through its queue, purge removes them."""
    proc = worker(APP, env={"FLOWLINE_TEST_RETRIES": "0"})
    await proc.ready()
    await js.publish(
        "recorder", json.dumps({"jobs": [{"topic": "flaky", "data": {"succeed_on": 2}}]}).encode()
    )
    await js.publish("recorder", b"not json")
    await eventually(lambda: redis.xlen(Q.dead))
    await eventually(lambda: redis.xlen(stream_dead_letters("recorder-recorder").dead))

    listed = await run_cli(servers, "dlq", "list", APP, "--json")
    assert listed.returncode == 0, listed.stderr
    letters = [json.loads(line) for line in listed.stdout.splitlines()]
    assert sorted(x["stage"] for x in letters) == ["decode", "job"]
    job_letter = next(x for x in letters if x["stage"] == "job")
    assert job_letter["topic"] == "flaky"
    assert "flaky failure on attempt 1" in job_letter["error"]
    human = await run_cli(servers, "dlq", "list", APP)
    assert "flaky" in human.stdout
    assert "decode" in human.stdout

    replayed = await run_cli(servers, "dlq", "replay", APP, job_letter["id"])
    assert replayed.returncode == 0, replayed.stderr
    assert "replayed 1" in replayed.stdout
    # The replay is attempt 1 again, fails (succeed_on=2, retries=0) and is dead-lettered anew.
    await eventually(lambda: _starts(redis, "flaky", 2))
    await eventually(lambda: redis.xlen(Q.dead))

    missing = await run_cli(servers, "dlq", "replay", APP, "0-1")
    assert missing.returncode != 0
    assert "no dead letter with id 0-1" in missing.stderr
    nothing = await run_cli(servers, "dlq", "purge", APP)
    assert nothing.returncode != 0
    assert "pass --all" in nothing.stderr

    purged = await run_cli(servers, "dlq", "purge", APP, "--all")
    assert purged.returncode == 0
    assert "purged 2" in purged.stdout
    after = await run_cli(servers, "dlq", "list", APP, "--json")
    assert after.stdout.strip() == ""


async def test_one_entry_id_in_two_stores_names_neither_alone(servers, redis):
    """Ids are per Redis stream: when a queue's and the stream side's dead letters share one,
    list qualifies both, and a bare id is refused rather than replaying or purging both."""
    record = {"kind": "job", "stage": "job", "queue": "recorder", "topic": "t", "error": "e"}
    stream_store = stream_dead_letters("recorder-recorder").dead
    for store in (Q.dead, stream_store):
        await redis.xadd(store, {"id": "x", "record": json.dumps(record)}, id="5-0")
    listed = await run_cli(servers, "dlq", "list", APP, "--json")
    assert listed.returncode == 0, listed.stderr
    ids = sorted(json.loads(line)["id"] for line in listed.stdout.splitlines())
    assert ids == sorted([f"5-0@{Q.dead}", f"5-0@{stream_store}"])

    bare = await run_cli(servers, "dlq", "purge", APP, "5-0")
    assert bare.returncode == 1
    assert bare.stderr.strip() == (
        f"Error: dead letter id 5-0 is in several stores; give one of: 5-0@{stream_store}, "
        f"5-0@{Q.dead}"
    )
    assert await redis.xlen(Q.dead) == await redis.xlen(stream_store) == 1  # nothing purged
    one = await run_cli(servers, "dlq", "purge", APP, f"5-0@{Q.dead}", f"5-0@{Q.dead}")
    assert one.stdout.strip() == "purged 1", one.stderr
    assert (await redis.xlen(Q.dead), await redis.xlen(stream_store)) == (0, 1)


async def test_replay_by_qualified_id_replays_that_letter_alone(servers, redis):
    """`dlq replay ID@STORE` replays only the letter of that store: the job goes back on its
    queue; the stream message of the same id stays, and NATS, which only it needs, is not
    reached (it is down here)."""
    job = {"kind": "job", "stage": "job", "queue": "recorder", "job_id": "j1", "topic": "record",
           "data": "{}", "error": "e"}  # fmt: skip
    message = {"kind": "message", "stage": "decode", "subject": "recorder", "stream": "recorder",
               "sequence": 1, "payload_b64": "", "error": "e"}  # fmt: skip
    stream_store = stream_dead_letters("recorder-recorder").dead
    await redis.xadd(Q.dead, {"id": "j1", "record": json.dumps(job)}, id="5-0")
    await redis.xadd(stream_store, {"id": "m", "record": json.dumps(message)}, id="5-0")
    down = {"FLOWLINE_NATS_URL": "nats://127.0.0.1:1"}
    replayed = await run_cli(servers, "dlq", "replay", APP, f"5-0@{Q.dead}", env=down)
    assert replayed.stdout.strip() == "replayed 1", replayed.stderr
    assert await redis.hget(Q.job("j1"), "state") == b"queued"
    assert (await redis.xlen(Q.dead), await redis.xlen(stream_store)) == (0, 1)


async def test_replayed_message_goes_back_through_the_stream(worker, servers, js, redis):
    """A dead-lettered message, replayed after the cause is fixed, is routed and its jobs run."""
    proc = worker(APP, env={"FLOWLINE_TEST_MAX_DELIVER": "1"})
    await proc.ready()
    await js.publish(
        "recorder", json.dumps({"raise": "db down", "jobs": [{"topic": "record"}]}).encode()
    )
    dead_key = stream_dead_letters("recorder-recorder").dead
    [(entry, fields)] = await eventually(lambda: redis.xrange(dead_key))
    record = json.loads(fields[b"record"])
    assert record["stage"] == "route"
    assert "db down" in record["error"]
    # "Fix the cause": replaying re-publishes the same payload; this router raises on it again,
    # which proves the replay went through the stream and the route stage once more.
    replayed = await run_cli(servers, "dlq", "replay", APP, "--all")
    assert "replayed 1" in replayed.stdout
    await eventually(lambda: _dead_count(redis, dead_key, 1), timeout=20)
    [(entry2, fields2)] = await redis.xrange(dead_key)
    assert entry2 != entry  # a new dead letter, not the old one left in place
    assert json.loads(fields2[b"record"])["sequence"] == 2


async def test_publish_command_encodes_json_with_the_stream_type(worker, servers, redis):
    """`flowline publish` encodes a JSON object as the pipeline's protobuf and dedups by msg id."""
    proc = worker("examples.fanbase.pipeline:pipeline")
    await proc.ready()
    event = json.dumps({"fan": "fan-3", "talent": "talent-2", "action": "unfollowed"})
    first = await run_cli(
        servers, "publish", "examples.fanbase.pipeline:pipeline", "--json", event, "--msg-id", "m1"
    )
    again = await run_cli(
        servers, "publish", "examples.fanbase.pipeline:pipeline", "--json", event, "--msg-id", "m1"
    )
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == again.stdout.strip() == "published as sequence 1"
    key = QueueKeys("fanbase-notifications").job("fanbase:1:0")
    await eventually(lambda: _state(redis, key, b"completed"))
    result = json.loads(await redis.hget(key, "result"))
    assert result["subject"] == "You've stopped following Miles Davis!"
    bad = await run_cli(servers, "publish", "examples.fanbase.pipeline:pipeline", "--json", "{nope")
    assert bad.returncode != 0
    assert "not JSON" in bad.stderr


async def _starts(redis, topic: str, n: int) -> bool:
    return len([r for r in await runs(redis) if r["topic"] == topic and r["event"] == "start"]) >= n


async def _dead_count(redis, key: str, n: int) -> bool:
    entries = await redis.xrange(key)
    return len(entries) == n and json.loads(entries[0][1][b"record"])["sequence"] == 2


async def _state(redis, key: str, state: bytes) -> bool:
    return await redis.hget(key, "state") == state


COMMANDS = {
    "worker": ["worker", APP],
    "status": ["status", APP],
    "events": ["events", APP],
    "jobs": ["jobs", APP, "some-id"],
    "dlq list": ["dlq", "list", APP],
    "dlq purge": ["dlq", "purge", APP, "--all"],
    "publish": ["publish", "examples.fanbase.pipeline:pipeline", "--json", "{}"],
    "dashboard": ["dashboard", APP, "--port", "0"],
}


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("FLOWLINE_HEARTBEAT", "soon", "FLOWLINE_HEARTBEAT must be a number, got 'soon'"),
        ("FLOWLINE_EVENTS_RETENTION", "-5", "events_retention must be >= 0 (0: off), got -5"),
    ],
)
@pytest.mark.parametrize("command", sorted(COMMANDS))
async def test_a_bad_flowline_variable_is_one_line_for_every_command(
    servers, command: str, variable: str, value: str, message: str
):
    """Every command reads FLOWLINE_* the same way: a bad value is one line, no traceback."""
    r = await run_cli(servers, *COMMANDS[command], env={variable: value})
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    assert r.stderr.strip() == f"Error: {message}", r.stderr


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ('{"fan": 5}', "not a FanbaseEvent: Failed to parse fan field: expected string"),
        ('{"fan": "f", "colour": "red"}', 'has no field named "colour" at "FanbaseEvent".'),
        ("[1, 2]", "not a FanbaseEvent: expected the message or a dict of its fields, got list"),
    ],
)
async def test_publish_names_the_field_that_does_not_fit(servers, js, payload: str, message: str):
    """A JSON object that is not the stream's message: one line naming the field, nothing sent."""
    before = (await js.stream_info("fanbase")).state.messages if await _has(js, "fanbase") else 0
    r = await run_cli(servers, "publish", "examples.fanbase.pipeline:pipeline", "--json", payload)
    assert r.returncode == 1, r.stdout
    assert "Traceback" not in r.stderr
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("Error: "), line
    assert message in line, line
    after = (await js.stream_info("fanbase")).state.messages if await _has(js, "fanbase") else 0
    assert after == before


async def _has(js, stream: str) -> bool:
    try:
        await js.stream_info(stream)
    except Exception:
        return False
    return True
