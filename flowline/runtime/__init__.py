"""The runtime: executes compiled pipelines (stream ingest, queue workers, cron, the runner)."""
