"""`flowline dev`: a target on throwaway servers of its own, its jobs shown as they run."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from queue import Empty, Queue
from urllib.parse import urlparse

import nats
import pytest

from examples.fanbase.fanbase_pb2 import FanbaseEvent

from .conftest import ROOT, flowline_cli


class Dev:
    """A `flowline dev` process whose output lines are read in a thread."""

    def __init__(self, target: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "flowline", "dev", target],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        self.lines: Queue[str] = Queue()
        self.seen: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self.reader.join(10)
        assert self.proc.stdout is not None
        self.proc.stdout.close()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def until(self, predicate: object, timeout: float = 30) -> str:
        """The next line for which `predicate(line)` holds (lines before it are kept)."""
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except Empty:
                raise AssertionError(f"no such line within {timeout}s; saw {self.seen}") from None
            self.seen.append(line)
            if predicate(line):  # type: ignore[operator]
                return line


@pytest.fixture
def dev() -> Iterator[list[Dev]]:
    started: list[Dev] = []
    yield started
    for d in started:
        d.close()


def listening(url: str) -> bool:
    u = urlparse(url)
    with socket.socket() as s:
        return s.connect_ex((u.hostname or "", u.port or 0)) == 0


async def test_runs_on_its_own_servers_shows_jobs_and_stops_them(dev: list[Dev]) -> None:
    d = Dev("examples.fanbase.pipeline:pipeline")
    dev.append(d)
    nats_url = (await asyncio.to_thread(d.until, lambda s: s.startswith("nats "))).split()[1]
    redis_url = (await asyncio.to_thread(d.until, lambda s: s.startswith("redis "))).split()[1]
    hint = await asyncio.to_thread(d.until, lambda s: s.startswith("in another terminal"))
    assert f"FLOWLINE_NATS_URL={nats_url}" in hint
    assert f"FLOWLINE_REDIS_URL={redis_url}" in hint
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    for _ in range(100):  # the runner creates the stream once it starts
        try:
            await js.stream_info("fanbase")
            break
        except Exception:
            await asyncio.sleep(0.1)
    event = FanbaseEvent(fan="fan-1", talent="talent-1", action="followed")
    await js.publish("fanbase", event.SerializeToString())
    await nc.close()

    def both_completed(_: str) -> bool:
        return len([s for s in d.seen if s.startswith("completed")]) == 2

    await asyncio.to_thread(d.until, both_completed)
    completed = sorted(s.split(" in ")[0] for s in d.seen if s.startswith("completed"))
    assert completed == [
        "completed  notify-fan-following fanbase:1:0",
        "completed  notify-talent-following fanbase:1:1",
    ]
    progress = [s for s in d.seen if s.startswith("progress   notify-fan-following fanbase:1:0")]
    assert progress[-1].endswith(" 99%")  # the example's handlers report progress
    started = [s for s in d.seen if s.startswith("started")]
    assert sorted(started) == [
        "started    notify-fan-following fanbase:1:0 (attempt 1)",
        "started    notify-talent-following fanbase:1:1 (attempt 1)",
    ]
    assert "Traceback" not in "\n".join(d.seen)
    d.proc.send_signal(signal.SIGINT)
    assert await asyncio.to_thread(d.proc.wait, 30) == 0
    d.reader.join(10)
    rest = d.lines
    tail = [rest.get() for _ in range(rest.qsize())]
    assert tail[-1] == "stopped; the servers and their data are gone", tail
    assert not listening(nats_url)
    assert not listening(redis_url)


def test_a_bad_target_is_one_line_and_starts_no_server() -> None:
    r = flowline_cli("dev", "nope.nothing:app")
    assert r.returncode == 1
    assert r.stdout == ""
    assert r.stderr.strip() == "Error: cannot import 'nope.nothing': No module named 'nope'"
