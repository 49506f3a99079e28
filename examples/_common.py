"""Shared by the example scripts: a folder of runs and the charts (when this twinpeaks has them)."""

from __future__ import annotations

import sys
from pathlib import Path

import twinpeaks as tp


def fresh_run(name: str) -> str:
    """The folder ``runs/<name>/`` (or the path given on the command line): each run of the example is a new file in it."""
    return sys.argv[1] if len(sys.argv) > 1 else f"runs/{name}/"


def report(adapter, folder: str) -> None:
    """Print what the run holds and save the three charts next to it."""
    path = Path(adapter.recorder.path)
    run = adapter.run
    print(f"{path}: {run.epochs} epochs, phases {run.phases}, {run.n_steps('train')} train steps, "
          f"{len(run.layers)} layers, last layer {run.layers[-1].name!r}")
    if not hasattr(tp, "plot_twin_peaks"):
        print("(this twinpeaks has no charts module: charts skipped)")
        return
    import matplotlib

    matplotlib.use("Agg")
    for name in ("plot_colorful_dimension", "plot_twin_peaks", "plot_twin_peaks_history"):
        out = path.with_name(f"{path.stem}-{name[5:].replace('_', '-')}.png")
        getattr(adapter, name)().savefig(out)
        print(f"wrote {out}")
