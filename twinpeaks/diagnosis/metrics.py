"""Health metrics of histograms: pure numpy functions, each with its formula.

Every function takes counts over bins (and the bin edges) and returns plain
floats, so each can be checked against a brute-force computation on the raw
values. Out-of-range mass is handled by the caller: :func:`with_outside`
places underflow and overflow on two extra points just outside the range
(censoring: the values are at least that far out), so a distribution that
spills over the range still weighs on means, spreads and distances.
"""

from __future__ import annotations

from functools import lru_cache
from statistics import NormalDist

import numpy as np


def with_outside(counts: np.ndarray, edges: np.ndarray, underflow: int = 0,
                 overflow: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Counts and positions with underflow and overflow as two extra points.

    Positions are the bin centers, plus ``edges[0] - w/2`` for the underflow and
    ``edges[-1] + w/2`` for the overflow (``w`` = bin width): values beyond the
    range count as lying just outside it.

    Example:
        >>> with_outside(np.array([1, 2]), np.array([0.0, 1.0, 2.0]), 3, 0)[1].tolist()
        [-0.5, 0.5, 1.5, 2.5]
    """
    edges = np.asarray(edges, dtype=np.float64)
    w = edges[1] - edges[0] if len(edges) > 1 else 1.0
    centers = (edges[:-1] + edges[1:]) / 2
    x = np.concatenate([[edges[0] - w / 2], centers, [edges[-1] + w / 2]])
    c = np.concatenate([[underflow], np.asarray(counts, dtype=np.float64), [overflow]]).astype(np.float64)
    return c, x


def moments(counts: np.ndarray, x: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation of a histogram, each count at its position ``x``.

    ``mean = sum(c x) / sum(c)``, ``std = sqrt(sum(c (x - mean)^2) / sum(c))``
    (population spread; NaN for an empty histogram).

    Example:
        >>> moments(np.array([1, 0, 1]), np.array([0.0, 1.0, 2.0]))
        (1.0, 1.0)
    """
    n = float(np.sum(counts))
    if n <= 0:
        return float("nan"), float("nan")
    m = float(np.sum(counts * x) / n)
    return m, float(np.sqrt(np.sum(counts * (x - m) ** 2) / n))


def separation(yes: np.ndarray, no: np.ndarray, x: np.ndarray) -> float:
    """How far the YES peak sits above the NO peak, in units of their spread (a d').

    ``(mean_yes - mean_no) / sqrt((std_yes^2 + std_no^2) / 2)``: 0 when the true
    class's outputs look like all the others, about 1 when the peaks are one
    spread apart, above 3 when they hardly overlap. Scale-free: multiplying every
    output by a constant leaves it unchanged. Negative when the YES outputs are
    lower (the model ranks the true class below the others). Each histogram is a
    mean over its own count, so 1 YES per sample against 9 NO does not bias it.

    Example:
        >>> x = np.array([0.0, 1.0, 2.0, 3.0])
        >>> separation(np.array([0, 0, 1, 1]), np.array([1, 1, 0, 0]), x)
        4.0
    """
    my, sy = moments(yes, x)
    mn, sn = moments(no, x)
    pooled = np.sqrt((sy * sy + sn * sn) / 2)
    if not np.isfinite(pooled):
        return float("nan")
    if pooled == 0:
        return float("inf") * np.sign(my - mn) if my != mn else 0.0
    return float((my - mn) / pooled)


def overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Shared area of two histograms normalised to 1: ``sum(min(a/|a|, b/|b|))``.

    1 for identical shapes, 0 for disjoint ones. For YES vs NO it is the share of
    outputs that sit where the other kind also sits: where the mistakes are.

    Example:
        >>> overlap(np.array([2, 2, 0]), np.array([0, 1, 1]))
        0.5
    """
    sa, sb = float(np.sum(a)), float(np.sum(b))
    if sa <= 0 or sb <= 0:
        return float("nan")
    return float(np.minimum(np.asarray(a) / sa, np.asarray(b) / sb).sum())


def bimodality(counts: np.ndarray, x: np.ndarray) -> float:
    """Sarle's bimodality coefficient of a histogram: ``(skew^2 + 1) / kurtosis``.

    Skewness and (non-excess) kurtosis are the histogram's central moments
    ``m3 / m2^1.5`` and ``m4 / m2^2``. About 0.33 for a normal distribution, 0.56
    for a uniform one, 1 for two equal spikes; above 0.56 suggests two modes.
    NaN for an empty or single-valued histogram.

    Example:
        >>> round(bimodality(np.array([5, 0, 0, 5]), np.arange(4.0)), 3)
        1.0
    """
    n = float(np.sum(counts))
    if n <= 0:
        return float("nan")
    m = np.sum(counts * x) / n
    d = x - m
    m2 = np.sum(counts * d**2) / n
    if m2 <= 0:
        return float("nan")
    skew = np.sum(counts * d**3) / n / m2**1.5
    kurt = np.sum(counts * d**4) / n / m2**2
    return float((skew**2 + 1) / kurt)


def wasserstein(a: np.ndarray, b: np.ndarray, x: np.ndarray) -> float:
    """1-D earth mover's distance between two histograms on the same positions ``x``.

    Both are normalised to 1; ``W1 = sum_i |A_i - B_i| (x_{i+1} - x_i)`` with
    ``A``, ``B`` the cumulative shares (the exact W1 of the two distributions with
    all mass at the positions). Same unit as ``x``.

    Example:
        >>> wasserstein(np.array([1, 0, 0]), np.array([0, 0, 1]), np.array([0.0, 1.0, 2.0]))
        2.0
    """
    sa, sb = float(np.sum(a)), float(np.sum(b))
    if sa <= 0 or sb <= 0:
        return float("nan")
    ca = np.cumsum(np.asarray(a, np.float64) / sa)[:-1]
    cb = np.cumsum(np.asarray(b, np.float64) / sb)[:-1]
    return float(np.sum(np.abs(ca - cb) * np.diff(x)))


def spread_distance(a: np.ndarray, b: np.ndarray, x: np.ndarray) -> float:
    """Scale-free distance of two histograms: their W1 over their pooled spread.

    ``W1(a, b) / sqrt((std_a^2 + std_b^2) / 2)`` (see :func:`wasserstein` and
    :func:`moments`). 0 for identical distributions; a shift of the whole
    distribution by one spread gives 1. Unchanged if every value is scaled.

    Example:
        >>> x = np.arange(4.0)
        >>> spread_distance(np.array([1, 1, 0, 0]), np.array([0, 0, 1, 1]), x)
        4.0
    """
    sa, sb = moments(a, x)[1], moments(b, x)[1]
    pooled = np.sqrt((sa * sa + sb * sb) / 2)
    if not np.isfinite(pooled) or pooled == 0:
        return float("nan")
    return wasserstein(a, b, x) / float(pooled)


def step_jumps(mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """How much a layer's distribution moves from one step to the next, in its own spread.

    For consecutive steps ``t-1, t``:
    ``|mean_t - mean_{t-1}| / sqrt((std_t^2 + std_{t-1}^2) / 2) + |ln(std_t / std_{t-1})|``:
    the shift of the mean in pooled spreads plus the relative change of the
    spread. One value per step after the first (``len(mean) - 1``); a step with
    no spread on either side gives 0 if nothing moved, else infinity; NaN where
    a step recorded nothing.

    Example:
        >>> step_jumps(np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, np.e])).round(3).tolist()
        [1.0, 1.488]
    """
    mean, std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        pooled = np.sqrt((std[1:] ** 2 + std[:-1] ** 2) / 2)
        dm = np.abs(np.diff(mean))
        shift = np.where(pooled > 0, dm / pooled, np.where(dm > 0, np.inf, 0.0))
        ratio = np.where((std[1:] > 0) & (std[:-1] > 0), np.abs(np.log(std[1:] / std[:-1])),
                         np.where(std[1:] == std[:-1], 0.0, np.inf))
        out = shift + ratio
    out[~(np.isfinite(mean[1:]) & np.isfinite(mean[:-1]))] = np.nan
    return out


def edge_fraction(counts: np.ndarray, edges: np.ndarray, vmin: float, vmax: float, zeros: float = 0.0) -> float:
    """Share of the values piled up at the observed minimum and maximum: a spike at the extremes.

    With ``i``, ``j`` the bins of ``vmin`` and ``vmax``:
    ``(max(0, c[i] - c[i+1]) + max(0, c[j] - c[j-1])) / sum(c)``: the mass of each
    edge bin beyond what its inner neighbour holds, so a density that is merely
    high near an extreme (a ReLU's small positive values) does not count, a
    spike does. Exact zeros are taken out of the edge bin when the minimum or
    maximum is 0 (a ReLU's zeros are "dead", not saturated). A sigmoid stuck at
    0 and 1 gives close to 1, a spread-out layer about 0. NaN when the observed
    span covers fewer than 4 bins (collapsed: see dead) or nothing was binned.

    Example:
        >>> edge_fraction(np.array([4, 1, 1, 4]), np.linspace(0, 4, 5), 0.1, 3.9)
        0.6
    """
    c = np.asarray(counts, np.float64).copy()
    n = c.sum()
    if n <= 0 or not (np.isfinite(vmin) and np.isfinite(vmax)):
        return float("nan")
    last = len(c) - 1
    i = int(np.clip(np.searchsorted(edges, vmin, side="right") - 1, 0, last))
    j = int(np.clip(np.searchsorted(edges, vmax, side="right") - 1, 0, last))
    if j - i < 3:
        return float("nan")
    if vmin == 0:
        c[i] = max(c[i] - zeros, 0.0)
    elif vmax == 0:
        c[j] = max(c[j] - zeros, 0.0)
    return float((max(c[i] - c[i + 1], 0.0) + max(c[j] - c[j - 1], 0.0)) / n)


def auc(yes: np.ndarray, no: np.ndarray) -> float:
    """Probability that a random YES output is above a random NO output, from two histograms.

    Both count the same ordered bins (out-of-range counts as the outermost
    bins); a pair in the same bin counts one half:
    ``AUC = sum_i yes_i (NO_below_i + no_i / 2) / (|yes| |no|)`` with
    ``NO_below_i = sum_{k < i} no_k``. Only the order of the bins matters, so
    values beyond the recorded range still count. NaN if either is empty.

    Example:
        >>> auc(np.array([0, 1, 1]), np.array([1, 1, 0]))
        0.875
    """
    yes, no = np.asarray(yes, np.float64), np.asarray(no, np.float64)
    ny, nn = yes.sum(), no.sum()
    if ny <= 0 or nn <= 0:
        return float("nan")
    below = np.cumsum(no) - no
    return float(np.sum(yes * (below + no / 2)) / (ny * nn))


def auc_separation(yes: np.ndarray, no: np.ndarray, clip: float = 1e-4) -> float:
    """Separation of the YES and NO peaks as a d' from their :func:`auc`: ``sqrt(2) * Phi^-1(AUC)``.

    For two normal peaks of equal spread this is exactly ``(mean_yes - mean_no) / spread``
    (:func:`separation`), but it uses only the order of the bins, so it stays
    right when outputs leave the recorded range, and it does not grow without
    bound once the peaks no longer overlap. AUC is clipped to
    ``[clip, 1 - clip]``, so complete separation gives about 5.26 whatever
    the number of outputs (train and valid stay comparable).

    Example:
        >>> round(auc_separation(np.array([0, 0, 50]), np.array([50, 0, 0])), 2)
        5.26
        >>> auc_separation(np.array([1, 1]), np.array([1, 1]))
        0.0
    """
    a = auc(yes, no)
    if not np.isfinite(a):
        return float("nan")
    a = min(max(a, clip), 1 - clip)
    return float(np.sqrt(2) * NormalDist().inv_cdf(a))


def top_split(counts: np.ndarray, w: float) -> tuple[np.ndarray, np.ndarray]:
    """Split a histogram into its top ``w`` share of mass and the rest (the bin on the cut is shared).

    The label-free YES/NO split: in a trained classifier with ``K`` outputs,
    one output per sample is the true class, so the YES peak holds ``1/K`` of
    the last layer's values and sits on top. Returns ``(top, rest)`` counts
    (floats) that add up to ``counts``.

    Example:
        >>> [a.tolist() for a in top_split(np.array([6, 2, 2]), 0.3)]
        [[0.0, 1.0, 2.0], [6.0, 1.0, 0.0]]
    """
    c = np.asarray(counts, np.float64)
    n = c.sum()
    top = np.zeros_like(c)
    if n <= 0:
        return top, c.copy()
    want = w * n
    above = np.cumsum(c[::-1])[::-1] - c  # mass strictly above each bin
    take = np.clip(want - above, 0.0, c)
    top = take
    return top, c - top




@lru_cache(maxsize=64)
def _split_curve(w: float) -> tuple[np.ndarray, np.ndarray]:
    """``f_w(D)``: the top-``w`` split's :func:`separation` for ``w N(D, 1) + (1 - w) N(0, 1)``, D on a grid."""
    ds = np.linspace(0.0, 10.0, 401)
    x = np.linspace(-9.0, 20.0, 5801)
    out = []
    for d in ds:
        dens = w * np.exp(-0.5 * (x - d) ** 2) + (1 - w) * np.exp(-0.5 * x**2)
        top, rest = top_split(dens, w)
        out.append(separation(top, rest, x))
    return ds, np.maximum.accumulate(np.asarray(out))


def label_free_separation(counts: np.ndarray, x: np.ndarray, outputs: int, spike: float = 0.05,
                          clip: float = 5.26) -> float:
    """Separation of the YES and NO peaks without labels, from the (K-1):1 mass split of the last layer.

    In a classifier with ``K = outputs`` outputs (at least 2) one output per
    sample is the true class, so the YES peak holds ``w = 1/K`` of the last
    layer's values, on top. The top ``w`` of the values (:func:`top_split`)
    stand for it, the rest for NO; their :func:`separation` (means apart in
    pooled spreads) is mapped back through ``f_w``, the same quantity for the
    mixture ``w N(D, 1) + (1 - w) N(0, 1)``, to the ``D`` that gives it. So one
    normal peak (an untrained model) gives 0 and two normal peaks ``D``
    spreads apart with masses ``(K-1):1`` give ``D``: the unit of the
    label-aware :func:`auc_separation` (which is also ``D`` on that mixture),
    clipped at the same 5.26. ``counts`` and ``x`` as laid out by
    :func:`with_outside` (values beyond the range sit just outside it, so the
    top group's spread is then a guess). Each value counts as spread over
    its bin (Sheppard's correction: ``width^2 / 12`` added to each group's
    variance), so a coarse histogram does not read as narrow peaks.

    A top group with (almost) no spread, under ``spike`` times the rest's
    while it lies inside the range, is an output stuck at one value whatever
    the input, not a YES peak: 0. NaN for an empty histogram.

    Example:
        >>> x = np.linspace(-10, 10, 401)
        >>> round(label_free_separation(np.exp(-0.5 * x**2), x, 10), 2)
        0.0
        >>> two = 0.9 * np.exp(-0.5 * x**2) + 0.1 * np.exp(-0.5 * (x - 4) ** 2)
        >>> round(label_free_separation(two, x, 10), 1)
        4.0
    """
    c = np.asarray(counts, np.float64)
    n = c.sum()
    if n <= 0:
        return float("nan")
    w = 1.0 / max(int(outputs), 2)
    x = np.asarray(x, np.float64)
    top, rest = top_split(c, w)
    # Sheppard's correction: each value lies anywhere in its bin, not at its centre (coarse bins would
    # otherwise make narrow peaks, and a large separation out of an unresolved histogram)
    width2 = np.gradient(x) ** 2 / 12 if len(x) > 1 else np.zeros(1)
    (m_top, s_top), (m_rest, s_rest) = moments(top, x), moments(rest, x)
    v_top = s_top**2 + float(np.sum(top * width2) / max(top.sum(), 1e-300))
    v_rest = s_rest**2 + float(np.sum(rest * width2) / max(rest.sum(), 1e-300))
    if c[-1] < 0.5 * w * n and s_rest > 0 and s_top < spike * s_rest:
        return 0.0
    pooled = np.sqrt((v_top + v_rest) / 2)
    if not (np.isfinite(pooled) and pooled > 0):
        return float("nan")
    raw = (m_top - m_rest) / pooled
    ds, f = _split_curve(round(w, 6))
    return float(min(np.interp(raw, f, ds, left=0.0, right=ds[-1]), clip))
