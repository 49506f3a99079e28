"""Per-step histogram columns in bounded memory.

A :class:`ColumnStack` keeps, for a stack of layers that record the same steps
(lanes), one column per recorded step until it holds more than ``cap`` columns, then merges adjacent columns (histograms add, sums add,
minima and maxima combine), so memory is ``O(cap x slots)`` however long the
run. Every field is additive or a min/max, so merging is exact: nothing is
approximated, only time resolution is traded.

Columns record the steps they cover (``start``, ``end`` exclusive). Rows
appended together (one flush) never share a column with earlier rows, so a
column's data is final once written, until the next merge rewrites them all.

Columns stay of even width for any run length and any flush size: every
column lies inside one aligned bucket ``[origin + k * width, origin + (k + 1)
* width)`` of the store's first step ``origin``. A merge first joins the
columns of each bucket (small flushes leave several per bucket); only when
more than 3/4 of ``cap`` buckets are occupied does ``width`` double (so a
merge always frees a quarter of the store). So ``width`` stays below
``2 * steps / (cap - cap // 4)`` (it cannot overflow, and with ``cap >= 8``
the first column holds at most a third of the run) and a merged bucket is
one column of exactly ``width`` steps.

With automatic ranges every column also keeps its grid ``(e, o)`` (docs/grids.md):
merged columns are regridded onto their common grid before adding, which is
exact (:func:`twinpeaks.grids.merge_groups`).
"""

from __future__ import annotations

import numpy as np

from . import grids as _grids
from .format import ADDITIVE, MAX, MIN, STATS, combine_stats, empty_stats

__all__ = ["STATS", "ColumnStack", "combine_stats", "empty_stats", "merge_lanes", "merge_stats"]


def _merge_groups(arr: np.ndarray, groups: np.ndarray, how: str) -> np.ndarray:
    if how == "add":
        return np.add.reduceat(arr, groups, axis=0)
    if how == "min":
        return np.minimum.reduceat(arr, groups, axis=0)
    return np.maximum.reduceat(arr, groups, axis=0)


