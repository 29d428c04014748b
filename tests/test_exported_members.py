"""The public surface: `flowline.__all__` is exactly what the package exports."""

from __future__ import annotations

import inspect
from types import ModuleType

import pytest

import flowline
from flowline import errors


def public_names() -> set[str]:
    """Names a user sees in `flowline`, except submodules (imported as a side effect)."""
    return {
        name
        for name, value in vars(flowline).items()
        if not name.startswith("_") and not isinstance(value, ModuleType)
    }


def exceptions() -> dict[str, type[BaseException]]:
    return {
        name: value
        for name in flowline.__all__
        if inspect.isclass(value := getattr(flowline, name)) and issubclass(value, BaseException)
    }


class TestAll:
    def test_all_matches_public_names(self) -> None:
        """Every public name is in `__all__`, and `__all__` names nothing else."""
        assert set(flowline.__all__) == public_names()

    def test_all_has_no_duplicates(self) -> None:
        """Each name is listed once."""
        assert len(flowline.__all__) == len(set(flowline.__all__))

    @pytest.mark.parametrize("name", flowline.__all__)
    def test_every_name_is_importable(self, name: str) -> None:
        """`from flowline import <name>` works for every listed name."""
        namespace: dict[str, object] = {}
        exec(f"from flowline import {name}", namespace)
        assert namespace[name] is getattr(flowline, name)

    def test_star_import_gives_exactly_all(self) -> None:
        """`from flowline import *` brings in exactly `__all__`."""
        namespace: dict[str, object] = {}
        exec("from flowline import *", namespace)
        assert set(namespace) - {"__builtins__"} == set(flowline.__all__)

    def test_exported_names_come_from_flowline(self) -> None:
        """Exports are flowline's own classes, not re-exported third-party ones."""
        for name in flowline.__all__:
            module = getattr(flowline, name).__module__
            assert module.startswith("flowline."), (name, module)


class TestErrorTree:
    def test_errors_subclass_flowline_error(self) -> None:
        """Every public exception is a FlowlineError, except the Retry and Fail signals."""
        outside = {
            name
            for name, exc in exceptions().items()
            if not issubclass(exc, flowline.FlowlineError)
        }
        assert outside == {"Retry", "Fail"}

    @pytest.mark.parametrize("signal", [flowline.Retry, flowline.Fail])
    def test_signals_are_not_errors(self, signal: type[Exception]) -> None:
        """Retry and Fail are control flow: `except FlowlineError` must not swallow them."""
        assert not issubclass(signal, flowline.FlowlineError)
        assert issubclass(signal, Exception)
        assert "Not an error" in (signal.__doc__ or "")

    def test_every_error_in_errors_module_is_exported(self) -> None:
        """Each exception defined in `flowline.errors` is public."""
        defined = {
            name
            for name, value in vars(errors).items()
            if inspect.isclass(value)
            and issubclass(value, BaseException)
            and value.__module__ == errors.__name__
        }
        assert defined == set(exceptions())

    def test_each_error_says_when_it_is_raised(self) -> None:
        """Every error's docstring starts with "Raised when" or "Raised for"."""
        for name, exc in exceptions().items():
            if issubclass(exc, flowline.FlowlineError):
                assert (exc.__doc__ or "").startswith(("Raised when", "Raised for")), name

    def test_stage_errors_carry_the_stage(self) -> None:
        """Stage errors keep `.stage` and name it in their message."""
        exc = flowline.JobTimeout("handler ran 30s", stage="notify")
        assert isinstance(exc, flowline.JobError)
        assert exc.stage == "notify"
        assert str(exc) == "handler ran 30s [while running stage 'notify']"

    def test_retry_carries_its_delay(self) -> None:
        """`Retry(delay)` keeps the delay; no delay means the topic's backoff."""
        assert flowline.Retry(2.5).delay == 2.5
        assert flowline.Retry().delay is None
