"""Size and load time of the HTML report of a 60-layer, 10,000-step run.

Usage: .venv/bin/python scripts/measure-report.py [WORKDIR]

Records a tiny 60-layer MLP for 10 epochs of 1,000 train steps and 20 valid
batches each (max_columns=1000, the default), writes its report, then opens the
report in headless Debian chromium and times it until the page says it is
ready, and until every layer's chart is drawn.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import torch

import twinpeaks as tp

# the browser the tests use (tests/web/conftest.py)
CHROMIUM = os.environ.get("TWINPEAKS_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


def record(path: Path, epochs: int = 10, steps: int = 1000, valid: int = 20) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[m for _ in range(30) for m in (torch.nn.Linear(4, 4), torch.nn.Tanh())])
    for m in model:  # keep the signal alive through 60 layers: every layer's histogram varies
        if isinstance(m, torch.nn.Linear):
            torch.nn.init.orthogonal_(m.weight, gain=1.5)
    with tp.ActivationsHistogram(model, path) as hist, torch.no_grad():
        for _ in range(epochs):
            model.train()
            for _ in range(steps):
                model(torch.randn(4, 4))
            model.eval()
            for _ in range(valid):
                model(torch.randn(4, 4))
            hist.end_epoch()


def main() -> None:
    work = Path(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp())
    work.mkdir(parents=True, exist_ok=True)
    run_path, html = work / "big.tp", work / "big.html"
    if not run_path.exists():
        t = time.perf_counter()
        record(run_path)
        print(f"recorded {run_path} in {time.perf_counter() - t:.1f} s")
    run = tp.open_run(run_path)
    print(f"run: {len(run.layers)} layers, {run.n_steps('train')} train steps, {run.epochs} epochs, "
          f"{run_path.stat().st_size / 1e6:.2f} MB")
    t = time.perf_counter()
    tp.report(run, html)
    print(f"report written in {time.perf_counter() - t:.2f} s: {html.stat().st_size / 1e6:.2f} MB")

    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        for attempt in range(3):
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            t = time.perf_counter()
            page.goto(html.as_uri())
            page.wait_for_function("document.body.dataset.ready === '1'", timeout=60000)
            ready = time.perf_counter() - t
            page.evaluate("window.twinpeaks.state.renderAll()")
            page.wait_for_function("document.querySelectorAll('.tp-heatmap .main-svg').length > 0")
            every = time.perf_counter() - t
            n = page.evaluate("document.querySelectorAll('.tp-heatmap[data-rendered]').length")
            print(f"load {attempt + 1}: ready (first screen drawn) {ready:.2f} s, all {n} layer charts drawn {every:.2f} s")
            page.close()
        browser.close()


if __name__ == "__main__":
    main()
