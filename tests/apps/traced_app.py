"""Two pipelines for the tracing tests, traced to a file when FLOWLINE_TEST_SPANS names one.

``traced``: each event becomes a ``greet`` job, which emits a follow-up to ``traced-followup``,
and a ``flaky`` job, which fails its first attempt. ``traced-followup``: each event becomes a
``thank`` job. ``direct`` jobs come from `pipeline.enqueue`.

Imported with FLOWLINE_TEST_SPANS set (the worker process), the module installs an SDK tracer
provider that appends each finished span to that file as one JSON line, as soon as it ends.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from flowline import Backoff, Job, JobContext, Pipelines, Queue, Route, Stream

followup = (
    Stream("traced-followup", json.loads, ack_wait=5)
    >> Route(lambda event: [Job("thank", event)], name="thanks")
    >> Queue("traced-followup")
)

pipeline = (
    Stream("traced", json.loads, ack_wait=5)
    >> Route(lambda event: [Job("greet", event), Job("flaky", event)], name="fan-out")
    >> Queue("traced", retries=1, backoff=Backoff(base=0.05, cap=0.1))
)


@pipeline.dequeue("greet")
async def greet(job: JobContext) -> str:
    await job.emit(followup, json.dumps({"greeted": job.data["who"]}).encode())
    return "greeted"


@pipeline.dequeue("flaky")
async def flaky(job: JobContext) -> str:
    if job.attempt == 1:
        raise ConnectionError("flaky on its first attempt")
    return "recovered"


@pipeline.dequeue("direct")
async def direct(job: JobContext) -> str:
    return "direct"


@followup.dequeue("thank")
async def thank(job: JobContext) -> str:
    return "thanked"


pipelines = Pipelines(pipeline, followup)


def span_record(span: Any) -> dict[str, Any]:
    """A finished SDK span as plain JSON: ids in hex, kind and status by name."""
    ctx = span.get_span_context()
    return {
        "trace_id": f"{ctx.trace_id:032x}",
        "span_id": f"{ctx.span_id:016x}",
        "parent": f"{span.parent.span_id:016x}" if span.parent is not None else None,
        "name": span.name,
        "kind": span.kind.name,
        "attributes": dict(span.attributes or {}),
        "links": [
            {"trace_id": f"{link.context.trace_id:032x}", "span_id": f"{link.context.span_id:016x}"}
            for link in span.links
        ],
        "status": span.status.status_code.name,
        "events": [event.name for event in span.events],
    }


def _install(path: str) -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import (
        SimpleSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    class JsonLines(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            with open(path, "a") as out:
                for span in spans:
                    out.write(json.dumps(span_record(span)) + "\n")
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(JsonLines()))
    trace.set_tracer_provider(provider)


if os.environ.get("FLOWLINE_TEST_SPANS"):
    _install(os.environ["FLOWLINE_TEST_SPANS"])
