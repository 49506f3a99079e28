"""The ``twinpeaks`` command line.

Each command is a module in :mod:`twinpeaks.commands` with ``HELP``,
``add_arguments(parser)`` and ``run(args) -> int``. Errors a user can fix
print one line to stderr and exit with code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from importlib import import_module

from ._version import __version__
from .errors import TwinpeaksError

#: command name -> module under twinpeaks.commands
COMMANDS = {
    "demo": "demo",
    "diagnose": "diagnose",
    "info": "info",
    "plot": "plot",
    "report": "report",
    "serve": "serve",
    "export": "export",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="twinpeaks", description="Activation histograms of every layer: record, chart, diagnose."
    )
    parser.add_argument("--version", action="version", version=f"twinpeaks {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, modname in COMMANDS.items():
        mod = import_module(f"twinpeaks.commands.{modname}")
        p = sub.add_parser(name, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except BrokenPipeError:  # `twinpeaks info RUN | head`: the reader went away, not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (TwinpeaksError, OSError, ValueError, KeyError, IndexError) as exc:
        msg = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
        print(f"twinpeaks {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("twinpeaks: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
