"""twinpeaks: activation histograms of every layer, every step, and the charts that read them.

Two lines to record::

    import twinpeaks as tp
    with tp.ActivationsHistogram(model, path="runs/exp1.tp") as hist:
        ...  # train; call hist.end_epoch() after each epoch's validation

Importing twinpeaks imports torch and numpy only; charts load matplotlib when
first used, and framework adapters live in their own modules
(``twinpeaks.fastai``, ``twinpeaks.lightning``, ...).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from ._version import __version__
from .errors import LayerNotFound, RunFileError, TwinpeaksError
from .recorder import ActivationsHistogram, TwinpeaksWarning
from .run import Columns, Histogram, LayerInfo, Run, open_run

# name -> module that defines it; imported on first use
_LAZY: dict[str, str] = {
    "diagnose": ".diagnosis",
    "Diagnosis": ".diagnosis",
    "Finding": ".diagnosis",
    "plot_colorful_dimension": ".charts",
    "plot_twin_peaks": ".charts",
    "plot_twin_peaks_history": ".charts",
    "report": ".web.build",
    "export_tensorboard": ".export",
    "export_wandb": ".export",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'twinpeaks' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = [
    "ActivationsHistogram", "Columns", "Histogram", "LayerInfo", "LayerNotFound", "Run", "RunFileError",
    "TwinpeaksError", "TwinpeaksWarning", "__version__", "open_run", *_LAZY,
]
