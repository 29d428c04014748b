"""The pytest plugin: the `flowline_app` fixture, a pipeline running in memory for one test.

Loaded by pytest wherever flowline is installed (the ``pytest11`` entry point). Say what to run
with a marker, a fixture or an ini option, in that order of precedence::

    @pytest.mark.flowline("myapp.pipelines:pipeline")     # or the pipeline object itself
    async def test_welcome(flowline_app):
        await flowline_app.publish(event)
        await flowline_app.settle()

    @pytest.fixture
    def flowline_target():                                 # in a conftest.py
        return pipeline

    [tool.pytest.ini_options]
    flowline_target = "myapp.pipelines:pipeline"

The fixture is async: it needs pytest-asyncio (``flowline[testing]`` brings it).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from .harness import App, run

try:
    import pytest_asyncio
except ImportError:  # pragma: no cover - only without flowline[testing]
    pytest_asyncio = None  # type: ignore[assignment]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini("flowline_target", "module:attr of the pipeline flowline_app runs", default="")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "flowline(target, concurrency=None): what the flowline_app fixture runs "
        "(a pipeline, or its module:attr)",
    )


@pytest.fixture
def flowline_target(request: pytest.FixtureRequest) -> Any:
    """What `flowline_app` runs: the marker's target, else the ``flowline_target`` ini option."""
    marker = request.node.get_closest_marker("flowline")
    target: Any = marker.args[0] if marker is not None and marker.args else None
    if target is None:
        target = request.config.getini("flowline_target") or None
    if target is None:
        raise pytest.UsageError(
            "flowline_app needs a target: mark the test @pytest.mark.flowline(pipeline), "
            "define a flowline_target fixture, or set flowline_target in the pytest ini options"
        )
    if isinstance(target, str):
        from ..cli._common import load
        from ..errors import FlowlineError

        try:
            target = load(target)
        except FlowlineError as exc:
            raise pytest.UsageError(f"flowline_target: {exc}") from None
    return target


async def _app(request: pytest.FixtureRequest, flowline_target: Any) -> AsyncIterator[App]:
    """`flowline.testing.run` of `flowline_target`, stopped after the test."""
    marker = request.node.get_closest_marker("flowline")
    concurrency = marker.kwargs.get("concurrency") if marker is not None else None
    async with run(flowline_target, concurrency=concurrency) as app:
        yield app


if pytest_asyncio is not None:
    flowline_app = pytest_asyncio.fixture(_app, name="flowline_app")
else:  # pragma: no cover - only without flowline[testing]

    @pytest.fixture
    def flowline_app() -> None:
        """Needs pytest-asyncio: ``pip install 'flowline[testing]'``."""
        raise pytest.UsageError("flowline_app is async: install pytest-asyncio (flowline[testing])")
