"""hist.targets(y): indices outside [0, K) are left out of the YES/NO split, never clamped; multi-label works.

Every count is checked against the outputs captured by a hook of the test's
own (the ``capture`` fixture; numpy oracle through ``assert_hist_equals``).
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import twinpeaks as tp


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))


def _record(path, batches, capture, *, before=True, **targets_kw):
    model = _model()
    cap = capture(model[2])
    with warnings.catch_warnings(record=True) as caught, tp.ActivationsHistogram(model, path, range=(-5, 5)) as hist:
        warnings.simplefilter("always")
        for x, y in batches:
            if before:
                hist.targets(y, **targets_kw)
            model(x)
            if not before:
                hist.targets(y, **targets_kw)
        hist.end_epoch()
    messages = [str(w.message) for w in caught if "target" in str(w.message)]
    return torch.cat(cap.values["train"]), tp.open_run(path), messages


def _split(out: torch.Tensor, y: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    rows = torch.arange(len(y))[keep]
    yes = out[rows, y[keep]]
    mask = torch.zeros_like(out, dtype=torch.bool)
    mask[rows] = True
    mask[rows, y[keep]] = False
    return yes, out[mask]


@pytest.mark.parametrize("before", [True, False], ids=["targets-before-forward", "targets-after-forward"])
def test_ignore_index_is_left_out_silently(tmp_path, capture, assert_hist_equals, before):
    gen = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(4):
        y = torch.randint(0, 3, (10,), generator=gen)
        y[torch.rand(10, generator=gen) < 0.3] = -100  # padding, as cross_entropy's default ignore_index
        batches.append((torch.randn(10, 6, generator=gen), y))
    out, run, messages = _record(tmp_path / "r.tp", batches, capture, before=before)
    assert not messages
    y = torch.cat([b[1] for b in batches])
    keep = y != -100
    assert 0 < keep.sum() < len(y)
    yes, no = _split(out, y, keep)
    assert_hist_equals(run.histogram(-1, epoch=0, truth="yes"), yes)
    assert_hist_equals(run.histogram(-1, epoch=0, truth="no"), no)
    assert run.histogram(-1, epoch=0, truth="yes").total == int(keep.sum())  # nothing clamped into class 0


def test_other_indices_outside_the_outputs_warn_once_and_are_left_out(tmp_path, capture, assert_hist_equals):
    gen = torch.Generator().manual_seed(2)
    batches = []
    for i in range(5):
        y = torch.randint(0, 3, (8,), generator=gen)
        y[i % 8] = -1 if i % 2 else 5  # on a 3-output layer
        y[(i + 3) % 8] = -100
        batches.append((torch.randn(8, 6, generator=gen), y))
    out, run, warned = _record(tmp_path / "r.tp", batches, capture)
    assert len(warned) == 1 and "ignore_index" in warned[0] and "[0, 3)" in warned[0] and "5 target" in warned[0]
    y = torch.cat([b[1] for b in batches])
    keep = (y >= 0) & (y < 3)
    yes, no = _split(out, y, keep)
    assert_hist_equals(run.histogram(-1, epoch=0, truth="yes"), yes)
    assert_hist_equals(run.histogram(-1, epoch=0, truth="no"), no)


def test_a_custom_ignore_index_and_bad_arguments(tmp_path, capture, assert_hist_equals):
    gen = torch.Generator().manual_seed(3)
    y = torch.tensor([0, 1, 2, 7, 7, 1, 0, 2])
    x = torch.randn(8, 6, generator=gen)
    out, run, messages = _record(tmp_path / "r.tp", [(x, y)], capture, ignore_index=7)
    assert not messages
    yes, no = _split(out, y, y != 7)
    assert_hist_equals(run.histogram(-1, epoch=0, truth="yes"), yes)
    assert_hist_equals(run.histogram(-1, epoch=0, truth="no"), no)
    with tp.ActivationsHistogram(_model(), tmp_path / "b.tp") as hist:
        with pytest.raises(ValueError, match="ignore_index"):
            hist.targets(y, ignore_index=1.5)  # type: ignore[arg-type]


def test_multilabel_targets_with_ignored_outputs(tmp_path, capture, assert_hist_equals):
    gen = torch.Generator().manual_seed(4)
    batches = []
    for _ in range(3):
        y = (torch.rand(6, 3, generator=gen) > 0.5).float()
        y[0, 1] = -100  # this output of this sample has no label
        batches.append((torch.randn(6, 6, generator=gen), y))
    out, run, messages = _record(tmp_path / "r.tp", batches, capture)
    assert not messages
    y = torch.cat([b[1] for b in batches])
    assert_hist_equals(run.histogram(-1, epoch=0, truth="yes"), out[y == 1])
    assert_hist_equals(run.histogram(-1, epoch=0, truth="no"), out[y == 0])
