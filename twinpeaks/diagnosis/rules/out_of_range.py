"""``out_of_range``: a share of a layer's values fell outside the recorded range."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..registry import rule
from ._util import nice, trailing_start

if TYPE_CHECKING:
    from ..core import Context


@rule("out_of_range", 30, thresholds={
    "range_warning": (0.01, "out-of-range share for a warning"),
    "range_problem": (0.2, "out-of-range share for a problem"),
}, doc="a share of a layer's values fell outside the recorded range")
def check_out_of_range(ctx: Context) -> None:
    """Out-of-range share at the last epoch (worst phase); range wrong from the start, or values grew.

    "From the start" when the first recorded step (train if recorded) already had
    at least half the final share; otherwise the values grew past the range
    ("explode" when their spread grew tenfold or more from the first step to
    the last). The suggested range covers the observed minimum and maximum
    of the whole run, rounded outwards.

    Only a range the user fixed (``range=``) is judged: an automatic range
    follows the values and never clips.
    """
    for layer in ctx.layers:
        if not ctx.run.is_fixed(layer):
            continue  # an automatic range follows the values: nothing falls outside it
        shares = np.array([ctx.metrics[("out_of_range", p, layer.name)] for p in ctx.phases])
        last = np.nanmax(shares[:, -1]) if np.isfinite(shares[:, -1]).any() else np.nan
        if not (np.isfinite(last) and last >= ctx.t.range_warning):
            continue
        phase = ctx.phases[int(np.nanargmax(shares[:, -1]))]
        share = shares[ctx.phases.index(phase)]
        c = ctx.run.columns(layer, "train" if "train" in ctx.phases else phase)
        outside = (c.underflow + c.overflow).astype(np.float64)
        totals = c.counts.sum(axis=1) + outside + c.nonfinite
        first_step = outside[0] / totals[0] if len(c) and totals[0] else np.nan
        std = c.std[np.isfinite(c.std)]
        growth = std[-1] / std[0] if len(std) and std[0] > 0 else np.inf
        edges = ctx.run.edges(layer)
        whole = [h for h in (ctx.run.histogram(layer, p) for p in ctx.phases) if h.total]
        lo, hi = min(h.min for h in whole), max(h.max for h in whole)
        ev = {"share_first_step": first_step, "share_first": share[0], "share_last": share[-1],
              "range_lo": edges[0], "range_hi": edges[-1], "observed_min": lo, "observed_max": hi,
              "spread_growth": growth}
        severity = "problem" if last >= ctx.t.range_problem else "warning"
        rng = f"[{edges[0]:.3g}, {edges[-1]:.3g}]"
        # per layer: one range rarely fits every layer; automatic ranges (the default) never clip
        suggest = (f"record this layer with range={{{layer.name!r}: ({nice(lo, down=True):g}, "
                   f"{nice(hi, down=False):g})}}, or leave it automatic (no range for it)")
        if np.isfinite(first_step) and first_step >= 0.5 * share[-1]:
            ctx.add("out_of_range", severity, layer.name, 0,
                    f"{share[-1]:.0%} of the {phase} values of layer {layer.name!r} fall outside the recorded "
                    f"range {rng}, as from the first step (values span {lo:.3g} to {hi:.3g}): the range is "
                    f"wrong; {suggest}", ev, cause="the range you fixed does not cover the layer's values",
                    remedy=suggest)
        else:
            since = trailing_start(share >= ctx.t.range_warning)
            how = "exploded" if growth >= 10 and layer is not ctx.last else "grew"
            ctx.add("out_of_range", severity, layer.name, since,
                    f"the values of layer {layer.name!r} {how} past the recorded range {rng}: "
                    f"{first_step:.0%} outside at the first step, {share[-1]:.0%} in epoch {ctx.n - 1} "
                    f"(spread x{growth:.3g}); {suggest}", ev,
                    cause=("the values exploded (see unstable)" if how == "exploded"
                           else "the values grew as the model learned"),
                    remedy=suggest)
