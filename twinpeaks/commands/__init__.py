"""One module per ``twinpeaks`` sub-command (see :mod:`twinpeaks.cli`).

Everything a command prints that a run file or a user controls (layer, class and
phase names, options, messages quoting them) goes through :func:`term`: control and
format characters are shown as escapes, so a name cannot retitle, clear or
rewrite the terminal.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .._text import printable as term

__all__ = ["RUN_HELP", "run_path", "term"]

#: The help of a RUN argument that takes one run.
RUN_HELP = "run file (.tp), or a folder of runs: its newest run (by the time in the run names)"


def run_path(value: str) -> Path:
    """The run file a RUN argument names: itself, or a folder's newest run (said on stderr)."""
    from ..rundir import names_a_folder, resolve_run

    path = resolve_run(value)
    if names_a_folder(value):
        print(f"twinpeaks: newest run in {term(value)}: {term(path)}", file=sys.stderr)
    return path
