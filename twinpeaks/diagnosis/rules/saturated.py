"""``saturated``: a layer's values pile up at the extremes of their span."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..registry import rule
from ._util import trailing_start

if TYPE_CHECKING:
    from ..core import Context


@rule("saturated", 20, thresholds={
    "saturated_warning": (0.3, "edge fraction for a warning"),
    "saturated_problem": (0.6, "edge fraction for a problem"),
}, doc="a layer's values pile up at the extremes of their span")
def check_saturated(ctx: Context) -> None:
    """:func:`~twinpeaks.diagnosis.metrics.edge_fraction` at the last epoch (train) at or above the limits.

    Layers found dead are not also called saturated.
    """
    phase = "train" if "train" in ctx.phases else ctx.phases[0]
    dead = {f.layer for f in ctx.findings if f.kind == "dead"}
    for layer in ctx.layers:
        if layer.name in dead:
            continue
        edge = ctx.metrics[("edge_fraction", phase, layer.name)]
        if not (np.isfinite(edge[-1]) and edge[-1] >= ctx.t.saturated_warning):
            continue
        h = ctx.run.histogram(layer, phase, -1)
        since = trailing_start(edge >= ctx.t.saturated_warning)
        severity = "problem" if edge[-1] >= ctx.t.saturated_problem else "warning"
        ctx.add("saturated", severity, layer.name, since,
                f"layer {layer.name!r} ({layer.type}) is saturated: {edge[-1]:.0%} of its values sit at "
                f"the extremes of their span ({h.min:.3g} and {h.max:.3g}) since epoch {since}",
                {"edge_fraction": edge[-1], "min": h.min, "max": h.max},
                cause=f"the inputs of {layer.name!r} are too large for its squashing function (weights initialised "
                      "too large, or inputs not normalised)",
                remedy="scale the initial weights of the layer before it down (default init), normalise the inputs, "
                       "or add a normalisation layer before the activation")
