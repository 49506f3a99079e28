"""Small helpers shared by the rules."""

from __future__ import annotations

import math

import numpy as np


def trailing_start(mask: np.ndarray) -> int:
    """First index of the run of True values that ends at the last element (len if the last is False)."""
    mask = np.asarray(mask, bool)
    i = len(mask)
    while i > 0 and mask[i - 1]:
        i -= 1
    return i


def nice(v: float, down: bool) -> float:
    """``v`` rounded outwards to 1, 2 or 5 times a power of ten (0 stays 0)."""
    if v == 0 or not math.isfinite(v):
        return 0.0
    mag = abs(v)
    p = 10 ** math.floor(math.log10(mag))
    steps = [1, 2, 5, 10]
    outward = (v < 0) == down  # away from zero
    if outward:
        m = next(s for s in steps if s * p >= mag * (1 - 1e-12))
    else:
        m = next(s for s in reversed(steps) if s * p <= mag * (1 + 1e-12))
    return math.copysign(m * p, v)
