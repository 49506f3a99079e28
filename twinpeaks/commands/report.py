"""``twinpeaks report RUN [RUN ...] -o report.html``: one self-contained HTML file."""

from __future__ import annotations

import argparse

from . import run_path

HELP = "Write a self-contained HTML report (opens offline) of one run, or of several side by side."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", metavar="RUN",
                   help="run file(s) (.tp); a folder of runs stands for its newest run (to compare several, list them: runs/*.tp)")
    p.add_argument("-o", "--output", default="report.html", metavar="FILE", help="HTML file to write (default: report.html)")
    p.add_argument("--title", default=None, help="page title (default: the run names)")
    p.add_argument("--max-columns", type=int, default=None, metavar="N",
                   help="heatmap columns shown per layer, merged for display only "
                        "(default: up to 240, fewer for models with many layers)")


def run(args: argparse.Namespace) -> int:
    from ..web.build import report

    if args.max_columns is not None and args.max_columns < 2:
        raise ValueError(f"--max-columns must be at least 2, got {args.max_columns}")
    out = report([run_path(r) for r in args.runs], args.output, title=args.title, max_columns=args.max_columns)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB): open it in a browser, no network needed")
    return 0
