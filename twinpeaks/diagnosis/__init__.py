"""Diagnosis: what an expert would read from a run's charts, in numbers and in words.

``tp.diagnose(run)`` reads a recorded run (never the hooks: it works on any run
file, also one still being written) and returns a :class:`Diagnosis`: health
metrics per epoch (:meth:`Diagnosis.metric`) and :class:`Finding` objects with
a kind, a severity, the layer and epoch concerned, one sentence, and the
numbers behind it.

Finding kinds (stable names):

* ``separation``: how far the YES and NO peaks of the last layer are apart
  (info when they separate, warning when they do not).
* ``overfitting``: the train and valid peaks of the last layer drift apart.
* ``unstable``: layer statistics jump between steps far beyond batch noise, or
  values became NaN/inf.
* ``dead``: a layer's outputs are (almost) all exactly zero, or a single value.
* ``saturated``: a layer's values pile up at the extremes of their span.
* ``out_of_range``: a share of a layer's values fell outside the recorded
  range; says whether the range was wrong from the start or the values grew.
* ``no_twin_peaks`` (info): the last layer is not expected to be bimodal
  (regression), or is not; no separation is claimed then.

The formulas are in :mod:`twinpeaks.diagnosis.metrics`; every threshold is a
field of :class:`Thresholds`.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from ..columns import STATS
from ..run import Run, on_common_grid, open_run
from . import metrics as M

log = logging.getLogger("twinpeaks")

SEVERITIES = ("info", "warning", "problem")
KINDS = ("separation", "overfitting", "unstable", "dead", "saturated", "out_of_range", "no_twin_peaks")


@dataclass(frozen=True)
class Finding:
    """One verdict about a run.

    Attributes:
        kind: one of :data:`KINDS`.
        severity: ``"info"``, ``"warning"`` or ``"problem"``.
        layer: the layer concerned (its name), or None for the whole run.
        epoch: the first epoch it shows in, or None.
        message: one sentence for people.
        evidence: the numbers behind it.
    """

    kind: str
    severity: str
    layer: str | None
    epoch: int | None
    message: str
    evidence: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (non-finite numbers become None)."""
        d = asdict(self)
        d["evidence"] = {k: _json_number(v) for k, v in self.evidence.items()}
        return d


@dataclass(frozen=True)
class Thresholds:
    """Every threshold the diagnosis uses; pass ``tp.diagnose(run, thresholds=Thresholds(...))`` to change one.

    Example:
        >>> d = tp.diagnose("runs/exp1.tp", thresholds=Thresholds(dead_problem=0.9))  # doctest: +SKIP
    """

    separation_weak: float = 1.0  #: last valid separation below this: the peaks do not separate (warning)
    bimodal: float = 0.555  #: bimodality coefficient above this (a uniform distribution's): two peaks
    overfit_gap: float = 1.0  #: train minus valid separation that counts as a gap
    overfit_distance: float = 1.5  #: train-valid distance this many times its early level counts as drift
    overfit_share: float = 0.8  #: share of the epochs from the onset to the end that must show it
    overfit_plateau: float = 0.05  #: valid separation within this fraction of its best: it stopped improving
    jump_floor: float = 0.15  #: median step jump (in spreads) in an epoch above which a layer jumps, if also ...
    jump_noise: float = 3.0  #: ... above this many times the batch noise ``2 / sqrt(values per step)`` and ...
    jump_baseline: float = 5.0  #: ... above this many times the layer's own calm level
    jump_layers: float = 1 / 3  #: share of the layers that must jump in the same epoch
    jump_severe: float = 1.0  #: a layer jumping this many spreads per step is enough on its own
    dead_warning: float = 0.85  #: zero fraction for a warning
    dead_problem: float = 0.95  #: zero fraction for a problem
    saturated_warning: float = 0.3  #: edge fraction for a warning
    saturated_problem: float = 0.6  #: edge fraction for a problem
    range_warning: float = 0.01  #: out-of-range share for a warning
    range_problem: float = 0.2  #: out-of-range share for a problem


