"""`flowline jobs`, job lookups, and every command connecting only to the servers it needs."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

import flowline
from flowline import ConfigurationError, Settings
from flowline.runtime.jobs import SourceMessage
from flowline.runtime.keys import QueueKeys, stream_dead_letters
from flowline.servers import LocalServers, free_port
from tests.apps import recorder

from .conftest import eventually, flowline_cli

APP = "tests.apps.recorder:pipeline"
Q = QueueKeys("recorder")
JOB_KEYS = {
    *("id", "queue", "topic", "state", "attempt", "progress", "result", "error", "traceback"),
    *("created", "finished", "due", "running_on", "origin", "message", "dead_letter"),
}
LETTER_KEYS = {
    *("id", "kind", "stage", "job_id", "queue", "topic", "message", "attempts", "error"),
    *("traceback", "failed_at"),
}


async def cli(servers: LocalServers, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`flowline ARGS` with the servers in FLOWLINE_* (as for a worker), plus `env`."""
    return await asyncio.to_thread(flowline_cli, *args, env={**servers.env(), **env})


async def jobs_json(servers: LocalServers, *args: str) -> Any:
    r = await cli(servers, "jobs", APP, *args, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def one_line_error(r: subprocess.CompletedProcess[str]) -> str:
    """The command failed with a single ``Error: ...`` line and no traceback; returns it."""
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, r.stderr
    return errors[0]


def closed_nats() -> str:
    return f"nats://127.0.0.1:{free_port()}"


def closed_redis() -> str:
    return f"redis://127.0.0.1:{free_port()}/0"


async def record_of(redis: Any, job_id: str, state: str) -> bool:
    return await redis.hget(Q.job(job_id), "state") == state.encode()


@pytest.fixture
async def jobs_in_every_state(
    worker: Any, servers: LocalServers, settings: Settings, js: Any, redis: Any
) -> dict[str, str]:
    """A worker, and one job of each state: completed (from a stream message), running,
    failed, delayed and retrying; plus a dead-lettered stream message. Returns their ids."""
    proc = worker(APP, env={"FLOWLINE_TEST_RETRIES": "1"})
    await proc.ready()
    await js.publish("recorder", json.dumps({"jobs": [{"topic": "record"}]}).encode())
    await js.publish("recorder", b"not json")
    async with flowline.connect(recorder.pipeline, settings):
        p = recorder.pipeline
        ids = {
            "completed": "recorder:1:0",
            "running": await p.enqueue("hang", {}),
            "failed": await p.enqueue("boom", {}),
            "delayed": await p.enqueue("record", {}, delay=600),
            "retrying": await p.enqueue("retry-later", {"delay": 600}),
        }
    for state in ("completed", "failed", "retrying"):
        await eventually(lambda s=state: record_of(redis, ids[s], s))
    await eventually(lambda: redis.xlen(stream_dead_letters(recorder.pipeline.name).dead))
    await eventually(lambda: _held(redis))
    return ids


async def _held(redis: Any) -> bool:
    return (await redis.xpending(Q.jobs, "flowline"))["pending"] == 1


class TestOneJob:
    async def test_each_state_with_what_the_job_knows(
        self, jobs_in_every_state: dict[str, str], servers: LocalServers
    ) -> None:
        """`--json` gives state, attempt, progress, result, error, traceback, times, message."""
        ids = jobs_in_every_state
        docs = dict(
            zip(
                ids,
                await asyncio.gather(*(jobs_json(servers, i) for i in ids.values())),
                strict=True,
            )
        )
        assert all(set(doc) == JOB_KEYS for doc in docs.values())
        assert {name: doc["state"] for name, doc in docs.items()} == {
            "completed": "completed",
            "running": "running",
            "failed": "failed",
            "delayed": "delayed",
            "retrying": "retrying",
        }
        done = docs["completed"]
        assert done["result"] == {"ok": True, "id": "recorder:1:0"}
        assert (done["progress"], done["attempt"], done["origin"]) == (100, 1, "stream")
        assert done["message"] == {"stream": "recorder", "sequence": 1, "subject": "recorder"}
        assert done["created"] <= done["finished"]
        assert docs["running"]["running_on"].endswith("-recorder")
        assert docs["running"]["finished"] is None
        failed = docs["failed"]
        assert (failed["attempt"], failed["error"], failed["origin"]) == (2, "boom", "direct")
        assert failed["message"] is None
        assert failed["traceback"].startswith("Traceback (most recent call last)")
        assert "ValueError: boom" in failed["traceback"]
        assert failed["dead_letter"] is not None
        for name in ("delayed", "retrying"):
            assert docs[name]["due"] > docs[name]["created"] + 500
            assert docs[name]["running_on"] is None

    async def test_human_output_names_every_field_and_the_traceback(
        self, jobs_in_every_state: dict[str, str], servers: LocalServers
    ) -> None:
        """Without --json a job is one `name value` line per field, then its traceback."""
        ids = jobs_in_every_state
        failed, done = await asyncio.gather(
            cli(servers, "jobs", APP, ids["failed"]), cli(servers, "jobs", APP, ids["completed"])
        )
        assert failed.returncode == 0, failed.stderr
        lines = failed.stdout.splitlines()
        assert lines[:4] == [
            f"job          {ids['failed']}",
            "queue        recorder",
            "topic        boom",
            "state        failed",
        ]
        assert "error        boom" in lines
        assert any(line.startswith("dead letter  ") for line in lines)
        assert "traceback:" in lines
        assert lines[-1] == "ValueError: boom"
        assert "message      stream recorder, sequence 1, subject recorder" in done.stdout
        assert 'result       {"ok": true, "id": "recorder:1:0"}' in done.stdout

    async def test_the_queue_handle_sees_running_and_tracebacks(
        self, jobs_in_every_state: dict[str, str], settings: Settings
    ) -> None:
        """`pipeline.queue(name).job(id)` reports what `flowline jobs` does."""
        ids = jobs_in_every_state
        async with flowline.connect(recorder.pipeline, settings):
            handle = recorder.pipeline.queue("recorder")
            running = await handle.job(ids["running"])
            failed = await handle.job(ids["failed"])
            done = await handle.job(ids["completed"])
        assert running is not None
        assert running.state == "running"
        assert running.running_on is not None
        assert failed is not None
        assert failed.traceback is not None
        assert "ValueError: boom" in failed.traceback
        assert done is not None
        assert done.message == SourceMessage("recorder", 1, "recorder")

    async def test_a_record_that_names_no_entry_is_still_found_running(self, redis: Any) -> None:
        """Records written before they named their entry: the holder comes from a scan."""
        from flowline.runtime import jobs as inspection
        from flowline.runtime.keys import GROUP

        q = QueueKeys("recorder")
        await redis.xgroup_create(q.jobs, GROUP, id="0", mkstream=True)
        await redis.hset(q.job("old-1"), mapping={"state": "queued", "topic": "record",
                                                  "attempt": 1, "created": 1})  # fmt: skip
        await redis.xadd(q.jobs, {"id": "old-1", "topic": "record", "data": "{}", "attempt": 1})
        await redis.xreadgroup(GROUP, "old-worker", {q.jobs: ">"}, count=1)
        [found] = await inspection.find(redis, {"recorder": {}}, "old-1")
        assert (found.state, found.running_on) == ("running", "old-worker")


class TestListing:
    async def test_each_state_lists_its_jobs(
        self, jobs_in_every_state: dict[str, str], servers: LocalServers
    ) -> None:
        """--state failed / dead / running / delayed list the matching jobs and dead letters."""
        ids = jobs_in_every_state
        failed, dead, running, delayed = await asyncio.gather(
            *(jobs_json(servers, "--state", s) for s in ("failed", "dead", "running", "delayed"))
        )
        assert (failed["state"], failed["limit"]) == ("failed", 20)
        assert [j["id"] for j in failed["jobs"]] == [ids["failed"]]
        assert "ValueError: boom" in failed["jobs"][0]["traceback"]
        assert [j["id"] for j in running["jobs"]] == [ids["running"]]
        assert running["jobs"][0]["running_on"]
        assert [(j["id"], j["state"]) for j in delayed["jobs"]] == [
            (ids["delayed"], "delayed"),
            (ids["retrying"], "retrying"),
        ]
        assert all(set(j) == JOB_KEYS for d in (failed, running, delayed) for j in d["jobs"])
        letters = dead["dead_letters"]
        assert all(set(x) == LETTER_KEYS for x in letters)
        assert [(x["kind"], x["stage"]) for x in letters] == [("job", "job"), ("message", "decode")]
        assert letters[0]["job_id"] == ids["failed"]
        assert letters[1]["message"] == {"stream": "recorder", "sequence": 2, "subject": "recorder"}
        assert letters[0]["id"] == failed["jobs"][0]["dead_letter"]

    async def test_limit_and_queue_narrow_the_listing(
        self, jobs_in_every_state: dict[str, str], servers: LocalServers
    ) -> None:
        """--limit caps a listing (soonest due first); --queue keeps one queue's jobs."""
        ids = jobs_in_every_state
        one = await jobs_json(servers, "--state", "delayed", "--limit", "1")
        assert [j["id"] for j in one["jobs"]] == [ids["delayed"]]
        assert one["limit"] == 1
        dead = await jobs_json(servers, "--state", "dead", "--queue", "recorder")
        assert [x["kind"] for x in dead["dead_letters"]] == ["job"]

    async def test_human_listing_is_one_line_per_job(
        self, jobs_in_every_state: dict[str, str], servers: LocalServers
    ) -> None:
        """Without --json each job is one line: id, queue, topic, state, attempt, and more."""
        ids = jobs_in_every_state
        running, dead = await asyncio.gather(
            cli(servers, "jobs", APP, "--state", "running"),
            cli(servers, "jobs", APP, "--state", "dead"),
        )
        [line] = running.stdout.splitlines()
        assert line.startswith(f"{ids['running']}  recorder  hang  running  attempt=1  on ")
        assert len(dead.stdout.splitlines()) == 2
        assert "ValueError: boom" in dead.stdout

    async def test_an_empty_listing(self, servers: LocalServers, redis: Any) -> None:
        """Nothing in a state: a sentence, or an empty list in JSON."""
        human = await cli(servers, "jobs", APP, "--state", "failed")
        assert human.stdout.strip() == "no failed jobs"
        assert (await jobs_json(servers, "--state", "dead"))["dead_letters"] == []


class TestBadInput:
    @pytest.mark.parametrize(
        ("args", "message"),
        [
            (["nope"], "no job 'nope' in queue(s) recorder"),
            (["--state", "lost"], "Invalid value for '--state': 'lost' is not one of"),
            (["--state", "failed", "--limit", "0"], "0 is not in the range 1<=x<=10000"),
            (["--state", "failed", "--limit", "many"], "'many' is not a valid integer"),
            ([], "name a job ID, or pass --state failed|dead|running|delayed"),
            (["some-id", "--state", "failed"], "pass a job ID or --state, not both"),
            (["some-id", "--limit", "3"], "--limit applies to --state listings"),
            (["some-id", "--queue", "nope"], "has no queue 'nope' (its queues: recorder)"),
            (["some-id", "--redis", "http://x:1"], "not a Redis URL"),
            (["some-id", "--nats", "http://x:1"], "not a NATS URL"),
        ],
    )
    async def test_is_a_one_line_error(
        self, servers: LocalServers, redis: Any, args: list[str], message: str
    ) -> None:
        """Bad input is one line naming what is wrong, never a traceback."""
        assert message in one_line_error(await cli(servers, "jobs", APP, *args))

    async def test_an_unreachable_redis_is_a_one_line_error(self, servers: LocalServers) -> None:
        """A Redis that does not answer is named (password redacted) in one line."""
        url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
        r = await cli(servers, "jobs", APP, "some-id", "--redis", url)
        assert "cannot connect to Redis at redis://:***@127.0.0.1:" in one_line_error(r)
        assert "hunter2" not in r.stderr

    async def test_a_bad_target_is_a_one_line_error(self, servers: LocalServers) -> None:
        """A TARGET that is not a pipeline says so."""
        r = await cli(servers, "jobs", "tests.apps.recorder:nothing", "some-id")
        assert "has no attribute 'nothing'" in one_line_error(r)


class TestServerOptions:
    async def test_options_win_over_the_environment(
        self, servers: LocalServers, redis: Any
    ) -> None:
        """--redis overrides FLOWLINE_REDIS_URL, as for `flowline worker`."""
        await redis.hset(Q.job("j1"), mapping={"state": "queued", "topic": "record", "attempt": 1})
        dead_env = {"FLOWLINE_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
        r = await cli(servers, "jobs", APP, "j1", "--redis", servers.redis_url, **dead_env)
        assert r.returncode == 0, r.stderr
        assert "state        queued" in r.stdout
        assert "cannot connect to Redis" in one_line_error(
            await cli(servers, "jobs", APP, "j1", **dead_env)
        )

    async def test_tls_through_the_option_or_the_environment(
        self, tls_servers: LocalServers
    ) -> None:
        """--tls-ca and FLOWLINE_TLS_CA both make rediss:// work; without a CA it fails cleanly."""
        settings = Settings(
            nats_url=tls_servers.nats_url,
            redis_url=tls_servers.redis_url,
            tls_ca=tls_servers.ca_file,
        )
        async with flowline.connect(recorder.pipeline, settings):
            job_id = await recorder.pipeline.enqueue("record", {})
        env = {"FLOWLINE_REDIS_URL": tls_servers.redis_url, "FLOWLINE_NATS_URL": closed_nats()}
        assert tls_servers.ca_file is not None
        by_env, by_option, without = await asyncio.gather(
            asyncio.to_thread(
                flowline_cli,
                "jobs",
                APP,
                job_id,
                env={**env, "FLOWLINE_TLS_CA": tls_servers.ca_file},
            ),
            asyncio.to_thread(
                flowline_cli, "jobs", APP, job_id, "--tls-ca", tls_servers.ca_file, env=env
            ),
            asyncio.to_thread(flowline_cli, "jobs", APP, job_id, env=env),
        )
        assert by_env.returncode == 0, by_env.stderr
        assert by_option.stdout == by_env.stdout
        assert "state        queued" in by_env.stdout
        assert "cannot connect to Redis" in one_line_error(without)


@pytest.fixture(scope="module")
def tls_servers() -> Iterator[LocalServers]:
    with LocalServers(tls=True) as s:
        yield s


class TestOnlyTheServersNeeded:
    async def test_a_producer_enqueues_while_nats_is_down(
        self, servers: LocalServers, redis: Any
    ) -> None:
        """`flowline.connect` needs NATS only to publish; that publish names NATS in its error."""
        settings = Settings(nats_url=closed_nats(), redis_url=servers.redis_url)
        async with flowline.connect(recorder.pipeline, settings):
            job_id = await recorder.pipeline.enqueue("record", {"n": 1})
            info = await recorder.pipeline.queue("recorder").job(job_id)
            with pytest.raises(ConfigurationError, match="cannot connect to NATS at nats://"):
                await recorder.pipeline.publish(b"{}")
        assert info is not None
        assert info.state == "queued"

    async def test_a_producer_publishes_while_redis_is_down(
        self, servers: LocalServers, js: Any
    ) -> None:
        """`flowline.connect` needs Redis only to enqueue; that enqueue names what failed."""
        settings = Settings(nats_url=servers.nats_url, redis_url=closed_redis())
        async with flowline.connect(recorder.pipeline, settings):
            seq = await recorder.pipeline.publish(b'{"n": 1}')
            with pytest.raises(flowline.EnqueueError, match=r"could not enqueue job .*Connection"):
                await recorder.pipeline.enqueue("record", {"n": 1})
        stored = await js.get_msg(recorder.SUBJECT, seq)
        assert stored.data == b'{"n": 1}'

    async def test_flowline_publish_runs_while_redis_is_down(
        self, servers: LocalServers, js: Any
    ) -> None:
        """`flowline publish` needs NATS only; naming a dead Redis changes nothing."""
        event = json.dumps({"fan": "fan-9", "talent": "talent-1", "action": "followed"})
        target = "examples.fanbase.pipeline:pipeline"
        r = await cli(
            servers, "publish", target, "--json", event, FLOWLINE_REDIS_URL=closed_redis()
        )
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith("published as sequence "), r.stdout
        seq = int(r.stdout.split()[-1])
        stored = await js.get_msg("fanbase", seq)
        assert b"fan-9" in stored.data

    async def test_a_queue_worker_runs_jobs_while_nats_is_down(
        self, worker: Any, servers: LocalServers, redis: Any
    ) -> None:
        """`flowline worker --only queue` consumes no stream: it starts and works without NATS."""
        proc = worker(APP, "--only", "queue", "--nats", closed_nats())
        await proc.ready()
        job_id = recorder.pipeline.enqueue_sync("record", {}, redis_url=servers.redis_url)
        await eventually(lambda: record_of(redis, job_id, "completed"))

    async def test_dlq_and_jobs_work_while_nats_is_down(
        self, worker: Any, servers: LocalServers, js: Any, redis: Any
    ) -> None:
        """dlq list, purge and replay of a job need Redis only; replaying a message needs NATS."""
        proc = worker(APP, env={"FLOWLINE_TEST_RETRIES": "0"})
        await proc.ready()
        job_id = recorder.pipeline.enqueue_sync("boom", {}, redis_url=servers.redis_url)
        await js.publish("recorder", b"not json")
        await eventually(lambda: redis.xlen(Q.dead))
        await eventually(lambda: redis.xlen(stream_dead_letters(recorder.pipeline.name).dead))
        proc.stop()
        down = {"FLOWLINE_NATS_URL": closed_nats()}

        listed = await cli(servers, "dlq", "list", APP, "--json", **down)
        assert listed.returncode == 0, listed.stderr
        letters = {x["stage"]: x for x in map(json.loads, listed.stdout.splitlines())}
        assert sorted(letters) == ["decode", "job"]
        shown = await cli(servers, "jobs", APP, job_id, **down)
        assert "state        failed" in shown.stdout

        message = await cli(servers, "dlq", "replay", APP, letters["decode"]["id"], **down)
        assert "cannot connect to NATS at nats://127.0.0.1:" in one_line_error(message)
        replayed = await cli(servers, "dlq", "replay", APP, letters["job"]["id"], **down)
        assert replayed.stdout.strip() == "replayed 1", replayed.stderr
        assert await redis.hget(Q.job(job_id), "state") == b"queued"

        purged = await cli(servers, "dlq", "purge", APP, "--all", **down)
        assert purged.stdout.strip() == "purged 1", purged.stderr
        assert await redis.xlen(stream_dead_letters(recorder.pipeline.name).dead) == 0
