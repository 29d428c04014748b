"""Traces through flowline, when OpenTelemetry is installed (the ``flowline[otel]`` extra).

The context travels with the work:

    publish ──traceparent header──▶ process <subject>  (the stream message: decode + route)
                                        ├── send <queue>     (its batch written to Redis)
                                        └── process <topic>  (each attempt of each of its jobs,
                                                              in whichever worker runs it)
                                                └── job.emit ──traceparent──▶ process <subject>

`Runner.publish_to` injects the current context into the NATS headers; the stream consumer
continues it in a span per message, and every job the message routes to stores that span's
traceparent in its Redis entry (retries and reclaims keep it), so the worker that runs the job
continues the same trace. The job's span is current while its handler runs: ``job.emit`` and
``pipeline.enqueue`` from a handler carry it on. Spans follow OpenTelemetry's messaging
semantic conventions; the application configures the SDK (provider, exporter, propagators).

This is the only module that imports OpenTelemetry, and only once `get_tracing` has found it
installed. Without it, with ``FLOWLINE_TRACING=off``, or while the application has set no
tracer provider, `get_tracing` returns None and each call site pays one ``is not None``.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.metadata
import importlib.util
import os
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from ..errors import Retry

if TYPE_CHECKING:
    from contextvars import Token

    from opentelemetry import context as otel_context
    from opentelemetry import propagate, trace
    from opentelemetry.context import Context
    from opentelemetry.trace import (
        Link,
        ProxyTracerProvider,
        Span,
        SpanKind,
        Status,
        StatusCode,
        TracerProvider,
    )
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
    from opentelemetry.util.types import AttributeValue

    from ..runtime.enqueue import Planned

# The semantic conventions the attribute names below come from (messaging.operation.type and
# messaging.consumer.group.name appeared in 1.27).
SCHEMA_URL = "https://opentelemetry.io/schemas/1.27.0"


# The process's Tracing, once the application has configured a tracer provider.
_tracing: Tracing | None = None
# Until then, when to look at the global provider again: looking costs about a microsecond
# (an environment lookup), too much to pay on every job of a process that never traces.
_next_look = 0.0
LOOK_EVERY = 1.0


def get_tracing() -> Tracing | None:
    """This process's `Tracing`, or None while there is nothing to trace.

    None without OpenTelemetry, with ``FLOWLINE_TRACING=off``, and until the application sets
    a tracer provider. Cheap enough to call per job: once on, tracing stays on, and a provider
    set after flowline started is seen within `LOOK_EVERY` seconds.
    """
    if _tracing is not None:
        return _tracing
    if not _installed():
        return None
    return _configured()


@functools.cache
def _installed() -> bool:
    """Whether OpenTelemetry's API can be used (checked once; imports it when it can)."""
    if os.environ.get("FLOWLINE_TRACING", "").strip().lower() in ("off", "0", "false", "no"):
        return False
    try:
        if importlib.util.find_spec("opentelemetry") is None:
            return False
        _import_opentelemetry()
    except ImportError:
        # Another package of the opentelemetry namespace without the API, or an import
        # hook that forbids it: tracing stays off.
        return False
    return True


def _configured() -> Tracing | None:
    global _tracing, _next_look
    now = time.monotonic()
    if now < _next_look:
        return None
    _next_look = now + LOOK_EVERY
    # Until the application sets a provider, spans would be no-ops that still cost
    # microseconds per message and job.
    if isinstance(trace.get_tracer_provider(), ProxyTracerProvider):
        return None
    _tracing = Tracing()
    return _tracing


def _import_opentelemetry() -> None:
    """Bind OpenTelemetry's API into this module's namespace (names typed above)."""
    global Link, ProxyTracerProvider, SpanKind, Status, StatusCode, TraceContextTextMapPropagator
    global otel_context, propagate, trace
    from opentelemetry import context as otel_context
    from opentelemetry import propagate, trace
    from opentelemetry.trace import Link, ProxyTracerProvider, SpanKind, Status, StatusCode
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator


def _version() -> str:
    try:
        return importlib.metadata.version("flowline")
    except importlib.metadata.PackageNotFoundError:
        return "0"


