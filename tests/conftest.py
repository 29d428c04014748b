"""Real servers for the whole session, clean state for every test, worker processes on demand."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import nats
import pytest
from nats.js import JetStreamContext
from redis.asyncio import Redis

from flowline import Settings
from flowline.servers import LocalServers

# The Redis Cluster fixtures, for every module (a session fixture imported by two modules
# would start two clusters).
from .redis_cluster import cluster_redis, cluster_servers, redis_cluster, tls_cluster  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent


def flowline_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``python -m flowline ARGS`` from the repository root, its output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "flowline", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
    )


def missing(what: str) -> NoReturn:
    """Skip the test on a developer's machine; fail it in CI, where `.ci/run` installs `what`."""
    if os.environ.get("CI"):
        pytest.fail(f"{what}; .ci/run installs it")
    pytest.skip(what)


def require(binary: str | None, name: str) -> str:
    """`binary` if found; else `missing`."""
    if binary is None:
        missing(f"{name} is not installed")
    return binary


@pytest.fixture(scope="session")
def servers() -> Iterator[LocalServers]:
    with LocalServers() as s:
        yield s


@pytest.fixture
def settings(servers: LocalServers) -> Settings:
    return Settings(nats_url=servers.nats_url, redis_url=servers.redis_url, grace=5.0)


@pytest.fixture(scope="session")
async def redis(servers: LocalServers) -> AsyncIterator[Redis]:
    client = Redis.from_url(servers.redis_url)
    yield client
    await client.aclose()


@pytest.fixture(scope="session")
async def nc(servers: LocalServers) -> AsyncIterator[nats.NATS]:
    conn = await nats.connect(servers.nats_url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    yield conn
    await conn.close()


@pytest.fixture(scope="session")
async def js(nc: nats.NATS) -> JetStreamContext:
    return nc.jetstream()


@pytest.fixture(autouse=True)
async def clean(request: pytest.FixtureRequest) -> None:
    """Every test starts with empty Redis and no JetStream streams (arq flushes likewise)."""
    if not _uses_servers(request):
        return
    servers = request.getfixturevalue("servers")
    client = Redis.from_url(servers.redis_url)
    await client.flushall()
    await client.aclose()
    conn = await nats.connect(servers.nats_url)
    jsm = conn.jetstream()
    for info in await jsm.streams_info():
        await jsm.delete_stream(info.config.name)
    await conn.close()


def _uses_servers(request: pytest.FixtureRequest) -> bool:
    names = set(request.fixturenames)
    return bool(names & {"servers", "settings", "redis", "nc", "js", "worker"})


class WorkerProcess:
    """A real `flowline worker` subprocess, its output captured to a file."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log_path = log
        self._log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "flowline", "worker", *args, "--log-format", "json"],
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def lines(self) -> list[dict[str, Any]]:
        out = []
        for line in self.output().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out

    async def ready(self, timeout: float = 20) -> None:
        """Wait for the 'flowline started' log line."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "flowline started" in self.output():
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.output()}")
            await asyncio.sleep(0.05)
        raise AssertionError(f"worker not ready in {timeout}s:\n{self.output()}")

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.proc.wait(10)

    async def wait(self, timeout: float = 30) -> int:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"worker still running after {timeout}s:\n{self.output()}")
            await asyncio.sleep(0.05)
        return self.proc.returncode

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()


@pytest.fixture
def worker(servers: LocalServers, tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Factory: ``worker("tests.apps.recorder:pipeline", "--concurrency", "5", env={...})``."""
    started: list[WorkerProcess] = []

    def start(*args: str, env: dict[str, str] | None = None) -> WorkerProcess:
        full_env = {**os.environ, **servers.env(), "PYTHONPATH": str(ROOT), **(env or {})}
        proc = WorkerProcess(list(args), full_env, tmp_path / f"worker-{len(started)}.log")
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


async def runs(redis: Redis) -> list[dict[str, Any]]:
    """What the recorder app's handlers did, in order."""
    return [json.loads(x) for x in await redis.lrange("test:runs", 0, -1)]


async def eventually(check: Callable[[], Any], timeout: float = 15, interval: float = 0.05) -> Any:
    """Poll an async or sync `check` until it returns something truthy; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last value: {last!r})")
