"""Bin grids: the numpy reference of docs/grids.md (numpy only, no torch).

Design constraints:

* This module is the oracle. The C kernel (``twinpeaks._cbin``), the torch path
  (:mod:`twinpeaks.binning`) and any device kernel compute exactly what these
  functions compute; the tests compare them count for count.
* A slot row is ``[underflow, bin_0 .. bin_{B-1}, overflow, nonfinite]`` (``B + 3``).
* Two kinds of grid. **Fixed**: numpy's float64 ``linspace(lo, hi, B + 1)`` edges,
  binned as ``np.histogram(values, B, range=(lo, hi))`` bins (see :func:`fixed_edges`).
  **Auto**: an *aligned binary grid* ``(e, o)``: bin width ``2**e``, edge ``i`` at
  ``(o + i) * 2**e``; a finite value ``x`` goes to bin ``floor(x / 2**e) - o``,
  exact in float64 (see :func:`choose`). Auto grids hold every finite value of what
  was binned: no underflow or overflow.
* Combining auto histograms is exact: every bin of a finer aligned grid lies inside
  one bin of a coarser one, so counts move whole (:func:`regrid`, :func:`combine`).

A grid is a tuple ``(e, o)`` of Python ints, or ``None`` (unset: nothing finite binned).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

#: Slots after the bins: underflow (first), overflow, nonfinite.
EXTRA_SLOTS = 3
#: Smallest exponent: ``2**-E_MIN`` is a normal float64, so scaling by it is one exact multiplication.
E_MIN = -1022
#: Offsets stay below ``2**(RESOLUTION + 1)`` in magnitude: ``e >= floor(log2(max|x|)) - RESOLUTION``.
RESOLUTION = 40
#: Exponent for a row whose only finite value is 0: width 2**-6.
ZERO_E = -6

Grid = tuple[int, int]


def _floor_log2(x: float) -> int:
    """``floor(log2(x))`` for a finite ``x > 0``, exactly."""
    return math.frexp(x)[1] - 1


_MAX = float(np.finfo(np.float64).max)

def _ceil_log2(x: float) -> int:
    """``ceil(log2(x))`` for a finite ``x > 0``, exactly."""
    m, ex = math.frexp(x)
    return ex - 1 if m == 0.5 else ex


def _ldexp(x: float, e: int) -> float:
    """``x * 2**e``, clamped to the largest finite float64 past its range.

    Used for the edges of occupied bins: a bin at the very end of the float64 range can have an
    edge that overflows, and an infinite extent would never fit any grid (``math.ldexp`` raises there).
    """
    try:
        return math.ldexp(x, e)
    except OverflowError:
        return math.copysign(_MAX, x)


def bin_of(x: float, e: int) -> int:
    """``floor(x / 2**e)`` exactly, for a finite float ``x``.

    Example:
        >>> bin_of(0.0, -6), bin_of(-1e-300, 0), bin_of(1.5, 0), bin_of(-1.5, 0)
        (0, -1, 1, -2)
    """
    q = math.floor(math.ldexp(x, -e))
    return -1 if q == 0 and x < 0 else q  # a negative value that underflowed to -0.0


def fits(mn: float, mx: float, e: int, bins: int) -> bool:
    """Whether values from ``mn`` to ``mx`` span at most ``bins`` bins of width ``2**e``."""
    return bin_of(mx, e) - bin_of(mn, e) <= bins - 1


def fit_e(mn: float, mx: float, bins: int, floor_e: int = E_MIN) -> int:
    """The smallest ``e >= floor_e`` (and >= the resolution limit) over which ``[mn, mx]`` fits in ``bins`` bins.

    Example:
        >>> fit_e(0.0, 1.0, 100)  # width 1/64: 0 .. 64 is 65 bins
        -6
    """
    if bins < 2:
        raise ValueError(f"automatic grids need bins >= 2, got {bins}")
    big = max(abs(mn), abs(mx))
    lo = max(floor_e, E_MIN, _floor_log2(big) - RESOLUTION if big > 0 else E_MIN)
    span = mx * 0.5 - mn * 0.5  # no overflow; a guess only
    e = max(lo, _ceil_log2(span / bins) - 1) if span > 0 else lo
    while e > lo and fits(mn, mx, e - 1, bins):  # the guess may be one or two too high
        e -= 1
    while not fits(mn, mx, e, bins):
        e += 1
    return e


def choose(mn: float, mx: float, bins: int) -> Grid:
    """The grid of values with finite min ``mn`` and max ``mx`` (docs/grids.md).

    Example:
        >>> choose(0.0, 1.0, 100)
        (-6, 0)
        >>> choose(-3.0, 5.0, 100)  # width 1/8: -24 .. 40 is 65 bins
        (-3, -24)
        >>> choose(0.0, 0.0, 100), choose(2.0, 2.0, 100)
        ((-6, -50), (-6, 78))
    """
    if not (math.isfinite(mn) and math.isfinite(mx)) or mn > mx:
        raise ValueError(f"choose needs finite mn <= mx, got {mn!r}, {mx!r}")
    if mn == mx:
        e = ZERO_E if mn == 0 else max(E_MIN, _floor_log2(abs(mn)) - _ceil_log2(bins))
        return e, bin_of(mn, e) - bins // 2
    e = fit_e(mn, mx, bins)
    return e, bin_of(mn, e)


def edges_of(grid: Grid, bins: int) -> np.ndarray:
    """float64 edges ``(o + i) * 2**e``, ``i = 0..bins`` (exact).

    Example:
        >>> edges_of((-1, -2), 4).tolist()
        [-1.0, -0.5, 0.0, 0.5, 1.0]
    """
    e, o = grid
    with np.errstate(over="ignore"):  # a grid at the top of the float64 range: its last edges are inf
        return np.ldexp(np.arange(o, o + bins + 1, dtype=np.float64), e)


def fixed_edges(lo: float, hi: float, bins: int) -> np.ndarray:
    """numpy's float64 edges for a fixed range: the ones ``np.histogram(x, bins, range=(lo, hi))`` uses.

    Example:
        >>> fixed_edges(-1, 1, 4).tolist()
        [-1.0, -0.5, 0.0, 0.5, 1.0]
    """
    return np.linspace(float(lo), float(hi), bins + 1)


def slots_fixed(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Slot row (int64, ``B + 3``) of ``values`` (upcast to float64) on fixed edges, as numpy bins them."""
    v = np.asarray(values, dtype=np.float64).ravel()
    bins = len(edges) - 1
    finite = np.isfinite(v)
    f = v[finite]
    inside = np.histogram(f, bins=edges)[0] if f.size else np.zeros(bins, np.int64)
    return np.concatenate([[int((f < edges[0]).sum())], inside,
                           [int((f > edges[-1]).sum()), int((~finite).sum())]]).astype(np.int64)


