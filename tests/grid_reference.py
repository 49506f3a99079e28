"""A numpy / exact-integer reference of docs/grids.md, written for the kernel tests (issue #18).

Written independently of the kernels: grids by exact rational arithmetic (``fractions``), counts by
``np.histogram`` against the float64 edges, regrids bin by bin with Python's floor shifts.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np


def floor_pow2(x: float, e: int) -> int:
    """floor(x / 2**e), exactly."""
    return math.floor(Fraction(x) / Fraction(2) ** e)


def _ilogb(x: float) -> int:
    return math.frexp(abs(x))[1] - 1


def fits(mn: float, mx: float, e: int, bins: int) -> bool:
    return floor_pow2(mx, e) - floor_pow2(mn, e) <= bins - 1


def choose(mn: float, mx: float, bins: int) -> tuple[int, int]:
    """The grid ``(e, o)`` of finite values in [mn, mx] (docs/grids.md, "Choosing a grid")."""
    if mn == mx:
        if mn == 0:
            return -6, -(bins // 2)
        e = _ilogb(mn) - math.ceil(math.log2(bins))
        return e, floor_pow2(mn, e) - bins // 2
    e = _ilogb(mx - mn) - math.ceil(math.log2(bins)) - 2
    while not fits(mn, mx, e, bins):
        e += 1
    e = max(e, _ilogb(max(abs(mn), abs(mx))) - 40)
    return e, floor_pow2(mn, e)


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
    """One step row with an auto grid, the per-class and YES/NO rows that share it, and its statistics."""

    def __init__(self, bins: int, classes: int = 0):
        self.bins = bins
        s = bins + 3
        self.counts = np.zeros(s, np.int64)
        self.truth = np.zeros((2, s), np.int64)
        self.classes = np.zeros((classes, s), np.int64)
        self.grid: tuple[int, int] | None = None
        self.mn, self.mx = math.inf, -math.inf
        self.sums = np.zeros(5)
        self.peaks = np.array([-math.inf, -math.inf])

    def _coarsen(self, v: np.ndarray) -> None:
        fin = v[np.isfinite(v)]
        if not fin.size:
            return
        mn, mx = min(self.mn, float(fin.min())), max(self.mx, float(fin.max()))
        if self.grid is None:
            new = choose(mn, mx, self.bins)
        else:
            e = max(self.grid[0], choose(mn, mx, self.bins)[0])
            new = (e, floor_pow2(mn, e))
            if new != self.grid:
                self.counts = regrid(self.counts, self.grid, new, self.bins)
                self.truth = np.stack([regrid(r, self.grid, new, self.bins) for r in self.truth])
                self.classes = np.array([regrid(r, self.grid, new, self.bins) for r in self.classes],
                                        np.int64).reshape(self.classes.shape)
        self.grid, self.mn, self.mx = new, mn, mx

    def edges(self) -> np.ndarray:
        assert self.grid is not None
        return grid_edges(*self.grid, self.bins)

    def observe(self, values: np.ndarray, n_seen: int | None = None) -> None:
        """Add a call (the values binned: all, or the sample)."""
        v = np.asarray(values, dtype=np.float64).ravel()
        self._coarsen(v)
        self.counts += slot_row(v, self.edges()) if self.grid else _nonfinite_row(v, self.bins)
        add_stats(self.sums, self.peaks, v, n_seen)

    def observe_extras(self, out: np.ndarray, yes: np.ndarray | None, classes: bool) -> None:
        """Per-class and YES/NO counts of a [batch, C] output (``yes``: boolean [batch, C] or None)."""
        o = np.asarray(out, dtype=np.float64)
        self._coarsen(o.ravel())
        edges = self.edges() if self.grid else None
        row = (lambda v: slot_row(v, edges)) if edges is not None else (lambda v: _nonfinite_row(v, self.bins))
        if classes:
            for c in range(o.shape[1]):
                self.classes[c] += row(o[:, c])
        if yes is not None:
            self.truth[0] += row(o[yes])
            self.truth[1] += row(o[~yes])


def _nonfinite_row(v: np.ndarray, bins: int) -> np.ndarray:
    r = np.zeros(bins + 3, np.int64)
    r[-1] = v.size
    return r


def add_stats(sums: np.ndarray, peaks: np.ndarray, v: np.ndarray, n_seen: int | None = None) -> None:
    """sums += [sum, sum of squares, non-zeros, binned, seen]; peaks = max(peaks, [-min, max]), NaN wins."""
    v = np.asarray(v, dtype=np.float64).ravel()
    with np.errstate(invalid="ignore"):
        sums += [v.sum(), (v * v).sum(), np.count_nonzero(v), v.size, v.size if n_seen is None else n_seen]
    if np.isnan(v).any() or np.isnan(peaks).any():
        peaks[:] = np.nan
    elif v.size:
        peaks[:] = np.maximum(peaks, [-v.min(), v.max()])
