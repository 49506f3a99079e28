"""``overfitting``: the train and valid peaks of the last layer drift apart."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..registry import rule

if TYPE_CHECKING:
    from ..core import Context


@rule("overfitting", 60, tasks=("classification",), thresholds={
    "overfit_gap": (1.0, "train minus valid separation that counts as a gap"),
    "overfit_distance": (1.5, "train-valid distance this many times its early level counts as drift"),
    "overfit_share": (0.8, "share of the epochs from the onset to the end that must show it"),
    "overfit_plateau": (0.05, "valid separation within this fraction of its best: it stopped improving"),
}, doc="the train and valid peaks of the last layer drift apart")
def check_overfitting(ctx: Context) -> None:
    """Train and valid peaks drift apart: sustained separation gap and train-valid distance.

    Overfitting shows from epoch ``E`` (>= 1) when, in at least
    ``overfit_share`` of the epochs from ``E`` to the end (and at the end), both
    hold: the train separation exceeds the valid one by ``overfit_gap``, and
    ``train_valid_distance`` is ``overfit_distance`` times its early level (its
    minimum over epochs 1 to 3: epoch 0 is a transient). ``E`` is the earliest
    such epoch, moved on to the first epoch whose valid separation is within
    ``overfit_plateau`` of its best (valid stopped improving while train goes
    on: where the valid loss turns up). Needs 4 epochs or more.
    """
    t = ctx.t
    gap = ctx.metrics.get(("separation_gap", None, None))
    dist = ctx.metrics.get(("train_valid_distance", None, None))
    if gap is None or dist is None or ctx.n < 4:
        return
    early = dist[1:4][np.isfinite(dist[1:4])]
    if not len(early):
        return
    base = float(np.min(early))
    drift = (gap >= t.overfit_gap) & (dist >= t.overfit_distance * max(base, 1e-3))
    if not drift[-1]:
        return
    vsep = ctx.metrics[("separation", "valid", None)]
    plateau = np.nan_to_num(vsep, nan=-np.inf) >= np.nanmax(vsep) - t.overfit_plateau * abs(np.nanmax(vsep))
    onset = None
    for e in range(1, ctx.n):
        if drift[e] and drift[e:].mean() >= t.overfit_share:
            onset = e
            break
    if onset is None:
        return
    onset = max(onset, int(np.argmax(plateau)))
    ev = {"gap_last": gap[-1], "distance_last": dist[-1], "distance_early": base,
          "valid_separation_best": float(np.nanmax(vsep)), "valid_separation_best_epoch": int(np.nanargmax(vsep)),
          "valid_separation_last": vsep[-1]}
    severity = "problem" if gap[-1] >= 2 * t.overfit_gap else "warning"
    ctx.add("overfitting", severity, ctx.last.name, onset,
            f"train and valid peaks of the last layer drift apart from epoch {onset}: train separation "
            f"exceeds valid by {gap[-1]:.2f} at the end and their distance is {dist[-1] / max(base, 1e-3):.1f}x "
            f"its early level, while valid separation peaked at epoch {ev['valid_separation_best_epoch']}", ev)
