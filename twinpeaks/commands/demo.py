"""``twinpeaks demo``: train a small model on scikit-learn data and record it."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

HELP = "Train a small CNN on scikit-learn's digits (3 vs 7) with twinpeaks recording, and write the run."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="twinpeaks-demo", metavar="DIR", help="output folder (default: twinpeaks-demo)")
    p.add_argument("--epochs", type=int, default=8, metavar="N", help="training epochs (default: 8)")
    p.add_argument("--task", choices=["binary", "multiclass", "regression"], default="binary",
                   help="binary: digits 3 vs 7; multiclass: 10 digits, per-class; regression: diabetes")


def run(args: argparse.Namespace) -> int:
    from ..demo import print_progress, train

    if args.epochs < 1:
        raise ValueError(f"--epochs must be at least 1, got {args.epochs}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{args.task}.tp"
    if path.exists():
        path.unlink()
        for suffix in ("-wal", "-shm"):
            Path(str(path) + suffix).unlink(missing_ok=True)
    t0 = time.perf_counter()
    print(f"training a {args.task} model for {args.epochs} epochs, recording every layer ...")
    train(args.task, path, args.epochs, progress=print_progress)
    print(f"done in {time.perf_counter() - t0:.1f} s")
    print(f"run file: {path}   (inspect it with: twinpeaks info {path})")
    return 0
