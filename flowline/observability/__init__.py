"""Seeing a running flowline: Prometheus metrics, health endpoints and (optional) tracing."""
