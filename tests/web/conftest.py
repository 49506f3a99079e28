"""Headless Debian chromium driven by Playwright, for the report and dashboard tests.

Never downloads a browser (no ``playwright install``): it uses ``/usr/bin/chromium``
(``scripts/ensure-chromium.sh`` installs it), and tests skip with the reason when
it is truly unavailable.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("TWINPEAKS_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


def chromium_unavailable() -> str | None:
    """Why no browser test can run here, or None."""
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        return f"no chromium at {CHROMIUM}: run scripts/ensure-chromium.sh as root (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright Python package is not installed (pip install -e '.[test]')"
    return None


@pytest.fixture(scope="module")
def browser():
    reason = chromium_unavailable()
    if reason:
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield b
        finally:
            b.close()


class Page:
    """A page that records console errors, page errors and every request it makes."""

    def __init__(self, browser, offline: bool = False):
        self.context = browser.new_context(viewport={"width": 1400, "height": 1000})
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.page.on("console", lambda m: self.errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        self.page.on("request", lambda r: self.requests.append(r.url))
        if offline:
            # anything but the file itself and inline data would be a CDN or other network use
            self.page.route("**/*", lambda route: route.continue_() if route.request.url.startswith(("file:", "data:"))
                            else route.abort())

    def close(self) -> None:
        self.context.close()


@pytest.fixture(scope="session", name="new_page")
def new_page_fixture():
    """``new_page(browser, offline=False)``: a :class:`Page`."""
    return Page
