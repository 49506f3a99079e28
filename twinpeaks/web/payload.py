"""What a report or the dashboard shows of a run, as plain JSON-able data.

Design constraints:

* Display only. Heatmap columns and bins are merged (summed) for the page,
  never in the run file: a 10,000-step, 60-layer run must give a page of a few
  MB. Merging sums exact integer counts; nothing else is approximated, except
  the heatmap cells, sent as 16-bit log-scale levels (relative error < 1e-4).
* Reads the run only (:class:`twinpeaks.run.Run`); the same payload feeds the
  self-contained report (:mod:`twinpeaks.web.build`) and the live dashboard
  (:mod:`twinpeaks.web.server`).
* JSON only: no NaN or infinity (they become ``null``), strings are rendered
  by the page as text, never as HTML.
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
import logging
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from .. import grids
from .._version import __version__
from ..columns import merge_stats
from ..display import groups, merge_bins
from ..format import BINNED, mean_std, zero_fraction
from ..run import Histogram, Run, on_common_grid

log = logging.getLogger("twinpeaks")

#: Display limits (per heatmap): merged columns and bins, and bins of the twin-peaks curves.
MAX_COLUMNS = 240
MAX_BINS = 100
PEAK_BINS = 200
#: Heatmap cells of one run, all layers and phases together, when the columns are chosen
#: automatically: a model with many layers gets fewer columns per layer (never under
#: ``MIN_AUTO_COLUMNS``), so that its report stays a few MB.
MAX_CELLS = 3_000_000
MIN_AUTO_COLUMNS = 60
#: Heatmap cells are sent as log1p(count per step) quantised to this many levels.
LEVELS = 65535


def floats(values: Any, digits: int = 5) -> list[float | None]:
    """Floats rounded to ``digits`` significant digits; NaN and infinity become None (JSON null)."""
    return [float(f"{v:.{digits}g}") if math.isfinite(v) else None for v in np.asarray(values, np.float64).ravel().tolist()]


def jsonable(obj: Any, depth: int = 0) -> Any:
    """Numbers, strings, lists and dicts only (numpy arrays and scalars converted, NaN -> None)."""
    if depth > 6:
        return str(obj)
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist(), depth + 1)
    if isinstance(obj, dict):
        return {str(k): jsonable(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [jsonable(v, depth + 1) for v in obj]
    return str(obj)


def _iso(ts: Any) -> str | None:
    if not isinstance(ts, (int, float)) or not math.isfinite(ts):
        return None
    return _dt.datetime.fromtimestamp(ts, _dt.timezone.utc).isoformat(timespec="seconds")


def heatmap(run: Run, layer: int, phase: str, max_columns: int = MAX_COLUMNS, max_bins: int = MAX_BINS) -> dict | None:
    """One layer's colorful dimension in one phase: merged columns, mean count per step, telemetry."""
    cols = run.columns(layer, phase)
    if not len(cols):
        return None
    g = groups(len(cols), max_columns)
    last = np.append(g[1:], len(cols)) - 1
    starts, ends = cols.starts[g], cols.ends[last]
    grid = None if cols.fixed else run.layer_grid(layer)
    if grid is None:
        merged, edges = cols.counts, cols.edges[0]
    else:  # automatic ranges: every column moved exactly onto the layer's grid (where its values went over the run)
        merged, edges = cols.on_grid(grid), grids.edges_of(grid, cols.counts.shape[1])
        lo, hi = _occupied([merged.sum(axis=0)], merged.shape[1])
        merged, edges = merged[:, lo:hi + 1], edges[lo:hi + 2]  # the value axis: where the values went
    counts, edges = merge_bins(np.add.reduceat(merged, g, axis=0), edges, max_bins)
    per_step = counts / np.maximum(ends - starts, 1)[:, None]
    scale = float(np.log1p(per_step.max())) if per_step.size else 0.0
    levels = np.zeros(per_step.shape, np.uint16)
    if scale > 0:
        levels = np.rint(np.log1p(per_step) / scale * LEVELS).astype("<u2")
    add = lambda a: np.add.reduceat(a, g)  # noqa: E731
    stats = merge_stats(cols.stats, g)
    mean, std = mean_std(stats)
    zero_frac = zero_fraction(stats)
    with np.errstate(invalid="ignore", divide="ignore"):
        outside = (add(cols.underflow) + add(cols.overflow) + add(cols.nonfinite)) / stats[:, BINNED]
    return {
        "starts": starts.tolist(), "ends": ends.tolist(), "edges": floats(edges, 7),
        "rows": int(per_step.shape[1]), "cols": int(per_step.shape[0]),
        # row-major [bin][column], little-endian uint16, as Plotly's z wants it
        "levels": base64.b64encode(np.ascontiguousarray(levels.T).tobytes()).decode("ascii"),
        "scale": scale, "stored_columns": len(cols),
        "mean": floats(mean), "std": floats(std), "zeros": floats(zero_frac), "outside": floats(outside),
        "min": floats(np.fmin.reduceat(cols.min, g)), "max": floats(np.fmax.reduceat(cols.max, g)),
        "nonfinite": int(cols.nonfinite.sum()),
    }


