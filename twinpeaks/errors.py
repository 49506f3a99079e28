"""The one error type twinpeaks raises for its own failures, and its variants."""

from __future__ import annotations


class TwinpeaksError(Exception):
    """Base class of twinpeaks' own errors: the message says what went wrong and what to do."""


class RunFileError(TwinpeaksError, OSError):
    """A run file is missing, not a run file, corrupt, or of an unknown schema."""


class LayerNotFound(TwinpeaksError, KeyError, IndexError):
    """A layer name or index does not exist in a run."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""
