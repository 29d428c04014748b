"""flowline: composable ``Stream >> Route >> Queue`` pipelines on NATS JetStream and Redis."""

from ._broker import FlowlineBroker, compile_broker
from ._chain import Branch, Chain
from ._events import Event
from ._pipeline import Pipeline, Pipelines
from ._settings import Settings
from ._stages import Backoff, Cron, Job, Queue, Rate, Route, Stream
from .errors import (
    ConfigurationError,
    DecodeError,
    EnqueueError,
    Fail,
    FlowlineError,
    JobError,
    JobTimeout,
    NotReplicated,
    PipelineError,
    Retry,
    RouteError,
    SerializationError,
    StageError,
    UnknownTopicError,
)
from .runtime.cron import CronTick
from .runtime.eventlog import listen
from .runtime.job import JobContext
from .runtime.queues import Cancellation, JobInfo, QueueCounts, QueueHandle
from .runtime.runner import Runner, connect

__all__ = [
    # describing pipelines
    "Backoff",
    "Branch",
    "Chain",
    "Cron",
    "CronTick",
    "Job",
    "Pipeline",
    "Pipelines",
    "Queue",
    "Rate",
    "Route",
    "Stream",
    # running them
    "Cancellation",
    "Event",
    "JobContext",
    "JobInfo",
    "QueueCounts",
    "QueueHandle",
    "Runner",
    "Settings",
    "connect",
    "listen",
    # taskiq
    "FlowlineBroker",
    "compile_broker",
    # signals a handler raises
    "Fail",
    "Retry",
    # errors
    "ConfigurationError",
    "DecodeError",
    "EnqueueError",
    "FlowlineError",
    "JobError",
    "JobTimeout",
    "NotReplicated",
    "PipelineError",
    "RouteError",
    "SerializationError",
    "StageError",
    "UnknownTopicError",
]
