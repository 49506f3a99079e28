"""``twinpeaks demo``: train a small model on scikit-learn data and record it."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..recorder import ActivationsHistogram

HELP = ("Train a small CNN on scikit-learn's digits (3 vs 7) with twinpeaks recording; each run is a new file in "
        "DIR/runs/ (named by time), the charts of the newest go to DIR.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="twinpeaks-demo", metavar="DIR",
                   help="output folder: runs in DIR/runs/, charts in DIR (default: twinpeaks-demo)")
    p.add_argument("--epochs", type=int, default=8, metavar="N", help="training epochs (default: 8)")
    p.add_argument("--task", choices=["binary", "multiclass", "regression"], default="binary",
                   help="binary: digits 3 vs 7; multiclass: 10 digits, per-class; regression: diabetes")


def run(args: argparse.Namespace) -> int:
    import torch

    if args.epochs < 1:
        raise ValueError(f"--epochs must be at least 1, got {args.epochs}")

    # The demo's models are tiny: extra intra-op threads only add contention (measured: the
    # multiclass demo trained in 120 s with the default threads on a loaded 2-core machine,
    # in 22 s with one). Restored afterwards: cli.main may run inside a larger process.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _demo(args)
    finally:
        torch.set_num_threads(threads)


def _demo(args: argparse.Namespace) -> int:
    from ..demo import DEMO_RECORDING, print_progress, train, write_charts
    from ..live import live_path

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = out / "runs"
    t0 = time.perf_counter()

    def started(hist: ActivationsHistogram) -> None:
        print(f"training a {args.task} model for {args.epochs} epochs, recording every layer into {hist.path} ...")
        print(f"live chart (redrawn every epoch, open it in an image viewer): {live_path(Path(str(hist.path)))}")

    done = [0]

    def progress(msg: str) -> None:  # one line per epoch, with a bar
        done[0] += 1
        k = min(done[0], args.epochs)
        print_progress(f"[{'#' * k}{'.' * (args.epochs - k)}] {msg}" if msg.startswith("epoch") else msg)

    hist = train(args.task, f"{runs}{os.sep}", args.epochs, progress=progress, started=started, live=True,
                 **DEMO_RECORDING[args.task])
    path = Path(str(hist.path))
    print(f"trained in {time.perf_counter() - t0:.1f} s; drawing charts ...")
    charts = write_charts(path, out, args.task)
    print(f"\nrun file: {path}   (what it holds: twinpeaks info {path}; the newest run: twinpeaks info {runs})")
    print("charts, and what to look at:")
    for png, what in charts:
        print(f"  {png}\n      {what}")
    print(f"more: twinpeaks plot {path} --chart twinpeaks --epoch 0   (any epoch, layer or phase; see --help)")
    print(f"done in {time.perf_counter() - t0:.1f} s")
    return 0
