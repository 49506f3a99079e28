"""``unstable``: layer statistics jump between steps far beyond batch noise, or values became NaN/inf."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import metrics as M
from ..registry import measure, rule

if TYPE_CHECKING:
    from ..core import Context


def jumps(ctx: Context, layer: Any) -> tuple[list[float], float, float]:
    """Median step jump per epoch (train), the layer's calm level, and its batch-noise level.

    The calm level is the 25th percentile of all its step jumps; the noise
    level ``2 / sqrt(m)`` with ``m`` the median number of values binned per
    step (the expected jump of mean and spread between two batches of ``m``
    independent values).
    """
    key = ("jumps", layer.name)
    if key in ctx.cache:
        return ctx.cache[key]  # type: ignore[no-any-return]
    out: tuple[list[float], float, float] = ([np.nan] * ctx.n, np.nan, np.nan)
    if "train" in ctx.run.phases:
        c = ctx.run.columns(layer, "train")
        if len(c) >= 2:
            jm = M.step_jumps(c.mean, c.std)
            ends = np.array([ctx.run.epoch_info(e).steps.get("train", (0, 0, 0))[1] for e in range(ctx.n)])
            epoch_of = np.searchsorted(ends, c.starts[1:], side="right")
            per_epoch = []
            for e in range(ctx.n):
                j = jm[(epoch_of == e) & np.isfinite(jm)]
                per_epoch.append(float(np.median(j)) if len(j) else np.nan)
            finite = jm[np.isfinite(jm)]
            calm = float(np.percentile(finite, 25)) if len(finite) else np.nan
            per_step = c.binned / np.maximum(c.ends - c.starts, 1)
            noise = 2 / math.sqrt(max(float(np.median(per_step)), 1.0))
            out = (per_epoch, calm, noise)
    ctx.cache[key] = out
    return out


@measure(30, {"step_jump": (False, True, "median step-to-step jump of mean and std, in spreads (train)")})
def step_jump(ctx: Context) -> None:
    """Median step jump per layer and epoch (see :func:`jumps`)."""
    for layer in ctx.layers:
        ctx.put("step_jump", None, layer.name, jumps(ctx, layer)[0])


@rule("unstable", 40, thresholds={
    "jump_floor": (0.15, "median step jump (in spreads) in an epoch above which a layer jumps, if also ..."),
    "jump_noise": (3.0, "... above this many times the batch noise ``2 / sqrt(values per step)`` and ..."),
    "jump_baseline": (5.0, "... above this many times the layer's own calm level"),
    "jump_layers": (1 / 3, "share of the layers that must jump in the same epoch"),
    "jump_severe": (1.0, "a layer jumping this many spreads per step is enough on its own"),
}, doc="layer statistics jump between steps far beyond batch noise, or values became NaN/inf")
def check_unstable(ctx: Context) -> None:
    """Unstable: non-finite values, or step jumps far beyond batch noise and the run's calm level.

    A layer jumps in an epoch when its median step jump (see
    :func:`~twinpeaks.diagnosis.metrics.step_jumps`) exceeds
    ``max(jump_floor, jump_noise x noise, jump_baseline x calm)`` (see :func:`jumps`).
    The run is unstable from the first epoch in which at least ``jump_layers``
    of the layers jump, or one layer jumps by more than ``jump_severe``
    spreads per step: a head that learns fast moves alone, a learning rate
    that is too high moves the whole network. Layers fed by a dead layer
    compute on nothing and are not judged. Non-finite values give one
    finding per layer.
    """
    t = ctx.t
    dead = {f.layer: f.epoch or 0 for f in ctx.findings if f.kind == "dead" and f.severity == "problem"}
    dead_since = ctx.n
    hot = np.zeros((len(ctx.layers), ctx.n), bool)
    level = np.full((len(ctx.layers), ctx.n), np.nan)
    for i, layer in enumerate(ctx.layers):
        nonfinite = np.array([ctx.metrics[("nonfinite", p, layer.name)] for p in ctx.phases])
        bad = np.flatnonzero(np.nan_to_num(nonfinite).max(axis=0) > 0)
        if len(bad):
            share = float(np.nanmax(nonfinite))
            ctx.add("unstable", "problem", layer.name, int(bad[0]),
                    f"layer {layer.name!r} produced NaN or infinite values from epoch {int(bad[0])} "
                    f"(up to {share:.1%} of its values): training diverged", {"nonfinite_share": share})
        per_epoch, calm, noise = jumps(ctx, layer)
        jm = np.nan_to_num(np.asarray(per_epoch))
        limit = max(t.jump_floor, t.jump_noise * noise, t.jump_baseline * (calm if np.isfinite(calm) else 0))
        level[i] = jm / limit
        hot[i, :dead_since] = jm[:dead_since] > limit
        if layer.name in dead:
            dead_since = min(dead_since, dead[layer.name])
    jm_all = np.nan_to_num(np.array([ctx.metrics[("step_jump", None, layer.name)] for layer in ctx.layers]))
    share_hot = hot.mean(axis=0)
    severe = (hot & (jm_all > t.jump_severe)).any(axis=0)
    epochs = np.flatnonzero((share_hot >= t.jump_layers) | severe)
    if not len(epochs):
        return
    first = int(epochs[0])
    names = [layer.name for i, layer in enumerate(ctx.layers) if hot[i, first]]
    worst = int(np.nanargmax(np.where(hot[:, first], jm_all[:, first], -np.inf)))
    shown = ", ".join(repr(n) for n in names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
    ctx.add("unstable", "problem", ctx.layers[worst].name, first,
            f"activations jump between steps far beyond batch noise and the run's calm level in "
            f"{len(names)} of {len(ctx.layers)} layers ({shown}) from epoch {first}; worst "
            f"{ctx.layers[worst].name!r} moves {jm_all[worst, first]:.2f} spreads per step: the learning rate "
            "is likely too high",
            {"layers": len(names), "share_of_layers": share_hot[first], "max_jump": jm_all[worst, first],
             "ratio": level[worst, first]})
