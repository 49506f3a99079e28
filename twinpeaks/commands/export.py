"""``twinpeaks export RUN --tensorboard LOGDIR | --wandb PROJECT``."""

from __future__ import annotations

import argparse

from . import RUN_HELP, run_path

HELP = "Export a run's activation histograms to TensorBoard event files or to a Weights & Biases run (offline)."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN", help=RUN_HELP)
    dest = p.add_mutually_exclusive_group(required=True)
    dest.add_argument("--tensorboard", metavar="LOGDIR", help="TensorBoard log directory to write")
    dest.add_argument("--wandb", metavar="PROJECT", help="W&B project (offline unless WANDB_MODE says otherwise)")
    p.add_argument("--name", default=None, help="W&B run name (default: the run file's name)")


def run(args: argparse.Namespace) -> int:
    from ..export import export_tensorboard, export_wandb

    out: object
    path = run_path(args.run)
    if args.tensorboard:
        out = export_tensorboard(path, args.tensorboard)
        print(f"wrote TensorBoard histograms to {out}   (view: tensorboard --logdir {out})")
    else:
        out = export_wandb(path, args.wandb, name=args.name)
        print(f"logged to W&B project {args.wandb}: {out}   (upload an offline run with: wandb sync {out})")
    return 0
