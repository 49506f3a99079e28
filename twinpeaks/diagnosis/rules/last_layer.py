"""The last layer's Twin Peaks metrics, and what kind of run it is (classification, unlabeled, regression)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ...run import on_common_grid
from ..metrics import (
    auc,
    auc_separation,
    bimodality,
    label_free_separation,
    overlap,
    separation,
    spread_distance,
    with_outside,
)
from ..registry import measure

if TYPE_CHECKING:
    from ..core import Context


@measure(10, {
    "separation": (True, False, "YES vs NO peaks of the last layer: the label-aware separation where targets "
                   "were recorded, else the label-free one"),
    "separation_label_aware": (True, False, "YES vs NO by the targets: sqrt(2) * Phi^-1(AUC) (a d')"),
    "separation_label_free": (True, False, "YES vs NO by the (K-1):1 mass split of the last layer, as a d'"),
    "separation_moments": (True, False, "YES vs NO: (mean_yes - mean_no) / pooled std of the histograms"),
    "auc": (True, False, "P(a YES output > a NO output) of the last layer"),
    "overlap": (True, False, "shared area of the normalised YES and NO histograms"),
    "bimodality": (True, False, "Sarle's bimodality coefficient of the last layer's histogram (not used)"),
    "train_valid_distance": (False, False, "W1 / pooled spread between train (last quarter) and valid histograms"),
    "separation_gap": (False, False, "train separation minus valid separation"),
})
def last_layer(ctx: Context) -> None:
    """Separation (label-aware and label-free), AUC, overlap per phase; train-valid distance and gap.

    Sets ``ctx.task``. The label-free separation
    (:func:`~twinpeaks.diagnosis.metrics.label_free_separation`) reads the
    last layer's histogram alone, with ``K`` the last dimension of its output
    shape; ``separation`` is the label-aware one where targets were recorded,
    else the label-free one.
    """
    shape = ctx.last.out_shape or ()
    outputs = shape[-1] if len(shape) >= 2 else 1
    truth_seen = False
    parts: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]] = {}  # yes, no, all, x
    # per epoch, every phase's yes/no/all histograms on one grid (automatic ranges: exact regridding)
    on_grid: dict[tuple[str, int], list[Any]] = {}
    for e in range(ctx.n):
        hs = on_common_grid([ctx.hist(ctx.last, p, e, t) for p in ctx.phases for t in ("yes", "no", None)])
        for i, p in enumerate(ctx.phases):
            on_grid[p, e] = hs[3 * i:3 * i + 3]
    for phase in ctx.phases:
        sep, sepm, aucs, ovl, bim, free, rows = [], [], [], [], [], [], []
        for e in range(ctx.n):
            yes, no, h = on_grid[phase, e]
            cy, x = with_outside(yes.counts, yes.edges, yes.underflow, yes.overflow)
            cn, _ = with_outside(no.counts, no.edges, no.underflow, no.overflow)
            ch, _ = with_outside(h.counts, h.edges, h.underflow, h.overflow)
            truth_seen |= bool(cy.sum() and cn.sum())
            sep.append(auc_separation(cy, cn))
            sepm.append(separation(cy, cn, x))
            aucs.append(auc(cy, cn))
            ovl.append(overlap(cy, cn))
            bim.append(bimodality(ch, x))
            free.append(label_free_separation(ch, x, outputs))
            rows.append((cy, cn, ch, x))
        parts[phase] = rows
        for name, vals in (("separation_label_aware", sep), ("separation_moments", sepm), ("auc", aucs),
                           ("overlap", ovl), ("bimodality", bim), ("separation_label_free", free)):
            ctx.put(name, phase, None, vals)
    regression = outputs == 1 and not ctx.run.classes
    for phase in ctx.phases:
        if regression:  # one peak by design: no separation of any kind
            ctx.put("separation_label_free", phase, None, [np.nan] * ctx.n)
            ctx.put("separation", phase, None, [np.nan] * ctx.n)
            continue
        pick = "separation_label_aware" if truth_seen else "separation_label_free"
        ctx.put("separation", phase, None, list(ctx.metrics[(pick, phase, None)]))
    if "train" in parts and "valid" in parts:
        dist = []
        for (ty, tn, th, x), (vy, vn, vh, _) in zip(parts["train"], parts["valid"]):
            if truth_seen:
                both = [v for v in (spread_distance(ty, vy, x), spread_distance(tn, vn, x)) if np.isfinite(v)]
                dist.append(float(np.mean(both)) if both else np.nan)
            else:
                dist.append(spread_distance(th, vh, x))
        ctx.put("train_valid_distance", None, None, dist)
        gap = ctx.metrics[("separation", "train", None)] - ctx.metrics[("separation", "valid", None)]
        ctx.put("separation_gap", None, None, list(gap))
    if regression:
        # framework adapters pass a regression's targets too: one output and no class names is a regression
        ctx.task = "regression"
    else:
        ctx.task = "classification" if truth_seen else "unlabeled"