def _occupied(counts: Sequence[np.ndarray], bins: int) -> tuple[int, int]:
    """The first and last bin holding a count in any of ``counts`` (all bins when none does)."""
    nz = np.flatnonzero(np.sum(counts, axis=0)) if len(counts) else np.zeros(0, np.int64)
    return (int(nz[0]), int(nz[-1])) if len(nz) else (0, bins - 1)


def _hist(h: Histogram, onto: tuple[int, int] | None = None) -> dict:
    """One histogram on the layer's grid; its ``counts`` (an array) are trimmed and merged by :func:`twin_peaks`."""
    if onto is not None:  # automatic ranges: onto the layer's grid, shared by all its histograms (exact)
        h = on_common_grid([h], onto)[0]
    return {"counts": h.counts, "total": h.total, "under": h.underflow, "over": h.overflow,
            "nonfinite": h.nonfinite, "steps": h.steps}


def _epoch_hists(run: Run, layer: int, epoch: int, phases: Sequence[str], onto: tuple[int, int] | None,
                 **pick: Any) -> dict:
    """``{phase: histogram}`` of one epoch; train is its last quarter (what Twin Peaks compares)."""
    out = {}
    for phase in phases:
        h = run.histogram(layer, phase, epoch, last_quarter=phase == "train", **pick)
        if h.total:
            out[phase] = _hist(h, onto)
    return out


def twin_peaks(run: Run, layer: int, max_bins: int = PEAK_BINS) -> dict:
    """Per-epoch histograms of ``layer``: train (last quarter), valid, test; per class and by truth when recorded.

    Every histogram shares the layer's edges; with an automatic range they span only the bins any epoch used.
    """
    info = run.layer(layer)
    phases = run.phases
    onto = run.layer_grid(info.index)
    epochs: list[dict[str, Any]] = []
    for e in range(run.epochs):
        entry: dict[str, Any] = {"phases": _epoch_hists(run, info.index, e, phases, onto)}
        if info.columns:
            entry["classes"] = [_epoch_hists(run, info.index, e, phases, onto, column=k)
                                for k in range(info.columns)]
        truth = {t: _epoch_hists(run, info.index, e, phases, onto, truth=t) for t in ("yes", "no")}
        if truth["yes"] or truth["no"]:
            entry["truth"] = truth
        epochs.append(entry)
    hists = [h for entry in epochs for group in (entry["phases"], *entry.get("classes", ()),
                                                 *entry.get("truth", {}).values()) for h in group.values()]
    edges = run.edges(info)
    first, last = _occupied([h["counts"] for h in hists], info.bins) if onto is not None else (0, info.bins - 1)
    edges = edges[first:last + 2]
    for h in hists:
        h["counts"] = merge_bins(h["counts"][first:last + 1], edges, max_bins)[0].tolist()
    edges = merge_bins(np.zeros(last + 1 - first), edges, max_bins)[1]
    return {"layer": info.index, "name": info.name, "edges": floats(edges, 7), "epochs": epochs}


