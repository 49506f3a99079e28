"""The one error type twinpeaks raises for its own failures, its variants, and its one warning channel.

Torch-free: the reading side imports it.
"""

from __future__ import annotations

import os
import sys
import warnings


class TwinpeaksError(Exception):
    """Base class of twinpeaks' own errors: the message says what went wrong and what to do."""


class RunFileError(TwinpeaksError, OSError):
    """A run file is missing, not a run file, corrupt, or of an unknown schema."""


class LayerNotFound(TwinpeaksError, KeyError, IndexError):
    """A layer name or index does not exist in a run."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class TwinpeaksWarning(UserWarning):
    """Something twinpeaks skipped so that training could go on."""


_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _library_frame(filename: str) -> bool:
    """Whether a frame's file belongs to twinpeaks, torch or the interpreter's own machinery (not the user's code)."""
    if filename.startswith(_PACKAGE) or filename.startswith("<frozen"):
        return True
    parts = filename.replace("\\", "/").split("/")
    return "torch" in parts or "contextlib.py" in parts[-1:]


def warn(message: str, category: type[Warning] = TwinpeaksWarning) -> None:
    """Issue ``message`` through :mod:`warnings`, attributed to the user's line.

    The stack level is computed: frames of twinpeaks and torch (hooks run inside
    ``nn.Module.__call__``) are walked out of, to the first frame of anything
    else, so the warning names the user's file and line.

    Example:
        >>> import warnings
        >>> with warnings.catch_warnings(record=True) as w:
        ...     warnings.simplefilter("always")
        ...     warn("layer 'x' skipped")
        >>> w[0].category.__name__
        'TwinpeaksWarning'
    """
    frame = sys._getframe(1)
    level = 2  # stacklevel 2: our caller
    while frame is not None and _library_frame(frame.f_code.co_filename):
        frame = frame.f_back  # type: ignore[assignment]
        level += 1
    warnings.warn(message, category, stacklevel=level)
