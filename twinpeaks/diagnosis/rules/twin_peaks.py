"""``no_twin_peaks`` (info): the last layer is not expected to be bimodal (regression), or is not."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..registry import declare_kind, rule

if TYPE_CHECKING:
    from ..core import Context

declare_kind("no_twin_peaks", 70, "the last layer is not expected to be bimodal (regression), or is not")


@rule("no_twin_peaks", 70, tasks=("unlabeled", "regression"),
      thresholds={"bimodal": (0.555, "bimodality coefficient above this (a uniform distribution's): two peaks")})
def check_twin_peaks(ctx: Context) -> None:
    """Regression: twin peaks do not apply. No targets: the bimodality coefficient stands in for separation."""
    if ctx.task == "regression":
        ctx.add("no_twin_peaks", "info", ctx.last.name, None,
                f"the last layer {ctx.last.name!r} has one output and no class names were recorded: a "
                "regression, whose outputs form one peak, so twin peaks do not apply (a one-output binary "
                "classifier gets them with classes=[...])",
                {"outputs": 1.0})
        return
    phase = "valid" if "valid" in ctx.phases else "train"
    bim = ctx.metrics[("bimodality", phase, None)]
    last = bim[-1]
    ev = {"bimodality_last": last, "bimodality_first": bim[0]}
    if np.isfinite(last) and last > ctx.t.bimodal:
        ctx.add("separation", "info", ctx.last.name, None,
                f"the last layer is bimodal ({phase} bimodality coefficient {last:.2f} > {ctx.t.bimodal}); "
                "record targets (hist.targets(y)) to tell the YES and NO peaks apart", ev)
    else:
        ctx.add("no_twin_peaks", "info", ctx.last.name, None,
                f"the last layer is not bimodal ({phase} bimodality coefficient {last:.2f}); twin peaks "
                "show up only for a classifier (record targets with hist.targets(y))", ev)
