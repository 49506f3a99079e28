"""What every framework adapter shares: the import error, the options, the run and the charts.

Design constraints:

* An adapter is the framework's own events mapped onto one
  :class:`twinpeaks.recorder.ActivationsHistogram`: ``begin_step`` / ``set_phase``
  per batch, ``targets`` for the YES/NO split, ``end_epoch`` per epoch, ``flush``
  after an evaluation pass outside training. Nothing else.
* This module never imports a framework; each adapter imports its own, through
  :func:`require`, so that a missing one says which extra to install.
* The recorder is created when the framework hands over the model (fit start),
  then kept for the life of the callback, so a second ``fit`` goes on with the
  same run. Unknown options, and a ``path`` that holds a run (without
  ``overwrite=True``), fail when the callback is made.
"""

from __future__ import annotations

import importlib
import inspect
from types import ModuleType
from typing import Any

import torch

from .recorder import ActivationsHistogram
from .run import Run
from .rundir import refuse_existing


def require(module: str, extra: str) -> ModuleType:
    """Import a framework module, or raise ImportError naming the extra that installs it.

    Example:
        >>> fastai = require("fastai", "fastai")  # doctest: +SKIP
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"twinpeaks.{extra} needs {module}, which does not import ({exc}): pip install 'twinpeaks[{extra}]'"
        ) from exc


def class_targets(y: Any) -> torch.Tensor | None:
    """``y`` when it holds class labels (an integer or bool tensor), else None (regression: no YES/NO split)."""
    if isinstance(y, torch.Tensor) and not y.is_floating_point() and not y.is_complex():
        return y
    return None


class Recording:
    """Base of every adapter: the recording options, the recorder, the run and the plot methods."""

    def _init_recording(self, options: dict[str, Any]) -> None:
        try:
            inspect.signature(ActivationsHistogram).bind(None, **options)
        except TypeError as exc:
            raise TypeError(f"{type(self).__name__}: {exc}; the options are those of tp.ActivationsHistogram") from None
        if options.get("path") is not None:  # an existing run fails now, not when training starts
            refuse_existing(options["path"], bool(options.get("overwrite", False)))
        self._options = options
        self._hist: ActivationsHistogram | None = None

    def _recorder(self, model: torch.nn.Module, **defaults: Any) -> ActivationsHistogram:
        """The recorder of ``model``, made on first use; ``defaults`` fill options the user did not give."""
        if self._hist is None:
            self._hist = ActivationsHistogram(model, **{**defaults, **self._options})
        return self._hist

    @property
    def recorder(self) -> ActivationsHistogram:
        """The underlying :class:`twinpeaks.ActivationsHistogram` (exists once training started)."""
        if self._hist is None:
            raise RuntimeError(f"{type(self).__name__} has recorded nothing yet: train first")
        return self._hist

    @property
    def run(self) -> Run:
        """The run recorded so far (committed epochs), for charts and checks."""
        return self.recorder.run

    def close(self) -> None:
        """Close the run file (everything recorded is committed first). Recording ends here."""
        if self._hist is not None:
            self._hist.close()

    def plot_colorful_dimension(self, **kwargs: Any) -> Any:
        """``tp.plot_colorful_dimension`` of this run; keyword arguments pass through."""
        return _charts().plot_colorful_dimension(self.run, **kwargs)

    def plot_twin_peaks(self, **kwargs: Any) -> Any:
        """``tp.plot_twin_peaks`` of this run (default: last epoch, last layer)."""
        return _charts().plot_twin_peaks(self.run, **kwargs)

    def plot_twin_peaks_history(self, **kwargs: Any) -> Any:
        """``tp.plot_twin_peaks_history`` of this run; keyword arguments pass through."""
        return _charts().plot_twin_peaks_history(self.run, **kwargs)


def _charts() -> ModuleType:
    import twinpeaks  # the charts are lazy exports of the package; matplotlib loads on first use

    return twinpeaks