#: metric name -> (per phase, per layer, one line): what :meth:`Diagnosis.metric` serves
METRICS: dict[str, tuple[bool, bool, str]] = {
    "separation": (True, False, "YES vs NO peaks of the last layer: sqrt(2) * Phi^-1(AUC) (a d')"),
    "separation_moments": (True, False, "YES vs NO: (mean_yes - mean_no) / pooled std of the histograms"),
    "auc": (True, False, "P(a YES output > a NO output) of the last layer"),
    "overlap": (True, False, "shared area of the normalised YES and NO histograms"),
    "bimodality": (True, False, "Sarle's bimodality coefficient of the last layer's histogram"),
    "train_valid_distance": (False, False, "W1 / pooled spread between train (last quarter) and valid histograms"),
    "separation_gap": (False, False, "train separation minus valid separation"),
    "zero_fraction": (True, True, "share of exact zeros"),
    "out_of_range": (True, True, "share of values outside the recorded range"),
    "nonfinite": (True, True, "share of NaN and +-inf values"),
    "edge_fraction": (True, True, "share of values in the bins of the observed min and max"),
    "std": (True, True, "standard deviation of the values"),
    "step_jump": (False, True, "median step-to-step jump of mean and std, in spreads (train)"),
}


class Diagnosis:
    """Findings and per-epoch health metrics of one run (see :func:`diagnose`).

    Example:
        >>> d = tp.diagnose("runs/exp1.tp")              # doctest: +SKIP
        >>> [f.kind for f in d.findings]                  # doctest: +SKIP
        ['separation', 'out_of_range']
        >>> d.metric("separation", "valid").round(1)      # doctest: +SKIP
        array([1.2, 2.5, 3.1])
    """

    def __init__(self, source: str, task: str, epochs: int, phases: list[str], layers: list[str],
                 findings: list[Finding], metrics: dict[tuple[str, str | None, str | None], np.ndarray]):
        self.source = source  #: where the run came from (path or "<memory>")
        self.task = task  #: "classification", "regression" or "unlabeled" (see :func:`diagnose`)
        self.epochs = epochs
        self.phases = phases
        self.layers = layers  #: layer names, in run order
        order = {s: i for i, s in enumerate(SEVERITIES)}
        self.findings: list[Finding] = sorted(findings, key=lambda f: -order[f.severity])
        self._metrics = metrics

    @property
    def metric_names(self) -> list[str]:
        """Names :meth:`metric` accepts."""
        return [name for name in METRICS if any(k[0] == name for k in self._metrics)]

    def metric(self, name: str, phase: str | None = None, layer: str | int | None = None) -> np.ndarray:
        """One number per epoch (NaN where it cannot be computed).

        Args:
            name: one of :attr:`metric_names` (the formulas are in :data:`METRICS` and
                :mod:`twinpeaks.diagnosis.metrics`).
            phase: for per-phase metrics; None = ``"valid"`` if recorded, else ``"train"``.
            layer: for per-layer metrics (name or index); None = the last layer.

        Example:
            >>> d.metric("separation", "valid")              # doctest: +SKIP
            >>> d.metric("zero_fraction", "train", layer="2")  # doctest: +SKIP
        """
        if name not in METRICS:
            raise ValueError(f"unknown metric {name!r}; metrics are {', '.join(self.metric_names)}")
        per_phase, per_layer, _ = METRICS[name]
        if per_phase:
            if phase is None:
                phase = "valid" if "valid" in self.phases else "train"
            elif phase not in self.phases:
                raise ValueError(f"phase {phase!r} was not recorded; this run has {self.phases}")
        elif phase is not None:
            raise ValueError(f"metric {name!r} compares phases: call it without phase")
        key_layer = None
        if per_layer:
            key_layer = self._layer_name(layer)
        elif layer is not None:
            raise ValueError(f"metric {name!r} is about the last layer: call it without layer")
        arr = self._metrics.get((name, phase, key_layer))
        if arr is None:
            return np.full(self.epochs, np.nan)
        return arr.copy()

    def _layer_name(self, layer: str | int | None) -> str:
        if layer is None:
            layer = -1
        if isinstance(layer, (int, np.integer)) and not isinstance(layer, bool):
            if not -len(self.layers) <= layer < len(self.layers):
                raise ValueError(f"layer index {layer} is out of range: the run has {len(self.layers)} layers")
            return self.layers[layer]
        if layer not in self.layers:
            raise ValueError(f"no layer named {layer!r} in this run")
        return str(layer)

    @property
    def worst(self) -> str | None:
        """The highest severity among the findings (None without findings)."""
        return self.findings[0].severity if self.findings else None

    def has(self, kind: str, severity: str | None = None) -> bool:
        """Whether a finding of ``kind`` (at least ``severity``) is there."""
        floor = SEVERITIES.index(severity) if severity else 0
        return any(f.kind == kind and SEVERITIES.index(f.severity) >= floor for f in self.findings)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: the run, findings, and every metric per epoch."""
        metrics: dict[str, Any] = {}
        for (name, phase, layer), arr in self._metrics.items():
            key = name + (f"/{phase}" if phase else "") + (f"/{layer}" if layer is not None else "")
            metrics[key] = [_json_number(v) for v in arr]
        return {
            "run": self.source, "task": self.task, "epochs": self.epochs, "phases": self.phases,
            "findings": [f.to_dict() for f in self.findings], "metrics": metrics,
        }

    def to_json(self, **kwargs: Any) -> str:
        """:meth:`to_dict` as JSON text."""
        return json.dumps(self.to_dict(), **kwargs)

    def __repr__(self) -> str:
        counts = {s: sum(f.severity == s for f in self.findings) for s in SEVERITIES}
        return f"Diagnosis({self.source!r}, task={self.task!r}, epochs={self.epochs}, findings={counts})"

    def __str__(self) -> str:
        lines = [f"{self.source}: {self.task}, {self.epochs} epoch{'s' if self.epochs != 1 else ''}, "
                 f"phases {', '.join(self.phases) or 'none'}"]
        sep = self.metric("separation") if self.task == "classification" else None
        if sep is not None and np.isfinite(sep).any():
            phase = "valid" if "valid" in self.phases else "train"
            shown = np.unique(np.linspace(0, len(sep) - 1, min(len(sep), 10)).round().astype(int))
            lines.append(f"  {phase} separation by epoch: " + "  ".join(f"{e}: {_fmt(sep[e])}" for e in shown))
        if not self.findings:
            lines.append("  no findings: nothing looks wrong")
        shown_per_kind: dict[tuple[str, str], int] = {}
        for f in self.findings:
            key = (f.kind, f.severity)
            shown_per_kind[key] = shown_per_kind.get(key, 0) + 1
            n = shown_per_kind[key]
            if n > _MAX_LINES:
                if n == _MAX_LINES + 1:
                    more = sum(g.kind == f.kind and g.severity == f.severity for g in self.findings) - _MAX_LINES
                    lines.append(f"  {f.severity.upper():<8}{f.kind}: ... and {more} more layer(s) (--json lists all)")
                continue
            where = "".join([f" [{f.layer}]" if f.layer is not None else "",
                             f" from epoch {f.epoch}" if f.epoch is not None else ""])
            lines.append(f"  {f.severity.upper():<8}{f.kind}{where}: {f.message}")
        return "\n".join(lines)


_MAX_LINES = 3  # findings of one kind and severity shown by str(); to_dict() has all


def _fmt(v: float) -> str:
    return "-" if not np.isfinite(v) else f"{v:.2f}"


def _json_number(v: Any) -> Any:
    v = float(v)
    return v if math.isfinite(v) else None


# --------------------------------------------------------------------------------------------------


def diagnose(run: Run | str | os.PathLike, *, thresholds: Thresholds | None = None) -> Diagnosis:
    """Read a run and say what its charts mean: health metrics per epoch and findings.

    What kind of run it is decides what the last layer is judged on:
    ``regression`` when the last layer has a single output per sample and no
    class names were recorded (even if targets were: framework adapters pass a
    regression's targets too; a one-output binary classifier is recognised by
    ``classes=[...]``); otherwise ``classification`` when YES/NO (truth)
    histograms were recorded (``hist.targets(y)``); otherwise ``unlabeled``
    (the bimodality of the last layer stands in for separation). A regression
    run gets ``no_twin_peaks`` and never a separation claim.

    Args:
        run: a :class:`~twinpeaks.run.Run` or the path of a run file.
        thresholds: change the limits of the verdicts (see :class:`Thresholds`).

    Example:
        >>> d = tp.diagnose("runs/exp1.tp")   # doctest: +SKIP
        >>> print(d)                          # doctest: +SKIP
    """
    t = thresholds or Thresholds()
    own = not isinstance(run, Run)
    r = open_run(run)
    try:
        return _Diagnoser(r, t).diagnose()
    finally:
        if own:
            r.close()


class _Diagnoser:
    """Computes the metrics of one run once, then applies the rules."""

    def __init__(self, run: Run, t: Thresholds):
        self.run = run
        self.t = t
        self.n = run.epochs
        self.phases = [p for p in run.phases if p in ("train", "valid")] or run.phases[:1]
        self.layers = [layer for layer in run.layers if layer.called]
        self.metrics: dict[tuple[str, str | None, str | None], np.ndarray] = {}
        self.findings: list[Finding] = []

    def diagnose(self) -> Diagnosis:
        run = self.run
        source = str(run.path) if run.path else "<memory>"
        if self.n == 0 or not self.layers:
            why = "no closed epoch" if self.n == 0 else "no layer produced output"
            raise ValueError(f"nothing to diagnose in {source}: {why}; call hist.end_epoch() after each epoch")
        self.last = self.layers[-1]
        self._layer_metrics()
        task = self._last_layer_metrics()
        self.task = task
        self._check_dead_saturated()
        self._check_out_of_range()
        self._check_unstable()
        if task == "classification":
            self._check_separation()
            self._check_overfitting()
        elif task == "regression":
            self._add("no_twin_peaks", "info", self.last.name, None,
                      f"the last layer {self.last.name!r} has one output and no class names were recorded: a "
                      "regression, whose outputs form one peak, so twin peaks do not apply (a one-output binary "
                      "classifier gets them with classes=[...])",
                      {"outputs": 1.0})
        else:
            self._check_bimodality()
        return Diagnosis(source, task, self.n, list(run.phases), [layer.name for layer in self.layers],
                         self.findings, self.metrics)

    # -- helpers -----------------------------------------------------------------------------
    def _add(self, kind: str, severity: str, layer: str | None, epoch: int | None, message: str,
             evidence: dict[str, float]) -> None:
        self.findings.append(Finding(kind, severity, layer, epoch, message,
                                     {k: float(v) for k, v in evidence.items()}))

    def _put(self, name: str, phase: str | None, layer: str | None, values: list[float]) -> np.ndarray:
        arr = np.asarray(values, dtype=np.float64)
        self.metrics[(name, phase, layer)] = arr
        return arr

    def _hist(self, layer: Any, phase: str, epoch: int, truth: Literal["yes", "no"] | None = None) -> Any:
        # train: the last quarter of the epoch (what Twin Peaks compares), valid: all of it
        return self.run.histogram(layer, phase, epoch, truth=truth, last_quarter=phase == "train")

    # -- metrics -----------------------------------------------------------------------------
    def _layer_metrics(self) -> None:
        """Per layer, phase and epoch: zeros, out-of-range, non-finite, edge share, spread; step jumps."""
        for layer in self.layers:
            for phase in self.phases:
                rows = []
                for e in range(self.n):
                    h = self.run.histogram(layer, phase, e)
                    total = h.total
                    if not total:
                        rows.append((np.nan,) * 5)
                        continue
                    zeros = float(h.stats[STATS.index("zeros")])
                    oor = (h.underflow + h.overflow) / total
                    edge = M.edge_fraction(h.counts, h.edges, h.min, h.max, zeros) if oor < 0.01 else np.nan
                    rows.append((h.zero_fraction, oor, h.nonfinite / total, edge, h.std))
                cols = np.array(rows, dtype=np.float64).reshape(self.n, 5).T
                for name, col in zip(("zero_fraction", "out_of_range", "nonfinite", "edge_fraction", "std"), cols):
                    self._put(name, phase, layer.name, list(col))
            self._put("step_jump", None, layer.name, self._jumps(layer)[0])

    def _jumps(self, layer: Any) -> tuple[list[float], float, float]:
        """Median step jump per epoch (train), the layer's calm level, and its batch-noise level.

        The calm level is the 25th percentile of all its step jumps; the noise
        level ``2 / sqrt(m)`` with ``m`` the median number of values binned per
        step (the expected jump of mean and spread between two batches of ``m``
        independent values).
        """
        if "train" not in self.run.phases:
            return [np.nan] * self.n, np.nan, np.nan
        c = self.run.columns(layer, "train")
        if len(c) < 2:
            return [np.nan] * self.n, np.nan, np.nan
        jumps = M.step_jumps(c.mean, c.std)
        ends = np.array([self.run.epoch_info(e).steps.get("train", (0, 0, 0))[1] for e in range(self.n)])
        epoch_of = np.searchsorted(ends, c.starts[1:], side="right")
        per_epoch = []
        for e in range(self.n):
            j = jumps[(epoch_of == e) & np.isfinite(jumps)]
            per_epoch.append(float(np.median(j)) if len(j) else np.nan)
        finite = jumps[np.isfinite(jumps)]
        calm = float(np.percentile(finite, 25)) if len(finite) else np.nan
        per_step = c.binned / np.maximum(c.ends - c.starts, 1)
        noise = 2 / math.sqrt(max(float(np.median(per_step)), 1.0))
        return per_epoch, calm, noise

    def _last_layer_metrics(self) -> str:
        """Separation, AUC, overlap, bimodality per phase; train-valid distance and gap. Returns the task."""
        truth_seen = False
        parts: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]] = {}  # yes, no, all, x
        # per epoch, every phase's yes/no/all histograms on one grid (automatic ranges: exact regridding)
        on_grid: dict[tuple[str, int], list[Any]] = {}
        for e in range(self.n):
            hs = on_common_grid([self._hist(self.last, p, e, t) for p in self.phases for t in ("yes", "no", None)])
            for i, p in enumerate(self.phases):
                on_grid[p, e] = hs[3 * i:3 * i + 3]
        for phase in self.phases:
            sep, sepm, auc, ovl, bim, rows = [], [], [], [], [], []
            for e in range(self.n):
                yes, no, h = on_grid[phase, e]
                cy, x = M.with_outside(yes.counts, yes.edges, yes.underflow, yes.overflow)
                cn, _ = M.with_outside(no.counts, no.edges, no.underflow, no.overflow)
                ch, _ = M.with_outside(h.counts, h.edges, h.underflow, h.overflow)
                truth_seen |= bool(cy.sum() and cn.sum())
                sep.append(M.auc_separation(cy, cn))
                sepm.append(M.separation(cy, cn, x))
                auc.append(M.auc(cy, cn))
                ovl.append(M.overlap(cy, cn))
                bim.append(M.bimodality(ch, x))
                rows.append((cy, cn, ch, x))
            parts[phase] = rows
            for name, vals in (("separation", sep), ("separation_moments", sepm), ("auc", auc),
                               ("overlap", ovl), ("bimodality", bim)):
                self._put(name, phase, None, vals)
        if "train" in parts and "valid" in parts:
            dist = []
            for (ty, tn, th, x), (vy, vn, vh, _) in zip(parts["train"], parts["valid"]):
                if truth_seen:
                    both = [v for v in (M.spread_distance(ty, vy, x), M.spread_distance(tn, vn, x)) if np.isfinite(v)]
                    dist.append(float(np.mean(both)) if both else np.nan)
                else:
                    dist.append(M.spread_distance(th, vh, x))
            self._put("train_valid_distance", None, None, dist)
            if truth_seen:
                gap = self.metrics[("separation", "train", None)] - self.metrics[("separation", "valid", None)]
                self._put("separation_gap", None, None, list(gap))
        shape = self.last.out_shape or ()
        outputs = shape[-1] if len(shape) >= 2 else 1
        if outputs == 1 and not self.run.classes:
            # framework adapters pass a regression's targets too: one output and no class names is a regression
            return "regression"
        return "classification" if truth_seen else "unlabeled"

    # -- rules --------------------------------------------------------------------------------
    def _check_separation(self) -> None:
        """One ``separation`` finding: how the last layer's YES and NO peaks separate over the epochs."""
        phase = "valid" if ("separation", "valid", None) in self.metrics and np.isfinite(
            self.metrics[("separation", "valid", None)]).any() else "train"
        sep = self.metrics[("separation", phase, None)]
        ovl = self.metrics[("overlap", phase, None)]
        ok = np.flatnonzero(np.isfinite(sep))
        first, last = int(ok[0]), int(ok[-1])
        best = int(ok[np.argmax(sep[ok])])
        oor = self.metrics[("out_of_range", phase, self.last.name)][last]
        ev = {"first": sep[first], "last": sep[last], "best": sep[best], "best_epoch": best,
              "overlap_last": ovl[last], "auc_last": self.metrics[("auc", phase, None)][last],
              "out_of_range_last": oor}
        caveat = (f" ({oor:.0%} of the outputs fall outside the recorded range, so this is a lower bound)"
                  if oor >= 0.5 else "")
        if sep[last] < self.t.separation_weak:
            self._add("separation", "warning", self.last.name, None,
                      f"the YES and NO peaks of the last layer do not separate: {phase} separation "
                      f"{sep[last]:.2f} at epoch {last}, {ovl[last]:.0%} of their area shared: the model does "
                      f"not tell the classes apart{caveat}", ev)
            return
        trend = "rose" if sep[last] > sep[first] + 0.1 else "stayed" if abs(sep[last] - sep[first]) <= 0.1 else "fell"
        span = f"from {sep[first]:.2f} (epoch {first}) to {sep[last]:.2f} (epoch {last})" if trend != "stayed" \
            else f"at about {sep[last]:.2f}"
        self._add("separation", "info", self.last.name, None,
                  f"the YES and NO peaks of the last layer separate: {phase} separation {trend} {span}, "
                  f"{ovl[last]:.0%} of their area shared{caveat}", ev)

    def _check_overfitting(self) -> None:
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
        gap = self.metrics.get(("separation_gap", None, None))
        dist = self.metrics.get(("train_valid_distance", None, None))
        if gap is None or dist is None or self.n < 4:
            return
        early = dist[1:4][np.isfinite(dist[1:4])]
        if not len(early):
            return
        base = float(np.min(early))
        drift = (gap >= self.t.overfit_gap) & (dist >= self.t.overfit_distance * max(base, 1e-3))
        if not drift[-1]:
            return
        vsep = self.metrics[("separation", "valid", None)]
        plateau = np.nan_to_num(vsep, nan=-np.inf) >= np.nanmax(vsep) - self.t.overfit_plateau * abs(np.nanmax(vsep))
        onset = None
        for e in range(1, self.n):
            if drift[e] and drift[e:].mean() >= self.t.overfit_share:
                onset = e
                break
        if onset is None:
            return
        onset = max(onset, int(np.argmax(plateau)))
        ev = {"gap_last": gap[-1], "distance_last": dist[-1], "distance_early": base,
              "valid_separation_best": float(np.nanmax(vsep)), "valid_separation_best_epoch": int(np.nanargmax(vsep)),
              "valid_separation_last": vsep[-1]}
        severity = "problem" if gap[-1] >= 2 * self.t.overfit_gap else "warning"
        self._add("overfitting", severity, self.last.name, onset,
                  f"train and valid peaks of the last layer drift apart from epoch {onset}: train separation "
                  f"exceeds valid by {gap[-1]:.2f} at the end and their distance is {dist[-1] / max(base, 1e-3):.1f}x "
                  f"its early level, while valid separation peaked at epoch {ev['valid_separation_best_epoch']}", ev)

    def _check_bimodality(self) -> None:
        """No targets recorded: the last layer's bimodality coefficient stands in for separation."""
        phase = "valid" if "valid" in self.phases else "train"
        bim = self.metrics[("bimodality", phase, None)]
        last = bim[-1]
        ev = {"bimodality_last": last, "bimodality_first": bim[0]}
        if np.isfinite(last) and last > self.t.bimodal:
            self._add("separation", "info", self.last.name, None,
                      f"the last layer is bimodal ({phase} bimodality coefficient {last:.2f} > {self.t.bimodal}); "
                      "record targets (hist.targets(y)) to tell the YES and NO peaks apart", ev)
        else:
            self._add("no_twin_peaks", "info", self.last.name, None,
                      f"the last layer is not bimodal ({phase} bimodality coefficient {last:.2f}); twin peaks "
                      "show up only for a classifier (record targets with hist.targets(y))", ev)

    def _check_dead_saturated(self) -> None:
        """Dead: zero fraction at the last epoch (train) at or above the limits, or a single value.

        The epoch reported is the first of the trailing run of epochs above the
        limit. Saturated: :func:`~twinpeaks.diagnosis.metrics.edge_fraction` at or
        above its limits (layers that are dead are not also called saturated).
        """
        phase = "train" if "train" in self.phases else self.phases[0]
        for layer in self.layers:
            zf = self.metrics[("zero_fraction", phase, layer.name)]
            std = self.metrics[("std", phase, layer.name)]
            h = self.run.histogram(layer, phase, -1)
            single = h.total > 0 and h.max == h.min
            if zf[-1] >= self.t.dead_warning or single:
                limit = self.t.dead_warning
                severity = "problem" if (zf[-1] >= self.t.dead_problem or single) else "warning"
                above = (zf >= limit) | (std == 0)
                since = _trailing_start(above)
                what = (f"{zf[-1]:.1%} of its outputs are exactly zero" if not single
                        else f"every output is the same value {h.min:.4g}")
                self._add("dead", severity, layer.name, since,
                          f"layer {layer.name!r} ({layer.type}) is dead: {what} in epoch {self.n - 1}"
                          f" (since epoch {since}); nothing flows through it", {"zero_fraction": zf[-1],
                                                                                 "std": std[-1]})
                continue
            edge = self.metrics[("edge_fraction", phase, layer.name)]
            if np.isfinite(edge[-1]) and edge[-1] >= self.t.saturated_warning:
                since = _trailing_start(edge >= self.t.saturated_warning)
                severity = "problem" if edge[-1] >= self.t.saturated_problem else "warning"
                self._add("saturated", severity, layer.name, since,
                          f"layer {layer.name!r} ({layer.type}) is saturated: {edge[-1]:.0%} of its values sit at "
                          f"the extremes of their span ({h.min:.3g} and {h.max:.3g}) since epoch {since}",
                          {"edge_fraction": edge[-1], "min": h.min, "max": h.max})

    def _check_out_of_range(self) -> None:
        """Out-of-range share at the last epoch (worst phase); range wrong from the start, or values grew.

        "From the start" when the first recorded step (train if recorded) already had
        at least half the final share; otherwise the values grew past the range
        ("explode" when their spread grew tenfold or more from the first step to
        the last). The suggested range covers the observed minimum and maximum
        of the whole run, rounded outwards.
        """
        for layer in self.layers:
            if not self.run.is_fixed(layer):
                continue  # an automatic range follows the values: nothing falls outside it
            shares = np.array([self.metrics[("out_of_range", p, layer.name)] for p in self.phases])
            last = np.nanmax(shares[:, -1]) if np.isfinite(shares[:, -1]).any() else np.nan
            if not (np.isfinite(last) and last >= self.t.range_warning):
                continue
            phase = self.phases[int(np.nanargmax(shares[:, -1]))]
            share = shares[self.phases.index(phase)]
            c = self.run.columns(layer, "train" if "train" in self.phases else phase)
            outside = (c.underflow + c.overflow).astype(np.float64)
            totals = c.counts.sum(axis=1) + outside + c.nonfinite
            first_step = outside[0] / totals[0] if len(c) and totals[0] else np.nan
            std = c.std[np.isfinite(c.std)]
            growth = std[-1] / std[0] if len(std) and std[0] > 0 else np.inf
            edges = self.run.edges(layer)
            whole = [h for h in (self.run.histogram(layer, p) for p in self.phases) if h.total]
            lo, hi = min(h.min for h in whole), max(h.max for h in whole)
            ev = {"share_first_step": first_step, "share_first": share[0], "share_last": share[-1],
                  "range_lo": edges[0], "range_hi": edges[-1], "observed_min": lo, "observed_max": hi,
                  "spread_growth": growth}
            severity = "problem" if last >= self.t.range_problem else "warning"
            rng = f"[{edges[0]:.3g}, {edges[-1]:.3g}]"
            # per layer: one range rarely fits every layer; automatic ranges (the default) never clip
            suggest = (f"record this layer with range={{{layer.name!r}: ({_nice(lo, down=True):g}, "
                       f"{_nice(hi, down=False):g})}}, or leave it automatic (no range for it)")
            if np.isfinite(first_step) and first_step >= 0.5 * share[-1]:
                self._add("out_of_range", severity, layer.name, 0,
                          f"{share[-1]:.0%} of the {phase} values of layer {layer.name!r} fall outside the recorded "
                          f"range {rng}, as from the first step (values span {lo:.3g} to {hi:.3g}): the range is "
                          f"wrong; {suggest}", ev)
            else:
                since = _trailing_start(share >= self.t.range_warning)
                how = "exploded" if growth >= 10 and layer is not self.last else "grew"
                self._add("out_of_range", severity, layer.name, since,
                          f"the values of layer {layer.name!r} {how} past the recorded range {rng}: "
                          f"{first_step:.0%} outside at the first step, {share[-1]:.0%} in epoch {self.n - 1} "
                          f"(spread x{growth:.3g}); {suggest}", ev)

    def _check_unstable(self) -> None:
        """Unstable: non-finite values, or step jumps far beyond batch noise and the run's calm level.

        A layer jumps in an epoch when its median step jump (see
        :func:`~twinpeaks.diagnosis.metrics.step_jumps`) exceeds
        ``max(jump_floor, jump_noise x noise, jump_baseline x calm)`` (see :meth:`_jumps`).
        The run is unstable from the first epoch in which at least ``jump_layers``
        of the layers jump, or one layer jumps by more than ``jump_severe``
        spreads per step: a head that learns fast moves alone, a learning rate
        that is too high moves the whole network. Layers fed by a dead layer
        compute on nothing and are not judged. Non-finite values give one
        finding per layer.
        """
        t = self.t
        dead = {f.layer: f.epoch or 0 for f in self.findings if f.kind == "dead" and f.severity == "problem"}
        dead_since = self.n
        hot = np.zeros((len(self.layers), self.n), bool)
        level = np.full((len(self.layers), self.n), np.nan)
        for i, layer in enumerate(self.layers):
            nonfinite = np.array([self.metrics[("nonfinite", p, layer.name)] for p in self.phases])
            bad = np.flatnonzero(np.nan_to_num(nonfinite).max(axis=0) > 0)
            if len(bad):
                share = float(np.nanmax(nonfinite))
                self._add("unstable", "problem", layer.name, int(bad[0]),
                          f"layer {layer.name!r} produced NaN or infinite values from epoch {int(bad[0])} "
                          f"(up to {share:.1%} of its values): training diverged", {"nonfinite_share": share})
            per_epoch, calm, noise = self._jumps(layer)
            jumps = np.nan_to_num(np.asarray(per_epoch))
            limit = max(t.jump_floor, t.jump_noise * noise, t.jump_baseline * (calm if np.isfinite(calm) else 0))
            level[i] = jumps / limit
            hot[i, :dead_since] = jumps[:dead_since] > limit
            if layer.name in dead:
                dead_since = min(dead_since, dead[layer.name])
        jm = np.nan_to_num(np.array([self.metrics[("step_jump", None, layer.name)] for layer in self.layers]))
        share = hot.mean(axis=0)
        severe = (hot & (jm > t.jump_severe)).any(axis=0)
        epochs = np.flatnonzero((share >= t.jump_layers) | severe)
        if not len(epochs):
            return
        first = int(epochs[0])
        names = [layer.name for i, layer in enumerate(self.layers) if hot[i, first]]
        worst = int(np.nanargmax(np.where(hot[:, first], jm[:, first], -np.inf)))
        shown = ", ".join(repr(n) for n in names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
        self._add("unstable", "problem", self.layers[worst].name, first,
                  f"activations jump between steps far beyond batch noise and the run's calm level in "
                  f"{len(names)} of {len(self.layers)} layers ({shown}) from epoch {first}; worst "
                  f"{self.layers[worst].name!r} moves {jm[worst, first]:.2f} spreads per step: the learning rate "
                  "is likely too high",
                  {"layers": len(names), "share_of_layers": share[first], "max_jump": jm[worst, first],
                   "ratio": level[worst, first]})


def _trailing_start(mask: np.ndarray) -> int:
    """First index of the run of True values that ends at the last element (len if the last is False)."""
    mask = np.asarray(mask, bool)
    i = len(mask)
    while i > 0 and mask[i - 1]:
        i -= 1
    return i


def _nice(v: float, down: bool) -> float:
    """``v`` rounded outwards to 1, 2 or 5 times a power of ten (0 stays 0)."""
    if v == 0 or not math.isfinite(v):
        return 0.0
    mag = abs(v)
    p = 10 ** math.floor(math.log10(mag))
    steps = [1, 2, 5, 10]
    outward = (v < 0) == down  # away from zero
    if outward:
        m = next(s for s in steps if s * p >= mag * (1 - 1e-12))
    else:
        m = next(s for s in reversed(steps) if s * p <= mag * (1 + 1e-12))
    return math.copysign(m * p, v)


__all__ = ["Diagnosis", "Finding", "KINDS", "METRICS", "SEVERITIES", "Thresholds", "diagnose"]
