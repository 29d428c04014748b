"""Tracing: one trace from publish through the stream, every job and the follow-ups they emit."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

import flowline
from flowline.observability import tracing as tracing_module
from flowline.observability.tracing import Tracing, get_tracing
from flowline.runtime.enqueue import Planned
from tests.apps import traced_app

from .conftest import ROOT, eventually

APP = "tests.apps.traced_app:pipelines"

# What one published event makes, once the flaky job's second attempt and the follow-up's job
# have run: the stream span and its batch's span, one span per job attempt, and the same again
# for the follow-up that the greet job emits.
EXPECTED = Counter(
    {
        "process traced": 1,
        "send traced": 1,
        "process greet": 1,
        "process flaky": 2,
        "process traced-followup": 1,
        "send traced-followup": 1,
        "process thank": 1,
    }
)


@pytest.fixture(scope="session")
def tracer() -> Any:
    """A tracer of the global provider, which flowline needs set to trace at all.

    A process sets its global provider once: this one records spans and exports none (the
    tests read the publisher's span ids from the span objects).
    """
    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        trace.set_tracer_provider(TracerProvider())
    tracing_module._next_look = 0.0  # seen at once, not within a second
    return trace.get_tracer("tests")


def read_spans(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def names(spans: list[dict[str, Any]]) -> Counter[str]:
    return Counter(s["name"] for s in spans)


async def traced_worker(worker: Any, tmp_path: Path) -> Path:
    spans = tmp_path / "spans.jsonl"
    proc = worker(APP, env={"FLOWLINE_TEST_SPANS": str(spans)})
    await proc.ready()
    return spans


class TestOneTrace:
    async def test_a_published_event_is_one_trace_across_processes(
        self, worker, settings, tracer, tmp_path
    ):
        """The stream span, each job attempt and the emitted follow-up share the publish's trace."""
        path = await traced_worker(worker, tmp_path)
        async with flowline.connect(traced_app.pipelines, settings):
            with tracer.start_as_current_span("publish-side", kind=SpanKind.PRODUCER) as pub:
                seq = await traced_app.pipeline.publish(json.dumps({"who": "fan-1"}).encode())
        await eventually(lambda: names(read_spans(path)) >= EXPECTED)
        await asyncio.sleep(0.3)  # nothing more comes
        spans = read_spans(path)
        assert names(spans) == EXPECTED

        publisher = pub.get_span_context()
        assert {s["trace_id"] for s in spans} == {f"{publisher.trace_id:032x}"}
        by_name = {s["name"]: s for s in spans}

        stream = by_name["process traced"]
        assert stream["parent"] == f"{publisher.span_id:016x}"
        assert stream["kind"] == "CONSUMER"
        assert stream["attributes"] == {
            "messaging.system": "nats",
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.destination.name": "traced",
            "messaging.message.id": str(seq),
            "messaging.consumer.group.name": traced_app.pipeline.name,
            "messaging.message.body.size": len(b'{"who": "fan-1"}'),
            "flowline.pipeline": traced_app.pipeline.name,
            "flowline.message.deliveries": 1,
        }

        send = by_name["send traced"]
        assert send["parent"] == stream["span_id"]
        assert send["kind"] == "PRODUCER"
        assert send["attributes"]["messaging.operation.type"] == "send"
        assert send["attributes"]["messaging.destination.name"] == "traced"
        assert send["attributes"]["messaging.batch.message_count"] == 2

        jobs = [s for s in spans if s["name"] in ("process greet", "process flaky")]
        assert {s["parent"] for s in jobs} == {stream["span_id"]}
        assert {s["kind"] for s in jobs} == {"CONSUMER"}
        attempts = sorted(
            (s["attributes"]["messaging.message.id"], s["attributes"]["flowline.job.attempt"])
            for s in jobs
        )
        assert attempts == [(f"traced:{seq}:0", 1), (f"traced:{seq}:1", 1), (f"traced:{seq}:1", 2)]
        for s in jobs:
            assert s["attributes"]["messaging.system"] == "redis"
            assert s["attributes"]["messaging.destination.name"] == "traced"
            assert s["attributes"]["messaging.operation.type"] == "process"

        greet = by_name["process greet"]
        followup = by_name["process traced-followup"]
        assert followup["parent"] == greet["span_id"]
        assert followup["attributes"]["messaging.destination.name"] == "traced-followup"
        assert by_name["send traced-followup"]["parent"] == followup["span_id"]
        assert by_name["process thank"]["parent"] == followup["span_id"]

    async def test_a_failed_attempt_has_error_status(self, worker, settings, tracer, tmp_path):
        """The attempt that raised records its exception and error status; the retry is OK."""
        path = await traced_worker(worker, tmp_path)
        async with flowline.connect(traced_app.pipelines, settings):
            with tracer.start_as_current_span("publish-side"):
                await traced_app.pipeline.publish(json.dumps({"who": "fan-2"}).encode())
        await eventually(lambda: names(read_spans(path))["process flaky"] == 2)
        flaky = {
            s["attributes"]["flowline.job.attempt"]: s
            for s in read_spans(path)
            if s["name"] == "process flaky"
        }
        assert flaky[1]["status"] == "ERROR"
        assert flaky[1]["attributes"]["error.type"] == "ConnectionError"
        assert "exception" in flaky[1]["events"]
        assert flaky[2]["status"] == "UNSET"
        assert "error.type" not in flaky[2]["attributes"]

    async def test_a_direct_enqueue_continues_the_current_trace(
        self, worker, settings, tracer, tmp_path
    ):
        """`pipeline.enqueue` inside a span makes the job's span its child."""
        path = await traced_worker(worker, tmp_path)
        async with flowline.connect(traced_app.pipelines, settings):
            with tracer.start_as_current_span("enqueue-side") as parent:
                job_id = await traced_app.pipeline.enqueue("direct", {"n": 1})
        [span] = await eventually(
            lambda: [s for s in read_spans(path) if s["name"] == "process direct"]
        )
        ctx = parent.get_span_context()
        assert span["trace_id"] == f"{ctx.trace_id:032x}"
        assert span["parent"] == f"{ctx.span_id:016x}"
        assert span["attributes"]["messaging.message.id"] == job_id

    async def test_an_untraced_publish_starts_a_trace_at_the_stream(self, worker, js, tmp_path):
        """A message without a traceparent gets a root span, and its jobs still join it."""
        path = await traced_worker(worker, tmp_path)
        await js.publish("traced", json.dumps({"who": "fan-3"}).encode())
        await eventually(lambda: names(read_spans(path)) >= EXPECTED)
        spans = read_spans(path)
        [stream] = [s for s in spans if s["name"] == "process traced"]
        assert stream["parent"] is None
        assert {s["trace_id"] for s in spans} == {stream["trace_id"]}


class TestSend:
    def test_jobs_of_several_messages_link_to_each(self, spans):
        """A batch from several traced messages starts its own trace, linked to each message."""
        tracing, exporter = spans
        a = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        b = "00-1bf7651916cd43dd8448eb211c80319c-c7ad6b7169203331-01"
        sending = tracing.send([row("traced", a), row("traced", b), row("traced", a)])
        assert sending is not None
        sending.end()
        [span] = exporter.get_finished_spans()
        assert span.parent is None
        assert [f"{link.context.span_id:016x}" for link in span.links] == [
            "b7ad6b7169203331",
            "c7ad6b7169203331",
        ]
        assert span.attributes is not None
        assert span.attributes["messaging.batch.message_count"] == 3

    def test_a_batch_of_one_message_is_its_child(self, spans):
        """Jobs of one message leave no doubt: the batch's span is that message's child."""
        tracing, exporter = spans
        a = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        sending = tracing.send([row("traced", a)])
        assert sending is not None
        sending.end()
        [span] = exporter.get_finished_spans()
        assert span.parent is not None
        assert f"{span.parent.span_id:016x}" == "b7ad6b7169203331"
        assert span.links == ()
        assert span.name == "send traced"
        assert span.attributes is not None
        assert "messaging.batch.message_count" not in span.attributes

    def test_an_untraced_batch_has_no_span(self, spans):
        """Rows without a traceparent (tracing on, nothing sampled) start no span."""
        tracing, exporter = spans
        assert tracing.send([row("traced", "")]) is None
        assert exporter.get_finished_spans() == ()


@pytest.fixture
def spans(tracer) -> Iterator[tuple[Tracing, InMemorySpanExporter]]:
    """A `Tracing` whose spans land in memory."""
    assert get_tracing() is not None  # OpenTelemetry is installed and configured
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield Tracing(provider), exporter
    provider.shutdown()


def row(queue: str, trace: str) -> Planned:
    return Planned(queue, "id", "greet", "{}", 0, "stream", trace=trace)


# Run in a fresh interpreter in which OpenTelemetry cannot be imported: a Runner publishes,
# routes and runs jobs, and nothing of OpenTelemetry is ever loaded.
WITHOUT_OTEL = """
import asyncio, json, sys

class NoOpenTelemetry:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "opentelemetry":
            raise ImportError(f"{name} is not installed here")
        return None

sys.meta_path.insert(0, NoOpenTelemetry())

import flowline
from flowline import Job, Queue, Route, Stream
from flowline.observability.tracing import get_tracing

pipeline = Stream("untraced", json.loads) >> Route(lambda e: [Job("work", e)]) >> Queue("untraced")
done = []

@pipeline.dequeue("work")
async def work(job):
    done.append(job.id)
    return job.data

async def main():
    async with flowline.Runner(pipeline, flowline.Settings.from_env(grace=1)):
        await pipeline.publish(b'{"n": 1}')
        await pipeline.enqueue("work", {"n": 2})
        for _ in range(400):
            if len(done) == 2:
                break
            await asyncio.sleep(0.05)
    print(json.dumps({
        "done": len(done),
        "tracing": get_tracing() is not None,
        "loaded": sorted(m for m in sys.modules if m.split(".")[0] == "opentelemetry"),
    }))

asyncio.run(main())
"""


class TestWithoutOpenTelemetry:
    async def test_flowline_imports_none_of_it(self, servers):
        """Without OpenTelemetry, a runner works end to end and never imports it."""
        env = {**os.environ, **servers.env(), "PYTHONPATH": str(ROOT)}
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-c", WITHOUT_OTEL],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout.splitlines()[-1])
        assert report == {"done": 2, "tracing": False, "loaded": []}

    def test_flowline_tracing_off_turns_it_off(self, tracer, monkeypatch):
        """FLOWLINE_TRACING=off leaves tracing off even with OpenTelemetry configured."""
        monkeypatch.setenv("FLOWLINE_TRACING", "off")
        monkeypatch.setattr(tracing_module, "_tracing", None)
        tracing_module._installed.cache_clear()
        try:
            assert get_tracing() is None
        finally:
            tracing_module._installed.cache_clear()

    async def test_tracing_waits_for_the_application_to_configure_it(self):
        """Installed but with no provider set, flowline makes no spans; once set, it does."""
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-c", CONFIGURED_LATER],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == ["False", "True"]


CONFIGURED_LATER = """
import time

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from flowline.observability.tracing import LOOK_EVERY, get_tracing

print(get_tracing() is not None)
trace.set_tracer_provider(TracerProvider())
time.sleep(LOOK_EVERY)
print(get_tracing() is not None)
"""
