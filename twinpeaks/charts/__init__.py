"""Charts drawn from a run file: the Colorful Dimension and Twin Peaks.

matplotlib is imported here, on first use of a chart, never by ``import twinpeaks``.
"""

from .colorful import plot_colorful_dimension
from .twin_peaks import plot_twin_peaks, plot_twin_peaks_history, twin_peaks_curves

__all__ = ["plot_colorful_dimension", "plot_twin_peaks", "plot_twin_peaks_history", "twin_peaks_curves"]
