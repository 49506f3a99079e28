"""Display helpers shared by the charts, the web payload and the export: grouping, bin merging, colours.

Neutral ground: torch-free, imports numpy only (matplotlib inside :func:`palette`),
so no display module imports another one's private helpers.
"""

from __future__ import annotations

import numpy as np


def groups(n: int, k: int) -> np.ndarray:
    """Starts of ``min(n, k)`` contiguous, near-equal groups of ``n`` items (for ``np.add.reduceat``).

    Example:
        >>> groups(10, 4).tolist()
        [0, 2, 5, 8]
    """
    if n <= k:
        return np.arange(n)
    return np.unique(np.linspace(0, n, k + 1).round().astype(np.int64)[:-1])


def merge_bins(counts: np.ndarray, edges: np.ndarray, max_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Sum every ``k`` adjacent bins (last axis), the smallest ``k`` giving at most ``max_bins``.

    Merged bins keep equal widths (the last one may be narrower), so a merged
    histogram keeps its shape. Returns ``(counts, edges)``.

    Example:
        >>> c, e = merge_bins(np.ones(6, np.int64), np.arange(7.0), 3)
        >>> c.tolist(), e.tolist()
        ([2, 2, 2], [0.0, 2.0, 4.0, 6.0])
    """
    bins = counts.shape[-1]
    if bins <= max_bins:
        return counts, edges
    g = np.arange(0, bins, -(-bins // max_bins))
    return np.add.reduceat(counts, g, axis=-1), np.append(edges[g], edges[-1])


def palette(n: int) -> list:
    """``n`` distinct matplotlib colours (tab10, or tab20 past 10), for classes and groups.

    Example:
        >>> len(palette(3))
        3
    """
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]
