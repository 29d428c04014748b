"""The Prometheus test helper itself, on a throwaway target with one counter."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, generate_latest

from tests.conftest import require
from tests.prometheus import PrometheusServer, prometheus_binary


@pytest.fixture
def target() -> Iterator[str]:
    """A loopback HTTP server whose /metrics has ``helper_test_total 3``; yields host:port."""
    registry = CollectorRegistry()
    Counter("helper_test", "Incremented three times.", registry=registry).inc(3)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = generate_latest(registry)
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # one line per scrape on stderr is noise

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_scrapes_target_and_answers_queries(target: str, tmp_path: Path) -> None:
    """A started server scrapes its targets, reports them up, and answers instant queries."""
    binary = require(prometheus_binary(), "prometheus")
    with PrometheusServer(targets=[target], tmp_path=tmp_path, binary=binary) as prom:
        deadline = time.monotonic() + 15
        result = prom.query("sum(helper_test_total)")
        while not result and time.monotonic() < deadline:
            time.sleep(0.2)
            result = prom.query("sum(helper_test_total)")
        assert result, f"no sample scraped within 15 s: {prom.targets()}"
        assert float(result[0]["value"][1]) == 3
        [scraped] = prom.targets()
        assert scraped["scrapeUrl"] == f"http://{target}/metrics"
        assert scraped["health"] == "up"


def test_bad_query_raises(target: str, tmp_path: Path) -> None:
    """A query Prometheus rejects raises with Prometheus's own error message."""
    binary = require(prometheus_binary(), "prometheus")
    with (
        PrometheusServer(targets=[target], tmp_path=tmp_path, binary=binary) as prom,
        pytest.raises(RuntimeError, match="bad_data"),
    ):
        prom.query("sum(")


def test_stops_the_server(target: str, tmp_path: Path) -> None:
    """Leaving the context stops the server process."""
    binary = require(prometheus_binary(), "prometheus")
    with PrometheusServer(targets=[target], tmp_path=tmp_path, binary=binary) as prom:
        proc = prom.proc
        assert proc is not None
    assert proc.poll() is not None
