"""One module per ``twinpeaks`` sub-command (see :mod:`twinpeaks.cli`)."""

from __future__ import annotations

import sys
from pathlib import Path

#: The help of a RUN argument that takes one run.
RUN_HELP = "run file (.tp), or a folder of runs: its newest run (by the time in the run names)"


def run_path(value: str) -> Path:
    """The run file a RUN argument names: itself, or a folder's newest run (said on stderr)."""
    from ..rundir import names_a_folder, resolve_run

    path = resolve_run(value)
    if names_a_folder(value):
        print(f"twinpeaks: newest run in {value}: {path}", file=sys.stderr)
    return path
