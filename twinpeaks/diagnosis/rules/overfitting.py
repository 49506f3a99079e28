"""``overfitting``: the train and valid peaks of the last layer drift apart."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..registry import rule

if TYPE_CHECKING:
    from ..core import Context


@rule("overfitting", 60, tasks=("classification", "unlabeled"), thresholds={
    "overfit_gap": (1.0, "train minus valid separation that counts as a gap"),
    "overfit_gap_free": (0.5, "the same without labels (label-free separation), where the distance is not used"),
    "overfit_noise": (2.0, "the mean gap from the onset must exceed this many times its sampling noise"),
    "overfit_epochs": (4, "epochs the drift must last after valid separation stopped improving"),
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
    on: where the valid loss turns up); it must be ``overfit_epochs`` or more
    before the end (a valid separation still at its best is no overfitting),
    and the mean gap from ``E`` on must exceed ``overfit_noise`` times its
    sampling noise (a small valid set gives noisy separations).
    Needs 4 epochs or more; not judged when a layer before the last is dead
    or the signal vanishes (the outputs do not follow the input).

    Without labels the separations are the label-free ones and the gap limit
    is ``overfit_gap_free``; the train-valid distance of the whole histogram
    is not required (it mixes the YES and NO peaks, which move in opposite
    directions).
    """
    t = ctx.t
    if ctx.dead_before(ctx.last) is not None or any(f.kind == "vanishing" for f in ctx.findings):
        return  # the outputs do not follow the input: no peaks to drift apart (dead and vanishing say why)
    gap = ctx.metrics.get(("separation_gap", None, None))
    dist = ctx.metrics.get(("train_valid_distance", None, None))
    if gap is None or dist is None or ctx.n < 4:
        return
    early = dist[1:4][np.isfinite(dist[1:4])]
    if not len(early):
        return
    base = float(np.min(early))
    labels = ctx.task == "classification"
    if labels:
        drift = (gap >= t.overfit_gap) & (dist >= t.overfit_distance * max(base, 1e-3))
    else:
        drift = np.nan_to_num(gap) >= t.overfit_gap_free
    if not drift[-1]:
        return
    vsep = ctx.metrics[("separation", "valid", None)].copy()
    vsep[0] = np.nan  # epoch 0 is a transient (and without labels an untrained model's offsets can read high)
    if not np.isfinite(vsep).any():
        return
    plateau = np.nan_to_num(vsep, nan=-np.inf) >= np.nanmax(vsep) - t.overfit_plateau * abs(np.nanmax(vsep))
    onset = None
    for e in range(1, ctx.n):
        if drift[e] and drift[e:].mean() >= t.overfit_share:
            onset = e
            break
    if onset is None:
        return
    onset = max(onset, int(np.argmax(plateau)))
    if ctx.n - onset < t.overfit_epochs:
        return
    # the mean gap from the onset must stand out of its sampling noise: the train (last quarter) samples
    # differ from epoch to epoch (their noise averages out), the valid ones are the same every epoch
    se_train, se_valid = _gap_noise(ctx)
    span = slice(onset, ctx.n)
    width = ctx.n - onset
    noise = float(np.sqrt(np.mean(se_valid[span] ** 2) + np.mean(se_train[span] ** 2) / width))
    if float(np.nanmean(gap[span])) < t.overfit_noise * noise:
        return
    ev = {"gap_last": gap[-1], "distance_last": dist[-1], "distance_early": base,
          "valid_separation_best": float(np.nanmax(vsep)), "valid_separation_best_epoch": int(np.nanargmax(vsep)),
          "valid_separation_last": vsep[-1]}
    limit = t.overfit_gap if labels else t.overfit_gap_free
    # without labels it is a reading of shapes: a warning at most
    severity = "problem" if labels and gap[-1] >= 2 * limit else "warning"
    how = (f"their distance is {dist[-1] / max(base, 1e-3):.1f}x its early level" if labels
           else "read without labels")
    ctx.add("overfitting", severity, ctx.last.name, onset,
            f"train and valid peaks of the last layer drift apart from epoch {onset}: train separation "
            f"exceeds valid by {gap[-1]:.2f} at the end and {how}, while valid separation peaked at epoch "
            f"{ev['valid_separation_best_epoch']}", ev,
            cause="the model memorises its training set: too few samples for its size, or too many epochs",
            remedy=f"stop at about epoch {onset} (early stopping), or add data, "
                   "augmentation, weight decay or dropout, or use a smaller model")


def _gap_noise(ctx: Context) -> tuple[np.ndarray, np.ndarray]:
    """Sampling noise of the train (last quarter) and valid separations per epoch (0 where unknown).

    A separation ``d`` measured on ``n`` YES and ``m`` NO values has a standard
    error of about ``sqrt(1/n + 1/m + d^2 / (2 (n + m)))`` (that of a d').
    With ``K`` outputs per sample, ``n = values / K`` and ``m = n (K - 1)``.
    """
    shape = ctx.last.out_shape or ()
    k = max(shape[-1] if len(shape) >= 2 else 1, 2)
    out = {"train": np.zeros(ctx.n), "valid": np.zeros(ctx.n)}
    for phase in ("train", "valid"):
        for e in range(ctx.n):
            total = ctx.hist(ctx.last, phase, e).total
            d = ctx.metrics[("separation", phase, None)][e]
            if not total or not np.isfinite(d):
                continue
            n = max(total / k, 1.0)
            m = n * (k - 1)
            out[phase][e] = np.sqrt(1 / n + 1 / m + d * d / (2 * (n + m)))
    return out["train"], out["valid"]
