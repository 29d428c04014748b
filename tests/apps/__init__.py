"""Pipelines that tests run in real `flowline worker` processes."""
