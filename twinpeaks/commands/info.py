"""``twinpeaks info RUN``: what a run file holds."""

from __future__ import annotations

import argparse
import os

from . import RUN_HELP, run_path

HELP = "Show a run's layers, shapes, epochs, phases, steps and file size."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN", help=RUN_HELP)


def run(args: argparse.Namespace) -> int:
    from ..run import open_run

    path = run_path(args.run)
    with open_run(path) as r:
        size = os.path.getsize(path)
        meta = r.meta
        print(f"run      {path}  ({size / 1024:.1f} KiB, schema {meta['schema']}, "
              f"twinpeaks {meta.get('twinpeaks_version')})")
        print(f"model    {meta.get('model')}  options {meta.get('options')}")
        print(f"epochs   {r.epochs}")
        phases = r.phases
        print("phases   " + (", ".join(f"{p} ({r.n_steps(p)} steps)" for p in phases) or "none recorded"))
        if r.classes:
            print(f"classes  {', '.join(r.classes)}")
        print(f"layers   {len(r.layers)}")
        width = max((len(layer.name) for layer in r.layers), default=4)
        for layer in r.layers:
            shape = "never called" if layer.out_shape is None else "x".join(map(str, layer.out_shape))
            extra = f"  per-class {layer.columns}" if layer.columns else ""
            print(f"  {layer.index:>4}  {layer.name:<{width}}  {layer.type:<18} {shape}{extra}")
    return 0
