"""Prometheus metrics of one runner: counted in the event loop, exposed by prometheus-client.

The hot paths (a job started, a batch completed) only add to plain numbers: no lock, no label
lookup, no allocation. That is safe because every update happens on the runner's event-loop
thread (sync handlers run in threads, but flowline counts their jobs on the loop). At scrape
time `Metrics.collect` turns the numbers into prometheus-client metric families, so the text
format is prometheus-client's own. The gauges read from the servers come from a snapshot the
runner's probe refreshes just before each scrape; when a server did not answer, its gauges are
left out rather than shown stale.

Labels are bounded by the pipeline description (pipeline, subject, queue, topic, stage,
outcome, state): never a job id.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

# Jobs are often milliseconds long, sometimes minutes; the end-to-end latency likewise.
BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)  # fmt: skip

QUEUE_STATES = ("ready", "running", "delayed", "dead")
STREAM_OUTCOMES = ("routed", "retried", "dead_lettered")


class Histogram:
    """Bucket counts and a sum, updated without a lock (event-loop thread only)."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        # Prometheus buckets are upper bounds, inclusive: the first bound >= the value.
        self.counts[bisect_left(BUCKETS, seconds)] += 1
        self.sum += seconds

    def cumulative(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        total = 0
        for bound, count in zip((*map(str, BUCKETS), "+Inf"), self.counts, strict=True):
            total += count
            out.append((bound, total))
        return out


@dataclass(slots=True, eq=False)
class JobStats:
    """What one topic's jobs did in this process."""

    labels: tuple[str, str, str]  # pipeline, queue, topic
    started: int = 0
    completed: int = 0
    failed: int = 0
    retried: int = 0
    dead_lettered: int = 0
    cancelled: int = 0
    duration: Histogram = field(default_factory=Histogram)
    wait: Histogram = field(default_factory=Histogram)
    event_to_done: Histogram = field(default_factory=Histogram)


@dataclass(slots=True, eq=False)
class StreamStats:
    """What one pipeline's stream consumer did with messages in this process."""

    labels: tuple[str, str]  # pipeline, subject
    routed: int = 0
    retried: int = 0
    dead_lettered: int = 0


@dataclass(frozen=True, slots=True)
class ServerSnapshot:
    """Gauges read from the servers at one moment (see `Metrics.server`)."""

    taken: float
    # (pipeline, queue) -> {state: count}; absent when Redis did not answer
    queues: dict[tuple[str, str], dict[str, int]] | None
    # (pipeline, subject) -> (pending, ack pending); absent when NATS did not answer
    streams: dict[tuple[str, str], tuple[int, int]] | None


class Metrics:
    """Every flowline metric of one runner, registered in a prometheus-client registry.

    Args:
        registry: where to register; by default a registry of its own, so that two runners in
            one process (tests, notebooks) do not collide. Pass ``prometheus_client.REGISTRY``
            to expose flowline's metrics next to an application's own.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._jobs: dict[tuple[str, str, str], JobStats] = {}
        self._streams: dict[tuple[str, str], StreamStats] = {}
        self._enqueued: dict[tuple[str, str], int] = {}
        self._cron: dict[tuple[str, str], int] = {}
        self._errors: dict[tuple[str, str], int] = {}
        self._running: dict[tuple[str, str], Callable[[], int]] = {}
        self.server = ServerSnapshot(0.0, None, None)
        self.registry.register(self)

    # -- what the runtime calls ------------------------------------------------------------------

    def job(self, pipeline: str, queue: str, topic: str) -> JobStats:
        """The counters of one topic (look it up once, then update its fields directly)."""
        key = (pipeline, queue, topic)
        stats = self._jobs.get(key)
        if stats is None:
            stats = self._jobs[key] = JobStats(key)
        return stats

    def stream(self, pipeline: str, subject: str) -> StreamStats:
        """The counters of one pipeline's stream consumer."""
        key = (pipeline, subject)
        stats = self._streams.get(key)
        if stats is None:
            stats = self._streams[key] = StreamStats(key)
        return stats

    def enqueued(self, pipeline: str, queue: str, count: int) -> None:
        """`count` new jobs were written to `queue` (ids already present are not counted)."""
        key = (pipeline, queue)
        self._enqueued[key] = self._enqueued.get(key, 0) + count

    def cron_tick(self, pipeline: str, topic: str) -> None:
        """This process fired one cron tick."""
        key = (pipeline, topic)
        self._cron[key] = self._cron.get(key, 0) + 1

    def error(self, pipeline: str, stage: str) -> None:
        """One ``error:<stage>`` event happened."""
        key = (pipeline, stage)
        self._errors[key] = self._errors.get(key, 0) + 1

    def watch_running(self, pipeline: str, queue: str, running: Callable[[], int]) -> None:
        """Report ``flowline_worker_running_jobs`` for a queue worker of this process."""
        self._running[(pipeline, queue)] = running

    # -- what prometheus-client calls ------------------------------------------------------------

    def describe(self) -> Iterator[Metric]:
        # Registering must not collect (the servers may not be connected yet).
        return iter(())

    def collect(self) -> Iterator[Metric]:
        """The metric families, built from the numbers at this moment."""
        yield from self._job_families()
        stream = CounterMetricFamily(
            "flowline_stream_messages",
            "Stream messages handled, by outcome: routed (acked after enqueue), retried "
            "(redelivered later), dead_lettered.",
            labels=("pipeline", "subject", "outcome"),
        )
        for s in self._streams.values():
            for outcome in STREAM_OUTCOMES:
                stream.add_metric((*s.labels, outcome), getattr(s, outcome))
        yield stream
        yield _counter(
            "flowline_jobs_enqueued",
            "New jobs written to a queue by this process (ids already present are not counted).",
            ("pipeline", "queue"),
            self._enqueued,
        )
        yield _counter(
            "flowline_cron_ticks", "Cron ticks fired by this process.", ("pipeline", "topic"),
            self._cron,
        )  # fmt: skip
        yield _counter(
            "flowline_errors", "Error events, by stage.", ("pipeline", "stage"), self._errors
        )
        running = GaugeMetricFamily(
            "flowline_worker_running_jobs",
            "Jobs this process is running now (per process).",
            labels=("pipeline", "queue"),
        )
        for labels, count in self._running.items():
            running.add_metric(labels, count())
        yield running
        yield from self._server_families()

    def _job_families(self) -> Iterator[Metric]:
        labels = ("pipeline", "queue", "topic")
        counters = {
            "started": "Job attempts started.",
            "completed": "Jobs that completed (their result is stored).",
            "failed": "Job attempts that failed (each failed attempt, retried or not).",
            "retried": "Failed attempts that will be retried.",
            "dead_lettered": "Jobs that exhausted their attempts and were dead-lettered.",
            "cancelled": "Jobs this process held and ended as cancelled (a cancel was asked).",
        }
        for name, doc in counters.items():
            family = CounterMetricFamily(f"flowline_jobs_{name}", doc, labels=labels)
            for s in self._jobs.values():
                family.add_metric(s.labels, getattr(s, name))
            yield family
        histograms = {
            "flowline_job_duration_seconds": ("duration", "How long handlers ran."),
            "flowline_job_wait_seconds": (
                "wait",
                "From a job being ready (enqueued, due, or retried) to its handler starting.",
            ),
            "flowline_event_to_done_seconds": (
                "event_to_done",
                "From the stream message being stored (or the job enqueued, or the cron tick) "
                "to its job completing.",
            ),
        }
        for name, (attr, doc) in histograms.items():
            histogram = HistogramMetricFamily(name, doc, labels=labels)
            for s in self._jobs.values():
                h: Histogram = getattr(s, attr)
                histogram.add_metric(s.labels, h.cumulative(), h.sum)
            yield histogram

    def _server_families(self) -> Iterator[Metric]:
        snap = self.server
        # A snapshot older than a few seconds means the last refresh failed or never ran.
        fresh = time.monotonic() - snap.taken < 5.0
        if fresh and snap.queues is not None:
            family = GaugeMetricFamily(
                "flowline_queue_jobs",
                "Jobs in a queue, by state (read from Redis: the same in every process).",
                labels=("pipeline", "queue", "state"),
            )
            for labels, counts in snap.queues.items():
                for state in QUEUE_STATES:
                    family.add_metric((*labels, state), counts.get(state, 0))
            yield family
            paused = GaugeMetricFamily(
                "flowline_queue_paused",
                "1 while the queue is paused (read from Redis: the same in every process).",
                labels=("pipeline", "queue"),
            )
            for labels, counts in snap.queues.items():
                paused.add_metric(labels, counts.get("paused", 0))
            yield paused
        if fresh and snap.streams is not None:
            pending = GaugeMetricFamily(
                "flowline_stream_pending",
                "Stream messages not yet delivered to the durable consumer (read from NATS).",
                labels=("pipeline", "subject"),
            )
            acks = GaugeMetricFamily(
                "flowline_stream_ack_pending",
                "Stream messages delivered and not yet acked (read from NATS).",
                labels=("pipeline", "subject"),
            )
            for labels, (num_pending, ack_pending) in snap.streams.items():
                pending.add_metric(labels, num_pending)
                acks.add_metric(labels, ack_pending)
            yield pending
            yield acks


def _counter(
    name: str, doc: str, labels: tuple[str, ...], values: dict[tuple[str, str], int]
) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=labels)
    for key, value in values.items():
        family.add_metric(key, value)
    return family