def merge_stats(stats: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Merge stats rows by group starts (as ``np.add.reduceat`` takes them)."""
    out = np.empty((len(groups), stats.shape[1]), dtype=np.float64)
    out[:, ADDITIVE] = _merge_groups(stats[:, ADDITIVE], groups, "add")
    out[:, MIN] = _merge_groups(stats[:, MIN], groups, "min")
    out[:, MAX] = _merge_groups(stats[:, MAX], groups, "max")
    return out


def _add_groups(a: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """``np.add.reduceat(a, groups, axis=1)`` of integer counts (exact in any order), by adding whole strided
    slices: a few times faster than ``reduceat`` over many short groups (a merge joins pairs)."""
    n, k = a.shape[1], len(groups)
    lengths = np.append(groups[1:], n) - groups
    m = int(lengths.max())
    if m == 1:
        return a[:, groups]
    if groups[0] == 0 and (lengths[:-1] == m).all():  # groups of m rows from row 0 (the last may be shorter): slices
        out = a[:, ::m].copy()
        for j in range(1, m):
            part = a[:, j::m]
            out[:, :part.shape[1]] += part
        return out
    out = a[:, groups]
    for j in range(1, m):
        longer = np.flatnonzero(lengths > j)
        if len(longer) == k:
            out += a[:, groups + j]
        else:
            out[:, longer] += a[:, groups[longer] + j]
    return out


def merge_lanes(counts: np.ndarray, stats: np.ndarray, grid: np.ndarray | None, groups: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Rows of ``L`` lanes (``[L, n, ...]``, stats ``[L, n, 7]``, grids ``[L, n, 2]``) merged by the same group
    starts in every lane: ``[L, k, ...]``, each lane exactly as a store of that lane alone merges it
    (tests/recording/column_reference.py; the same ``reduceat`` sums, along the rows of every lane; a group of rows on different grids through
    :func:`twinpeaks.grids.combine`, as :func:`twinpeaks.grids.merge_groups` does)."""
    groups = np.asarray(groups, dtype=np.int64)
    out = _add_groups(counts, groups)
    merged = np.empty((*stats.shape[:1], len(groups), stats.shape[2]), dtype=np.float64)
    merged[..., ADDITIVE] = np.add.reduceat(stats[..., ADDITIVE], groups, axis=1)
    merged[..., MIN] = np.minimum.reduceat(stats[..., MIN], groups, axis=1)
    merged[..., MAX] = np.maximum.reduceat(stats[..., MAX], groups, axis=1)
    if grid is None:
        return out, merged, None
    n = counts.shape[1]
    ends = np.append(groups[1:], n)
    out_grid = grid[:, groups]
    differs = (grid != grid[:, np.repeat(groups, ends - groups)]).any(axis=-1)  # [L, n]: off its group's first
    if differs.any():
        for lane, k in zip(*np.nonzero(np.logical_or.reduceat(differs, groups, axis=1))):
            a, b = groups[k], ends[k]
            row, common = _grids.combine(list(counts[lane, a:b]), [(int(e), int(o)) for e, o in grid[lane, a:b]])
            out[lane, k] = row
            out_grid[lane, k] = common if common is not None else (0, 0)
    return out, merged, out_grid


class ColumnStack:
    """The columns of ``lanes`` layers that record the same steps: one column store per lane, in one array.

    The steps (and so the buckets, the width and every merge) depend only on the steps appended, never on the
    values, so the lanes share them; every lane holds exactly what a per-layer store fed its rows holds (tests/recording/column_reference.py). The
    writer keeps the layers of a model that record the same windows in one stack: a window's host work is a few
    numpy operations for all of them, not a few per layer.

    Example:
        >>> s = ColumnStack(2, cap=2, shape=(3,))
        >>> s.append(0, np.ones((2, 3, 3), np.int64), np.zeros((2, 3, 7)))
        >>> s.steps.tolist(), s.counts.sum(axis=2).tolist()
        ([[0, 2], [2, 3]], [[6, 3], [6, 3]])
    """

    def __init__(self, lanes: int, cap: int, shape: tuple[int, ...], gridded: bool = False):
        if cap < 2:
            raise ValueError(f"max_columns must be at least 2, got {cap}")
        self.lanes, self.cap, self.shape = lanes, cap, shape
        self.width = 1
        self.origin = 0
        self._origin_set = False
        self._n = 0
        self._steps = np.zeros((0, 2), dtype=np.int64)
        self._counts = np.zeros((lanes, 0, *shape), dtype=np.int64)
        self._stats = np.zeros((lanes, 0, len(STATS)), dtype=np.float64)
        self._grid = np.zeros((lanes, 0, 2), dtype=np.int64) if gridded else None

    @property
    def gridded(self) -> bool:
        return self._grid is not None

    @property
    def steps(self) -> np.ndarray:
        """``[n, 2]``: the columns' first and end steps (every lane's)."""
        return self._steps[:self._n]

    @property
    def counts(self) -> np.ndarray:
        """``[lanes, n, *shape]`` int64."""
        return self._counts[:, :self._n]

    @property
    def stats(self) -> np.ndarray:
        """``[lanes, n, 7]`` float64."""
        return self._stats[:, :self._n]

    @property
    def grid(self) -> np.ndarray | None:
        """``[lanes, n, 2]`` int64, or None (fixed ranges)."""
        return None if self._grid is None else self._grid[:, :self._n]

    def __len__(self) -> int:
        return self._n

    @property
    def nbytes(self) -> int:
        """Bytes of the buffers held."""
        return sum(a.nbytes for a in (self._steps, self._counts, self._stats, self._grid) if a is not None)

    def clear(self) -> None:
        """Drop every column (the bucket state too: the next append starts a new origin)."""
        self.width = 1
        self._origin_set = False
        self._n = 0

    @classmethod
    def restore(cls, lanes: int, cap: int, shape: tuple[int, ...], gridded: bool, width: int, origin: int,
                columns: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None] | None = None) -> ColumnStack:
        """A stack in a known state (columns ``[lanes, n, ...]``, steps ``[n, 2]``)."""
        stack = cls(lanes, cap, shape, gridded)
        stack.width, stack.origin, stack._origin_set = int(width), int(origin), True
        if columns is not None and len(columns[0]):
            steps, counts, stats, grid = columns
            n = len(steps)
            stack._steps, stack._counts, stack._stats = steps.copy(), counts, stats
            if gridded:
                if grid is None:
                    raise ValueError("a gridded store takes columns with grids")
                stack._grid = grid
            stack._n = n
        return stack

    def select(self, lanes: list[int] | np.ndarray) -> ColumnStack:
        """A new stack of some of the lanes (copies), in the same state."""
        out = ColumnStack(len(lanes), self.cap, self.shape, self._grid is not None)
        out.width, out.origin, out._origin_set, out._n = self.width, self.origin, self._origin_set, self._n
        out._steps = self._steps.copy()
        out._counts, out._stats = self._counts[lanes], self._stats[lanes]
        if self._grid is not None:
            out._grid = self._grid[lanes]
        return out

    def _reserve(self, extra: int) -> None:
        need = self._n + extra
        if need <= self._steps.shape[0]:
            return
        size = max(need, min(2 * self._steps.shape[0], self.cap + extra), 16)  # geometric growth, bounded by cap
        steps = np.empty((size, 2), dtype=np.int64)
        steps[:self._n] = self._steps[:self._n]
        self._steps = steps
        for name in ("_counts", "_stats", "_grid"):
            old = getattr(self, name)
            if old is None:
                continue
            new = np.empty((old.shape[0], size, *old.shape[2:]), dtype=old.dtype)
            new[:, :self._n] = old[:, :self._n]
            setattr(self, name, new)

    def append(self, start: int, counts: np.ndarray, stats: np.ndarray, grid: np.ndarray | None = None) -> None:
        """Append every lane's rows (``[lanes, n, ...]``) of the steps from ``start`` (one column per bucket the rows touch; merged past ``cap``)."""
        n = counts.shape[1]
        if n == 0:
            return
        first = np.arange(start, start + n, dtype=np.int64)
        self.append_columns(np.stack([first, first + 1], axis=1), counts, stats, grid)

    def append_columns(self, steps: np.ndarray, counts: np.ndarray, stats: np.ndarray,
                       grid: np.ndarray | None = None) -> None:
        """Append every lane's consecutive columns (``[lanes, n, ...]`` covering ``steps [n, 2]``, each inside one
        bucket of this store's width or a finer one, as a store of the same origin made them): joined by bucket,
        as :meth:`append` joins rows (one column per bucket they touch; merged past ``cap``).

        Columns of single steps are rows: ``append_columns`` of them is :meth:`append`. A store that appended
        columns past ``cap`` without merging them (a writer that defers its merges) replays them here, window by
        window, and ends as a store that merged at once (the same columns; the same sums, added in another order
        where columns of several steps join).
        """
        n = counts.shape[1]
        if n == 0:
            return
        if (grid is None) != (self._grid is None):
            raise ValueError("a gridded store takes rows with grids, a fixed one without")
        if not self._origin_set:
            self.origin = int(steps[0, 0])
            self._origin_set = True
        bucket = (steps[:, 0] - self.origin) // self.width
        if self.width > 1 or (steps[:, 1] - steps[:, 0] != 1).any():
            groups = np.flatnonzero(np.diff(bucket, prepend=bucket[0] - 1))
            if len(groups) < n:
                counts, stats, grid = merge_lanes(counts, stats, grid, groups)
        else:
            groups = np.arange(n)
        ends = np.append(groups[1:], n) - 1
        k = len(groups)
        self._reserve(k)
        at = slice(self._n, self._n + k)
        self._steps[at, 0] = steps[groups, 0]
        self._steps[at, 1] = steps[ends, 1]
        self._counts[:, at] = counts
        self._stats[:, at] = stats
        if self._grid is not None and grid is not None:
            self._grid[:, at] = grid
        self._n += k
        while self._n > self.cap:
            self._halve()

    def _halve(self) -> None:
        n = self._n
        bucket = (self._steps[:n, 0] - self.origin) // self.width
        if len(np.unique(bucket)) > self.cap - self.cap // 4:
            self.width *= 2
            bucket //= 2
        groups = np.flatnonzero(np.diff(bucket, prepend=bucket[0] - 1))
        counts, stats, grid = merge_lanes(self.counts, self.stats, self.grid, groups)
        ends = np.append(groups[1:], n) - 1
        steps = np.stack([self._steps[groups, 0], self._steps[ends, 1]], axis=1)
        k = len(groups)
        self._steps[:k] = steps
        self._counts[:, :k], self._stats[:, :k] = counts, stats
        if self._grid is not None and grid is not None:
            self._grid[:, :k] = grid
        self._n = k
