"""``twinpeaks plot RUN --chart colorful|twinpeaks|history``: draw a chart of a run to a PNG."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import RUN_HELP, run_path

HELP = "Draw the Colorful Dimension, Twin Peaks or Twin Peaks history chart of a run to an image file."
CHARTS = ("colorful", "twinpeaks", "history")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN", help=RUN_HELP)
    p.add_argument("--chart", choices=CHARTS, default="colorful", help="which chart (default: colorful)")
    p.add_argument("--layers", nargs="+", metavar="LAYER",
                   help="layer names or indices (colorful: default all; twinpeaks/history: one, default -1)")
    p.add_argument("--epoch", type=int, default=-1, metavar="E",
                   help="epoch of the twinpeaks chart, 0-based, negative from the end (default: -1)")
    p.add_argument("--phase", default="train", help="colorful: phase whose steps to draw (default: train)")
    p.add_argument("--per-class", action="store_true", help="twinpeaks/history: one curve per class")
    p.add_argument("--by-truth", action="store_true",
                   help="twinpeaks/history: true class (YES) vs all others (NO), overlap shaded")
    p.add_argument("--shared-scale", action="store_true", help="colorful: one colour scale for all layers")
    p.add_argument("--layer-info", action="store_true", help="colorful: output shapes and ranges in titles")
    p.add_argument("-o", "--output", metavar="FILE.png", help="output image (default: <run file>.<chart>.png beside the run)")


def _layer(value: str) -> int | str:
    try:
        return int(value)
    except ValueError:
        return value


def run(args: argparse.Namespace) -> int:
    from ..charts import plot_colorful_dimension, plot_twin_peaks, plot_twin_peaks_history
    from ..run import open_run

    layers = [_layer(v) for v in args.layers] if args.layers else None
    if args.chart != "colorful" and layers and len(layers) > 1:
        raise ValueError(f"--chart {args.chart} draws one layer; got --layers {' '.join(args.layers)}")
    path = run_path(args.run)
    out = Path(args.output) if args.output else Path(f"{path}.{args.chart}.png")
    with open_run(path) as r:
        if args.chart == "colorful":
            fig = plot_colorful_dimension(r, layers, phase=args.phase, shared_scale=args.shared_scale,
                                          show_layer_info=args.layer_info)
        elif args.chart == "twinpeaks":
            fig = plot_twin_peaks(r, args.epoch, layers[0] if layers else -1, args.per_class, by_truth=args.by_truth)
        else:
            fig = plot_twin_peaks_history(r, layers[0] if layers else -1, per_class=args.per_class,
                                          by_truth=args.by_truth)
    fig.savefig(out)  # type: ignore[attr-defined]
    print(out)
    return 0
