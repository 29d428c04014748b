"""`flowline graph` and `Pipeline.to_dot`: the diagram of a target, drawn by real Graphviz.

The DOT output is rendered with Debian's ``dot`` (``.ci/run`` installs graphviz); without it the
rendering test skips on a developer's machine and fails in CI. The picture is kept as an
artifact beside the dashboard's screenshots.
"""

from __future__ import annotations

import html
import re
import shutil
import subprocess

import pytest

from examples.fanbase.channels import app
from flowline import Queue, Route, Stream

from .browser import artifacts
from .conftest import flowline_cli, require

TARGET = "examples.fanbase.channels:app"


def graph(*args: str) -> subprocess.CompletedProcess[str]:
    return flowline_cli("graph", *args)


def labels() -> set[str]:
    """Every stage and ``topic: handler`` of the channels app: what each diagram must show."""
    out = set()
    for p in app.pipelines:
        out |= {s.describe() for s in p.stages}
        out |= {f"{t.name}: {t.handler_name}" for t in p.topics.values()}
    return out


def test_mermaid_shows_every_pipeline_stage_topic_and_handler() -> None:
    r = graph(TARGET)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "flowchart LR"
    groups = [line.strip() for line in lines if line.strip().startswith("subgraph ")]
    assert groups == [f'subgraph p{i}["{p.name}"]' for i, p in enumerate(app.pipelines)]
    assert sum(line.strip() == "end" for line in lines) == len(app.pipelines)
    for label in labels():
        assert sum(f'"{label}"' in line for line in lines) == 1, label


def test_one_pipeline_prints_what_to_mermaid_gives() -> None:
    r = graph("examples.fanbase.pipeline:pipeline")
    from examples.fanbase.pipeline import pipeline

    assert r.stdout.rstrip("\n") == pipeline.to_mermaid()


def test_dot_is_drawn_by_graphviz(tmp_path) -> None:
    dot = require(shutil.which("dot"), "dot (Graphviz)")
    r = graph(TARGET, "--format", "dot")
    assert r.returncode == 0, r.stderr
    svg = subprocess.run([dot, "-Tsvg"], input=r.stdout, capture_output=True, text=True)
    assert svg.returncode == 0, svg.stderr
    assert svg.stderr == ""  # no syntax warning either
    drawn = {html.unescape(t) for t in re.findall(r"<text[^>]*>(.*?)</text>", svg.stdout)}
    assert drawn == labels() | {p.name for p in app.pipelines}
    png = artifacts() / "graph-fanbase-channels.png"
    subprocess.run([dot, "-Tpng", "-o", str(png)], input=r.stdout, text=True, check=True)
    assert png.stat().st_size > 10_000


def test_dot_escapes_quotes_and_backslashes() -> None:
    pipeline = Stream("s", bytes) >> Route(lambda e: [], name='say "hi" \\o/') >> Queue("q")
    assert 'p0s1 [label="Route(say \\"hi\\" \\\\o/)", shape=box];' in pipeline.to_dot()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nope.nothing:app"], "Error: cannot import 'nope.nothing'"),
        (["examples.fanbase.channels:nothing"], "has no attribute 'nothing'"),
        ([TARGET, "--format", "svg"], "Invalid value for '--format': 'svg' is not one of"),
    ],
)
def test_bad_input_is_one_error_line(args: list[str], message: str) -> None:
    r = graph(*args)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, r.stderr
    assert message in errors[0]
