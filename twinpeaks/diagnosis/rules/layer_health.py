"""Per-layer health metrics that several rules read: zeros, out-of-range, non-finite, edge share, spread."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ...columns import STATS
from ..metrics import edge_fraction
from ..registry import measure

if TYPE_CHECKING:
    from ..core import Context


@measure(20, {
    "zero_fraction": (True, True, "share of exact zeros"),
    "out_of_range": (True, True, "share of values outside the recorded range"),
    "nonfinite": (True, True, "share of NaN and +-inf values"),
    "edge_fraction": (True, True, "share of values in the bins of the observed min and max"),
    "std": (True, True, "standard deviation of the values"),
})
def layer_health(ctx: Context) -> None:
    """Per layer, phase and epoch: zeros, out-of-range, non-finite, edge share, spread."""
    for layer in ctx.layers:
        for phase in ctx.phases:
            rows = []
            for e in range(ctx.n):
                h = ctx.run.histogram(layer, phase, e)
                total = h.total
                if not total:
                    rows.append((np.nan,) * 5)
                    continue
                zeros = float(h.stats[STATS.index("zeros")])
                oor = (h.underflow + h.overflow) / total
                edge = edge_fraction(h.counts, h.edges, h.min, h.max, zeros) if oor < 0.01 else np.nan
                rows.append((h.zero_fraction, oor, h.nonfinite / total, edge, h.std))
            cols = np.array(rows, dtype=np.float64).reshape(ctx.n, 5).T
            for name, col in zip(("zero_fraction", "out_of_range", "nonfinite", "edge_fraction", "std"), cols):
                ctx.put(name, phase, layer.name, list(col))
