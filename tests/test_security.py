"""Credentials, TLS and payload safety, against servers started with auth and TLS enabled."""

from __future__ import annotations

import json
import pickle
import subprocess
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest
from redis.asyncio import Redis

from flowline.runtime.keys import QueueKeys
from flowline.runtime.scripts import Scripts
from flowline.servers import LocalServers

from .conftest import eventually, flowline_cli

REDIS_SECRET = "r3dis-s3cret"
NATS_SECRET = "n4ts-s3cret"
Q = QueueKeys("recorder")


@pytest.fixture(scope="module")
def auth_servers() -> Iterator[LocalServers]:
    with LocalServers(
        redis_password=REDIS_SECRET, nats_user="flow", nats_password=NATS_SECRET
    ) as s:
        yield s


@pytest.fixture(scope="module")
def tls_servers() -> Iterator[LocalServers]:
    with LocalServers(tls=True) as s:
        yield s


async def publish_record_job(url: str, **tls) -> int:
    nc = await nats.connect(url, **tls)
    js = nc.jetstream()
    ack = await js.publish("recorder", json.dumps({"jobs": [{"topic": "record"}]}).encode())
    await nc.close()
    return ack.seq


async def completed(redis: Redis, job_id: str) -> bool:
    return await redis.hget(Q.job(job_id), "state") == b"completed"


@pytest.fixture(scope="module")
def token_acl_servers() -> Iterator[LocalServers]:
    with LocalServers(
        nats_token=NATS_SECRET, redis_user="flowline", redis_password=REDIS_SECRET
    ) as s:
        yield s


async def run_one_job(worker, servers: LocalServers, *, tls=None, **redis_options) -> str:
    """Start a worker on `servers`, have it run one job to completion; returns its output."""
    proc = worker("tests.apps.recorder:pipeline", env=servers.env())
    await proc.ready()
    seq = await publish_record_job(servers.nats_url, **({"tls": tls} if tls else {}))
    redis = Redis.from_url(servers.redis_url, **redis_options)
    try:
        await eventually(lambda: completed(redis, f"recorder:{seq}:0"))
        await redis.flushall()
    finally:
        await redis.aclose()
    output = proc.output()
    assert "flowline started" in output
    return output


async def test_token_and_acl_user_work_and_stay_out_of_the_logs(worker, token_acl_servers):
    """A NATS token and a Redis ACL user (default user disabled) work; neither is logged."""
    output = await run_one_job(worker, token_acl_servers)
    redis = Redis.from_url(token_acl_servers.redis_url)
    try:
        assert await redis.acl_whoami() == "flowline"
    finally:
        await redis.aclose()
    assert REDIS_SECRET not in output
    assert NATS_SECRET not in output
    assert "flowline:***@127.0.0.1" in output
    assert "nats://***@127.0.0.1" in output


async def test_authenticated_servers_work_and_secrets_never_reach_the_logs(worker, auth_servers):
    """With NATS user/password and a Redis password, jobs run and no log line holds a secret."""
    output = await run_one_job(worker, auth_servers)
    assert REDIS_SECRET not in output
    assert NATS_SECRET not in output
    assert "flow:***@127.0.0.1" in output
    assert ":***@127.0.0.1" in output


@pytest.mark.parametrize(
    ("url_env", "expected"),
    [
        (
            {"FLOWLINE_REDIS_URL": "redis://:wrong-pass@127.0.0.1:{redis}/0"},
            "cannot connect to Redis",
        ),
        (
            {"FLOWLINE_NATS_URL": "nats://flow:wrong-pass@127.0.0.1:{nats}"},
            "cannot connect to NATS",
        ),
    ],
    ids=["redis", "nats"],
)
async def test_wrong_credentials_fail_clearly_without_echoing_them(
    worker, auth_servers, url_env, expected
):
    """A wrong password stops the worker with a clear error that does not print the password."""
    env = {
        **auth_servers.env(),
        **{
            k: v.format(redis=auth_servers.redis_port, nats=auth_servers.nats_port)
            for k, v in url_env.items()
        },
    }
    proc = worker("tests.apps.recorder:pipeline", env=env)
    assert await proc.wait() != 0
    output = proc.output()
    assert expected in output
    assert "wrong-pass" not in output
    assert REDIS_SECRET not in output
    assert NATS_SECRET not in output


async def test_tls_servers(worker, tls_servers):
    """tls:// NATS and rediss:// Redis with a CA file (FLOWLINE_TLS_CA) work end to end."""
    import ssl

    ctx = ssl.create_default_context(cafile=tls_servers.ca_file)
    await run_one_job(worker, tls_servers, tls=ctx, ssl_ca_certs=tls_servers.ca_file)


async def test_pickled_payload_is_never_unpickled(worker, redis, tmp_path):
    """A job whose data is a pickle is dead-lettered as not-JSON; the pickle never runs."""
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (Path.touch, (marker,))

    payload = pickle.dumps(Exploit())
    proc = worker("tests.apps.recorder:pipeline")
    await proc.ready()
    await Scripts(redis).enqueue(
        keys=[Q.jobs, Q.delayed, Q.cancels],
        args=[Q.job_prefix, 0, "evil-1", "record", payload, 0, "test", 1, ""],
    )
    [(_, fields)] = await eventually(lambda: redis.xrange(Q.dead))
    record = json.loads(fields[b"record"])
    assert "job data is not JSON" in record["error"]
    assert record["attempts"] == 1
    assert not marker.exists()


class TestConfigurationErrors:
    def run_cli(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return flowline_cli(*args, env=env, timeout=30)

    def test_target_without_colon(self):
        """A target that is not MODULE:ATTR is refused with an example of the right form."""
        r = self.run_cli("worker", "tests.apps.recorder")
        assert r.returncode != 0
        assert "expected MODULE:ATTR" in r.stderr

    def test_missing_attribute(self):
        """A missing attribute is named."""
        r = self.run_cli("worker", "tests.apps.recorder:nope")
        assert r.returncode != 0
        assert "has no attribute 'nope'" in r.stderr

    def test_not_a_pipeline(self):
        """A target that is not a pipeline says what it got."""
        r = self.run_cli("worker", "tests.apps.recorder:RETRIES")
        assert r.returncode != 0
        assert "expected a Pipeline" in r.stderr
        assert "int" in r.stderr

    def test_bad_url_scheme(self):
        """A URL with the wrong scheme is refused before connecting."""
        r = self.run_cli("worker", "tests.apps.recorder:pipeline", "--redis", "http://x:1")
        assert r.returncode != 0
        assert "not a Redis URL" in r.stderr

    def test_only_that_matches_nothing(self, servers):
        """--only with an unknown part lists the valid choices."""
        r = self.run_cli(
            "worker", "tests.apps.recorder:pipeline", "--only", "queue:nope", env=servers.env()
        )
        assert r.returncode != 0
        assert "--only 'queue:nope' matches nothing" in r.stderr
        assert "queue:recorder" in r.stderr

    def test_unreachable_redis(self, servers):
        """An unreachable Redis fails fast with the (redacted) URL."""
        from flowline.servers import free_port

        url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
        r = self.run_cli(
            "worker",
            "tests.apps.recorder:pipeline",
            env={**servers.env(), "FLOWLINE_REDIS_URL": url},
        )
        assert r.returncode != 0
        assert "cannot connect to Redis" in r.stderr
        assert "hunter2" not in r.stderr + r.stdout
