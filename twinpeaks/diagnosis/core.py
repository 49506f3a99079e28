"""The core of the diagnosis: the run's context, the findings, and the loop that runs the rules.

``diagnose`` opens the run, builds a :class:`Context` (the run, its phases and
layers, the thresholds), runs every registered measure (metrics per epoch),
then every registered rule whose task matches (findings). The rules live one
per module in :mod:`twinpeaks.diagnosis.rules` and register themselves
through :mod:`twinpeaks.diagnosis.registry`.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from ..run import Histogram, LayerInfo, LayerRef, Run, open_run
from .registry import MEASURES, RULES, kinds, metrics
from .thresholds import Thresholds

SEVERITIES = ("info", "warning", "problem")
KINDS = kinds()
#: metric name -> (per phase, per layer, one line): what :meth:`Diagnosis.metric` serves
METRICS: dict[str, tuple[bool, bool, str]] = metrics()


@dataclass(frozen=True)
class Finding:
    """One verdict about a run.

    Attributes:
        kind: one of :data:`KINDS`.
        severity: ``"info"``, ``"warning"`` or ``"problem"``.
        layer: the layer concerned (its name), or None for the whole run.
        epoch: the first epoch it shows in, or None.
        message: one sentence for people: what the charts show.
        evidence: the numbers behind it.
        cause: the likely cause, in a few words ("" for an info).
        remedy: what to change, concretely ("" for an info).
    """

    kind: str
    severity: str
    layer: str | None
    epoch: int | None
    message: str
    evidence: dict[str, float] = field(default_factory=dict)
    cause: str = ""
    remedy: str = ""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (non-finite numbers become None)."""
        d = asdict(self)
        d["evidence"] = {k: _json_number(v) for k, v in self.evidence.items()}
        return d


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
        sep = self.metric("separation") if self.task in ("classification", "unlabeled") else None
        if sep is not None and np.isfinite(sep).any():
            phase = "valid" if "valid" in self.phases else "train"
            shown = np.unique(np.linspace(0, len(sep) - 1, min(len(sep), 10)).round().astype(int))
            how = " (label-free)" if self.task == "unlabeled" else ""
            lines.append(f"  {phase} separation{how} by epoch: "
                         + "  ".join(f"{e}: {_fmt(sep[e])}" for e in shown))
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
            if f.cause or f.remedy:
                lines.append(" " * 10 + "; ".join(x for x in (f"likely cause: {f.cause}" if f.cause else "",
                                                              f"remedy: {f.remedy}" if f.remedy else "") if x))
        return "\n".join(lines)


_MAX_LINES = 3  # findings of one kind and severity shown by str(); to_dict() has all


def _fmt(v: float) -> str:
    return "-" if not np.isfinite(v) else f"{v:.2f}"


def _json_number(v: Any) -> Any:
    v = float(v)
    return v if math.isfinite(v) else None


def diagnose(run: Run | str | os.PathLike, *, thresholds: Thresholds | None = None) -> Diagnosis:
    """Read a run and say what its charts mean: health metrics per epoch and findings.

    What kind of run it is decides what the last layer is judged on:
    ``regression`` when the last layer has a single output per sample and no
    class names were recorded (even if targets were: framework adapters pass a
    regression's targets too; a one-output binary classifier is recognised by
    ``classes=[...]``); otherwise ``classification`` when YES/NO (truth)
    histograms were recorded (``hist.targets(y)``); otherwise ``unlabeled``
    (the label-free separation, from the (K-1):1 mass split of the last
    layer, stands in for the label-aware one). A regression run gets
    ``no_twin_peaks`` and never a separation claim.

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
        ctx = Context(r, t)
        for m in MEASURES:
            m.fn(ctx)
        for rule in RULES:
            if ctx.task in rule.tasks:
                rule.fn(ctx)
        return Diagnosis(ctx.source, ctx.task, ctx.n, list(r.phases), [layer.name for layer in ctx.layers],
                         ctx.findings, ctx.metrics)
    finally:
        if own:
            r.close()


class Context:
    """What measures and rules share about one run: the run, its layers and phases, metrics, findings.

    Attributes:
        run: the run read.
        t: the thresholds.
        n: number of closed epochs.
        phases: the phases judged (``train`` and ``valid`` when recorded).
        layers: the layers that produced output, in run order; ``last`` is the last one.
        metrics: ``(name, phase, layer) -> one value per epoch``.
        findings: what the rules found so far.
        task: ``"classification"``, ``"unlabeled"`` or ``"regression"`` (set by the last-layer measure).
    """

    def __init__(self, run: Run, t: Thresholds):
        self.run = run
        self.t = t
        self.n = run.epochs
        self.phases = [p for p in run.phases if p in ("train", "valid")] or run.phases[:1]
        self.layers = [layer for layer in run.layers if layer.called]
        self.metrics: dict[tuple[str, str | None, str | None], np.ndarray] = {}
        self.findings: list[Finding] = []
        self.task = "unlabeled"
        self.cache: dict[Any, Any] = {}  #: results a measure computed that a rule reuses
        self.source = str(run.path) if run.path else "<memory>"
        if self.n == 0 or not self.layers:
            why = "no closed epoch" if self.n == 0 else "no layer produced output"
            raise ValueError(f"nothing to diagnose in {self.source}: {why}; call hist.end_epoch() after each epoch")
        self.last: LayerInfo = self.layers[-1]

    def add(self, kind: str, severity: str, layer: str | None, epoch: int | None, message: str,
            evidence: dict[str, float], *, cause: str = "", remedy: str = "") -> None:
        """Add a finding (evidence values become floats)."""
        self.findings.append(Finding(kind, severity, layer, epoch, message,
                                     {k: float(v) for k, v in evidence.items()}, cause, remedy))

    def dead_before(self, layer: LayerInfo) -> str | None:
        """The first layer found dead (problem) before ``layer`` in run order, if any."""
        dead = {f.layer for f in self.findings if f.kind == "dead" and f.severity == "problem"}
        for other in self.layers:
            if other.index >= layer.index:
                return None
            if other.name in dead:
                return other.name
        return None


    def put(self, name: str, phase: str | None, layer: str | None, values: list[float]) -> np.ndarray:
        """Store one metric's values per epoch."""
        arr = np.asarray(values, dtype=np.float64)
        self.metrics[(name, phase, layer)] = arr
        return arr

    def get(self, name: str, phase: str | None = None, layer: str | None = None) -> np.ndarray | None:
        """A stored metric, or None."""
        return self.metrics.get((name, phase, layer))

    def hist(self, layer: LayerRef, phase: str, epoch: int, truth: Literal["yes", "no"] | None = None) -> Histogram:
        """The histogram Twin Peaks compares: train = the last quarter of the epoch, valid = all of it."""
        return self.run.histogram(layer, phase, epoch, truth=truth, last_quarter=phase == "train")



