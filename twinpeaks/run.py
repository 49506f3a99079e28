"""Reading a run: layers, epochs, histograms and per-step columns, from the file only.

Everything that draws or judges a run (charts, reports, diagnosis) goes through
:class:`Run`; nothing here knows about torch hooks. A :class:`Run` reads the
last committed state of the file: open it while training writes and call
:meth:`Run.refresh` to see new epochs.
"""

from __future__ import annotations

import json
import os
import sqlite3
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np

from . import grids
from .errors import LayerNotFound, TwinpeaksError
from .format import MAX, MIN, SEEN, STATS, combine_stats, decode, empty_stats, mean_std, n_slots, slots_to_parts
from .format import zero_fraction as _zero_fraction
from .rundir import resolve_run
from .runfile import connect_reader

PHASES = ("train", "valid", "test")


@dataclass(frozen=True)
class LayerInfo:
    """One record of a run: a module's output, or one tensor of a structured output."""

    index: int  #: position in :attr:`Run.layers`
    id: int  #: id in the file
    name: str  #: qualified module name (``features.3``; ``lstm.1.0`` for a sub-record)
    type: str  #: module class name
    out_shape: tuple[int, ...] | None  #: shape of the first recorded output; None if never called
    bins: int
    columns: int  #: per-class columns recorded (0 without per-class data)
    module_index: int  #: orders the layers: the module's position in the model (older files: in the selection)
    sub_index: int  #: 0: the module's own output (or its tuple's first tensor); then its other tensors

    @property
    def called(self) -> bool:
        """Whether the layer ever produced something that was binned."""
        return self.out_shape is not None


#: A layer as the reading functions take it: a name, an index into ``Run.layers`` (negative counts
#: from the end), or a :class:`LayerInfo` of the same run.
LayerRef = int | str | LayerInfo


@dataclass(frozen=True)
class Histogram:
    """Counts of one layer over some steps, with everything outside the range.

    ``edges`` (float64 ``[B + 1]``) are the edges the counts were counted on: a
    fixed range's numpy edges, or the aligned binary grid ``grid = (e, o)`` of an
    automatic range (edge ``i`` at ``(o + i) * 2**e``; see docs/grids.md), which
    holds every finite value (no underflow or overflow). ``total`` is the number of elements binned (``counts.sum() + underflow +
    overflow + nonfinite``); ``seen`` the number of elements the layer produced
    (larger than ``total`` when outputs were sampled); ``steps`` the number of
    steps (batches) summed, so ``counts / steps`` is the mean histogram.
    """

    counts: np.ndarray
    edges: np.ndarray
    underflow: int
    overflow: int
    nonfinite: int
    steps: int
    seen: int
    stats: np.ndarray = field(repr=False)
    grid: tuple[int, int] | None = None  #: auto grid ``(e, o)``; None: a fixed range (or an older run file)

    @property
    def total(self) -> int:
        return int(self.counts.sum()) + self.underflow + self.overflow + self.nonfinite

    @property
    def centers(self) -> np.ndarray:
        return (self.edges[:-1] + self.edges[1:]) / 2

    @property
    def mean(self) -> float:
        """Mean of the binned values (exact, from running sums)."""
        return float(mean_std(self.stats)[0])

    @property
    def std(self) -> float:
        return float(mean_std(self.stats)[1])

    @property
    def min(self) -> float:
        return float(self.stats[MIN])

    @property
    def max(self) -> float:
        return float(self.stats[MAX])

    @property
    def zero_fraction(self) -> float:
        return float(_zero_fraction(self.stats))


