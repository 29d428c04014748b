"""A real Prometheus server on loopback for one test, scraping the targets it is given.

    with PrometheusServer(targets=["127.0.0.1:9101"], tmp_path=tmp_path) as prom:
        prom.query("sum(flowline_jobs_completed_total)")

The helpers are synchronous and use only urllib: a test calls them between its own awaits.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from flowline.servers import free_port

READY_TIMEOUT = 30.0


def prometheus_binary() -> str | None:
    """The ``prometheus`` executable on PATH, if any."""
    return shutil.which("prometheus")


def promtool_binary() -> str | None:
    """The ``promtool`` executable on PATH, if any (Debian ships it with ``prometheus``)."""
    return shutil.which("promtool")


class PrometheusServer:
    """Starts ``prometheus`` on a free loopback port with one scrape job, "flowline".

    Args:
        targets: ``host:port`` addresses to scrape (their ``/metrics``).
        tmp_path: where the config, the TSDB and the server's log go.
        scrape_interval: how often to scrape (rule evaluation runs as often).
        binary: the executable (default: `prometheus_binary()`).
    """

    def __init__(
        self,
        *,
        targets: list[str],
        tmp_path: Path,
        scrape_interval: str = "1s",
        binary: str | None = None,
    ) -> None:
        self.scrape_targets = list(targets)
        self.dir = tmp_path / "prometheus"
        self.scrape_interval = scrape_interval
        self.binary = binary or prometheus_binary()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.dir / "prometheus.log"

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self) -> PrometheusServer:
        if self.binary is None:
            raise RuntimeError("prometheus is not installed")
        self.dir.mkdir(parents=True, exist_ok=True)
        config = self.dir / "prometheus.yml"
        # JSON is YAML, so no YAML library is needed to write the config.
        config.write_text(
            json.dumps(
                {
                    "global": {
                        "scrape_interval": self.scrape_interval,
                        "evaluation_interval": self.scrape_interval,
                    },
                    "scrape_configs": [
                        {
                            "job_name": "flowline",
                            "static_configs": [{"targets": self.scrape_targets}],
                        }
                    ],
                },
                indent=2,
            )
        )
        args = [
            self.binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={self.dir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
            "--storage.tsdb.retention.time=1h",
        ]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=self.dir)
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"prometheus exited with {self.proc.returncode} at start:\n{self.output()}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as response:
                    if response.status == 200:
                        return
            except urllib.error.HTTPError as exc:  # 503 until the TSDB is open
                exc.close()
            except OSError:  # refused while the server starts
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"prometheus not ready within {READY_TIMEOUT} s:\n{self.output()}")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _get(self, path: str, **params: str) -> Any:
        url = f"{self.url}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                body = json.load(response)
        except urllib.error.HTTPError as exc:
            # A bad query is a 400 whose body still says what was wrong.
            with exc:
                body = json.load(exc)
        if body.get("status") != "success":
            raise RuntimeError(f"GET {path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The result of an instant query: ``[{"metric": {...}, "value": [ts, "3"]}, ...]``."""
        data = self._get("/api/v1/query", query=expr)
        result: list[dict[str, Any]] = data["result"]
        return result

    def targets(self) -> list[dict[str, Any]]:
        """The active targets, each with its ``scrapeUrl``, ``health`` and ``lastError``."""
        targets: list[dict[str, Any]] = self._get("/api/v1/targets")["activeTargets"]
        return targets
