"""The runtime: executes compiled pipelines (stream ingest, queue workers, cron, the runner)."""

# Provides what a pipeline does without a runner (`flowline._binding.Local`).
from . import local as _local  # noqa: F401
