"""The browser test harness: headless Debian Chromium driven by Playwright for Python through the
browser's own executable (Playwright's driver only; never `playwright install`, no browser download).

Fixtures (registered from conftest.py's `pytest_plugins`):
* `chromium`: a fresh browser context (its own profile directory under the test's tmp dir); skips the
  test, saying why, where Playwright or Chromium is missing (`make test -rs` lists the skips).
* `screenshots`: `await screenshots.take(page, "alert")` writes screenshots/<test>-<name>.png (ignored
  by git; ANNOUNCER_SCREENSHOTS moves it); the run ends by listing every file written.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from playwright.async_api import BrowserContext, Page

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
# Quiet, reproducible Chromium: nothing phones home or updates itself during a test.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",  # the call page's <audio> plays when the test says so
]
_WRITTEN: list[Path] = []


def chromium_path() -> str | None:
    """ANNOUNCER_TEST_CHROMIUM, or Debian's chromium."""
    wanted = os.environ.get("ANNOUNCER_TEST_CHROMIUM")
    if wanted:
        return wanted if os.access(wanted, os.X_OK) else None
    for candidate in CHROMIUM_CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("chromium")


@pytest.fixture
async def chromium(tmp_path: Path) -> AsyncIterator[BrowserContext]:
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        pytest.skip("browser test: Playwright for Python is not installed (pip install -e '.[dev]')")
    executable = chromium_path()
    if executable is None:
        pytest.skip(
            "browser test: no Chromium found (apt-get install chromium chromium-driver, as .ci/run does; "
            "or set ANNOUNCER_TEST_CHROMIUM)"
        )
    async with async_playwright() as playwright:
        # A persistent context is how Playwright takes a profile directory of ours (a fresh one per test).
        context = await playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=executable,
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1200, "height": 900},
        )
        context.set_default_timeout(20_000)
        try:
            yield context
        finally:
            await context.close()


@dataclass
class Screenshots:
    folder: Path
    prefix: str

    async def take(self, page: Page, name: str, **options: Any) -> Path:
        path = self.folder / f"{self.prefix}-{name}.png"
        await page.screenshot(path=str(path), full_page=True, **options)
        _WRITTEN.append(path)
        return path


@pytest.fixture
def screenshots(request: pytest.FixtureRequest) -> Screenshots:
    folder = Path(os.environ.get("ANNOUNCER_SCREENSHOTS", ROOT / "screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return Screenshots(folder, request.node.name.removeprefix("test_"))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _WRITTEN:
        terminalreporter.section("dashboard screenshots")
        for path in _WRITTEN:
            terminalreporter.write_line(str(path))


async def sign_in(page: Page, base_url: str, token: str) -> None:
    """Sign in through the sign-in form, as a person would, and wait for the overview."""
    await page.goto(base_url + "/sign-in")
    await page.fill("#token", token)
    await page.click("button[type=submit]")
    await page.wait_for_url(base_url + "/")