def observe(row: np.ndarray, grid: Grid | None, values: np.ndarray) -> Grid | None:
    """Add ``values`` (upcast to float64) into an auto slot row in place; return the row's new grid.

    The row's grid is coarsened (:func:`coarsen`) to hold the call's finite values,
    and the row regridded, before the values are binned.

    Example:
        >>> row = np.zeros(4 + 3, np.int64)
        >>> g = observe(row, None, np.array([0.0, 1.0, 3.0]))
        >>> g, row.tolist()
        ((0, 0), [0, 1, 1, 0, 1, 0, 0])
        >>> g = observe(row, g, np.array([-4.0, np.nan]))
        >>> g, row.tolist()
        ((1, -2), [0, 1, 0, 2, 1, 0, 1])
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    bins = len(row) - EXTRA_SLOTS
    finite = np.isfinite(v)
    f = v[finite]
    row[-1] += int((~finite).sum())
    if not f.size:
        return grid
    new = coarsen(grid, occupied(row, grid), float(f.min()), float(f.max()), bins)
    if grid is not None and new != grid:
        row[1:-2] = regrid(row[1:-2], grid, new)
    e, o = new
    idx = np.floor(np.ldexp(f, -e))
    idx[(idx == 0) & (f < 0)] = -1  # negative values that underflowed
    row[1:-2] += np.bincount((idx - o).astype(np.int64), minlength=bins)
    return new


def occupied(row: np.ndarray, grid: Grid | None) -> tuple[int, int] | None:
    """First and last occupied bin (absolute bin numbers) of a slot row, or of a stack of rows; None if none.

    Example:
        >>> occupied(np.array([0, 0, 2, 0, 1, 0, 0, 0]), (0, 10))
        (11, 13)
    """
    if grid is None:
        return None
    r = np.asarray(row)[..., 1:-2]
    occ = np.flatnonzero(r.reshape(-1, r.shape[-1]).any(axis=0))
    return (grid[1] + int(occ[0]), grid[1] + int(occ[-1])) if occ.size else None


def coarsen(grid: Grid | None, extent: tuple[int, int] | None, mn: float, mx: float, bins: int) -> Grid:
    """A row's grid after a call with finite min ``mn`` and max ``mx`` (docs/grids.md).

    ``extent`` is the row's first and last occupied bin (:func:`occupied`). If the
    call's values lie inside the row's grid, the grid stays; otherwise the new
    grid is the smallest ``e' >=`` the row's ``e`` and the call's own
    (:func:`choose`) over which the occupied bins and the call's values fit, with
    ``o'`` the lowest of them.

    Example:
        >>> coarsen((0, 0), (0, 3), 1.0, 2.0, 4)  # inside: unchanged
        (0, 0)
        >>> coarsen((0, 0), (0, 3), -4.0, -4.0, 4)
        (1, -2)
    """
    call = choose(mn, mx, bins)
    if grid is None or extent is None:
        return call
    e, o = grid
    if mn >= _ldexp(o, e) and mx < _ldexp(o + bins, e):  # inside the grid's edges
        return grid
    amin = min(_ldexp(extent[0], e), mn)
    amax = max(_ldexp(extent[1], e), mx)
    e2 = max(e, call[0], fit_e(amin, amax, bins))
    return e2, bin_of(amin, e2)


def regrid(counts: np.ndarray, old: Grid, new: Grid) -> np.ndarray:
    """Move ``B`` bin counts from grid ``old`` to a coarser-or-equal aligned grid ``new`` (exact).

    Old bin ``i`` goes to new bin ``floor((o + i) / 2**(e' - e)) - o'``; every
    occupied old bin must land inside the new grid.

    Example:
        >>> regrid(np.array([1, 2, 3, 4]), (0, 0), (1, -2)).tolist()
        [0, 0, 3, 7]
    """
    c = np.asarray(counts)
    (e, o), (e2, o2) = old, new
    if e2 < e:
        raise ValueError(f"regrid goes to a coarser grid only: {old} -> {new}")
    bins = c.shape[-1]
    k = e2 - e
    src = np.arange(o, o + bins, dtype=np.int64)
    dst = (src >> k if k < 63 else np.where(src < 0, -1, 0)) - o2
    occ = np.any(c != 0, axis=tuple(range(c.ndim - 1))) if c.ndim > 1 else c != 0
    if np.any((dst[occ] < 0) | (dst[occ] >= bins)):
        raise ValueError(f"regrid {old} -> {new} leaves occupied bins outside the new grid")
    keep = (dst >= 0) & (dst < bins)
    flat = c.reshape(-1, bins)
    out = np.zeros_like(flat)
    for r in range(len(flat)):
        out[r] = np.bincount(dst[keep], weights=flat[r, keep], minlength=bins)
    return out.reshape(c.shape)


def common_grid(grids: Sequence[Grid | None], extents: Sequence[tuple[int, int] | None], bins: int) -> Grid | None:
    """The grid that a set of auto histograms combine on (docs/grids.md).

    If every non-empty member has the same grid, that grid; otherwise the
    smallest ``e`` >= every member's ``e`` over which the union of their
    occupied bins fits, and ``o`` the lowest occupied bin on it. None when no
    member holds a finite value.

    Example:
        >>> common_grid([(0, 0), (1, -2)], [(0, 3), (-2, -2)], 4)
        (1, -2)
    """
    live = [(g, x) for g, x in zip(grids, extents) if g is not None and x is not None]
    if not live:
        return None
    if all(g == live[0][0] for g, _ in live):
        return live[0][0]
    e_max = max(g[0] for g, _ in live)
    amin = min(_ldexp(x[0], g[0]) for g, x in live)
    amax = max(_ldexp(x[1], g[0]) for g, x in live)
    e = max(e_max, fit_e(amin, amax, bins))
    return e, bin_of(amin, e)


def combine(rows: Sequence[np.ndarray] | np.ndarray, grids: Sequence[Grid | None] | np.ndarray
            ) -> tuple[np.ndarray, Grid | None]:
    """Sum slot rows (``[..., B + 3]``, e.g. per-class rows) counted on different auto grids, exactly.

    The grid is :func:`common_grid`'s; every row's bins move onto it (:func:`regrid`)
    and add; underflow, overflow and nonfinite slots add as they are. Vectorised over
    the rows (one ``bincount``), as epoch totals combine hundreds of them.

    Example:
        >>> a = np.array([0, 1, 2, 3, 4, 0, 0]); b = np.array([0, 0, 0, 0, 1, 0, 2])
        >>> row, g = combine([a, b], [(0, 0), (1, -2)])
        >>> g, row.tolist()
        ((1, 0), [0, 3, 8, 0, 0, 0, 2])
    """
    if not len(rows):
        raise ValueError("combine needs at least one row")
    stack: np.ndarray = rows if isinstance(rows, np.ndarray) else np.stack([np.asarray(r) for r in rows])
    n, bins = len(stack), stack.shape[-1] - EXTRA_SLOTS  # stack: [n, ..., B + 3]
    out: np.ndarray = stack.sum(axis=0)
    body: np.ndarray = stack[..., 1:-2].reshape(n, -1, bins)  # [n, m, B]
    occ: np.ndarray = np.asarray(body.any(axis=1))  # [n, B]
    if isinstance(grids, np.ndarray):  # [n, 2] int64: every row has a grid (one without finite counts: any)
        g, live = grids.astype(np.int64, copy=False), occ.any(axis=1)
    else:
        live = occ.any(axis=1) & np.array([gr is not None for gr in grids])
        g = np.array([gr if gr is not None else (0, 0) for gr in grids], dtype=np.int64)
    if not live.any():
        return out, None
    g = g[live]
    occ, body = occ[live], body[live]
    first = occ.argmax(axis=1)
    last = bins - 1 - occ[:, ::-1].argmax(axis=1)
    if (g == g[0]).all():
        common = (int(g[0, 0]), int(g[0, 1]))
    else:
        with np.errstate(over="ignore"):
            with np.errstate(over="ignore"):  # an edge past the float64 range counts as its largest finite value
                amin = float(np.clip(np.ldexp((g[:, 1] + first).astype(np.float64), g[:, 0]), -_MAX, _MAX).min())
                amax = float(np.clip(np.ldexp((g[:, 1] + last).astype(np.float64), g[:, 0]), -_MAX, _MAX).max())
        e = max(int(g[:, 0].max()), fit_e(amin, amax, bins))
        common = (e, bin_of(amin, e))
    out[..., 1:-2] = _moved(body, occ, g, common).reshape(out[..., 1:-2].shape)
    return out, common


def _moved(body: np.ndarray, occ: np.ndarray, g: np.ndarray, target: Grid) -> np.ndarray:
    """Bins ``body`` ``[n, m, B]`` on grids ``g`` ``[n, 2]`` (occupied bins ``occ`` ``[n, B]``) summed onto ``target``."""
    n, m, bins = body.shape
    k = target[0] - g[:, 0]
    if (k < 0).any():
        raise ValueError(f"regrid goes to a coarser grid only: {g[k < 0][0].tolist()} -> {target}")
    src = g[:, 1:2] + np.arange(bins)
    dst = np.where(k[:, None] < 63, src >> np.minimum(k, 62)[:, None], np.where(src < 0, -1, 0)) - target[1]
    inside = (dst >= 0) & (dst < bins)
    if (occ & ~inside).any():
        raise ValueError(f"occupied bins fall outside the grid {target} they are moved onto")
    idx = np.where(inside, dst, 0)[:, None, :] + (np.arange(m) * bins)[None, :, None]  # [n, m, B]
    weights = np.where(inside[:, None, :], body, 0).astype(np.float64)
    moved = np.bincount(idx.ravel(), weights=weights.ravel(), minlength=m * bins)
    return np.rint(moved).astype(np.int64).reshape(m, bins)


def sum_onto(rows: np.ndarray, grids: np.ndarray, target: Grid | None) -> np.ndarray:
    """Rows ``[n, ..., B + 3]`` on grids ``[n, 2]`` summed onto one ``target`` grid that holds them all (exact).

    Per-class and truth rows go onto their summary's grid this way. Rows without a
    finite count may hold any grid; with ``target`` None there must be none with one.
    """
    stack: np.ndarray = np.asarray(rows)
    n, bins = len(stack), stack.shape[-1] - EXTRA_SLOTS
    out: np.ndarray = stack.sum(axis=0)
    body: np.ndarray = stack[..., 1:-2].reshape(n, -1, bins)
    occ: np.ndarray = np.asarray(body.any(axis=1))
    live: np.ndarray = np.asarray(occ.any(axis=1))
    if not live.any():
        return out
    if target is None:
        raise ValueError("sum_onto: rows with finite counts need a target grid")
    out[..., 1:-2] = _moved(body[live], occ[live], np.asarray(grids, np.int64)[live], target).reshape(
        out[..., 1:-2].shape)
    return out


def host_grid(grid: np.ndarray) -> Grid | None:
    """A stored ``[e, o]`` row (int64, or float64 with ``e`` NaN when unset) as a grid tuple, or None."""
    e, o = grid[0], grid[1]
    if isinstance(e, (float, np.floating)) and math.isnan(e):
        return None
    return int(e), int(o)


def merge_groups(counts: np.ndarray, grid: np.ndarray, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Combine consecutive rows by group starts (as ``np.add.reduceat`` takes them), each group on its common grid.

    ``counts`` is ``[n, ..., B + 3]``, ``grid`` ``[n, 2]`` int64 ``(e, o)`` (a row with
    no finite count may hold any grid). Returns ``[k, ..., B + 3]`` and ``[k, 2]``.
    Groups whose rows share one grid are plain sums (the common case: one step's
    rows of a layer that keeps its range).

    Example:
        >>> c = np.array([[0, 1, 2, 3, 4, 0, 0], [0, 0, 0, 0, 1, 0, 2]])
        >>> m, g = merge_groups(c, np.array([[0, 0], [1, -2]]), np.array([0]))
        >>> g.tolist(), m.tolist()
        ([[1, 0]], [[0, 3, 8, 0, 0, 0, 2]])
    """
    n = len(counts)
    starts = np.asarray(starts, dtype=np.int64)
    ends = np.append(starts[1:], n)
    out = np.add.reduceat(counts, starts, axis=0) if n else counts[:0].copy()
    out_grid = grid[starts].copy() if n else grid[:0].copy()
    if not n:
        return out, out_grid
    differs = (grid != grid[np.repeat(starts, ends - starts)]).any(axis=1)  # a row off its group's first grid
    mixed = np.flatnonzero(np.logical_or.reduceat(differs, starts)) if differs.any() else ()
    for k in mixed:  # only groups of rows on different grids need regridding
        a, b = starts[k], ends[k]
        row, common = combine(list(counts[a:b]), [(int(e), int(o)) for e, o in grid[a:b]])
        out[k] = row
        out_grid[k] = common if common is not None else (0, 0)
    return out, out_grid
