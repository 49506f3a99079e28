"""Diagnosis rules register themselves: a new kind is one function with its thresholds, nothing else edited."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import twinpeaks as tp
from twinpeaks.diagnosis import Thresholds, registry


def test_every_rule_declares_its_kind_thresholds_and_check():
    kinds = registry.kinds()
    assert {"separation", "overfitting", "unstable", "dead", "saturated", "out_of_range", "no_twin_peaks"} <= set(kinds)
    for r in registry.RULES:
        assert r.kind in kinds and callable(r.fn) and r.fn.__module__.startswith("twinpeaks.diagnosis.rules.")
        for name, (default, doc) in r.thresholds.items():
            assert getattr(Thresholds(), name) == default and doc
    assert Thresholds(dead_problem=0.9).dead_problem == 0.9 and Thresholds().dead_problem == 0.95
    assert Thresholds(dead_problem=0.9) == Thresholds().replace(dead_problem=0.9) != Thresholds()
    with pytest.raises(ValueError, match="unknown threshold"):
        Thresholds(dead_problm=0.9)
    with pytest.raises(AttributeError):
        Thresholds().dead_problem = 1.0  # type: ignore[misc]


def test_a_rule_registered_from_outside_runs_and_its_threshold_is_settable(tmp_path):
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    with tp.ActivationsHistogram(model, tmp_path / "r.tp") as hist:
        for _ in range(2):
            model(torch.randn(16, 4))
            hist.end_epoch()

    def wide(ctx):
        for layer in ctx.layers:
            if layer.out_shape[-1] >= ctx.t.wide_layer:
                ctx.add("wide", "info", layer.name, None, f"layer {layer.name!r} is wide", {})

    before = (list(registry.RULES), list(registry.MEASURES))
    try:
        registry.rule("wide", 99, thresholds={"wide_layer": (8.0, "outputs from which a layer is wide")})(wide)
        d = tp.diagnose(tmp_path / "r.tp")
        assert [f.layer for f in d.findings if f.kind == "wide"] == ["0", "1"]
        d = tp.diagnose(tmp_path / "r.tp", thresholds=Thresholds(wide_layer=100))
        assert not d.has("wide")
    finally:
        registry.RULES[:], registry.MEASURES[:] = before
    assert "wide" not in registry.kinds()
