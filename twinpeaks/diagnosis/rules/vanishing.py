"""``vanishing``: the input's signal fades with depth, layers stop depending on the input, and the model does not learn."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from ..registry import measure, rule
from .unstable import jumps

if TYPE_CHECKING:
    from ..core import Context


@measure(40, {"batch_variation": (False, True, "median step jump over the batch-noise level 2 / sqrt(values "
                                                "per step), over the whole run (train): about 1 or more when "
                                                "the layer's outputs follow its input, near 0 when they do not")})
def batch_variation(ctx: Context) -> None:
    """One value per layer, repeated per epoch: how much a layer's distribution moves between batches vs noise."""
    for layer in ctx.layers:
        per_epoch, _, noise = jumps(ctx, layer)
        j = np.asarray(per_epoch, np.float64)
        level = float(np.nanmedian(j)) / noise if np.isfinite(j).any() and noise > 0 else math.nan
        ctx.put("batch_variation", None, layer.name, [level] * ctx.n)


@rule("vanishing", 35, thresholds={
    "vanish_level": (0.05, "batch variation below this: the layer's outputs no longer depend on the input"),
    "vanish_layers": (2, "that many quiet layers in a row (a lone one may be a constant by design)"),
}, doc="the input's signal fades with depth and the model does not learn")
def check_vanishing(ctx: Context) -> None:
    """Vanishing: ``vanish_layers`` consecutive layers (not dead) whose ``batch_variation`` is below ``vanish_level``.

    A layer whose distribution is the same from batch to batch, though every
    batch holds other samples, computes (almost) the same output whatever its
    input: the signal of the input has faded on the way there, and the
    gradients fade on the way back, so the layers before it cannot learn. It
    counts only when the model does not learn either (its last valid
    separation below ``separation_weak``, for a classifier): a constant by
    design (a position embedding) is not a problem. The layer named is the
    first quiet one, after a layer whose outputs do follow the input (quiet
    from the first layer on, the batches themselves do not change: one batch
    trained on again and again has no signal to lose). Not judged when a
    layer is dead or saturated (a problem): those findings explain a signal
    that stops.
    """
    # layers that are dead or saturated (or fed by one) are explained by those findings
    blocked = [i for i, layer in enumerate(ctx.layers) if any(
        f.layer == layer.name and f.severity == "problem" for f in ctx.findings if f.kind in ("dead", "saturated"))]
    if blocked:
        return
    if ctx.task != "regression":
        phase = "valid" if "valid" in ctx.phases else "train"
        sep = ctx.metrics[("separation", phase, None)]
        if np.isfinite(sep[-1]) and sep[-1] >= ctx.t.separation_weak:
            return
    run = 0
    start = None
    levels = {}
    before = None  # the last layer before the quiet ones whose outputs follow the input: the signal was there
    for layer in ctx.layers:
        if layer is ctx.last:
            run, start = 0, None
            continue
        v = float(ctx.metrics[("batch_variation", None, layer.name)][0])
        levels[layer.name] = v
        loud = bool(np.isfinite(v) and v >= ctx.t.vanish_level)
        if before is None:  # quiet from the first layer on: the batches themselves do not change (one batch
            if loud:  # trained on again and again), the input has no signal to lose
                before = layer
            continue
        if np.isfinite(v) and v < ctx.t.vanish_level:
            if run == 0:
                start = layer
            run += 1
            if run >= ctx.t.vanish_layers:
                break
        else:
            run, start = 0, None
            if loud:
                before = layer
    if start is None or before is None or run < ctx.t.vanish_layers:
        return
    first = ctx.layers[0].name
    ctx.add("vanishing", "problem", start.name, 0,
            f"from layer {start.name!r} ({start.type}) on, the layers' outputs hardly change from batch to "
            f"batch ({levels[start.name]:.3f} of batch noise, against {levels[before.name]:.2f} at layer "
            f"{before.name!r}): the input's signal has faded with depth and the model does not learn",
            {"batch_variation": levels[start.name], "batch_variation_first": levels.get(first, math.nan),
             "batch_variation_before": levels[before.name], "quiet_layers": run},
            cause="vanishing signal and gradients: saturating activations (sigmoid, tanh) stacked deep, or "
                  "an init that shrinks the signal layer after layer",
            remedy="use ReLU/GELU activations, add normalisation (BatchNorm/LayerNorm) or residual connections, "
                   "or initialise with Xavier/Kaiming for the activation used")