class Tracing:
    """Starts flowline's spans through the OpenTelemetry API (get one with `get_tracing`).

    Args:
        provider: where the spans go (default: the global tracer provider).
    """

    def __init__(self, provider: TracerProvider | None = None) -> None:
        self._tracer = trace.get_tracer("flowline", _version(), provider, schema_url=SCHEMA_URL)
        # A job stores one W3C traceparent, whatever propagators the application set for
        # NATS headers.
        self._w3c = TraceContextTextMapPropagator()

    # -- producing ------------------------------------------------------------------------------

    def inject(self, headers: dict[str, str] | None) -> dict[str, str] | None:
        """`headers` plus the current context (``traceparent``, ``tracestate``...), to publish."""
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        if not carrier:
            return headers
        return carrier if headers is None else {**headers, **carrier}

    def traceparent(self) -> str:
        """The current context as a traceparent, for a job enqueued directly ('' if none)."""
        carrier: dict[str, str] = {}
        self._w3c.inject(carrier)
        return carrier.get("traceparent", "")

    # -- spans ------------------------------------------------------------------------------------

    def message(
        self,
        *,
        subject: str,
        sequence: int,
        headers: Mapping[str, str] | None,
        size: int,
        group: str,
        deliveries: int,
        pipeline: str,
    ) -> Active:
        """Start the span of one stream message, continuing its publisher's context."""
        # NATS keeps header names as sent; W3C names them in lower case.
        carrier = {k.lower(): v for k, v in headers.items()} if headers else {}
        parent = propagate.extract(carrier)  # an empty context (a new trace) without a header
        attributes: dict[str, AttributeValue] = {
            "messaging.system": "nats",
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.destination.name": subject,
            "messaging.message.id": str(sequence),
            "messaging.consumer.group.name": group,
            "messaging.message.body.size": size,
            "flowline.pipeline": pipeline,
            "flowline.message.deliveries": deliveries,
        }
        span = self._tracer.start_span(f"process {subject}", parent, SpanKind.CONSUMER, attributes)
        return Active(span, parent, self._w3c)

    def job(
        self,
        *,
        topic: str,
        job_id: str,
        queue: str,
        attempt: int,
        traceparent: str,
        size: int,
        pipeline: str,
    ) -> Active:
        """Start the span of one attempt of a job, continuing the context it was enqueued in."""
        parent = self._w3c.extract({"traceparent": traceparent} if traceparent else {})
        attributes: dict[str, AttributeValue] = {
            "messaging.system": "redis",
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.destination.name": queue,
            "messaging.message.id": job_id,
            "messaging.message.body.size": size,
            "flowline.pipeline": pipeline,
            "flowline.job.topic": topic,
            "flowline.job.attempt": attempt,
        }
        span = self._tracer.start_span(f"process {topic}", parent, SpanKind.CONSUMER, attributes)
        return Active(span, parent, self._w3c)

    def send(self, rows: Sequence[Planned]) -> Active | None:
        """Start the span of one batch of jobs written to Redis; None if none was traced.

        The batch is a child of its message's span when it came from one message; jobs of
        several messages make parenthood ambiguous, so it starts its own trace and links to
        each message's span instead.
        """
        traces = list(dict.fromkeys(r.trace for r in rows if r.trace))
        if not traces:
            return None
        queues = {r.queue for r in rows}
        attributes: dict[str, AttributeValue] = {
            "messaging.system": "redis",
            "messaging.operation.type": "send",
            "messaging.operation.name": "send",
        }
        name = "send"
        if len(queues) == 1:
            [queue] = queues
            name = f"send {queue}"
            attributes["messaging.destination.name"] = queue
        if len(rows) > 1:  # the conventions leave it out for single messages
            attributes["messaging.batch.message_count"] = len(rows)
        contexts = [self._w3c.extract({"traceparent": t}) for t in traces]
        links: list[Link] = []
        if len(contexts) == 1:
            parent = contexts[0]
        else:
            parent = self._w3c.extract({})  # empty: a trace of its own
            links = [Link(trace.get_current_span(c).get_span_context()) for c in contexts]
        span = self._tracer.start_span(name, parent, SpanKind.PRODUCER, attributes, links)
        return Active(span, None, self._w3c)


class Active:
    """A span flowline started: current in this task (when given a parent) until it ends."""

    __slots__ = ("_ended", "_span", "_token", "_w3c")

    def __init__(self, span: Span, parent: Context | None, w3c: TraceContextTextMapPropagator):
        self._span = span
        self._w3c = w3c
        self._ended = False
        self._token: Token[Context] | None = None
        if parent is not None:
            # Current, so user code (routers, handlers) nests its spans and `job.emit` or
            # `pipeline.enqueue` carry this one on; baggage from the message is kept.
            self._token = otel_context.attach(trace.set_span_in_context(span, parent))

    @property
    def traceparent(self) -> str:
        """This span's context as a W3C traceparent ('' when it is not sampled or invalid)."""
        carrier: dict[str, str] = {}
        self._w3c.inject(carrier, trace.set_span_in_context(self._span))
        return carrier.get("traceparent", "")

    def fail(self, exc: BaseException) -> None:
        """Record why the operation did not complete, then end the span.

        `Retry` and cancellation (shutdown, a lost claim) are not errors: the job runs again.
        """
        span = self._span
        if isinstance(exc, Retry):
            delay = {} if exc.delay is None else {"flowline.retry.delay": float(exc.delay)}
            span.add_event("retry", delay)
        elif isinstance(exc, asyncio.CancelledError):
            span.add_event("cancelled")
        else:
            span.record_exception(exc)
            span.set_attribute("error.type", type(exc).__qualname__)
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        self.end()

    def end(self) -> None:
        """End the span and stop it being current; ending twice does nothing."""
        if self._ended:
            return
        self._ended = True
        if self._token is not None:
            otel_context.detach(self._token)
        self._span.end()
