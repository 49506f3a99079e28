"""Twin Peaks: the last layer's histogram, train against valid (and test), per epoch.

A classifier that learns pushes its outputs into two peaks: the NO peak (the
outputs of all wrong classes) and the YES peak (the true class). The chart
compares the mean histogram of the last quarter of an epoch's training steps
with the mean histogram of that epoch's validation (and test) batches. Each
curve is a share of its own values, so phases with different batch counts
compare; values outside the recorded range are reported as a share beside the
curve, never dropped: in-range shares plus out-of-range shares sum to 1.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, cast

import numpy as np

from ..display import palette as _palette
from ..run import PHASES, LayerRef, Run, on_common_grid
from .common import (
    PHASE_COLORS,
    PHASE_STYLES,
    as_plain_text,
    as_run,
    class_names,
    display_factor,
    hold_y,
    layer_title,
    new_figure,
    plural,
    rebin,
    style,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

TRUTH_COLORS = {"YES": "#1f77b4", "NO": "#ff7f0e"}


@dataclass(frozen=True)
class Curve:
    """One normalised histogram of a twin peaks chart."""

    phase: str
    group: str | None  #: class name, ``"YES"``/``"NO"``, or None for all outputs
    centers: np.ndarray
    share: np.ndarray  #: in-range share per bin (of everything binned)
    under: float  #: share below the range
    over: float  #: share above the range
    nonfinite: float  #: share of NaN/inf
    batches: int  #: steps the histogram sums
    last_quarter: bool

    @property
    def out_of_range(self) -> float:
        return self.under + self.over + self.nonfinite

    def rebinned(self, factor: int) -> Curve:
        """Adjacent bins summed in groups of ``factor`` (shares still sum to 1 with the out-of-range share)."""
        centers, share = rebin(self.centers, self.share, factor)
        return replace(self, centers=centers, share=share)


def _phases(run: Run, epoch: int, phases: Sequence[str] | None) -> list[str]:
    present = list(run.epoch_info(epoch).steps)
    if phases is not None:
        missing = [p for p in phases if p not in present]
        if missing:
            raise ValueError(f"phase(s) {missing} not recorded in epoch {epoch}; it has {present}")
        return list(phases)
    return [p for p in PHASES if p in present] + sorted(set(present) - set(PHASES))


def twin_peaks_curves(
    run: Run,
    epoch: int = -1,
    layer: LayerRef = -1,
    *,
    per_class: bool = False,
    by_truth: bool = False,
    phases: Sequence[str] | None = None,
) -> list[Curve]:
    """The normalised curves a twin peaks chart draws (train: last quarter of the epoch).

    Example:
        >>> curves = twin_peaks_curves(run, epoch=-1)                   # doctest: +SKIP
        >>> [round(c.share.sum() + c.out_of_range, 6) for c in curves]  # doctest: +SKIP
        [1.0, 1.0]
    """
    if per_class and by_truth:
        raise ValueError("pass per_class=True or by_truth=True, not both")
    info = run.layer(layer)
    run.epoch_info(epoch)  # epoch out of range fails here, with the run's epoch count
    if not info.called:
        raise ValueError(f"layer {info.name!r} was never called: it has no histogram to plot")
    if per_class and not info.columns:
        raise ValueError(f"layer {info.name!r} has no per-class data: record with per_class=True")
    if per_class:
        groups: list[tuple[str | None, dict]] = [
            (name, {"column": k}) for k, name in enumerate(class_names(run, info.columns))
        ]
    elif by_truth:
        groups = [("YES", {"truth": "yes"}), ("NO", {"truth": "no"})]
    else:
        groups = [(None, {})]
    picked = []
    for phase in _phases(run, epoch, phases):
        lq = phase == "train"
        for group, kw in groups:
            picked.append((phase, group, lq, run.histogram(info, phase, epoch, last_quarter=lq, **kw)))
    # automatic ranges: each histogram has its own grid; one common grid makes the curves' bins line up (exact)
    hists = on_common_grid([h for *_, h in picked])
    curves = []
    for (phase, group, lq, _), h in zip(picked, hists):
        total = h.total
        if not total:
            continue
        curves.append(Curve(phase, group, h.centers, h.counts / total, h.underflow / total,
                            h.overflow / total, h.nonfinite / total, h.steps, lq))
    if by_truth and not curves:
        raise ValueError(f"layer {info.name!r} has no YES/NO data: give targets with hist.targets(y) while recording")
    if not curves:
        raise ValueError(f"layer {info.name!r} recorded nothing in epoch {epoch}")
    return curves


def _label(c: Curve, with_group: bool) -> str:
    what = f"{c.phase} (last quarter)" if c.last_quarter else c.phase
    label = f"{c.group} {what}" if with_group and c.group else what
    label += f": {plural(c.batches, 'batch', 'es')}"
    if c.out_of_range >= 5e-4:
        label += f", {100 * c.out_of_range:.1f}% out of range"
    return label


def draw_twin_peaks(
    ax: Axes,
    run: Run,
    epoch: int = -1,
    layer: LayerRef = -1,
    *,
    per_class: bool = False,
    by_truth: bool = False,
    phases: Sequence[str] | None = None,
    legend: bool = True,
    notes: bool = True,
    title: str | None = None,
    max_points: int = 80,
    zoom: bool = True,
) -> list[Curve]:
    """Draw a twin peaks chart into ``ax``; return the curves drawn (after rebinning)."""
    from matplotlib.lines import Line2D

    info = run.layer(layer)
    if per_class and phases is None:  # ten classes x three phases is unreadable: the evaluation phase only
        present = list(run.epoch_info(epoch).steps)
        phases = [next((p for p in ("valid", "test") if p in present), present[0])] if present else None
    curves = twin_peaks_curves(run, epoch, info, per_class=per_class, by_truth=by_truth, phases=phases)
    before = ax.get_xlim() if ax.has_data() else None  # curves drawn into ax earlier stay in view
    half = (curves[0].centers[1] - curves[0].centers[0]) / 2 if len(curves[0].centers) > 1 else 0.5
    edges = np.array([curves[0].centers[0] - half, curves[0].centers[-1] + half])  # the curves' common bins
    curves = [c.rebinned(display_factor(info.bins, max_points)) for c in curves]
    names = list(dict.fromkeys(c.group for c in curves))
    palette = _palette(len(names))
    for c in curves:
        if per_class:
            color = palette[names.index(c.group)]
        elif by_truth:
            color = TRUTH_COLORS[c.group]  # type: ignore[index]
        else:
            color = PHASE_COLORS.get(c.phase, "0.3")
        (line,) = ax.plot(c.centers, c.share, color=color, ls=PHASE_STYLES.get(c.phase, "-."), lw=1.4,
                          label=_label(c, by_truth))
        line.set_gid(f"twinpeaks:{c.phase}:{c.group or ''}")
        if not per_class:
            ax.fill_between(c.centers, c.share, color=color, alpha=0.08 if c.phase == "train" else 0.15, lw=0)
    if by_truth:
        _shade_overlap(ax, curves)
    lo, hi = _data_limits(curves, edges) if zoom else (float(edges[0]), float(edges[-1]))
    ax.set_xlim(*((lo, hi) if before is None else (min(lo, *before), max(hi, *before))))
    hold_y([ax])  # every curve in ax, also those drawn before this call
    if edges[0] < 0 < edges[-1]:
        ax.axvline(0, color="0.5", lw=0.7, zorder=0)
    if notes:
        _out_of_range_note(ax, curves, edges)
    ax.set_xlabel(f"activation value of {info.name}")
    ax.set_ylabel("share of values per bin")
    e = run.epoch_info(epoch).epoch
    ax.set_title(title if title is not None else f"Twin Peaks, epoch {e}: {layer_title(info)}")
    if legend:
        if per_class:
            phase_handles = [Line2D([], [], color="0.3", ls=PHASE_STYLES.get(p, "-."), label=_label(c, False))
                             for p, c in {c.phase: c for c in curves}.items()]
            first = ax.legend(handles=phase_handles, loc="upper left", frameon=False)
            ax.add_artist(first)
            ax.legend(handles=[Line2D([], [], color=palette[i], label=n) for i, n in enumerate(names)],
                      loc="upper right", frameon=False, title="class", ncols=2 if len(names) > 6 else 1)
        else:
            ax.legend(loc="upper left", frameon=False)
    as_plain_text(ax)  # this axes' texts (the whole figure's: once per chart, not once per layer)
    return curves


def _data_limits(curves: list[Curve], edges: np.ndarray) -> tuple[float, float]:
    """The part of the range that holds data, padded by 5% of the range (the whole range when empty)."""
    used = np.flatnonzero(np.any([c.share > 0 for c in curves], axis=0))
    if not len(used):
        return float(edges[0]), float(edges[-1])
    centers, pad = curves[0].centers, 0.05 * (edges[-1] - edges[0])
    return max(float(edges[0]), centers[used[0]] - pad), min(float(edges[-1]), centers[used[-1]] + pad)


def _shade_overlap(ax: Axes, curves: list[Curve]) -> None:
    """Grey area under both the YES and the NO curve of the last evaluation phase: where mistakes are."""
    by = {(c.phase, c.group): c for c in curves}
    evals = [c.phase for c in curves if c.phase != "train"] or ["train"]
    phase = evals[0]
    yes, no = by.get((phase, "YES")), by.get((phase, "NO"))
    if yes is None or no is None:
        return
    low = np.minimum(yes.share, no.share)
    ax.fill_between(yes.centers, low, color="0.35", alpha=0.35, lw=0, hatch="///",
                    label=f"overlap {phase}: {100 * low.sum():.1f}%")


def _out_of_range_note(ax: Axes, curves: list[Curve], edges: np.ndarray) -> None:
    """Text at the left/right edge listing the share of each curve below/above the range."""
    for side, attr, x, ha, arrow in (("below", "under", 0.01, "left", "<"), ("above", "over", 0.99, "right", ">")):
        parts = [f"{c.group + ' ' if c.group else ''}{c.phase} {100 * getattr(c, attr):.1f}%"
                 for c in curves if getattr(c, attr) >= 5e-4]
        if parts:
            bound = edges[0] if attr == "under" else edges[-1]
            ax.text(x, 0.02, f"{arrow} {bound:.3g} ({side} range):\n" + "\n".join(parts[:6]),
                    transform=ax.transAxes, ha=ha, va="bottom", fontsize=6.5, color="0.25")
    nonfinite = [f"{c.phase} {100 * c.nonfinite:.2f}%" for c in curves if c.nonfinite > 0]
    if nonfinite:
        ax.text(0.5, 0.98, "NaN/inf: " + ", ".join(nonfinite), transform=ax.transAxes, ha="center", va="top",
                fontsize=7, color="#b00000")


def plot_twin_peaks(
    run: Run | str | os.PathLike,
    epoch: int = -1,
    layer: LayerRef = -1,
    per_class: bool = False,
    *,
    by_truth: bool = False,
    phases: Sequence[str] | None = None,
    ax: Axes | None = None,
    figsize: tuple[float, float] = (7.0, 4.0),
    max_points: int = 80,
    zoom: bool = True,
) -> Figure:
    """The Twin Peaks chart of one epoch: last-quarter train vs valid (and test) histograms.

    Args:
        run: a :class:`~twinpeaks.run.Run` or the path of a run file.
        epoch: closed epoch (negative counts from the end).
        layer: name or index (default: the last layer).
        per_class: one curve per output column, named by the run's classes
            (run recorded with ``per_class=True``).
        by_truth: the true class's outputs (YES) against all others (NO); their
            overlap, shaded, is where the mistakes are (run given ``hist.targets(y)``).
        phases: phases to draw (default: every phase of the epoch; with ``per_class``
            only the evaluation phase, valid or else test).
        ax: draw into this axes instead of a new figure.
        figsize: size of a new figure.
        max_points: adjacent bins are summed so that a curve has at most this many
            points (0: every bin); shares still sum to 1 with the out-of-range share.
        zoom: limit the x axis to the bins that hold data (the range's edges otherwise).

    Returns:
        The matplotlib Figure.

    Example:
        >>> fig = tp.plot_twin_peaks("runs/exp1.tp", by_truth=True)  # doctest: +SKIP
        >>> fig.savefig("twin_peaks.png")                            # doctest: +SKIP
    """
    with as_run(run) as r, style():
        fig = new_figure(figsize) if ax is None else cast("Figure", ax.figure)
        draw_twin_peaks(ax if ax is not None else fig.add_subplot(), r, epoch, layer,
                        per_class=per_class, by_truth=by_truth, phases=phases, max_points=max_points, zoom=zoom)
    return as_plain_text(fig)


def plot_twin_peaks_history(
    run: Run | str | os.PathLike,
    layer: LayerRef = -1,
    *,
    per_class: bool = False,
    by_truth: bool = False,
    max_panels: int = 12,
    cols: int = 6,
) -> Figure:
    """The twin peaks chart of every epoch side by side, so train/valid drift shows over time.

    With more than ``max_panels`` epochs, evenly spaced epochs are shown (first and last always).

    Example:
        >>> fig = tp.plot_twin_peaks_history("runs/exp1.tp")  # doctest: +SKIP
    """
    with as_run(run) as r, style():
        info = r.layer(layer)
        n = r.epochs
        if n == 0:
            r.epoch_info(0)  # raises the "no closed epoch" message
        epochs = sorted({int(round(e)) for e in np.linspace(0, n - 1, min(n, max(1, max_panels)))})
        cols = -(-len(epochs) // -(-len(epochs) // max(1, cols)))  # balanced rows
        rows = -(-len(epochs) // cols)
        fig = new_figure((2.6 * cols, 2.3 * rows + 0.9))
        axes = fig.subplots(rows, cols, sharex=True, sharey=True, squeeze=False).ravel()
        limits = []
        for i, (ax, e) in enumerate(zip(axes, epochs)):
            curves = draw_twin_peaks(ax, r, e, info, per_class=per_class, by_truth=by_truth, legend=False,
                                     notes=False, title=f"epoch {e}")
            limits.append(ax.get_xlim())
            out = max(c.out_of_range for c in curves)
            if out >= 5e-3:
                ax.set_title(f"epoch {e}: up to {100 * out:.0f}% out of range", color="#b00000")
            if i % cols:
                ax.set_ylabel("")
            if i < len(epochs) - cols:
                ax.set_xlabel("")
            else:
                ax.set_xlabel("activation value")
        axes[0].set_xlim(min(lo for lo, _ in limits), max(hi for _, hi in limits))  # shared: every epoch's data
        hold_y(axes[:len(epochs)])  # shared: the tallest peak of every epoch, not the first panel's
        for ax in axes[len(epochs):]:
            ax.set_visible(False)
        handles, labels = axes[0].get_legend_handles_labels()
        labels = [lab.split(":")[0] for lab in labels]  # batch counts differ per epoch
        if per_class:
            names = class_names(r, info.columns)
            handles, labels = handles[:len(names)], names
        # as many entries per row as fit the figure's width (legend font 7 pt: about 0.06 in per character)
        entry = 0.45 + 0.06 * max((len(lab) for lab in labels), default=1)
        per_row = max(1, min(len(labels), 8, int(fig.get_figwidth() / entry)))
        fig.legend(handles, labels, loc="outside lower center", ncols=per_row, frameon=False)
        fig.suptitle(f"Twin Peaks per epoch: {layer_title(info)}")
    return as_plain_text(fig)
