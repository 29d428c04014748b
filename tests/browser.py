"""A real browser for the dashboard tests: Debian's chromium, driven by selenium.

`chrome` is one headless Chromium for the whole session (starting one takes a second or two);
`Browser` wraps it with what the tests need: credentials on every request, the console's
errors, waiting for the page to say something, and full-page screenshots kept as artifacts
(in ``$FLOWLINE_ARTIFACTS``, else ``tests/artifacts/``).

Without chromium and chromedriver the browser tests skip on a developer's machine, and fail in
CI (``CI`` set), where ``.ci/run`` installs them with apt.
"""

from __future__ import annotations

import base64
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import ROOT, missing

CHROMIUM = ("chromium", "chromium-browser", "google-chrome")
CHROMEDRIVER = ("chromedriver", "/usr/lib/chromium/chromedriver")
# No network but ours: the browser must never try to reach the internet (there is none in CI).
FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--disable-features=Translate,MediaRouter,OptimizationHints",
    "--window-size=1440,1000",
)


def artifacts() -> Path:
    """Where screenshots go: ``$FLOWLINE_ARTIFACTS``, else ``tests/artifacts``."""
    path = Path(os.environ.get("FLOWLINE_ARTIFACTS") or ROOT / "tests" / "artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _find(names: tuple[str, ...]) -> str | None:
    for name in names:
        found = shutil.which(name) or (
            name if os.path.isabs(name) and os.access(name, os.X_OK) else None
        )
        if found:
            return found
    return None


def _missing(what: str) -> None:
    missing(f"{what}: the browser tests need Debian's chromium and chromium-driver")


@pytest.fixture(scope="session")
def chrome(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One headless Chromium for the session, with a fresh profile and its console recorded."""
    binary, driver = _find(CHROMIUM), _find(CHROMEDRIVER)
    if binary is None or driver is None:
        _missing("chromium or chromedriver not found")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _missing("selenium is not installed (pip install -e '.[dev]')")
    # Selenium Manager would try to download a driver; we name ours, and say offline.
    os.environ.setdefault("SE_OFFLINE", "true")
    profile = tmp_path_factory.mktemp("chromium-profile")
    options = Options()
    options.binary_location = binary
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    log = tmp_path_factory.mktemp("chromedriver") / "chromedriver.log"
    drv = webdriver.Chrome(
        options=options, service=Service(executable_path=driver, log_output=str(log))
    )
    drv.set_page_load_timeout(30)
    drv.execute_cdp_cmd("Network.enable", {})
    try:
        yield drv
    finally:
        drv.quit()


class Browser:
    """The session's Chromium, pointed at one dashboard."""

    def __init__(self, driver: Any, base: str) -> None:
        self.driver = driver
        self.base = base.rstrip("/")

    def authenticate(self, user: str, password: str) -> None:
        """Send HTTP Basic credentials with every request (page loads and htmx's alike)."""
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        self.driver.execute_cdp_cmd(
            "Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Basic {token}"}}
        )

    def forget(self) -> None:
        self.driver.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {}})

    def open(self, path: str) -> None:
        self.driver.get(self.base + path)

    def console(self) -> list[dict[str, Any]]:
        """Console entries since the last call."""
        return list(self.driver.get_log("browser"))

    def console_errors(self) -> list[str]:
        return [e["message"] for e in self.console() if e["level"] in ("SEVERE", "ERROR")]

    def find(self, css: str) -> Any:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, css)

    def find_all(self, css: str) -> list[Any]:
        from selenium.webdriver.common.by import By

        return list(self.driver.find_elements(By.CSS_SELECTOR, css))

    def text(self, css: str) -> str:
        """The first match's text, whitespace collapsed ('' if none); read in one step, so an
        htmx swap in between cannot leave a stale element."""
        script = (
            "const e = document.querySelector(arguments[0]);"
            "return e ? e.textContent.replace(/\\s+/g, ' ').trim() : '';"
        )
        return str(self.driver.execute_script(script, css))

    def until(self, check: Callable[[], Any], timeout: float = 20, what: str = "") -> Any:
        """Poll `check` (which may raise while the page changes) until it returns truthy."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            try:
                last = check()
            except Exception as exc:  # a swapped element goes stale mid-read: read again
                last = exc
            else:
                if last:
                    return last
            time.sleep(0.1)
        raise AssertionError(f"page never showed {what or check}: last {last!r}")

    def screenshot(self, name: str) -> Path:
        """The whole page (not just the window) as ``<artifacts>/<name>.png``."""
        d = self.driver
        width, height = d.get_window_size()["width"], d.get_window_size()["height"]
        full = d.execute_script("return document.documentElement.scrollHeight")
        d.set_window_size(width, max(height, int(full) + 20))
        try:
            path = artifacts() / f"{name}.png"
            d.save_screenshot(str(path))
        finally:
            d.set_window_size(width, height)
        return path

    def leave(self) -> None:
        """Stop polling (before the dashboard goes away), and drop what the console said."""
        self.driver.get("about:blank")
        self.console()
        self.forget()
