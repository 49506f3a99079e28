"""One module per ``twinpeaks`` sub-command (see :mod:`twinpeaks.cli`).

Everything a command prints that a run file or a user controls (layer, class and
phase names, options, messages quoting them) goes through :func:`term`: control and
format characters are shown as escapes, so a name cannot retitle, clear or
rewrite the terminal.
"""

from __future__ import annotations

from .._text import printable as term

__all__ = ["term"]
