"""Reading a run: layers, epochs, histograms and per-step columns, from the file only.

Everything that draws or judges a run (charts, reports, diagnosis) goes through
:class:`Run`; nothing here knows about torch hooks. A :class:`Run` reads the
last committed state of the file: open it while training writes and call
:meth:`Run.refresh` to see new epochs.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .errors import LayerNotFound, TwinpeaksError
from .format import MAX, MIN, SEEN, STATS, combine_stats, empty_stats, mean_std, n_slots, slots_to_parts
from .format import zero_fraction as _zero_fraction
from .runfile import (
    MAX_BINS,
    RunConnection,
    check_int,
    check_str,
    connect_reader,
    damaged,
    decode_checked,
    load_json,
)

PHASES = ("train", "valid", "test")
#: Types of the meta values readers use (any other key may hold any JSON).
_META_TYPES: dict[str, type | tuple[type, ...]] = {
    "schema": int, "classes": (list, type(None)), "model": (str, type(None)), "options": (dict, type(None)),
    "created": (int, float, type(None)), "twinpeaks_version": (str, type(None)),
    "torch_version": (str, type(None)), "distributed": (dict, type(None)),
}
#: Epoch times after this (year 5138) are not times.
_MAX_TIME = 1e11


@dataclass(frozen=True)
class LayerInfo:
    """One record of a run: a module's output, or one tensor of a structured output."""

    index: int  #: position in :attr:`Run.layers`
    id: int  #: id in the file
    name: str  #: qualified module name (``features.3``; ``lstm.0`` for a sub-record)
    type: str  #: module class name
    out_shape: tuple[int, ...] | None  #: shape of the first recorded output; None if never called
    bins: int
    columns: int  #: per-class columns recorded (0 without per-class data)
    module_index: int
    sub_index: int

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

    ``total`` is the number of elements binned (``counts.sum() + underflow +
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

    Column ``i`` covers steps ``starts[i] <= step < ends[i]`` of that phase.
    """

    starts: np.ndarray
    ends: np.ndarray
    counts: np.ndarray  #: int64 ``[n, bins]``
    underflow: np.ndarray
    overflow: np.ndarray
    nonfinite: np.ndarray
    stats: np.ndarray  #: float64 ``[n, 7]`` in :data:`twinpeaks.format.STATS` order
    edges: np.ndarray

    def __len__(self) -> int:
        return len(self.starts)

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

    # -- reading the file: every value is checked against the schema before use ---------------
    def _rows(self, sql: str, params: tuple = ()) -> list[tuple]:
        """Rows of a query; any SQLite error (a damaged page, an aborted statement) is a :class:`RunFileError`."""
        try:
            return self._conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise damaged(self._conn, f"SQLite says {exc}") from None
        except UnicodeDecodeError:  # a TEXT value that is not UTF-8
            raise damaged(self._conn, "it holds text that is not UTF-8") from None

    def _limit(self) -> int:
        return self._conn.bytes_held() if isinstance(self._conn, RunConnection) else 1 << 62

    # -- what the run holds ----------------------------------------------
    @cached_property
    def meta(self) -> dict[str, Any]:
        """Everything in the ``meta`` table (schema, versions, options, classes, ...)."""
        limit = self._limit()
        meta = {}
        for k, v in self._rows("SELECT key, value FROM meta"):
            key = check_str(self._conn, k, "a meta key", 256)
            meta[key] = load_json(self._conn, v, limit, f"meta {key!r}")
        for key, types in _META_TYPES.items():
            if key in meta and not isinstance(meta[key], types):
                raise damaged(self._conn, f"meta {key!r} is {type(meta[key]).__name__}")
        created = meta.get("created")
        if created is not None and not 0 <= created <= _MAX_TIME:  # NaN fails too
            raise damaged(self._conn, f"meta 'created' is {created!r}, not a time")
        classes = meta.get("classes")
        if classes is not None and not all(isinstance(c, str) for c in classes):
            raise damaged(self._conn, "meta 'classes' is not a list of names")
        return meta

    @property
    def classes(self) -> list[str] | None:
        """Class names given at record time, if any."""
        return self.meta.get("classes")

    @cached_property
    def layers(self) -> list[LayerInfo]:
        """Records in module order, a module's sub-records right after it: ``layers[-1]`` is the last layer."""
        rows = self._rows(
            "SELECT layer, name, type, out_shape, bins, columns, module_index, sub_index "
            "FROM layers ORDER BY module_index, sub_index"
        )
        c, limit = self._conn, self._limit()
        out, ids = [], set()
        for i, (lid, name, typ, shape, bins, cols, mi, si) in enumerate(rows):
            lid = check_int(c, lid, "a layer id", -(1 << 62), 1 << 62)
            if lid in ids:
                raise damaged(c, f"layer id {lid} appears twice")
            ids.add(lid)
            name = check_str(c, name, "a layer name", 4096)
            out_shape = None
            if shape is not None:
                dims = load_json(c, shape, 1024, f"out_shape of layer {name!r}")
                if not isinstance(dims, list) or len(dims) > 32:
                    raise damaged(c, f"out_shape of layer {name!r} is not a list of sizes")
                out_shape = tuple(check_int(c, d, f"out_shape of layer {name!r}", 0, 1 << 62) for d in dims)
            bins = check_int(c, bins, f"bins of layer {name!r}", 1, MAX_BINS)
            cols = check_int(c, cols, f"per-class columns of layer {name!r}", 0, min(max(limit, 1 << 16), 1 << 24))
            out.append(LayerInfo(i, lid, name, check_str(c, typ, f"type of layer {name!r}", 4096), out_shape,
                                 bins, cols, check_int(c, mi, "a module index", -(1 << 62), 1 << 62),
                                 check_int(c, si, "a sub-record index", -(1 << 62), 1 << 62)))
        return out

    @cached_property
    def _epoch_rows(self) -> list[EpochInfo]:
        c, limit = self._conn, self._limit()
        out = []
        for i, (e, t, steps) in enumerate(self._rows("SELECT epoch, closed_at, steps FROM epochs ORDER BY epoch")):
            if check_int(c, e, "an epoch number") != i:
                raise damaged(c, f"epoch {e} follows epoch {i - 1}: epochs are numbered from 0 without gaps")
            if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 <= t <= _MAX_TIME:
                raise damaged(c, f"epoch {i} closed at {t!r}, not a time")
            phases = load_json(c, steps, limit, f"steps of epoch {i}")
            if not isinstance(phases, dict) or len(phases) > 256:
                raise damaged(c, f"steps of epoch {i} are not {{phase: [first, end, last_quarter_first]}}")
            ranges: dict[str, tuple[int, int, int]] = {}
            for p, v in phases.items():
                check_str(c, p, f"a phase of epoch {i}", 256)
                if not isinstance(v, list) or len(v) != 3:
                    raise damaged(c, f"steps of phase {p!r} in epoch {i} are not [first, end, last_quarter_first]")
                first, end, lq = (check_int(c, x, f"a step of phase {p!r} in epoch {i}") for x in v)
                if not first <= lq <= end:
                    raise damaged(c, f"steps of phase {p!r} in epoch {i} are out of order: {v}")
                ranges[p] = (first, end, lq)
            out.append(EpochInfo(i, float(t), ranges))
        return out

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
        found = {check_str(self._conn, p, "a phase name", 256)
                 for (p,) in self._rows("SELECT DISTINCT phase FROM arrays WHERE phase != ''")}
        return [p for p in PHASES if p in found] + sorted(found - set(PHASES))

    def n_steps(self, phase: str = "train") -> int:
        """Steps (batches) of ``phase`` recorded and flushed so far."""
        rows = self._rows(
            "SELECT data, dtype, shape FROM arrays WHERE phase=? AND kind='col_steps' AND epoch=-1 "
            "ORDER BY part DESC LIMIT 1",
            (phase,),
        )
        if not rows:
            return 0
        steps = decode_checked(self._conn, "col_steps", rows[0][1], rows[0][2], rows[0][0], 1, 0)
        return int(steps[-1, 1]) if len(steps) else 0

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

    def edges(self, layer: LayerRef) -> np.ndarray:
        """float64 ``[bins + 1]`` bin edges of a layer (empty if it never recorded)."""
        info = self.layer(layer)
        rows = self._rows("SELECT data, dtype, shape FROM arrays WHERE layer=? AND kind='edges' LIMIT 1", (info.id,))
        if not rows:
            return np.zeros(0)
        return decode_checked(self._conn, "edges", rows[0][1], rows[0][2], rows[0][0], info.bins, info.columns)

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
        edges = self.edges(info)
        if epoch is None and column is None and truth is None:
            cols = self.columns(info, phase)
            stats = combine_stats(cols.stats)
            return Histogram(
                cols.counts.sum(axis=0) if len(cols) else np.zeros(info.bins, np.int64),
                edges, int(cols.underflow.sum()), int(cols.overflow.sum()), int(cols.nonfinite.sum()),
                int((cols.ends - cols.starts).sum()), int(stats[SEEN]), stats,
            )
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
        row = np.zeros(n_slots(info.bins), np.int64)
        stats = empty_stats(0)
        steps = 0
        for e in epochs:
            arr = self._array(info.id, phase, kind, e)
            if arr is None:
                continue
            row += arr if pick is None else arr[pick]
            st = self._array(info.id, phase, prefix + "stats", e)
            if st is not None:
                stats = np.vstack([stats, st])
            summ = self._array(info.id, phase, "summary", e)
            steps += int(summ[1 if last_quarter else 0]) if summ is not None else 0
        if pick is None and not steps and epoch is not None and phase not in self.phases:
            raise ValueError(f"phase {phase!r} was not recorded; this run has {self.phases}")
        stats = combine_stats(stats)
        edges = self._data_edges(info, int(row.any()))
        counts, under, over, nonfinite = slots_to_parts(row)
        seen = int(stats[SEEN]) if pick is None else int(row.sum())
        return Histogram(counts.copy(), edges, int(under), int(over), int(nonfinite), steps, seen, stats)

    def columns(self, layer: LayerRef, phase: str = "train") -> Columns:
        """Per-step columns with their step ranges, out-of-range counts and stats."""
        info = self.layer(layer)
        parts: dict[str, dict[int, np.ndarray]] = {"col_steps": {}, "col_counts": {}, "col_stats": {}}
        for kind, part, dtype, shape, data in self._rows(
            "SELECT kind, part, dtype, shape, data FROM arrays WHERE layer=? AND phase=? AND epoch=-1 "
            "AND kind IN ('col_steps', 'col_counts', 'col_stats') ORDER BY part",
            (info.id, phase),
        ):
            part = check_int(self._conn, part, f"a column segment of layer {info.name!r}")
            if kind not in parts:  # the query asked for these kinds only: a damaged index answered
                raise damaged(self._conn, f"the arrays index answered kind {kind!r} for step columns")
            parts[kind][part] = decode_checked(self._conn, kind, dtype, shape, data, info.bins, info.columns)
        at = 0
        for part in sorted(parts["col_steps"]):  # segments: same parts, same lengths, one after another
            n = len(parts["col_steps"][part])
            if part != at or any(part not in parts[k] or len(parts[k][part]) != n for k in parts):
                raise damaged(self._conn, f"column segments of layer {info.name!r} in {phase!r} do not match")
            at += n
        if len(parts["col_counts"]) != len(parts["col_steps"]) or len(parts["col_stats"]) != len(parts["col_steps"]):
            raise damaged(self._conn, f"column segments of layer {info.name!r} in {phase!r} do not match")
        slots = n_slots(info.bins)
        steps = np.concatenate(list(parts["col_steps"].values())) if at else np.zeros((0, 2), np.int64)
        rows = np.concatenate(list(parts["col_counts"].values())) if at else np.zeros((0, slots), np.int64)
        stats = np.concatenate(list(parts["col_stats"].values())) if at else empty_stats(0)
        if len(steps) > 1 and not (steps[1:, 0] >= steps[:-1, 1]).all():
            raise damaged(self._conn, f"column segments of layer {info.name!r} in {phase!r} overlap")
        counts, under, over, nonfinite = slots_to_parts(rows)
        return Columns(steps[:, 0], steps[:, 1], counts, under, over, nonfinite, stats, self._data_edges(info, at))

    # -- internals -------------------------------------------------------------
    def _data_edges(self, info: LayerInfo, has_data: int) -> np.ndarray:
        """The edges of a layer that holds data: a layer with counts but no edges is damaged."""
        edges = self.edges(info)
        if has_data and len(edges) != info.bins + 1:
            raise damaged(self._conn, f"layer {info.name!r} holds counts but no bin edges")
        return edges

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
        rows = self._rows(
            "SELECT data, dtype, shape FROM arrays WHERE layer=? AND phase=? AND kind=? AND epoch=? AND part=0 LIMIT 1",
            (layer_id, phase, kind, epoch),
        )
        if not rows:
            return None
        info = next((i for i in self.layers if i.id == layer_id), None)
        if info is None:
            raise damaged(self._conn, f"arrays of layer id {layer_id}, which the layers table does not hold")
        return decode_checked(self._conn, kind, rows[0][1], rows[0][2], rows[0][0], info.bins, info.columns)


def open_run(path: str | os.PathLike | Run) -> Run:
    """Open a run file for reading; it may still be being written.

    Raises :class:`~twinpeaks.errors.RunFileError` with a one-line reason if the
    file is missing, not a run file, or of a schema this version cannot read.

    Example:
        >>> run = tp.open_run("runs/exp1.tp")  # doctest: +SKIP
    """
    if isinstance(path, Run):
        return path
    p = Path(path)
    return Run(connect_reader(p), p)


__all__ = ["Columns", "EpochInfo", "Histogram", "LayerInfo", "Run", "open_run", "TwinpeaksError"]
