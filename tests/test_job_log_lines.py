"""The per-job INFO lines: the fast batch writer prints exactly what structlog's chain would."""

from __future__ import annotations

import io
import json
import sys

import structlog

from flowline import _logging


def test_batch_lines_match_structlog_lines_key_for_key(monkeypatch):
    """Same keys in the same order and the same values, but for the timestamp."""
    out = io.StringIO()
    monkeypatch.setattr(sys, "stderr", out)
    try:
        _logging.configure(json=True, level="INFO")
        structlog.contextvars.bind_contextvars(request="r-1")
        log = structlog.get_logger("flowline.worker").bind(pipeline="p", stage="job", queue="q")
        log.info(
            "job completed",
            topic="t",
            job='id "1"',
            attempt=2,
            duration=0.0123,
            outcome="completed",
        )
        lines = _logging.job_lines()
        assert lines is not None
        lines.completed("p", "q", [("t", 'id "1"', 2, 0.0123), ("t", "id-2", 1, 1.5)])
    finally:
        structlog.contextvars.clear_contextvars()
        structlog.reset_defaults()
    chain, fast, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert list(fast) == list(chain)
    assert {k: v for k, v in fast.items() if k != "timestamp"} == {
        k: v for k, v in chain.items() if k != "timestamp"
    }
    assert second["job"] == "id-2"
    assert second["duration"] == 1.5
    assert fast["timestamp"].endswith("Z")


def test_no_batch_writer_for_console_logs_or_warning_level(monkeypatch):
    """Console lines and WARNING level go through structlog as usual (or nowhere)."""
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    try:
        _logging.configure(json=False, level="INFO")
        assert _logging.job_lines() is None
        _logging.configure(json=True, level="WARNING")
        assert _logging.job_lines() is None
        _logging.configure(json=True, level="INFO")
        assert _logging.job_lines() is not None
        structlog.configure(processors=[structlog.processors.JSONRenderer()])
        assert _logging.job_lines() is None  # someone else set structlog up: respect it
    finally:
        structlog.reset_defaults()
