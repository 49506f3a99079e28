"""The Colorful Dimension: every layer's histogram over training, as an image.

x is the training step (a merged column covers several steps: positions are
exact column by column, the axis is labelled in steps), y the activation value,
colour ``log(1 + count per step)``, positive values up. With automatic ranges
every column has its own bin edges (docs/grids.md): each is drawn from its own
edges onto one value axis that covers where the layer's values went over the
run (a bin's count spread over the pixel rows it covers; the colour is then
the count per step in a ``1 / bins`` slice of that axis). Over the image: a zero
line, epoch boundaries, the per-step mean and +-1 std, each epoch's mean
histogram as a profile curve (one per class with per-class data), and, for a
fixed range only (``range=``: values outside it are counted, not binned),
strips above and below it whose colour is the share of the step's values that
fell outside, so exploding activations stay visible.

Drawing is one ``imshow`` per layer: a 60-layer grid of a 10,000-step run
(columns are bounded by ``max_columns``) renders in seconds.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

import numpy as np

from ..display import palette as _palette
from ..run import Columns, LayerInfo, LayerRef, Run
from .common import (
    as_plain_text,
    as_run,
    class_names,
    display_factor,
    layer_title,
    new_figure,
    pick_layers,
    plural,
    rebin,
    style,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.image import AxesImage

CMAP = "magma"
EPOCH_COLOR = "#4aa8ff"
ZERO_COLOR = "#ff5050"
STRIP = 0.06  # height of each out-of-range strip, as a share of the range
BIG_GRID = 16  # more layers than this: fixed layout, no constrained layout
PROFILE_POINTS = 80  # bins of a profile curve are summed down to at most this many points


def step_to_x(cols: Columns, steps: np.ndarray | float) -> np.ndarray:
    """Image x position (in columns) of a training step: exact for merged and partial columns."""
    knots = np.append(cols.starts, cols.ends[-1]).astype(float)
    return np.interp(steps, knots, np.arange(len(knots), dtype=float))


#: pixel rows of the common value axis of a layer with automatic ranges (at least its bins)
AXIS_ROWS = 400


def value_axis(cols: Columns) -> np.ndarray:
    """The edges of a layer's drawn value axis: its fixed edges, or ``AXIS_ROWS`` rows over its value range."""
    if cols.fixed:
        return np.asarray(cols.edges[0], np.float64)
    lo, hi = cols.value_range()
    if not hi > lo:
        lo, hi = lo - 0.5, hi + 0.5
    return np.linspace(lo, hi, max(AXIS_ROWS, cols.counts.shape[1]) + 1)


def colorful_image(cols: Columns, axis: np.ndarray | None = None) -> np.ndarray:
    """``log(1 + count per step)``, rows x columns, on the layer's :func:`value_axis` (per-step columns: plain counts).

    A fixed range: the stored bins. Automatic ranges: every column's bins spread
    onto the axis from their own edges, as counts per ``1 / bins`` of the axis.
    """
    width = np.maximum(cols.ends - cols.starts, 1)[:, None]
    if cols.fixed:
        return np.log1p(cols.counts / width).T
    axis = value_axis(cols) if axis is None else axis
    per = (len(axis) - 1) / cols.counts.shape[1]  # axis rows per 1/bins of the axis
    return np.log1p(cols.resampled(axis) * per / width).T


def share_label(share: float) -> str:
    """A share as a percentage, ``"<1%"`` below 1% (never a misleading ``"0%"``).

    Example:
        >>> share_label(0.004), share_label(0.2)
        ('<1%', '20%')
    """
    return "<1%" if 0 < share < 0.01 else f"{100 * share:.0f}%"


def _out_shares(cols: Columns) -> tuple[np.ndarray, np.ndarray]:
    total = cols.counts.sum(axis=1) + cols.underflow + cols.overflow + cols.nonfinite
    with np.errstate(invalid="ignore", divide="ignore"):
        return (np.where(total > 0, cols.underflow / total, 0.0), np.where(total > 0, cols.overflow / total, 0.0))