@dataclass(frozen=True)
class Columns:
    """Per-step (or merged) columns of one layer in one phase, in step order.

    Column ``i`` covers steps ``starts[i] <= step < ends[i]`` of that phase; its
    counts were counted on ``edges[i]`` (float64 ``[n, B + 1]``): with an automatic
    range every column has its own aligned binary grid (``grids[i] = (e, o)``),
    with a fixed range all rows are the same numpy edges (``grids`` is None).
    """

    starts: np.ndarray
    ends: np.ndarray
    counts: np.ndarray  #: int64 ``[n, bins]``
    underflow: np.ndarray
    overflow: np.ndarray
    nonfinite: np.ndarray
    stats: np.ndarray  #: float64 ``[n, 7]`` in :data:`twinpeaks.format.STATS` order
    edges: np.ndarray  #: float64 ``[n, B + 1]``: each column's own edges
    grids: np.ndarray | None = None  #: int64 ``[n, 2]`` auto grids ``(e, o)``; None: a fixed range

    def __len__(self) -> int:
        return len(self.starts)

    @property
    def fixed(self) -> bool:
        """Whether the columns share one fixed range (the user's ``range=``, or an older run file)."""
        return self.grids is None

    def value_range(self) -> tuple[float, float]:
        """``(lo, hi)`` covering every column's occupied bins (a fixed range: its edges).

        Example:
            >>> run.columns("fc1").value_range()  # doctest: +SKIP
            (-3.25, 7.5)
        """
        if self.fixed or not len(self):
            return (float(self.edges[0, 0]), float(self.edges[0, -1])) if len(self.edges) else (0.0, 1.0)
        occ = self.counts > 0
        rows = np.flatnonzero(occ.any(axis=1))
        if not len(rows):
            return (float(self.edges[:, 0].min()), float(self.edges[:, -1].max()))
        first = occ[rows].argmax(axis=1)
        last = occ.shape[1] - 1 - occ[rows, ::-1].argmax(axis=1)
        return float(self.edges[rows, first].min()), float(self.edges[rows, last + 1].max())

    def on_grid(self, grid: tuple[int, int]) -> np.ndarray:
        """Counts of every column moved exactly onto one coarser-or-equal grid (e.g. :meth:`Run.layer_grid`).

        Example:
            >>> counts = run.columns("fc1").on_grid(run.layer_grid("fc1"))  # doctest: +SKIP
        """
        if self.grids is None:
            raise ValueError("on_grid is for automatic ranges; a fixed range's columns share their edges already")
        out = np.zeros_like(self.counts)
        for i in np.flatnonzero(self.counts.any(axis=1)):
            out[i] = grids.regrid(self.counts[i], (int(self.grids[i, 0]), int(self.grids[i, 1])), grid)
        return out

    def resampled(self, axis: np.ndarray) -> np.ndarray:
        """Counts of every column spread onto common ``axis`` edges (float64 ``[n, len(axis) - 1]``), for drawing.

        Each bin's count is shared among the axis bins it overlaps, in proportion to
        the overlap (values taken as uniform inside a bin): the total of a column is
        kept for the part of its bins inside ``axis``. Exact when ``axis`` is made of
        whole bins of every column.
        """
        axis = np.asarray(axis, np.float64)
        out = np.zeros((len(self), len(axis) - 1))
        for i in range(len(self)):
            e = self.edges[i]
            cdf = np.concatenate([[0.0], np.cumsum(self.counts[i], dtype=np.float64)])
            out[i] = np.diff(np.interp(axis, e, cdf))
        return out

    def _stat(self, name: str) -> np.ndarray:
        return self.stats[:, STATS.index(name)]

    @property
    def binned(self) -> np.ndarray:
        return self._stat("binned")

    @property
    def mean(self) -> np.ndarray:
        return mean_std(self.stats)[0]

    @property
    def std(self) -> np.ndarray:
        return mean_std(self.stats)[1]

    @property
    def min(self) -> np.ndarray:
        return np.where(self.binned > 0, self._stat("min"), np.nan)

    @property
    def max(self) -> np.ndarray:
        return np.where(self.binned > 0, self._stat("max"), np.nan)

    @property
    def zero_fraction(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return self._stat("zeros") / self.binned


def on_common_grid(hists: list[Histogram], onto: tuple[int, int] | None = None) -> list[Histogram]:
    """The histograms moved exactly onto one grid, so that their bins line up (charts that overlay or compare them).

    Histograms of a fixed range (or of an older run file) share their edges already
    and come back as they are; automatic ones are regridded onto the common grid of
    docs/grids.md (no count is split), or onto ``onto`` (e.g. :meth:`Run.layer_grid`,
    which holds every histogram of its layer).

    Example:
        >>> a, b = run.histogram(-1, "train", -1), run.histogram(-1, "valid", -1)  # doctest: +SKIP
        >>> a, b = on_common_grid([a, b])                                            # doctest: +SKIP
        >>> bool((a.edges == b.edges).all())                                         # doctest: +SKIP
        True
    """
    if all(h.grid is None for h in hists):
        return list(hists)
    live = [h for h in hists if h.grid is not None and h.counts.any()]
    if not live:
        return list(hists)
    bins = len(live[0].counts)
    rows = [np.concatenate([[0], h.counts, [0, 0]]) for h in live]
    common = onto or grids.common_grid([h.grid for h in live], [grids.occupied(r, h.grid) for r, h in zip(rows, live)],
                                       bins)
    assert common is not None
    edges = grids.edges_of(common, bins)
    out = []
    for h in hists:
        if h.grid is None or not h.counts.any():
            out.append(Histogram(np.zeros(bins, np.int64), edges, h.underflow, h.overflow, h.nonfinite, h.steps,
                                 h.seen, h.stats, common))
        else:
            out.append(Histogram(grids.regrid(h.counts, h.grid, common), edges, h.underflow, h.overflow,
                                 h.nonfinite, h.steps, h.seen, h.stats, common))
    return out


@dataclass(frozen=True)
class EpochInfo:
    """Steps of each phase in one closed epoch: ``steps[phase] = (first, end, last_quarter_first)``."""

    epoch: int
    closed_at: float
    steps: dict[str, tuple[int, int, int]]


class Run:
    """A recorded run, read from its file (or from an in-memory recorder).

    Example:
        >>> run = open_run("runs/exp1.tp")            # doctest: +SKIP
        >>> run.layers[-1].name, run.epochs            # doctest: +SKIP
        ('head', 3)
        >>> h = run.histogram(-1, "valid", epoch=2)     # doctest: +SKIP
        >>> h.counts.sum() + h.underflow + h.overflow + h.nonfinite == h.total  # doctest: +SKIP
        True
    """

    def __init__(self, conn: sqlite3.Connection, path: Path | None = None, owned: bool = True):
        self._conn = conn
        self.path = path
        self._owned = owned
        self.refresh()

    # -- lifecycle -------------------------------------------------------
    def refresh(self) -> Run:
        """Forget cached reads so that the next ones see what the writer committed since."""
        for name in ("meta", "layers", "_epoch_rows", "_edges"):
            self.__dict__.pop(name, None)
        return self

    def close(self) -> None:
        if self._owned:
            self._conn.close()

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        where = str(self.path) if self.path else "<memory>"
        return f"Run({where!r}, layers={len(self.layers)}, epochs={self.epochs})"

    # -- what the run holds ----------------------------------------------
    @cached_property
    def meta(self) -> dict[str, Any]:
        """Everything in the ``meta`` table (schema, versions, options, classes, ...)."""
        return {k: json.loads(v) for k, v in self._conn.execute("SELECT key, value FROM meta")}

    @property
    def classes(self) -> list[str] | None:
        """Class names given at record time, if any."""
        return self.meta.get("classes")

    @cached_property
    def layers(self) -> list[LayerInfo]:
        """Records in module order, a module's sub-records right after it: ``layers[-1]`` is the last layer."""
        rows = self._conn.execute(
            "SELECT layer, name, type, out_shape, bins, columns, module_index, sub_index "
            "FROM layers ORDER BY module_index, sub_index"
        ).fetchall()
        return [
            LayerInfo(i, lid, name, typ, None if shape is None else tuple(json.loads(shape)), bins, cols, mi, si)
            for i, (lid, name, typ, shape, bins, cols, mi, si) in enumerate(rows)
        ]

    @cached_property
    def _epoch_rows(self) -> list[EpochInfo]:
        rows = self._conn.execute("SELECT epoch, closed_at, steps FROM epochs ORDER BY epoch").fetchall()
        return [EpochInfo(e, t, {p: tuple(v) for p, v in json.loads(s).items()}) for e, t, s in rows]

    @property
    def epochs(self) -> int:
        """Number of closed epochs."""
        return len(self._epoch_rows)

    def epoch_info(self, epoch: int) -> EpochInfo:
        """Step ranges of an epoch (negative counts from the end)."""
        return self._epoch_rows[self._epoch_index(epoch)]

    @property
    def phases(self) -> list[str]:
        """Phases with recorded data, in the order train, valid, test, then others."""
        found = {p for (p,) in self._conn.execute("SELECT DISTINCT phase FROM arrays WHERE phase != ''")}
        return [p for p in PHASES if p in found] + sorted(found - set(PHASES))

    def n_steps(self, phase: str = "train") -> int:
        """Steps (batches) of ``phase`` recorded and flushed so far."""
        row = self._conn.execute(
            "SELECT data, dtype, shape FROM arrays WHERE phase=? AND kind='col_steps' AND epoch=-1 "
            "ORDER BY part DESC LIMIT 1",
            (phase,),
        ).fetchone()
        return int(decode(row[1], row[2], row[0])[-1, 1]) if row else 0

    def layer(self, layer: LayerRef) -> LayerInfo:
        """A layer by name or by index into :attr:`layers` (negative counts from the end)."""
        layers = self.layers
        if isinstance(layer, (int, np.integer)) and not isinstance(layer, bool):
            if -len(layers) <= layer < len(layers):
                return layers[layer]
            raise LayerNotFound(f"layer index {layer} is out of range: the run has {len(layers)} layers")
        if isinstance(layer, LayerInfo):
            return layer
        for info in layers:
            if info.name == layer:
                return info
        names = ", ".join(repr(i.name) for i in layers[:8])
        more = ", ..." if len(layers) > 8 else ""
        raise LayerNotFound(f"no layer named {layer!r} in this run; layers are {names}{more}")

    @property
    def schema(self) -> int:
        """The run file's schema (3: per-column grids; 1 and 2: one float32-edged range per layer)."""
        return int(self.meta.get("schema", 1))

    def _stored_edges(self, info: LayerInfo) -> np.ndarray | None:
        row = self._conn.execute(
            "SELECT data, dtype, shape FROM arrays WHERE layer=? AND kind='edges'", (info.id,)
        ).fetchone()
        return decode(row[1], row[2], row[0]) if row else None

    def is_fixed(self, layer: LayerRef) -> bool:
        """Whether a layer was binned on a fixed range (``range=``, or any layer of a schema 1/2 file)."""
        return self.schema < 3 or self._stored_edges(self.layer(layer)) is not None

    def edges(self, layer: LayerRef) -> np.ndarray:
        """float64 ``[bins + 1]`` edges of a layer's value axis (empty if it never recorded).

        A fixed range: the edges every histogram of the layer was counted on. An
        automatic range: the edges of the grid that all the layer's columns (every
        phase) combine onto exactly: where its values went over the run. Each
        :class:`Histogram` and column carries its own edges.
        """
        info = self.layer(layer)
        cache = self.__dict__.setdefault("_edges", {})
        if info.id not in cache:
            stored = self._stored_edges(info)
            if stored is not None or self.schema < 3:
                cache[info.id] = (stored if stored is not None else np.zeros(0)), None
            else:
                rows, gs = [], []
                for phase in self.phases:
                    _, r, _, g = self._column_rows(info, phase)
                    if g is not None and len(r):
                        sub, common = grids.combine(r, g)
                        rows.append(sub)
                        gs.append(common)
                common = grids.combine(rows, gs)[1] if rows else None
                cache[info.id] = (grids.edges_of(common, info.bins) if common is not None else np.zeros(0)), common
        return cache[info.id][0]

    def layer_grid(self, layer: LayerRef) -> tuple[int, int] | None:
        """The grid of :meth:`edges` for a layer with automatic ranges (every histogram of it regrids onto it); None for a fixed range."""
        info = self.layer(layer)
        self.edges(info)
        return self.__dict__["_edges"][info.id][1]

    # -- histograms ----------------------------------------------------------
    def histogram(
        self,
        layer: LayerRef,
        phase: str = "train",
        epoch: int | None = None,
        column: int | None = None,
        *,
        truth: Literal["yes", "no"] | None = None,
        last_quarter: bool = False,
    ) -> Histogram:
        """The histogram of a layer's outputs in a phase.

        Args:
            layer: name or index (negative counts from the end: -1 = last layer).
            phase: ``"train"``, ``"valid"``, ``"test"`` or a custom phase name.
            epoch: a closed epoch (negative counts from the end); None = the whole run.
            column: per-class histogram of output column ``k`` (run recorded with ``per_class=True``).
            truth: ``"yes"`` for the outputs of the true class(es), ``"no"`` for all others
                (the run must have been given targets).
            last_quarter: only the last quarter of the epoch's steps (what Twin Peaks compares).

        Example:
            >>> run.histogram(-1, "valid", epoch=-1).counts.shape  # doctest: +SKIP
            (100,)
        """
        info = self.layer(layer)
        if column is not None and truth is not None:
            raise ValueError("pass column or truth, not both")
        if epoch is None and last_quarter:
            raise ValueError("last_quarter needs an epoch; e.g. epoch=-1")
        if epoch is None and column is None and truth is None:
            steps_, rows, cstats, g = self._column_rows(info, phase)
            row, grid = self._combine(info, rows, g)
            stats = combine_stats(cstats)
            counts, under, over, nonfinite = slots_to_parts(row)
            return Histogram(counts.copy(), self._edges_of(info, grid), int(under), int(over), int(nonfinite),
                             int((steps_[:, 1] - steps_[:, 0]).sum()), int(stats[SEEN]), stats, grid)
        epochs = range(self.epochs) if epoch is None else [self._epoch_index(epoch)]
        prefix = "lq_" if last_quarter else ""
        if column is not None:
            if not info.columns:
                raise ValueError(f"layer {info.name!r} has no per-class data: record with per_class=True")
            if not -info.columns <= column < info.columns:
                raise ValueError(f"column {column} out of range: layer {info.name!r} has {info.columns} columns")
            kind, pick = ("class_lq" if last_quarter else "class_counts"), column
        elif truth is not None:
            if truth not in ("yes", "no"):
                raise ValueError(f"truth must be 'yes' or 'no', got {truth!r}")
            kind, pick = ("truth_lq" if last_quarter else "truth_counts"), ("yes", "no").index(truth)
        else:
            kind, pick = prefix + "counts", None
        parts: list[np.ndarray] = []
        part_grids: list[tuple[int, int] | None] = []
        stats = empty_stats(0)
        steps = 0
        for e in epochs:
            arr = self._array(info.id, phase, kind, e)
            if arr is None:
                continue
            parts.append(arr if pick is None else arr[pick])
            g = self._array(info.id, phase, prefix + "grid", e)
            part_grids.append(None if g is None else (int(g[0]), int(g[1])))
            st = self._array(info.id, phase, prefix + "stats", e)
            if st is not None:
                stats = np.vstack([stats, st])
            summ = self._array(info.id, phase, "summary", e)
            steps += int(summ[1 if last_quarter else 0]) if summ is not None else 0
        if pick is None and not steps and epoch is not None and phase not in self.phases:
            raise ValueError(f"phase {phase!r} was not recorded; this run has {self.phases}")
        row, grid = self._combine(info, parts, part_grids if self._auto(info) else None)
        stats = combine_stats(stats)
        counts, under, over, nonfinite = slots_to_parts(row)
        seen = int(stats[SEEN]) if pick is None else int(row.sum())
        return Histogram(counts.copy(), self._edges_of(info, grid), int(under), int(over), int(nonfinite), steps,
                         seen, stats, grid)

    def _auto(self, info: LayerInfo) -> bool:
        return not self.is_fixed(info)

    def _combine(self, info: LayerInfo, rows: list[np.ndarray] | np.ndarray, gs: list | np.ndarray | None
                 ) -> tuple[np.ndarray, tuple[int, int] | None]:
        """Rows summed: plain addition on a fixed range, exact regridding onto a common grid otherwise."""
        if not len(rows):
            return np.zeros(n_slots(info.bins), np.int64), None
        if gs is None:
            return np.sum(rows, axis=0), None
        return grids.combine(rows, gs)

    def _edges_of(self, info: LayerInfo, grid: tuple[int, int] | None) -> np.ndarray:
        if grid is not None:
            return grids.edges_of(grid, info.bins)
        if self._auto(info):  # nothing finite: any grid; the centred one of 0
            return grids.edges_of(grids.choose(0.0, 0.0, info.bins), info.bins)
        return self.edges(info)

    def columns(self, layer: LayerRef, phase: str = "train") -> Columns:
        """Per-step columns with their step ranges, out-of-range counts, stats and each column's edges."""
        info = self.layer(layer)
        steps, rows, stats, g = self._column_rows(info, phase)
        counts, under, over, nonfinite = slots_to_parts(rows)
        if g is None:
            edges = self.edges(info)
            col_edges = np.broadcast_to(edges, (len(steps), len(edges))) if len(edges) else np.zeros((len(steps), 0))
        else:
            col_edges = np.ldexp((g[:, 1:2] + np.arange(info.bins + 1)).astype(np.float64), g[:, :1])
        return Columns(steps[:, 0], steps[:, 1], counts, under, over, nonfinite, stats, col_edges, g)

    def _column_rows(self, info: LayerInfo, phase: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """``(steps [n, 2], slot rows [n, B + 3], stats [n, 7], grids [n, 2] or None)`` of a layer's columns."""
        parts: dict[str, list[np.ndarray]] = {"col_steps": [], "col_counts": [], "col_stats": [], "col_grid": []}
        for kind, dtype, shape, data in self._conn.execute(
            "SELECT kind, dtype, shape, data FROM arrays WHERE layer=? AND phase=? AND epoch=-1 ORDER BY part",
            (info.id, phase),
        ):
            if kind in parts:
                parts[kind].append(decode(dtype, shape, data))
        slots = n_slots(info.bins)
        steps = np.concatenate(parts["col_steps"]) if parts["col_steps"] else np.zeros((0, 2), np.int64)
        rows = np.concatenate(parts["col_counts"]) if parts["col_counts"] else np.zeros((0, slots), np.int64)
        stats = np.concatenate(parts["col_stats"]) if parts["col_stats"] else empty_stats(0)
        if not self._auto(info):
            return steps, rows, stats, None
        g = np.concatenate(parts["col_grid"]) if parts["col_grid"] else np.zeros((0, 2), np.int64)
        return steps, rows, stats, g.astype(np.int64)

    # -- internals -------------------------------------------------------------
    def _epoch_index(self, epoch: int) -> int:
        n = self.epochs
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)):
            raise TypeError(f"epoch must be an int, got {epoch!r}")
        if not -n <= epoch < n:
            raise ValueError(
                f"epoch {epoch} is out of range: the run has {n} closed epoch{'s' if n != 1 else ''}"
                + ("; call hist.end_epoch() at the end of each epoch" if n == 0 else "")
            )
        return epoch % n

    def _array(self, layer_id: int, phase: str, kind: str, epoch: int) -> np.ndarray | None:
        row = self._conn.execute(
            "SELECT data, dtype, shape FROM arrays WHERE layer=? AND phase=? AND kind=? AND epoch=? AND part=0",
            (layer_id, phase, kind, epoch),
        ).fetchone()
        return decode(row[1], row[2], row[0]) if row else None


def open_run(path: str | os.PathLike | Run) -> Run:
    """Open a run file for reading; it may still be being written.

    ``path`` may be a folder of runs (``"runs"`` or ``"runs/"``): the newest run
    directly in it is opened, the one with the latest time in its twinpeaks name
    (``2026-11-29_231500.tp``; see :mod:`twinpeaks.rundir`). ``run.path`` says which.

    Raises :class:`~twinpeaks.errors.RunFileError` with a one-line reason if the
    file is missing, not a run file, or of a schema this version cannot read, or
    if the folder holds no run.

    Example:
        >>> run = tp.open_run("runs/exp1.tp")  # doctest: +SKIP
        >>> newest = tp.open_run("runs/")      # doctest: +SKIP
        >>> print(newest.path)                 # doctest: +SKIP
        runs/2026-11-29_231500.tp
    """
    if isinstance(path, Run):
        return path
    p = resolve_run(path)
    return Run(connect_reader(p), p)


__all__ = ["Columns", "EpochInfo", "Histogram", "LayerInfo", "Run", "on_common_grid", "open_run", "TwinpeaksError"]