def _small(evidence: Any, limit: int = 4000) -> Any:
    """Evidence as is, or as truncated text when it would weigh more than ``limit`` characters."""
    text = json.dumps(evidence, allow_nan=False)
    return evidence if len(text) <= limit else text[:limit] + " ..."


def diagnosis(run: Run) -> tuple[list[dict] | None, str | None]:
    """``(findings, note)``: the findings of :func:`twinpeaks.diagnose`, or a note why there are none."""
    from ..diagnosis import diagnose

    if run.epochs == 0:
        return None, "No closed epoch yet: the diagnosis starts after the first end_epoch()."
    findings = []
    for f in diagnose(run).findings:
        findings.append({
            "kind": str(f.kind), "severity": str(f.severity), "layer": None if f.layer is None else str(f.layer),
            "epoch": None if f.epoch is None else int(f.epoch), "message": str(f.message),
            "evidence": _small(jsonable(f.evidence)),
        })
    order = {"problem": 0, "warning": 1, "info": 2}
    findings.sort(key=lambda f: order.get(f["severity"], 3))
    return findings, None


def run_payload(
    run: Run, rid: str = "r0", name: str | None = None, *,
    max_columns: int | None = None, max_bins: int = MAX_BINS, max_cells: int = MAX_CELLS,
) -> dict:
    """Everything the page shows of one run (JSON-able).

    Example:
        >>> p = run_payload(tp.open_run("runs/exp1.tp"))  # doctest: +SKIP
        >>> p["layers"][0]["name"], p["epochs"]            # doctest: +SKIP
        ('features.0', 3)
    """
    meta = run.meta
    phases = run.phases
    layers = run.layers
    called = [i for i in layers if i.called]
    if max_columns is None:  # automatic: fit the run's heatmaps into max_cells
        cells = max(1, len(called) * len(phases) * max((min(i.bins, max_bins) for i in called), default=1))
        max_columns = int(np.clip(max_cells // cells, MIN_AUTO_COLUMNS, MAX_COLUMNS))
    if max_columns < 2 or max_bins < 2:
        raise ValueError(f"max_columns and max_bins must be at least 2, got {max_columns} and {max_bins}")
    path = run.path
    payload: dict[str, Any] = {
        "id": rid,
        "name": name or (path.name if path else "run in memory"),
        "path": str(path) if path else None,
        "size": os.path.getsize(path) if path and path.exists() else None,
        "meta": {
            "model": meta.get("model"), "created": _iso(meta.get("created")),
            "twinpeaks_version": meta.get("twinpeaks_version"), "torch_version": meta.get("torch_version"),
            "options": jsonable(meta.get("options") or {}), "classes": meta.get("classes"),
            "updated": _iso(run.epoch_info(-1).closed_at) if run.epochs else None,
        },
        "epochs": run.epochs,
        "phases": phases,
        "n_steps": {p: run.n_steps(p) for p in phases},
        "epoch_steps": [run.epoch_info(e).steps for e in range(run.epochs)],
        "layers": [
            {"index": i.index, "name": i.name, "type": i.type, "shape": None if i.out_shape is None else list(i.out_shape),
             "bins": i.bins, "columns": i.columns, "called": i.called}
            for i in layers
        ],
        "heatmaps": {},
        "display_columns": max_columns,
    }
    for info in layers:
        if not info.called:
            continue
        maps = {p: heatmap(run, info.index, p, max_columns, max_bins) for p in phases}
        payload["heatmaps"][str(info.index)] = {p: m for p, m in maps.items() if m is not None}
    payload["twinpeaks"] = twin_peaks(run, called[-1].index) if called else None
    payload["findings"], payload["diagnosis_note"] = diagnosis(run)
    return payload


def report_payload(runs: Sequence[Run], names: Sequence[str | None] | None = None, **options: Any) -> dict:
    """The payload of a page showing ``runs`` side by side (a name of None: the run's own)."""
    names = list(names) if names is not None else [None] * len(runs)
    return {
        "twinpeaks_version": __version__,
        "generated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "runs": [run_payload(r, f"r{i}", n, **options) for i, (r, n) in enumerate(zip(runs, names))],
    }
