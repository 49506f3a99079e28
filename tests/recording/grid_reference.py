"""What the Triton kernel's checks compare with (issue #18): ``twinpeaks.grids`` (the project's numpy
reference of docs/grids.md, issue #13) for the grid rules, and here the rest, written independently of
the kernels: counts by ``np.histogram`` against the float64 edges, regrids bin by bin with Python's
floor shifts, and a step row that follows the recorder (its YES/NO and class rows on the grid they were
last counted on, moved onto the row's when binned into).
"""

from __future__ import annotations

import math

import numpy as np

from twinpeaks.grids import choose, coarsen, occupied

__all__ = ["AutoRow", "add_stats", "choose", "fixed_row", "grid_edges", "regrid", "slot_row"]


def grid_edges(e: int, o: int, bins: int) -> np.ndarray:
    return np.array([math.ldexp(o + i, e) for i in range(bins + 1)], dtype=np.float64)


def slot_row(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """``[under, bins..., over, nonfinite]`` of float64 values against float64 edges, as np.histogram bins."""
    v = np.asarray(values, dtype=np.float64).ravel()
    fin = v[np.isfinite(v)]
    inside = fin[(fin >= edges[0]) & (fin <= edges[-1])]
    counts = np.histogram(inside, edges)[0]
    return np.concatenate([[np.sum(fin < edges[0])], counts, [np.sum(fin > edges[-1]), v.size - fin.size]]
                          ).astype(np.int64)


def fixed_row(values: np.ndarray, lo: float, hi: float, bins: int) -> np.ndarray:
    """The slot row of a fixed range: np.histogram(values, bins, range=(lo, hi)) plus the three extra slots."""
    v = np.asarray(values, dtype=np.float64).ravel()
    fin = v[np.isfinite(v)]
    counts = np.histogram(fin[(fin >= lo) & (fin <= hi)], bins, range=(lo, hi))[0]
    return np.concatenate([[np.sum(fin < lo)], counts, [np.sum(fin > hi), v.size - fin.size]]).astype(np.int64)


def regrid(row: np.ndarray, old: tuple[int, int], new: tuple[int, int], bins: int) -> np.ndarray:
    """Old bin i -> floor((o + i) / 2**(e' - e)) - o'; the other slots stay."""
    (e, o), (e2, o2) = old, new
    out = row.copy()
    out[1:bins + 1] = 0
    for i in range(bins):
        c = row[1 + i]
        if c:
            j = ((o + i) >> (e2 - e)) - o2
            assert 0 <= j < bins, "an occupied bin fell outside the new grid"
            out[1 + j] += c
    return out


class AutoRow:
    """One step row with an auto grid, its YES/NO and per-class rows (on the grid they were last counted
    on, moved onto the row's when binned into, as the recorder does), and its statistics."""

    def __init__(self, bins: int, classes: int = 0):
        self.bins = bins
        s = bins + 3
        self.counts = np.zeros(s, np.int64)
        self.truth = np.zeros((2, s), np.int64)
        self.classes = np.zeros((classes, s), np.int64)
        self.grid: tuple[int, int] | None = None
        self.xgrid: tuple[int, int] | None = None
        self.sums = np.zeros(5)
        self.peaks = np.array([-math.inf, -math.inf])

    def edges(self) -> np.ndarray:
        assert self.grid is not None
        return grid_edges(*self.grid, self.bins)

    def _slots_row(self, v: np.ndarray) -> np.ndarray:
        if self.grid is not None:
            return slot_row(v, self.edges())
        # an unset grid: the torch path's auto_slots (e = 0, o = -(2B + 4), clamped)
        v = np.asarray(v, np.float64).ravel()
        fin = v[np.isfinite(v)]
        b = np.clip(np.floor(fin) + 2 * self.bins + 4, -1, self.bins).astype(np.int64) + 1
        r = np.bincount(b, minlength=self.bins + 3)
        r[-1] += v.size - fin.size
        return r

    def observe(self, values: np.ndarray, n_seen: int | None = None) -> None:
        """A main call (the values binned: all, or the sample)."""
        v = np.asarray(values, dtype=np.float64).ravel()
        fin = v[np.isfinite(v)]
        if fin.size:
            new = coarsen(self.grid, occupied(self.counts, self.grid), float(fin.min()), float(fin.max()), self.bins)
            if self.grid is not None and new != self.grid and occupied(self.counts, self.grid) is not None:
                self.counts = regrid(self.counts, self.grid, new, self.bins)
            self.grid = new
        self.counts += self._slots_row(v)
        add_stats(self.sums, self.peaks, v, n_seen)

    def observe_extras(self, out: np.ndarray, yes: np.ndarray | None, classes: bool) -> None:
        """Per-class and YES/NO counts of a [batch, C] output (``yes``: boolean [batch, C] or None), on the
        row's grid as it is, after moving those rows onto it."""
        if self.xgrid is not None and self.grid is not None and self.xgrid != self.grid:
            self.truth = np.stack([regrid(r, self.xgrid, self.grid, self.bins) for r in self.truth])
            self.classes = np.array([regrid(r, self.xgrid, self.grid, self.bins) for r in self.classes],
                                    np.int64).reshape(self.classes.shape)
        self.xgrid = self.grid
        o = np.asarray(out, dtype=np.float64)
        if classes:
            for c in range(o.shape[1]):
                self.classes[c] += self._slots_row(o[:, c])
        if yes is not None:
            self.truth[0] += self._slots_row(o[yes])
            self.truth[1] += self._slots_row(o[~yes])


def add_stats(sums: np.ndarray, peaks: np.ndarray, v: np.ndarray, n_seen: int | None = None) -> None:
    """sums += [sum, sum of squares, non-zeros, binned, seen]; peaks = max(peaks, [-min, max]), NaN wins."""
    v = np.asarray(v, dtype=np.float64).ravel()
    with np.errstate(invalid="ignore", over="ignore"):
        sums += [v.sum(), (v * v).sum(), np.count_nonzero(v), v.size, v.size if n_seen is None else n_seen]
    if np.isnan(v).any() or np.isnan(peaks).any():
        peaks[:] = np.nan
    elif v.size:
        peaks[:] = np.maximum(peaks, [-v.min(), v.max()])
