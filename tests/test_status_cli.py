"""`flowline status`: the state of streams, queues, crons and processes, read from the servers."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from typing import Any

from flowline.backends.jetstream import ensure_stream
from flowline.servers import free_port

from .conftest import ROOT, eventually
from .test_cli import run_cli

APP = "tests.apps.recorder:pipeline"
DEMO = "examples.fanbase.channels:app"


def document(out: subprocess.CompletedProcess) -> dict[str, Any]:
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


async def publish(js: Any, *jobs: dict[str, Any]) -> None:
    await ensure_stream(js, "recorder")
    await js.publish("recorder", json.dumps({"jobs": list(jobs)}).encode())


async def test_status_with_no_worker_running(servers, js, redis):
    """With nothing running, status reads the stream and queues straight from the servers."""
    for i in range(3):
        await publish(js, {"topic": "record", "data": {"i": i}})
    doc = document(await run_cli(servers, "status", APP, "--json"))
    assert doc["servers"] == {"redis": "ok", "nats": "ok"}
    assert doc["processes"] == []
    [p] = doc["pipelines"]
    stream = p["stream"]
    assert (stream["subject"], stream["stream"], stream["messages"]) == ("recorder", "recorder", 3)
    assert stream["pending"] is None  # no process created the durable consumer yet
    [queue] = p["queues"]
    assert queue["name"] == "recorder"
    assert "record" in queue["topics"]
    assert {k: queue[k] for k in ("ready", "running", "delayed", "dead", "completed_1m")} == {
        "ready": 0, "running": 0, "delayed": 0, "dead": 0, "completed_1m": 0,
    }  # fmt: skip
    assert p["crons"] == []


async def test_status_follows_a_running_worker(worker, servers, js, redis):
    """Counts move as a worker runs jobs; the worker is listed among the processes online."""
    proc = worker(APP, env={"FLOWLINE_HEARTBEAT": "0.5", "FLOWLINE_TEST_RETRIES": "0"})
    await proc.ready()
    for i in range(4):
        await publish(js, {"topic": "record", "data": {"i": i}})
    await publish(js, {"topic": "boom"})

    async def settled() -> dict[str, Any] | None:
        doc = document(await run_cli(servers, "status", APP, "--json"))
        [p] = doc["pipelines"]
        q = p["queues"][0]
        done = (q["completed_1m"], q["failed_1m"], q["dead"], p["stream"]["last_acked"])
        return doc if done == (4, 1, 1, 5) and doc["processes"] else None

    doc = await eventually(settled, timeout=30, interval=0.3)
    [p] = doc["pipelines"]
    assert (p["stream"]["pending"], p["stream"]["ack_pending"]) == (0, 0)
    assert p["queues"][0]["jobs_per_s"] == round(4 / 60, 3)
    [process] = doc["processes"]
    assert process["pid"] == proc.pid
    assert process["completed"] == 4
    assert process["failed"] == 1
    assert process["parts"] == [f"stream:{p['name']}", "queue:recorder"]


async def test_status_in_a_terminal_draws_tables(servers):
    """Without --json, status prints tables naming the pipeline, its queues and crons."""
    out = await run_cli(servers, "status", DEMO, env={"COLUMNS": "160"})
    assert out.returncode == 0, out.stderr
    expected = ("servers: redis ok", "pipeline ", "queues", "fanbase-email", "cron",
                "daily-digest", "processes online", "no flowline process is running")  # fmt: skip
    for text in expected:
        assert text in out.stdout, (text, out.stdout)


async def test_an_unreachable_server_is_reported_not_raised(servers):
    """A Redis that does not answer is named in the output; exit 1, no traceback."""
    closed = f"redis://127.0.0.1:{free_port()}/0"
    out = await run_cli(servers, "status", APP, "--json", "--redis", closed)
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    doc = json.loads(out.stdout)
    assert doc["servers"]["redis"].startswith(f"cannot connect to Redis at {closed}")
    assert doc["servers"]["nats"] == "ok"
    assert doc["pipelines"][0]["queues"][0]["ready"] is None
    assert doc["pipelines"][0]["stream"]["messages"] is not None  # NATS still answered


async def test_watch_refreshes_until_interrupted(servers):
    """--watch --json prints a document per refresh; Ctrl-C ends it with status 0."""
    proc = subprocess.Popen(  # noqa: ASYNC220 - it runs alongside; the test only sleeps
        [sys.executable, "-m", "flowline", "status", APP, "--watch", "--json", "--interval", "0.3"],
        cwd=ROOT,
        env={**os.environ, **servers.env(), "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    await asyncio.sleep(3)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    docs = [json.loads(line) for line in out.splitlines()]
    assert len(docs) >= 3
    assert docs[-1]["taken"] > docs[0]["taken"]
    assert "Traceback" not in err


async def test_bad_target_is_a_one_line_error(servers):
    """A target that does not import is named; no traceback."""
    out = await run_cli(servers, "status", "tests.apps.nothing:pipeline")
    assert out.returncode != 0
    assert "Traceback" not in out.stderr
    assert "cannot import 'tests.apps.nothing'" in out.stderr
