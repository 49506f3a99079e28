"""``twinpeaks diagnose RUN``: what the charts of a run mean, in numbers and words."""

from __future__ import annotations

import argparse

from . import RUN_HELP, run_path

HELP = ("Say what a run's charts mean: separation of the twin peaks, overfitting, unstable, dead, "
        "saturated and out-of-range layers. Exit code 0 whatever it finds, unless --fail-on matches.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN", help=RUN_HELP)
    p.add_argument("--json", action="store_true", help="print findings and per-epoch metrics as JSON")
    p.add_argument("--fail-on", choices=["problem", "warning"], default=None,
                   help="exit 1 when a finding is at least this severe (for CI scripts)")


def run(args: argparse.Namespace) -> int:
    from ..diagnosis import SEVERITIES, diagnose

    d = diagnose(run_path(args.run))
    print(d.to_json(indent=2) if args.json else str(d))
    if args.fail_on and d.worst is not None and SEVERITIES.index(d.worst) >= SEVERITIES.index(args.fail_on):
        return 1
    return 0
