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
    "overfit_top_z": (5.0, "top-split reading: the mean train-valid gap from valid's best epoch over its "
                           "epoch-to-epoch standard error"),
    "overfit_top_noise": (1.0, "top-split reading: the same mean gap over its sampling noise (a small valid "
                               "set reads the same samples every epoch)"),
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

    Where that reading finds nothing (memorising noisy labels merges the
    peaks, so the label-free separations read 0 on train and valid alike),
    the top-split one is tried, labels or not (a warning): the top ``1/K`` of
    the last layer's values against the rest, unmapped
    (``top_split_separation``), train minus valid (``top_split_gap``), from
    the epoch (>= 1) where valid's reached its best to the end, ``overfit_epochs``
    or more epochs: the train outputs keep standing out further than the
    valid ones while valid's stopped improving. Its mean must exceed
    ``overfit_top_z`` times its epoch-to-epoch standard error (it lasts) and
    ``overfit_top_noise`` times its sampling noise (not a small valid set's
    draw). With labels, the valid separation decides: not where it is still
    within ``overfit_plateau`` of its best at the end (nothing is lost by
    training on: a log-softmax output's top values crowd at 0 as the model
    grows confident, which moves the top split), and the epoch to stop at is
    where it stopped improving (as for the separation reading).
    """
    if ctx.dead_before(ctx.last) is not None or any(f.kind == "vanishing" for f in ctx.findings):
        return  # the outputs do not follow the input: no peaks to drift apart (dead and vanishing say why)
    if _separation_drift(ctx):
        return
    before = {layer.name for layer in ctx.layers[:-1]}
    if any(f.kind == "unstable" or (f.kind == "saturated" and f.severity == "problem" and f.layer in before)
           for f in ctx.findings):
        return  # blown up, or saturated on the way: the last layer's values sit on a few levels, not peaks
    _top_split_drift(ctx)


def _separation_drift(ctx: Context) -> bool:
    """The separation reading of :func:`check_overfitting`; True where it found overfitting."""
    t = ctx.t
    gap = ctx.metrics.get(("separation_gap", None, None))
    dist = ctx.metrics.get(("train_valid_distance", None, None))
    if gap is None or dist is None or ctx.n < 4:
        return False
    early = dist[1:4][np.isfinite(dist[1:4])]
    if not len(early):
        return False
    base = float(np.min(early))
    labels = ctx.task == "classification"
    if labels:
        drift = (gap >= t.overfit_gap) & (dist >= t.overfit_distance * max(base, 1e-3))
    else:
        drift = np.nan_to_num(gap) >= t.overfit_gap_free
    if not drift[-1]:
        return False
    vsep = _valid_separation(ctx)
    if not np.isfinite(vsep).any():
        return False
    stop = int(np.argmax(_plateau(vsep, t.overfit_plateau)))  # where valid separation stopped improving
    onset = None
    for e in range(1, ctx.n):
        if drift[e] and drift[e:].mean() >= t.overfit_share:
            onset = e
            break
    if onset is None:
        return False
    onset = max(onset, stop)
    if not labels:  # a label-free separation can read high early (an untrained model's offsets): no epoch to keep
        stop = onset
    if ctx.n - onset < t.overfit_epochs:
        return False
    # the mean gap from the onset must stand out of its sampling noise: the train (last quarter) samples
    # differ from epoch to epoch (their noise averages out), the valid ones are the same every epoch
    se_train, se_valid = _gap_noise(ctx)
    span = slice(onset, ctx.n)
    width = ctx.n - onset
    noise = float(np.sqrt(np.mean(se_valid[span] ** 2) + np.mean(se_train[span] ** 2) / width))
    if float(np.nanmean(gap[span])) < t.overfit_noise * noise:
        return False
    ev = {"gap_last": gap[-1], "distance_last": dist[-1], "distance_early": base,
          "valid_separation_best": float(np.nanmax(vsep)), "valid_separation_best_epoch": int(np.nanargmax(vsep)),
          "valid_separation_last": vsep[-1], "stop_epoch": stop}
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
            remedy=f"stop at about epoch {stop} (early stopping"
                   f"{': where valid separation stopped improving' if labels else ''}), "
                   "or add data, augmentation, weight decay or dropout, or use a smaller model")
    return True


def _top_split_drift(ctx: Context) -> None:
    """The top-split reading of :func:`check_overfitting` (labels or not): a warning."""
    t = ctx.t
    gap = ctx.get("top_split_gap")
    if gap is None or ctx.n < 4:
        return
    vsep = ctx.metrics[("top_split_separation", "valid", None)].copy()
    vsep[0] = np.nan  # epoch 0 is a transient
    if not np.isfinite(vsep).any():
        return
    onset = int(np.nanargmax(vsep))
    span = slice(onset, ctx.n)
    g = gap[span]
    g = g[np.isfinite(g)]
    if ctx.n - onset < t.overfit_epochs or len(g) < t.overfit_epochs:
        return
    stop = onset  # the epoch to stop at
    if ctx.task == "classification":  # with labels, the valid separation says whether and where to stop
        aware = _valid_separation(ctx)
        if np.isfinite(aware).any():
            plateau = _plateau(aware, t.overfit_plateau)
            if plateau[-1]:
                return  # still at its best: nothing is lost by training on (the top split read a shape change)
            stop = int(np.argmax(plateau))
    mean = float(np.mean(g))
    spread = float(np.std(g, ddof=1))
    z = mean / (spread / np.sqrt(len(g))) if spread > 0 else (np.inf if mean > 0 else 0.0)
    se_train, se_valid = _gap_noise(ctx, "top_split_separation")
    noise = float(np.sqrt(np.mean(se_valid[span] ** 2) + np.mean(se_train[span] ** 2) / len(g)))
    if mean <= 0 or z < t.overfit_top_z or mean < t.overfit_top_noise * noise:
        return
    ev = {"top_split_gap_mean": mean, "top_split_gap_z": z, "top_split_gap_noise": noise,
          "valid_top_split_best": float(vsep[onset]), "valid_top_split_best_epoch": onset,
          "valid_top_split_last": float(vsep[-1]), "train_top_split_last": float(gap[-1] + vsep[-1])}
    ev["stop_epoch"] = stop
    ctx.add("overfitting", "warning", ctx.last.name, onset,
            f"the train outputs of the last layer stand out further than the valid ones from epoch {onset}: "
            f"the top 1/K of train values sit {mean:.2f} spreads further from the rest than valid's on average "
            f"({z:.1f} standard errors, {mean / max(noise, 1e-12):.1f}x the sampling noise), while valid's "
            f"peaked at epoch {onset}; read from the histograms' shape alone", ev,
            cause="the model memorises its training set (noisy or too few labels, too many epochs)",
            remedy=f"stop at about epoch {stop} (early stopping: where valid "
                   f"{'separation stopped improving' if ctx.task == 'classification' else 'top split peaked'}), "
                   "check the labels, or add data, augmentation, weight decay or dropout")


def _valid_separation(ctx: Context) -> np.ndarray:
    """The valid separation per epoch, epoch 0 left out (NaN): a transient, and without labels an untrained
    model's offsets can read high."""
    vsep = ctx.metrics[("separation", "valid", None)].copy()
    vsep[0] = np.nan
    return vsep


def _plateau(vsep: np.ndarray, within: float) -> np.ndarray:
    """Epochs whose valid separation is within ``within`` (a fraction) of its best (NaN: not): the first is where it
    stopped improving, the epoch early stopping keeps; the last, whether it is still at its best.

    Example:
        >>> _plateau(np.array([np.nan, 1.0, 1.9, 2.0, 1.5]), 0.05)
        array([False, False,  True,  True, False])
    """
    best = np.nanmax(vsep)
    return np.nan_to_num(vsep, nan=-np.inf) >= best - within * abs(best)


def _gap_noise(ctx: Context, metric: str = "separation") -> tuple[np.ndarray, np.ndarray]:
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
            d = ctx.metrics[(metric, phase, None)][e]
            if not total or not np.isfinite(d):
                continue
            n = max(total / k, 1.0)
            m = n * (k - 1)
            out[phase][e] = np.sqrt(1 / n + 1 / m + d * d / (2 * (n + m)))
    return out["train"], out["valid"]
