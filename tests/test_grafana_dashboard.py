"""examples/grafana/flowline.json queries only series flowline exposes, in valid PromQL."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from flowline.observability.metrics import Metrics, ServerSnapshot
from tests.conftest import require
from tests.prometheus import promtool_binary

DASHBOARD = Path(__file__).resolve().parent.parent / "examples" / "grafana" / "flowline.json"

# What Grafana puts in place of its built-in variables before sending a query.
BUILTINS = {"__rate_interval": "1m", "__interval": "1m", "__range": "1h"}


def load() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return dashboard


def exprs() -> dict[str, str]:
    """Every panel query, by a name that says where it is: ``panel_<id>_<refId>``."""
    return {
        f"panel_{panel['id']}_{target['refId']}": target["expr"]
        for panel in load()["panels"]
        for target in panel.get("targets", [])
    }


def variables() -> list[dict[str, Any]]:
    variables: list[dict[str, Any]] = load()["templating"]["list"]
    return variables


def exposed_series() -> set[str]:
    """The series names a flowline runner exposes, read from its metric families."""
    metrics = Metrics()
    # The server gauges are only collected from a fresh snapshot (empty is enough for names).
    metrics.server = ServerSnapshot(time.monotonic(), queues={}, streams={})
    names = set()
    for family in metrics.registry.collect():
        if family.type == "histogram":
            names |= {f"{family.name}_bucket", f"{family.name}_sum", f"{family.name}_count"}
        elif family.type == "counter":
            # prometheus-client names a counter family without the _total its series carry.
            names.add(f"{family.name}_total")
        else:
            names.add(family.name)
    return names


def promql(expr: str) -> str:
    """`expr` as Prometheus receives it: Grafana variables replaced by plausible values."""
    expr = re.sub(r"\$(__\w+)", lambda m: BUILTINS[m.group(1)], expr)
    return re.sub(r"\$\{?\w+\}?", ".*", expr)  # the dashboard's variables are all regex matchers


def unbalanced(expr: str) -> str | None:
    """Why `expr`'s brackets do not pair up (outside string literals), or None if they do."""
    closing = {")": "(", "]": "[", "}": "{"}
    stack: list[str] = []
    quote: str | None = None
    escaped = False
    for char in expr:
        if quote:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == quote:
                quote = None
        elif char in "\"'`":
            quote = char
        elif char in "([{":
            stack.append(char)
        elif char in closing and (not stack or stack.pop() != closing[char]):
            return f"unexpected {char!r}"
    if quote:
        return f"unclosed string {quote}"
    return f"unclosed {''.join(stack)!r}" if stack else None


class TestStructure:
    def test_is_a_dashboard_with_panels(self) -> None:
        """The file is JSON with a title, a uid and at least one panel."""
        dashboard = load()
        assert dashboard["title"]
        assert dashboard["uid"]
        assert dashboard["panels"]

    def test_every_panel_has_a_query(self) -> None:
        """Every panel has at least one target with a non-empty expr."""
        empty = [
            panel["title"]
            for panel in load()["panels"]
            if not any(target.get("expr", "").strip() for target in panel.get("targets", []))
        ]
        assert not empty, f"panels without a query: {empty}"

    def test_panel_ids_are_unique(self) -> None:
        """No two panels share an id (Grafana would mix up their queries)."""
        ids = [panel["id"] for panel in load()["panels"]]
        assert len(ids) == len(set(ids))

    def test_variables(self) -> None:
        """A Prometheus data source variable and a pipeline variable read from flowline's labels."""
        by_name = {var["name"]: var for var in variables()}
        assert by_name["datasource"]["type"] == "datasource"
        assert by_name["datasource"]["query"] == "prometheus"
        assert by_name["pipeline"]["type"] == "query"
        assert (
            by_name["pipeline"]["definition"]
            == "label_values(flowline_jobs_completed_total, pipeline)"
        )

    def test_variables_used_are_defined(self) -> None:
        """Every $variable a query uses is a dashboard variable or one of Grafana's built-ins."""
        defined = {var["name"] for var in variables()} | set(BUILTINS)
        used = {
            name: set(re.findall(r"\$\{?(\w+)\}?", expr)) - defined
            for name, expr in exprs().items()
        }
        undefined = {name: missing for name, missing in used.items() if missing}
        assert not undefined, f"queries use undefined variables: {undefined}"


class TestMetricNames:
    def test_queries_only_exposed_series(self) -> None:
        """Every flowline_* name in a query or variable is a series flowline exposes."""
        queried = {
            metric
            for expr in [*exprs().values(), *(var.get("definition", "") for var in variables())]
            for metric in re.findall(r"flowline_[a-z_]+", expr)
        }
        unknown = sorted(queried - exposed_series())
        assert not unknown, f"the dashboard queries series flowline does not expose: {unknown}"

    def test_exposed_series_are_known(self) -> None:
        """The names are read from the metric families (guards against an empty set passing)."""
        names = exposed_series()
        assert "flowline_jobs_completed_total" in names
        assert "flowline_job_duration_seconds_bucket" in names
        assert "flowline_queue_jobs" in names


class TestPromQL:
    def test_brackets_balance(self) -> None:
        """Every query's parentheses, brackets and braces pair up."""
        broken = {name: why for name, expr in exprs().items() if (why := unbalanced(expr))}
        assert not broken, f"unbalanced queries: {broken}"

    @pytest.mark.parametrize(
        ("expr", "why"),
        [
            ('sum(rate(x{a="("}[5m]))', None),
            ("sum(rate(x[5m])", "unclosed '('"),
            ("sum(x{a='b'])", "unexpected ']'"),
            ('x{a="b}', 'unclosed string "'),
        ],
    )
    def test_bracket_check(self, expr: str, why: str | None) -> None:
        """The bracket check ignores string contents and names what is wrong."""
        assert unbalanced(expr) == why

    def test_promtool_parses_every_query(self, tmp_path: Path) -> None:
        """promtool parses every query (with variables substituted) as a recording rule."""
        promtool = require(promtool_binary(), "promtool")
        rules = [{"record": name, "expr": promql(expr)} for name, expr in exprs().items()]
        path = tmp_path / "dashboard.rules.yml"
        # JSON is YAML, so no YAML library is needed to write the rules.
        path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
        checked = subprocess.run(
            [promtool, "check", "rules", "--lint=none", str(path)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert checked.returncode == 0, f"promtool rejected:\n{checked.stdout}{checked.stderr}"
        assert f"SUCCESS: {len(rules)} rules found" in checked.stdout
