"""``unstable``: layer statistics jump between steps far beyond batch noise, or values became NaN/inf."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from ..metrics import step_jumps
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
            jm = step_jumps(c.mean, c.std)
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
    "jump_floor": (0.3, "median step jump (in spreads) in an epoch above which a layer jumps, if also ..."),
    "jump_noise": (6.0, "... above this many times the batch noise ``2 / sqrt(values per step)`` and ..."),
    "jump_baseline": (10.0, "... above this many times the layer's own calm level"),
    "jump_layers": (1 / 3, "share of the layers that must jump in the same epoch"),
    "jump_severe": (1.0, "a layer jumping this many spreads per step is enough on its own"),
    "blowup": (1000.0, "a hidden layer's spread growing this many times from its first step: blown up"),
}, doc="training blew up: values NaN/inf, spreads grown 1000x, layers killed, or steps jumping far beyond noise")
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
    finding per layer: training diverged, or, where they show in evaluation
    phases only (train's values finite), bad values in that data.

    Two more signs of a learning rate far too high, each enough on its own:
    a hidden layer (not the last: logits grow as a classifier learns) whose
    spread grows ``blowup`` times from its first step (a layer without spread
    at its first step, zero-initialised, is not judged), and a layer alive at
    its first step that training killed (found ``dead``, see
    :mod:`.dead`). The finding names the first layer (in run order) where it
    shows.
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
            where = [p for p, row in zip(ctx.phases, nonfinite) if np.nan_to_num(row).max() > 0]
            if "train" in ctx.phases and "train" not in where:  # training's values are finite: the data is not
                data = " and ".join(repr(p) for p in where)
                ctx.add("unstable", "problem", layer.name, int(bad[0]),
                        f"layer {layer.name!r} produced NaN or infinite values in {data} only, from epoch "
                        f"{int(bad[0])} (up to {share:.1%} of its values), while its train values are finite: "
                        f"the {data} data likely holds NaN or infinite values",
                        {"nonfinite_share": share, "train_nonfinite_share": 0.0},
                        cause=f"NaN or infinite values in the {data} inputs (missing values not filled in), or a "
                              "log/division of zero that only that data reaches",
                        remedy=f"check the {data} batches (torch.isfinite(x).all()) and fill or drop missing values")
            else:
                ctx.add("unstable", "problem", layer.name, int(bad[0]),
                        f"layer {layer.name!r} produced NaN or infinite values from epoch {int(bad[0])} "
                        f"(up to {share:.1%} of its values): training diverged", {"nonfinite_share": share},
                        cause="training diverged: " + _CAUSE + ", or a log/division of zero in the model",
                        remedy=_REMEDY)
        per_epoch, calm, noise = jumps(ctx, layer)
        jm = np.nan_to_num(np.asarray(per_epoch))
        limit = max(t.jump_floor, t.jump_noise * noise, t.jump_baseline * (calm if np.isfinite(calm) else 0))
        level[i] = jm / limit
        hot[i, :dead_since] = jm[:dead_since] > limit
        if layer.name in dead:
            dead_since = min(dead_since, dead[layer.name])
    if _blowup_or_collapse(ctx):
        return
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
    ctx.add("unstable", "problem", names[0], first,
            f"activations jump between steps far beyond batch noise and the run's calm level in "
            f"{len(names)} of {len(ctx.layers)} layers ({shown}) from epoch {first}; worst "
            f"{ctx.layers[worst].name!r} moves {jm_all[worst, first]:.2f} spreads per step: the learning rate "
            "is likely too high",
            {"layers": len(names), "share_of_layers": share_hot[first], "max_jump": jm_all[worst, first],
             "ratio": level[worst, first]}, cause=_CAUSE, remedy=_REMEDY)


_CAUSE = "a learning rate far too high (or no warm-up)"
_REMEDY = "lower the learning rate ~10x (or add warm-up / gradient clipping), then check again"


def _blowup_or_collapse(ctx: Context) -> bool:
    """Blown-up spreads or layers killed by training: one ``unstable`` problem; True if found."""
    collapsed = [f for f in ctx.findings if f.kind == "dead" and f.severity == "problem"
                 and f.evidence.get("zero_fraction_first_step", 1.0) < ctx.t.dead_warning
                 and ctx.dead_before(ctx.run.layer(str(f.layer))) is None]  # not starved by a dead layer before
    grown: list[tuple[str, float, int]] = []
    ends = np.array([ctx.run.epoch_info(e).steps.get("train", (0, 0, 0))[1] for e in range(ctx.n)])
    if "train" in ctx.phases:
        dead = {f.layer for f in ctx.findings if f.kind == "dead"}
        for layer in ctx.layers[:-1]:
            if layer.name in dead or ctx.dead_before(layer) is not None:
                continue  # computes on nothing: its spread starts from (almost) 0
            c = ctx.run.columns(layer, "train")
            sd = c.std
            ok = np.flatnonzero(np.isfinite(sd) & (sd > 0))
            if len(ok) < 2 or ok[0] != 0:
                continue  # no spread at the first step: zero-initialised by design (BatchNorm weight 0), it grows
            growth = sd[ok] / sd[ok[0]]
            over = np.flatnonzero(growth >= ctx.t.blowup)
            if len(over):
                epoch = int(np.searchsorted(ends, c.starts[ok[over[0]]], side="right"))
                grown.append((layer.name, float(growth.max()), min(epoch, ctx.n - 1)))
    if not (collapsed or grown):
        return False
    if grown:
        name, g, epoch = grown[0]
        what = (f"the spread of layer {name!r} grew {g:.3g}x from its first step (epoch {epoch})"
                + (f", and of {len(grown) - 1} more layer(s)" if len(grown) > 1 else ""))
    else:
        f = collapsed[0]
        name, epoch, g = str(f.layer), int(f.epoch or 0), float("nan")
        what = (f"training killed layer {name!r}: {f.evidence['zero_fraction_first_step']:.0%} zeros at its first "
                f"step, {f.evidence['zero_fraction']:.0%} at the end")
    if grown and collapsed:
        what += f", and training killed layer {collapsed[0].layer!r}"
    ctx.add("unstable", "problem", name, epoch, f"training blew up: {what}",
            {"spread_growth": g, "layers_grown": len(grown), "layers_killed": len(collapsed)},
            cause=_CAUSE, remedy=_REMEDY)
    return True
