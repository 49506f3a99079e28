"""The per-layer column store, as the run's columns were kept before the writer worked on stacks of layers.

A reference for the tests (one layer at a time, ``np.add.reduceat`` and the grids' own merge):
:class:`twinpeaks.columns.ColumnStack` and the writer's ``FileStack`` must give the same columns, lane by
lane, bit for bit.
"""

from __future__ import annotations

import numpy as np

from twinpeaks import grids as _grids
from twinpeaks.columns import merge_stats
from twinpeaks.format import combine_stats, empty_stats


class ColumnStore:
    """Columns of slot counts (any trailing shape) and stats, at most ``cap`` of them.

    Example:
        >>> s = ColumnStore(cap=2, shape=(3,))
        >>> s.append(0, np.ones((3, 3), np.int64), np.zeros((3, 7)))
        >>> s.steps.tolist(), s.counts.sum(axis=1).tolist()
        ([[0, 2], [2, 3]], [6, 3])
    """

    def __init__(self, cap: int, shape: tuple[int, ...], gridded: bool = False):
        if cap < 2:
            raise ValueError(f"max_columns must be at least 2, got {cap}")
        self.cap = cap
        self.width = 1  # steps per bucket: every column lies inside one bucket
        self.origin = 0  # first step of the first bucket (the first step appended)
        self._origin_set = False
        # buffers with spare rows, grown geometrically: an append copies only the new rows
        self._n = 0
        self._steps = np.zeros((0, 2), dtype=np.int64)
        self._counts = np.zeros((0, *shape), dtype=np.int64)
        self._stats = empty_stats(0)
        self._grid = np.zeros((0, 2), dtype=np.int64) if gridded else None

    @property
    def steps(self) -> np.ndarray:
        """``[n, 2]`` int64: first step and end step (exclusive) of every column."""
        return self._steps[:self._n]

    @property
    def counts(self) -> np.ndarray:
        """``[n, *shape]`` int64 slot counts of every column."""
        return self._counts[:self._n]

    @property
    def stats(self) -> np.ndarray:
        """``[n, 7]`` float64 stats (:data:`STATS`) of every column."""
        return self._stats[:self._n]

    @property
    def grid(self) -> np.ndarray | None:
        """``[n, 2]`` int64 grid ``(e, o)`` of every column (automatic ranges), or None (a fixed range)."""
        return None if self._grid is None else self._grid[:self._n]

    def __len__(self) -> int:
        return self._n

    def clear(self) -> None:
        """Drop every column and start again at one step per column (an epoch store at epoch end)."""
        self.width = 1
        self._origin_set = False
        self._n = 0

    @classmethod
    def restore(cls, cap: int, shape: tuple[int, ...], gridded: bool, width: int, origin: int,
                columns: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None] | None = None) -> ColumnStore:
        """A store in a known state: bucket ``width`` and ``origin``, and ``columns`` ``(steps, counts, stats, grid)``
        (e.g. read back from a run file; None: no column yet, the next rows still fall in the buckets of ``origin``).

        Example:
            >>> s = ColumnStore.restore(4, (3,), False, width=2, origin=0)
            >>> s.append(3, np.ones((3, 3), np.int64), np.zeros((3, 7)))
            >>> s.steps.tolist()
            [[3, 4], [4, 6]]
        """
        store = cls(cap, shape, gridded)
        store.width, store.origin, store._origin_set = int(width), int(origin), True
        if columns is not None and len(columns[0]):
            steps, counts, stats, grid = columns
            store._reserve(len(steps))
            n = store._n = len(steps)
            store._steps[:n], store._counts[:n], store._stats[:n] = steps, counts, stats
            if store._grid is not None:
                if grid is None:
                    raise ValueError("a gridded store takes columns with grids")
                store._grid[:n] = grid
        return store

    def _reserve(self, extra: int) -> None:
        need = self._n + extra
        if need <= len(self._steps):
            return
        # geometric growth, but never past what a full store plus this append needs
        size = max(need, min(2 * len(self._steps), self.cap + extra), 16)
        for name in ("_steps", "_counts", "_stats", "_grid"):
            old = getattr(self, name)
            if old is None:
                continue
            new = np.empty((size, *old.shape[1:]), dtype=old.dtype)
            new[:self._n] = old[:self._n]
            setattr(self, name, new)

    def append(self, start: int, counts: np.ndarray, stats: np.ndarray, grid: np.ndarray | None = None) -> None:
        """Append consecutive per-step rows beginning at step ``start`` (with their ``[n, 2]`` grids if gridded)."""
        n = len(counts)
        if n == 0:
            return
        if (grid is None) != (self._grid is None):
            raise ValueError("a gridded store takes rows with grids, a fixed one without")
        if not self._origin_set:
            self.origin = int(start)
            self._origin_set = True
        if self.width > 1:  # one column per bucket the rows touch
            bucket = (np.arange(start, start + n, dtype=np.int64) - self.origin) // self.width
            groups = np.flatnonzero(np.diff(bucket, prepend=bucket[0] - 1))
            if grid is not None:
                counts, grid = _grids.merge_groups(counts, grid, groups)
            else:
                counts = np.add.reduceat(counts, groups, axis=0)
            stats = merge_stats(stats, groups)
        else:
            groups = np.arange(n)
        ends = np.append(groups[1:], n)
        k = len(groups)
        self._reserve(k)
        at = slice(self._n, self._n + k)
        self._steps[at, 0] = start + groups
        self._steps[at, 1] = start + ends
        self._counts[at] = counts
        self._stats[at] = stats
        if self._grid is not None and grid is not None:
            self._grid[at] = grid
        self._n += k
        while self._n > self.cap:
            self._halve()

    def _halve(self) -> None:
        """Join the columns of each bucket, doubling the bucket first if more than 3/4 of ``cap`` are occupied."""
        n = self._n
        bucket = (self._steps[:n, 0] - self.origin) // self.width
        if len(np.unique(bucket)) > self.cap - self.cap // 4:
            self.width *= 2
            bucket //= 2
        groups = np.flatnonzero(np.diff(bucket, prepend=bucket[0] - 1))
        if self._grid is not None:
            counts, grid = _grids.merge_groups(self.counts, self.grid, groups)  # type: ignore[arg-type]
        else:
            counts = np.add.reduceat(self.counts, groups, axis=0)
        stats = merge_stats(self.stats, groups)
        ends = np.append(groups[1:], n) - 1
        steps = np.stack([self._steps[groups, 0], self._steps[ends, 1]], axis=1)
        k = len(groups)
        self._steps[:k], self._counts[:k], self._stats[:k] = steps, counts, stats
        if self._grid is not None:
            self._grid[:k] = grid
        self._n = k

    def total(self, from_step: int | None = None, onto: tuple[int, int] | None = None
              ) -> tuple[np.ndarray, np.ndarray, int, tuple[int, int] | None]:
        """Sum of the columns starting at or after ``from_step``: counts, stats, steps covered, grid.

        Gridded columns combine on their common grid (None when nothing finite was
        binned), or on ``onto`` (per-class and truth rows go onto their layer's
        summary grid, which holds every value they hold). A fixed store: grid None.
        """
        keep = slice(None) if from_step is None else self.steps[:, 0] >= from_step
        counts, steps = self.counts[keep], self.steps[keep]
        n_steps = int((steps[:, 1] - steps[:, 0]).sum()) if len(steps) else 0
        stats = combine_stats(self.stats[keep])
        if self._grid is None:
            return counts.sum(axis=0), stats, n_steps, None
        if not len(counts):
            return counts.sum(axis=0), stats, n_steps, onto
        if onto is None:
            row, grid = _grids.combine(counts, self.grid[keep])  # type: ignore[index]
            return row, stats, n_steps, grid
        out = _grids.sum_onto(counts, self.grid[keep], onto)  # type: ignore[index]
        return out, stats, n_steps, onto
