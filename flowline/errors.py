"""Every error flowline raises, under one root.

    FlowlineError
    ├── PipelineError          the pipeline description is malformed (raised when it is built)
    ├── ConfigurationError     settings or server URLs are unusable
    ├── StageError             a stage failed at run time; `.stage` names it
    │   ├── DecodeError        a stream message could not be decoded
    │   ├── RouteError         a router raised or returned something that is not a job
    │   ├── UnknownTopicError  a router produced a job for a topic nobody dequeues
    │   ├── EnqueueError       jobs could not be written to Redis
    │   └── JobError           a handler failed (wraps the handler's exception)
    │       └── JobTimeout     a handler ran past its topic's timeout
    ├── SerializationError     job data or a result is not JSON-serialisable, or a dict
    │                          published to a protobuf stream is not that message
    └── NotReplicated          jobs reached fewer Redis replicas than redis_wait_replicas asks

`Retry` is not an error: it is a signal a handler raises to ask for another attempt.
"""

from __future__ import annotations


class FlowlineError(Exception):
    """Raised for any failure that flowline itself detects."""


class PipelineError(FlowlineError):
    """Raised when a pipeline description is malformed, at the moment it is built."""


class ConfigurationError(FlowlineError):
    """Raised when settings, URLs or command-line targets cannot be used."""


class StageError(FlowlineError):
    """Raised when a stage fails at run time; `stage` says which one."""

    def __init__(self, message: str, *, stage: str) -> None:
        super().__init__(f"{message} [while running stage {stage!r}]")
        self.stage = stage


class DecodeError(StageError):
    """Raised when a stream message cannot be decoded into an event."""


class RouteError(StageError):
    """Raised when a router raises, or returns something that is not a job."""


class UnknownTopicError(RouteError):
    """Raised when a router produces a job whose topic no worker dequeues."""


class EnqueueError(StageError):
    """Raised when jobs cannot be written to their queue."""


class JobError(StageError):
    """Raised when a job handler fails."""


class JobTimeout(JobError):
    """Raised when a job handler runs longer than its topic's timeout."""


class SerializationError(FlowlineError):
    """Raised when job data or a job result cannot be encoded as JSON, or a dict published to
    a protobuf stream does not fit its message (the message names the field)."""


class NotReplicated(FlowlineError):
    """Raised when an enqueue's jobs reached the primary but fewer replicas than
    ``redis_wait_replicas`` asks for, within 1 s: a failover now could lose them, so the
    enqueue counts as failed (enqueueing the same ids again is a no-op)."""


class Retry(Exception):
    """Not an error: raise it in a handler to ask for another attempt after `delay` seconds.

    Args:
        delay: seconds to wait before the next attempt; `None` uses the topic's backoff.
    """

    def __init__(self, delay: float | None = None) -> None:
        super().__init__(f"retry requested (delay={delay})")
        self.delay = delay


class Fail(Exception):
    """Not an error of flowline's: raise it in a handler to fail the job at once, with no retry."""
