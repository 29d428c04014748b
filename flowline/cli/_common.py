"""What every command shares: loading ``module:attr``, running a coroutine, server options."""

from __future__ import annotations

import asyncio
import importlib
import os
import sys
from collections.abc import Callable, Coroutine
from typing import Any

import click

from .._compile import as_pipelines
from .._pipeline import Pipeline
from ..errors import ConfigurationError, FlowlineError


def load(target: str) -> Any:
    """Import ``module:attr`` (the current directory is importable, as with ``python -m``)."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigurationError(
            f"expected MODULE:ATTR (e.g. app.pipelines:pipeline), got {target!r}"
        )
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"cannot import {module_name!r}: {exc}") from exc
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigurationError(f"module {module_name!r} has no attribute {attr!r}") from None
    return obj


def run(main: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    """Run a command's coroutine; a `FlowlineError` becomes click's one-line error."""
    try:
        return asyncio.run(main())
    except FlowlineError as exc:
        raise click.ClickException(str(exc)) from None


nats_option = click.option("--nats", "nats_url", envvar="FLOWLINE_NATS_URL", help="NATS URL(s).")
redis_option = click.option("--redis", "redis_url", envvar="FLOWLINE_REDIS_URL", help="Redis URL.")
tls_option = click.option(
    "--tls-ca",
    "tls_ca",
    envvar="FLOWLINE_TLS_CA",
    help="CA file trusted for tls:// NATS and rediss:// Redis.",
)


def load_pipelines(target: str) -> tuple[Pipeline, ...]:
    """The pipelines at ``module:attr``, or click's one-line error saying why not."""
    try:
        return as_pipelines(load(target))
    except FlowlineError as exc:
        raise click.ClickException(str(exc)) from None
