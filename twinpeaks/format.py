"""The run file's data layout: slot rows, stats columns and array encoding. Torch-free.

Design constraints:

* One place. The slot layout, the names and column numbers of the stats, the
  mean/std/zero fraction computed from them, and the byte encoding of arrays are
  defined here and nowhere else; the recorder (writer side), :mod:`twinpeaks.run`
  (reader side), the web payload and the export all use these functions.
* Importable without torch: the reading side (``twinpeaks info``, ``plot``,
  ``diagnose``, ``report``, ``serve``, ``export``) imports numpy only.

A slot row is ``[underflow, bin_0 .. bin_{B-1}, overflow, nonfinite]`` (``B + 3``
int64 slots). A stats row is float64 in :data:`STATS` order; the first five
columns add up, ``min`` and ``max`` combine by minimum and maximum.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import numpy as np

from .errors import RunFileError

#: Number of extra slots after the bins: underflow (first), overflow, nonfinite.
EXTRA_SLOTS = 3

#: Stats fields kept per column, float64: binned and seen element counts, then
#: the additive sums and the extremes.
STATS = ("binned", "seen", "sum", "sumsq", "zeros", "min", "max")
#: Column of each stats field: ``stats[..., BINNED]`` etc.
BINNED, SEEN, SUM, SUMSQ, ZEROS, MIN, MAX = range(len(STATS))
#: The additive stats columns (binned .. zeros).
ADDITIVE = slice(BINNED, ZEROS + 1)
#: How each stats column combines across columns, epochs and ranks.
STATS_REDUCE = ("sum", "sum", "sum", "sum", "sum", "min", "max")


def n_slots(bins: int) -> int:
    """Length of a slot row for ``bins`` bins: ``bins + 3``.

    Example:
        >>> n_slots(100)
        103
    """
    return bins + EXTRA_SLOTS


def slots_to_parts(row: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Split a slot row (or the last axis of a stack of rows) into counts, under, over, nonfinite.

    For one row the last three are 0-d arrays (use ``int()``); for a stack, one value per row.

    Example:
        >>> [p.tolist() for p in slots_to_parts(np.array([1, 2, 3, 4, 5]))]
        [[2, 3], 1, 4, 5]
    """
    row = np.asarray(row)
    return row[..., 1:-2], row[..., 0], row[..., -2], row[..., -1]


def empty_stats(n: int) -> np.ndarray:
    """``n`` stats rows that are neutral for merging.

    Example:
        >>> empty_stats(1)[0].tolist()
        [0.0, 0.0, 0.0, 0.0, 0.0, inf, -inf]
    """
    s = np.zeros((n, len(STATS)), dtype=np.float64)
    s[:, MIN] = np.inf
    s[:, MAX] = -np.inf
    return s


def combine_stats(stats: np.ndarray) -> np.ndarray:
    """Combine stats rows (axis 0) into one row.

    Example:
        >>> combine_stats(np.array([[1, 1, 2, 4, 0, 2, 2], [1, 1, -1, 1, 0, -1, -1.0]])).tolist()
        [2.0, 2.0, 1.0, 5.0, 0.0, -1.0, 2.0]
    """
    out = empty_stats(1)[0]
    if len(stats):
        out[ADDITIVE] = stats[:, ADDITIVE].sum(axis=0)
        out[MIN] = stats[:, MIN].min()
        out[MAX] = stats[:, MAX].max()
    return out


def mean_std(stats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of the binned values from stats rows (last axis in :data:`STATS` order).

    NaN where nothing was binned; the variance is clipped at 0 against rounding.
    Works on one row (0-d results) or a stack.

    Example:
        >>> [float(v) for v in mean_std(np.array([2, 2, 2.0, 4.0, 0, 0, 2]))]
        [1.0, 1.0]
    """
    stats = np.asarray(stats, dtype=np.float64)
    n = stats[..., BINNED]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n > 0, stats[..., SUM] / np.where(n > 0, n, 1), np.nan)
        var = stats[..., SUMSQ] / np.where(n > 0, n, 1) - mean * mean
        std = np.where(n > 0, np.sqrt(np.maximum(var, 0.0)), np.nan)
    return mean, std


def zero_fraction(stats: np.ndarray) -> np.ndarray:
    """Share of exact zeros among the binned values (NaN where nothing was binned).

    Example:
        >>> float(zero_fraction(np.array([4, 4, 0, 0, 1, 0, 0.0])))
        0.25
    """
    stats = np.asarray(stats, dtype=np.float64)
    n = stats[..., BINNED]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, stats[..., ZEROS] / np.where(n > 0, n, 1), np.nan)


_NARROW = [(np.uint8, 1 << 8), (np.uint16, 1 << 16), (np.uint32, 1 << 32)]


def encode(arr: np.ndarray) -> tuple[str, str, bytes]:
    """``(dtype, shape, bytes)`` of an array, little-endian; non-negative integers in the narrowest unsigned type.

    Example:
        >>> encode(np.array([1, 2]))[:2]
        ('|u1', '[2]')
    """
    arr = np.ascontiguousarray(arr)
    if arr.dtype.kind in "iu" and arr.size:
        lo, hi = int(arr.min()), int(arr.max())
        if lo >= 0:
            for dt, limit in _NARROW:
                if hi < limit:
                    arr = arr.astype(dt) if arr.dtype.itemsize > np.dtype(dt).itemsize else arr
                    break
    le = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
    return le.dtype.str, "[" + ", ".join(map(str, arr.shape)) + "]", le.tobytes()


@functools.lru_cache(maxsize=256)
def _shape(text: str) -> Any:
    """A stored shape (JSON) parsed; the same few shapes come back for every array a merge reads."""
    value = json.loads(text)
    return tuple(value) if isinstance(value, list) else value  # (cached: never a list someone could change)


def decode(dtype: str, shape: str, data: bytes) -> np.ndarray:
    """Inverse of :func:`encode`; the result is native-endian and writable, integers as int64.

    Example:
        >>> decode(*encode(np.array([1, 2]))).tolist()
        [1, 2]
    """
    dt = np.dtype(dtype)
    if dt.kind not in "iufb" or dt.hasobject:
        raise RunFileError(f"run file holds an array of unsupported dtype {dtype!r}")
    arr = np.frombuffer(data, dtype=dt).reshape(_shape(shape))
    return arr.astype(np.int64 if dt.kind in "iu" else dt.newbyteorder("="))
