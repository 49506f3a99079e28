"""The numpy reference of docs/grids.md that the Triton kernel's checks compare with (issue #18).

``twinpeaks.grids`` (issue #13) is the project's reference: when this checkout has it, its
``choose``, ``coarsen``, ``occupied`` and ``regrid`` are used. Otherwise the same rules written
here, independently of the kernels: exponents by exact rational arithmetic (``fractions``),
counts by ``np.histogram`` against the float64 edges, regrids bin by bin with Python's floor shifts.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

try:  # issue #13's reference, when this checkout has it
    from twinpeaks import grids as _grids
except ImportError:
    _grids = None  # type: ignore[assignment]

E_MIN = -1022
RESOLUTION = 40
ZERO_E = -6


def bin_of(x: float, e: int) -> int:
    """floor(x / 2**e), exactly."""
    return math.floor(Fraction(x) / Fraction(2) ** e)


def _ilogb(x: float) -> int:
    return math.frexp(abs(x))[1] - 1


def _ceil_log2(n: int) -> int:
    return (n - 1).bit_length()


def fits(mn: float, mx: float, e: int, bins: int) -> bool:
    return bin_of(mx, e) - bin_of(mn, e) <= bins - 1


def fit_e(mn: float, mx: float, bins: int) -> int:
    """The smallest e >= max(E_MIN, floor(log2(max|x|)) - 40) over which [mn, mx] fits in ``bins`` bins."""
    big = max(abs(mn), abs(mx))
    lo = max(E_MIN, _ilogb(big) - RESOLUTION if big > 0 else E_MIN)
    e = lo
    if mx > mn:
        e = max(lo, _ilogb(mx - mn) - _ceil_log2(bins) - 2)
        while e > lo and fits(mn, mx, e - 1, bins):
            e -= 1
    while not fits(mn, mx, e, bins):
        e += 1
    return e


def choose(mn: float, mx: float, bins: int) -> tuple[int, int]:
    """The grid ``(e, o)`` of finite values in [mn, mx] (docs/grids.md, "Choosing a grid")."""
    if _grids is not None:
        return _grids.choose(mn, mx, bins)
    if mn == mx:
        e = ZERO_E if mn == 0 else max(E_MIN, _ilogb(mn) - _ceil_log2(bins))
        return e, bin_of(mn, e) - bins // 2
    e = fit_e(mn, mx, bins)
    return e, bin_of(mn, e)


def occupied(row: np.ndarray, grid: tuple[int, int] | None) -> tuple[int, int] | None:
    """First and last non-empty bin of a slot row, as absolute bin numbers on its grid."""
    if _grids is not None:
        return _grids.occupied(row, grid)
    if grid is None:
        return None
    occ = np.flatnonzero(np.asarray(row)[1:-2])
    return (grid[1] + int(occ[0]), grid[1] + int(occ[-1])) if occ.size else None


def coarsen(grid: tuple[int, int] | None, extent: tuple[int, int] | None, mn: float, mx: float,
            bins: int) -> tuple[int, int]:
    """The row's grid after a call with finite min ``mn`` and max ``mx`` (docs/grids.md)."""
    if _grids is not None:
        return _grids.coarsen(grid, extent, mn, mx, bins)
    call = choose(mn, mx, bins)
    if grid is None or extent is None:
        return call
    e, o = grid
    w = Fraction(2) ** e
    if Fraction(mn) >= o * w and Fraction(mx) < (o + bins) * w:
        return grid
    amin = min(Fraction(extent[0]) * w, Fraction(mn))
    amax = max(Fraction(extent[1]) * w, Fraction(mx))
    fa, fb = float(amin), float(amax)  # bin edges and values: exact in float64
    e2 = max(e, call[0], fit_e(fa, fb, bins))
    return e2, bin_of(fa, e2)


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