def draw_colorful(
    ax: Axes,
    run: Run,
    layer: LayerRef,
    *,
    phase: str = "train",
    show_epochs: bool = True,
    show_stats: bool = True,
    show_layer_info: bool = False,
    vmax: float | None = None,
    cols: Columns | None = None,
) -> AxesImage:
    """Draw one layer's Colorful Dimension into ``ax``; return the image artist."""
    from matplotlib.colors import PowerNorm
    from matplotlib.ticker import MaxNLocator

    info = run.layer(layer)
    cols = run.columns(info, phase) if cols is None else cols
    if not len(cols):
        raise ValueError(f"layer {info.name!r} has no {phase} steps to draw")
    n = len(cols)
    axis = value_axis(cols)
    lo, hi = float(axis[0]), float(axis[-1])
    img = colorful_image(cols, axis)
    im = ax.imshow(img, origin="lower", aspect="auto", extent=(0, n, lo, hi), cmap=CMAP,
                   vmin=0, vmax=vmax if vmax is not None else max(float(img.max()), 1e-9), interpolation="nearest")
    im.set_gid("colorful:image")

    # a fixed range: out-of-range strips, colour = share of the step's values above / below the range
    h = STRIP * (hi - lo)
    if cols.fixed:
        under, over = _out_shares(cols)
        norm = PowerNorm(0.5, vmin=0, vmax=1)
        for share, (y0, y1), gid in ((over, (hi, hi + h), "over"), (under, (lo - h, lo), "under")):
            strip = ax.imshow(share[None, :], origin="lower", aspect="auto", extent=(0, n, y0, y1), cmap="Reds",
                              norm=norm, interpolation="nearest")
            strip.set_gid(f"colorful:{gid}")
            if share.max() > 0:  # inside the axes, right-aligned: never cut off at the figure's edge
                ax.text(n, (y0 + y1) / 2, f"{'>' if gid == 'over' else '<'}range max {share_label(share.max())} ",
                        fontsize=6, va="center", ha="right", color="#b00000", gid=f"colorful:{gid}:label",
                        bbox={"boxstyle": "square,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.6})
        ax.axhline(hi, color="0.6", lw=0.4)
        ax.axhline(lo, color="0.6", lw=0.4)
    bad = np.flatnonzero(cols.nonfinite > 0)
    if len(bad):
        ax.plot(bad + 0.5, np.full(len(bad), hi + h / 2), "x", color="k", ms=3, label="NaN/inf")

    xs = np.arange(n) + 0.5
    if lo < 0 < hi:
        ax.axhline(0, color=ZERO_COLOR, lw=0.6, ls="--", alpha=0.8)
    if show_stats:
        inside = lambda v: np.where((v >= lo) & (v <= hi), v, np.nan)  # noqa: E731
        mean, std = cols.mean, cols.std
        ax.plot(xs, inside(mean), color="white", lw=0.8, alpha=0.9, label="mean", gid="colorful:mean")
        ax.plot(xs, inside(mean + std), color="white", lw=0.6, ls=":", alpha=0.9, label="±1 std",
                gid="colorful:std+")
        ax.plot(xs, inside(mean - std), color="white", lw=0.6, ls=":", alpha=0.9, gid="colorful:std-")
    bounds = _epoch_bounds(run, phase, cols)
    for e, (first, _) in bounds.items():
        x0 = float(step_to_x(cols, first))
        if e > 0:
            ax.axvline(x0, color=EPOCH_COLOR, lw=0.8, gid=f"colorful:epoch:{e}")
        ax.text(x0, hi + h, f" {e}", color=EPOCH_COLOR, fontsize=6.5, va="bottom", ha="left", clip_on=False)
    if show_epochs and bounds:
        _profiles(ax, run, info, phase, cols, bounds)

    ax.set_xlim(0, n)
    ax.set_ylim(lo - h, hi + h)
    ticks = [t for t in MaxNLocator(6, integer=True).tick_values(cols.starts[0], cols.ends[-1])
             if cols.starts[0] <= t <= cols.ends[-1]]
    ax.set_xticks(step_to_x(cols, np.array(ticks, float)), [f"{int(t):,}" for t in ticks])
    ax.set_yticks([t for t in MaxNLocator(5).tick_values(lo, hi) if lo <= t <= hi])
    ax.set_title(layer_title(info, show_layer_info, axis)
                 + (f", {plural(int(np.max(cols.ends - cols.starts)), 'step')}/column" if show_layer_info else ""),
                 loc="left", pad=9)
    as_plain_text(ax)  # this axes' texts (the whole figure's: once per chart, not once per layer)
    return im


def _epoch_bounds(run: Run, phase: str, cols: Columns) -> dict[int, tuple[int, int]]:
    """Closed epochs' ``(first, end)`` steps of ``phase`` that lie inside the recorded columns."""
    out = {}
    for e in range(run.epochs):
        s = run.epoch_info(e).steps.get(phase)
        if s is not None and s[1] > s[0] and cols.starts[0] <= s[0] < cols.ends[-1]:
            out[e] = (s[0], s[1])
    return out


def _profiles(ax: Axes, run: Run, info: LayerInfo, phase: str, cols: Columns,
              bounds: dict[int, tuple[int, int]]) -> None:
    """Each epoch's mean histogram as a curve over its segment (one per class with per-class data)."""
    groups: list[tuple[str | None, dict]] = (
        [(name, {"column": k}) for k, name in enumerate(class_names(run, info.columns))] if info.columns
        else [(None, {})]
    )
    curves = []
    for e, (first, end) in bounds.items():
        x0, x1 = float(step_to_x(cols, first)), float(step_to_x(cols, end))
        for name, kw in groups:
            h = run.histogram(info, phase, e, **kw)
            share = h.counts / h.total if h.total else np.zeros(len(h.counts))
            centers, share = rebin(h.centers, share, display_factor(info.bins, PROFILE_POINTS))
            curves.append((x0, x1, name, share, centers))
    peaks: dict[float, float] = {}  # each epoch's curves share one scale: shapes show, whatever the epoch's spread
    for x0, _, _, share, _ in curves:
        peaks[x0] = max(peaks.get(x0, 0.0), float(share.max()))
    palette = _palette(len(groups))
    for x0, x1, name, share, centers in curves:
        color = "#9ef0ff" if name is None else palette[[g for g, _ in groups].index(name)]
        ax.plot(x0 + 0.9 * (x1 - x0) * share / (peaks[x0] or 1.0), centers, color=color, lw=0.8, alpha=0.95,
                gid=f"colorful:profile:{name or ''}")
    if info.columns:
        from matplotlib.lines import Line2D

        ax.legend(handles=[Line2D([], [], color=palette[i], label=g) for i, (g, _) in enumerate(groups)],
                  loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=6, frameon=False, title="class",
                  title_fontsize=6, ncols=2 if len(groups) > 10 else 1)


def plot_colorful_dimension(
    run: Run | str | os.PathLike,
    layers: int | str | Sequence[int | str] | None = None,
    cols: int | None = None,
    show_epochs: bool = True,
    show_layer_info: bool = False,
    figsize: tuple[float, float] | None = None,
    *,
    phase: str = "train",
    shared_scale: bool = False,
    show_stats: bool = True,
    ax: Axes | None = None,
) -> Figure:
    """The Colorful Dimension of one layer or a grid of layers.

    Args:
        run: a :class:`~twinpeaks.run.Run` or the path of a run file.
        layers: names or indices (as ``run.histogram`` takes them); None = every layer.
        cols: grid columns (default: up to 4).
        show_epochs: draw each epoch's mean histogram as a profile curve over its
            segment; one curve per class (with a legend) when the layer has per-class data.
        show_layer_info: add output shape, bins, range and steps per column to titles.
        figsize: figure size in inches (default: from the grid).
        phase: which phase's steps to draw (``"valid"`` shows the validation batches).
        shared_scale: one colour scale (and colour bar) for all layers.
        show_stats: draw the per-step mean and +-1 std.
        ax: draw a single layer into this axes.

    Layers that never ran (or have no steps in ``phase``) are listed under the
    figure, not drawn.

    Returns:
        The matplotlib Figure.

    Example:
        >>> fig = tp.plot_colorful_dimension("runs/exp1.tp", layers=[0, -1])  # doctest: +SKIP
        >>> fig.savefig("colorful.png")                                       # doctest: +SKIP
    """
    with as_run(run) as r, style():
        infos = pick_layers(r, layers)
        data, skipped = [], []
        for info in infos:
            c = r.columns(info, phase) if info.called else None
            if c is None or not len(c):
                skipped.append((info, "never called" if not info.called else f"no {phase} steps"))
            else:
                data.append((info, c))
        if not data:
            what = ", ".join(f"{i.name} ({why})" for i, why in skipped)
            raise ValueError(f"nothing to draw in phase {phase!r}: {what or 'the run has no layers'}")
        if ax is not None and len(data) > 1:
            raise ValueError(f"ax= draws one layer; {len(data)} layers selected: pass layers=<one name or index>")
        vmax = max(float(colorful_image(c).max()) for _, c in data) if shared_scale else None
        n = len(data)
        ncols = max(1, min(cols or (1 if n == 1 else 2 if n <= 4 else 3 if n <= 9 else 4), n))
        nrows = -(-n // ncols)
        big = n > BIG_GRID  # constrained layout would cost seconds: a fixed layout instead
        if ax is not None:
            fig, axes = cast("Figure", ax.figure), [ax]
        else:
            width, height = figsize or (4.8 * ncols + (0.8 if shared_scale or n == 1 else 0), 2.7 * nrows + 0.7)
            fig = new_figure((width, height), constrained=not big)
            grid = ({"left": 0.6 / width, "right": 1 - (1.6 if shared_scale else 0.7) / width, "top": 1 - 0.5 / height,
                     "bottom": 1.0 / height, "hspace": 0.75 if show_layer_info else 0.55, "wspace": 0.25}
                    if big else None)
            axes = list(fig.subplots(nrows, ncols, squeeze=False, gridspec_kw=grid).ravel())
        im = None
        for i, (a, (info, c)) in enumerate(zip(axes, data)):
            im = draw_colorful(a, r, info, phase=phase, show_epochs=show_epochs, show_stats=show_stats,
                               show_layer_info=show_layer_info, vmax=vmax, cols=c)
            if i % ncols == 0:
                a.set_ylabel("activation value")
            if i >= n - ncols:
                a.set_xlabel(f"{phase} step")
        if show_stats and not data[0][0].columns:
            axes[0].legend(loc="lower left", fontsize=6, frameon=True, framealpha=0.5, handlelength=1.5)
        for a in axes[n:]:
            a.set_visible(False)
        if ax is None:
            if (shared_scale or n == 1) and im is not None:
                fig.colorbar(im, ax=axes[:n], label="log(1 + count per step)", shrink=0.9, pad=0.02)
            scale = "shared" if shared_scale else "per layer"
            fixed = any(c.fixed for _, c in data)
            note = (f"colour: log(1 + count per step), {scale} scale; "
                    + ("red strips: share of values outside the fixed range; " if fixed else "")
                    + "blue lines: epochs; white: mean ±1 std")
            if skipped:
                note += "\nnot drawn: " + "; ".join(f"{i.index} {i.name} ({i.type}, {why})" for i, why in skipped)
            note = "\n".join(textwrap.fill(line, 90 * ncols) for line in note.split("\n"))
            if big:
                foot = fig.text(0.01, 0.15 / fig.get_figheight(), note, fontsize=6.5, ha="left", va="bottom",
                                color="0.3")
            else:
                foot = fig.supxlabel(note, fontsize=6.5, x=0.01, ha="left", color="0.3")
            foot.set_gid("colorful:footnote")
    return as_plain_text(fig)
