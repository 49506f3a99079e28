"""What every chart shares: opening a run, picking layers, titles, style, saving.

Charts read a :class:`~twinpeaks.run.Run` only (never the hooks), build a
:class:`matplotlib.figure.Figure` without pyplot (no global figure state, no
backend switch) and apply their style inside ``matplotlib.style.context``.
A returned figure shows in Jupyter as the cell's value; save it with
``fig.savefig("chart.png")``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._text import printable
from ..run import LayerInfo, Run, open_run

#: Local style of every chart (never written to the global rcParams).
STYLE: dict[str, Any] = {
    "font.size": 8,
    "axes.titlesize": 8.5,
    "axes.labelsize": 8,
    "legend.fontsize": 7,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "figure.dpi": 100,
    "savefig.dpi": 100,
    # names come from users and files: text, never mathtext ("$...$") or LaTeX
    "text.parse_math": False,
    "text.usetex": False,
}

#: Line colour of each phase (train, valid, test, then others).
PHASE_COLORS = {"train": "#1f77b4", "valid": "#d62728", "test": "#2ca02c"}
PHASE_STYLES = {"train": "--", "valid": "-", "test": ":"}


def as_plain_text(fig: Any) -> Any:
    """Every text of ``fig`` (a figure, or one axes: what a function drawing into given axes added) drawn as
    given (no mathtext, no LaTeX, control characters as escapes), also on axes made outside :func:`style`."""
    from matplotlib.text import Text

    for t in fig.findobj(Text):
        t.set_parse_math(False)
        t.set_usetex(False)
        text = t.get_text()
        if not text.isprintable():
            t.set_text(printable(text))
    return fig


@contextlib.contextmanager
def style() -> Iterator[None]:
    """The charts' local matplotlib style."""
    import matplotlib.style

    with matplotlib.style.context(STYLE):
        yield


@contextlib.contextmanager
def as_run(run: Run | str | os.PathLike) -> Iterator[Run]:
    """Yield a Run for a Run or a path; a run opened here is closed on exit."""
    if isinstance(run, Run):
        yield run
        return
    with open_run(run) as opened:
        yield opened


def new_figure(figsize: tuple[float, float], constrained: bool = True) -> Any:
    """A figure that belongs to no pyplot state (rendered with Agg when saved).

    ``constrained=False`` leaves the layout to the caller: constrained layout costs
    about a second per 60 axes.
    """
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, layout="constrained" if constrained else None)


def pick_layers(run: Run, layers: int | str | Sequence[int | str] | None) -> list[LayerInfo]:
    """Layers by names/indices (as ``run.histogram`` takes them); None = all, in run order."""
    if layers is None:
        return list(run.layers)
    if isinstance(layers, (str, int, np.integer)):
        layers = [layers]
    picked = [run.layer(x) for x in layers]
    return list({info.index: info for info in picked}.values())


def layer_title(info: LayerInfo, show_layer_info: bool = False, edges: np.ndarray | None = None) -> str:
    """``[index] name (Type)``; with ``show_layer_info`` the output shape, bins and range too."""
    title = f"[{info.index}] {info.name} ({info.type})"
    if show_layer_info:
        shape = "never called" if info.out_shape is None else "x".join(map(str, info.out_shape))
        extra = f"out {shape}, {info.bins} bins"
        if edges is not None and len(edges):
            extra += f", range [{edges[0]:.3g}, {edges[-1]:.3g}]"
        title += "\n" + extra
    return title


def rebin(centers: np.ndarray, share: np.ndarray, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """Sum adjacent bins in groups of ``factor`` (for display): new centers and summed shares."""
    if factor <= 1 or len(share) < 2:
        return centers, share
    starts = np.arange(0, len(share), factor)
    half = (centers[1] - centers[0]) / 2
    lo = centers[starts] - half
    hi = centers[np.minimum(starts + factor, len(centers)) - 1] + half
    return (lo + hi) / 2, np.add.reduceat(share, starts)


def hold_y(axes: Sequence[Any], bottom: float = 0.0, margin: float = 0.05) -> None:
    """Set the y limits of ``axes`` so that each holds every curve drawn in any of them.

    The top is the highest data value of every line and filled area in all of
    ``axes`` (their data limits), plus ``margin`` of the span: panels that share a
    y axis then all hold the tallest peak, wherever it is drawn. Called after the
    last curve is drawn (a chart drawn into an ``ax`` that already holds curves
    keeps them in view too).
    """
    tops = [float(ax.dataLim.y1) for ax in axes]
    top = max((t for t in tops if np.isfinite(t)), default=bottom)
    if top <= bottom:
        top = bottom + 1.0
    for ax in axes:
        ax.set_ylim(bottom, top + margin * (top - bottom))


def display_factor(bins: int, max_points: int | None) -> int:
    """How many bins to sum so that a curve has at most ``max_points`` points."""
    return -(-bins // max_points) if max_points else 1


def plural(n: int, word: str, suffix: str = "s") -> str:
    """``1 step``, ``2 steps``."""
    return f"{n} {word}{'' if n == 1 else suffix}"


def class_names(run: Run, n: int) -> list[str]:
    """Names of ``n`` output columns: the run's classes when they match, else ``class k``."""
    names = run.classes
    if names and len(names) == n:
        return list(names)
    return [f"class {k}" for k in range(n)]


def save_atomic(fig: Any, path: str | os.PathLike, **kwargs: Any) -> Path:
    """Write ``fig`` as PNG to a temporary file, then rename it over ``path``.

    A viewer watching ``path`` never sees a half-written image.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fig.savefig(tmp, format="png", **kwargs)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
