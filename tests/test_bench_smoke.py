"""`nox -s bench`, small: every side runs and passes its own checks (no figure is asserted).

The benchmark voids a side that lost a job, miscounted a metric, logged a line too few or left
an event unwritten, by raising; this run makes those checks part of the regular tests, so a
change that breaks a side (or the benchmark itself) fails here rather than at the next bench.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from .conftest import ROOT

pytestmark = pytest.mark.timeout(360)


def test_every_side_of_the_benchmark_runs_and_checks_itself() -> None:
    sizes = ["--events", "1000", "--jobs", "3000", "--taskiq-jobs", "200", "--fair-jobs", "2000",
             "--delayed-jobs", "2000", "--payload-jobs", "500"]  # fmt: skip
    r = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", *sizes, "--latency-seconds", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=340,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    lines = r.stdout.splitlines()
    ran = {tuple(line.split()[:4:3]) for line in lines if " round 1/1 " in line}
    assert ran == {
        *(("ingest", side) for side in ("flowline", "observed", "raw")),
        *(("worker", s) for s in ("flowline", "events", "metrics", "observed", "raw", "same")),
        ("worker", "taskiq"),
        ("latency", "flowline"),
        ("latency", "raw"),
        ("fairness", "grouped"),
        ("fairness", "fifo"),
        *(("replicated", side) for side in ("flowline", "nowait", "raw")),
        ("fanout", "flowline"),
        ("fanout", "raw"),
        ("sharded", "sharded"),
        ("sharded", "single"),
        ("latency5k", "flowline"),
        ("latency5k", "raw"),
        ("delayed", "flowline"),
        ("delayed", "raw"),
        *(("memory", side) for side in ("day", "none", "marked", "plain")),
        *(("payload", f"worker/{side}") for side in ("flowline", "stdlib", "same")),
        *(("payload", f"ingest/{side}") for side in ("flowline", "stdlib", "raw")),
        ("queues", "many"),
        ("queues", "single"),
    }, r.stdout
    (kept,) = [line for line in lines if line.startswith("memory retained")]
    assert kept.split()[-1] == "met"  # keep_completed=0 left no record behind
    (events,) = [line for line in lines if " round 1/1  events " in line]
    assert "6,000 events written, 6,000 kept" in events  # job:start and job:complete of 3,000
    (observed,) = [line for line in lines if line.startswith("  worker   round 1/1  observed")]
    assert "3,000 log lines, metrics counted 3,000 jobs" in observed
    rows = {" ".join(line.split()[:2]) for line in lines if line.startswith(("ingest", "worker"))}
    assert {"worker events", "worker observed", "ingest observed"} <= rows
    (fair,) = [line for line in lines if line.startswith("fairness lone wait")]
    assert fair.split()[-1] == "met"  # the lone job did not wait behind the hot group
    assert any(line.startswith("note: payload codec, ") for line in lines)  # the codecs agreed
