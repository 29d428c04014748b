"""`flowline.cli.load`: how the CLI finds the pipeline named by ``module:attr``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from examples.fanbase import pipeline as fanbase
from flowline import ConfigurationError
from flowline.cli import load


class TestLoad:
    def test_module_and_attribute(self) -> None:
        """``module:attr`` returns that object of that module."""
        assert load("examples.fanbase.pipeline:pipeline") is fanbase.pipeline

    def test_dotted_attribute(self) -> None:
        """The attribute may be a dotted path inside the module."""
        assert load("examples.fanbase.pipeline:pipeline.source") is fanbase.pipeline.source

    @pytest.mark.parametrize(
        "target", ["examples.fanbase.pipeline", "examples.fanbase.pipeline:", ":pipeline", ""]
    )
    def test_missing_colon_or_part(self, target: str) -> None:
        """Without both a module and an attribute, the message shows the expected form."""
        with pytest.raises(ConfigurationError) as info:
            load(target)
        assert str(info.value) == (
            f"expected MODULE:ATTR (e.g. app.pipelines:pipeline), got {target!r}"
        )

    def test_missing_module(self) -> None:
        """A module that does not exist is named, with Python's reason."""
        with pytest.raises(ConfigurationError) as info:
            load("flowline_no_such_app.pipelines:pipeline")
        assert str(info.value) == (
            "cannot import 'flowline_no_such_app.pipelines': No module named 'flowline_no_such_app'"
        )
        assert isinstance(info.value.__cause__, ModuleNotFoundError)

    def test_missing_attribute(self) -> None:
        """An attribute the module lacks is named with the module."""
        with pytest.raises(ConfigurationError) as info:
            load("examples.fanbase.pipeline:pipelines")
        assert str(info.value) == (
            "module 'examples.fanbase.pipeline' has no attribute 'pipelines'"
        )

    def test_missing_part_of_dotted_attribute(self) -> None:
        """A dotted attribute that breaks half way names the whole path."""
        with pytest.raises(ConfigurationError) as info:
            load("examples.fanbase.pipeline:pipeline.nope")
        assert str(info.value) == (
            "module 'examples.fanbase.pipeline' has no attribute 'pipeline.nope'"
        )

    def test_current_directory_is_importable(self, tmp_path: Path) -> None:
        """As with ``python -m``, modules in the current directory load (fresh interpreter)."""
        app, scripts = tmp_path / "app", tmp_path / "scripts"
        app.mkdir()
        scripts.mkdir()
        (app / "myapp.py").write_text("pipeline = 'from the current directory'\n")
        (app / "broken.py").write_text("import flowline_no_such_dependency\n")
        # A script file puts its own folder, not the current directory, on sys.path.
        script = scripts / "load_from_cwd.py"
        script.write_text(
            "from flowline.cli import load\n"
            "from flowline import ConfigurationError\n"
            "print(load('myapp:pipeline'))\n"
            "try:\n"
            "    load('broken:pipeline')\n"
            "except ConfigurationError as exc:\n"
            "    print(exc)\n"
        )
        out = subprocess.run(
            [sys.executable, str(script)],
            cwd=app,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.splitlines() == [
            "from the current directory",
            "cannot import 'broken': No module named 'flowline_no_such_dependency'",
        ]
