"""``dead``: a layer's outputs are (almost) all exactly zero, or a single value."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..registry import rule
from ._util import trailing_start

if TYPE_CHECKING:
    from ..core import Context


@rule("dead", 10, thresholds={
    "dead_warning": (0.85, "zero fraction for a warning"),
    "dead_problem": (0.95, "zero fraction for a problem"),
}, doc="a layer's outputs are (almost) all exactly zero, or a single value")
def check_dead(ctx: Context) -> None:
    """Dead: zero fraction at the last epoch (train) at or above the limits, or a single value.

    The epoch reported is the first of the trailing run of epochs above the limit.
    """
    phase = "train" if "train" in ctx.phases else ctx.phases[0]
    for layer in ctx.layers:
        zf = ctx.metrics[("zero_fraction", phase, layer.name)]
        std = ctx.metrics[("std", phase, layer.name)]
        h = ctx.run.histogram(layer, phase, -1)
        single = h.total > 0 and h.max == h.min
        if not (zf[-1] >= ctx.t.dead_warning or single):
            continue
        severity = "problem" if (zf[-1] >= ctx.t.dead_problem or single) else "warning"
        since = trailing_start((zf >= ctx.t.dead_warning) | (std == 0))
        what = (f"{zf[-1]:.1%} of its outputs are exactly zero" if not single
                else f"every output is the same value {h.min:.4g}")
        c = ctx.run.columns(layer, phase)
        zf0 = float(c.zero_fraction[0]) if len(c) else float(zf[0])
        born = bool(zf0 >= ctx.t.dead_warning or (len(c) and c.std[0] == 0))
        cause = ("the initialisation: the layer is dead from the first epoch (e.g. large negative biases before "
                 "a ReLU, or the layer before it outputs nothing)" if born else
                 "training killed it (alive at the first step): most likely a learning rate too high")
        remedy = ("re-initialise the layer (default init, biases at 0) or put a normalisation before the ReLU; "
                  "if that is not it, lower the learning rate ~10x" if born else
                  "lower the learning rate ~10x (or warm it up), or use LeakyReLU")
        ctx.add("dead", severity, layer.name, since,
                f"layer {layer.name!r} ({layer.type}) is dead: {what} in epoch {ctx.n - 1}"
                f" (since epoch {since}); nothing flows through it", {"zero_fraction": zf[-1], "std": std[-1],
                                                                       "zero_fraction_first_step": zf0},
                cause=cause, remedy=remedy)
