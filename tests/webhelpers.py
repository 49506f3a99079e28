"""Headless Debian chromium driven by Playwright, for the report and dashboard tests.

Never downloads a browser (no ``playwright install``): it uses ``/usr/bin/chromium``
(``scripts/ensure-chromium.sh`` installs it), and tests skip with the reason when
it is truly unavailable.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

import twinpeaks as tp

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


class Recorded:
    """A small real run recorded with exact binning, and copies of what it binned (the oracle's input)."""

    def __init__(self, path: Path, epochs: int = 3, train_steps: int = 8, valid_steps: int = 2, *,
                 bins: int = 40, value_range: tuple[float, float] | None = None, test: bool = True):
        import torch

        torch.manual_seed(0)
        self.path = path
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
        self.values: dict[str, list[tuple[str, int, Any, Any]]] = {"0": [], "2": []}
        self._phase, self._epoch, self._y = "train", 0, None
        for name in self.values:
            model.get_submodule(name).register_forward_hook(
                lambda m, a, out, name=name: self.values[name].append((self._phase, self._epoch, out.detach().clone(), self._y)))
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        hist = tp.ActivationsHistogram(model, path, bins=bins, range=value_range, per_class=True, sample=1.0,
                                       classes=["cat", "dog", "emu"], flush_every=4)
        with hist:
            for e in range(epochs):
                self._epoch = e
                model.train()
                self._phase = "train"
                for _ in range(train_steps):
                    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
                    self._y = y
                    hist.targets(y)
                    loss = torch.nn.functional.cross_entropy(model(x), y)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                model.eval()
                self._phase = "valid"
                with torch.no_grad():
                    for _ in range(valid_steps):
                        y = torch.randint(0, 3, (16,))
                        self._y = y
                        hist.targets(y)
                        model(torch.randn(16, 4))
                hist.end_epoch()
            if test:
                self._phase = "test"
                with hist.phase("test"), torch.no_grad():
                    y = torch.randint(0, 3, (16,))
                    self._y = y
                    hist.targets(y)
                    model(torch.randn(16, 4))

    def steps(self, layer: str, phase: str) -> list[Any]:
        """Captured outputs of ``layer`` in ``phase``, one tensor per step, in order."""
        return [v for p, _, v, _ in self.values[layer] if p == phase]

    def epoch(self, layer: str, phase: str, epoch: int) -> list[tuple[Any, Any]]:
        return [(v, y) for p, e, v, y in self.values[layer] if p == phase and e == epoch]
