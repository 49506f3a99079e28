"""twinpeaks: activation histograms of every layer, every step, and the charts that read them.

Two lines to record::

    import twinpeaks as tp
    with tp.ActivationsHistogram(model, path="runs/exp1.tp") as hist:
        ...  # train; call hist.end_epoch() after each epoch's validation

Importing twinpeaks is cheap: every public name is imported on first use
(PEP 562), so reading a run (``tp.open_run``, the CLI's reading commands) never
imports torch; ``tp.ActivationsHistogram`` imports it. Charts load matplotlib
when first used, and framework adapters live in their own modules
(``twinpeaks.fastai``, ``twinpeaks.lightning``, ...).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from ._version import __version__
from .errors import LayerNotFound, RunFileError, TwinpeaksError, TwinpeaksWarning

if TYPE_CHECKING:  # the names below, for type checkers and IDEs; at run time they come from __getattr__
    from .charts import plot_colorful_dimension, plot_twin_peaks, plot_twin_peaks_history
    from .diagnosis import Diagnosis, Finding, diagnose
    from .export import export_tensorboard, export_wandb
    from .recorder import ActivationsHistogram
    from .run import Columns, Histogram, LayerInfo, Run, open_run
    from .web.build import report

# name -> module that defines it; imported on first use
_LAZY: dict[str, str] = {
    "ActivationsHistogram": ".recorder",
    "Columns": ".run",
    "Histogram": ".run",
    "LayerInfo": ".run",
    "Run": ".run",
    "open_run": ".run",
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
# submodules reached as attributes (tp.distributed.configure, tp.binning...), imported on first use
_SUBMODULES = ("binning", "charts", "columns", "diagnosis", "distributed", "export", "format", "live", "recorder",
               "run", "runfile", "web")


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name], __name__), name)
        globals()[name] = value  # later lookups skip this function
        return value
    if name in _SUBMODULES:
        return import_module(f".{name}", __name__)
    raise AttributeError(f"module 'twinpeaks' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = [
    "ActivationsHistogram", "Columns", "Diagnosis", "Finding", "Histogram", "LayerInfo", "LayerNotFound", "Run",
    "RunFileError", "TwinpeaksError", "TwinpeaksWarning", "__version__", "diagnose", "export_tensorboard",
    "export_wandb", "open_run", "plot_colorful_dimension", "plot_twin_peaks", "plot_twin_peaks_history", "report",
]
