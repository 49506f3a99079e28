"""The default (sampled) mode is faithful to exact mode: same data, same weights, two recorders at once.

``pytest tests/recording/test_faithful.py -s`` prints every layer's distance.

The bound under test (README, "sampling"): a histogram of ``k`` sampled values from
``m`` occupied bins has expected total variation (TV) from the exact one of at most
``tv_bound(m, k) = 0.5 * sqrt(2 (m - 1) / (pi k))`` (multinomial errors, Cauchy-Schwarz);
``N`` steps of a phase hold ``N k`` values. Checked here on six real recordings (two
models, two datasets, six seeds, 50, 100 and 200 bins: 4,096, 7,888 and 15,840 values per
sampled call), in both phases, for phases of 4, 15, 16, 17 and 40 steps:

* a step's column (the Colorful Dimension chart): the mean over a layer's steps of
  TV / ``tv_bound`` is at most 1 (the bound is on the expectation), and no single
  column exceeds ``1.5 x tv_bound``;
* an epoch's histogram (one draw): TV <= ``1.25 x tv_bound`` over the values it binned;
* the digits epoch of 40 training and 17 validation steps: TV <= 0.01 (the
  ``sample="auto"`` target, 20 steps at 7,888 values per call and 100 bins).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_breast_cancer, load_digits
from torch import nn

import twinpeaks as tp
from twinpeaks.format import SEEN
from twinpeaks.recorder import EXACT_BELOW
from twinpeaks.recording.engine import tv_bound
from twinpeaks.run import Histogram, on_common_grid

BATCH = 32
TRAIN = 1280  # 40 training steps; the other 517 images are 17 validation steps
EPOCH_SLACK = 1.25  # one epoch histogram against the bound on the expected TV
COLUMN_SLACK = 1.5  # the worst single step's column


def digits_net() -> nn.Module:
    # conv outputs are 32 x 16 x 8 x 8 = 32,768 elements per batch: sampled by default
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(16 * 64, 32), nn.ReLU(), nn.Linear(32, 10),
    )


def cancer_net() -> nn.Module:
    # hidden outputs are 64 x 512 = 32,768 elements per batch (57 x 512 = 29,184 in the last): sampled
    return nn.Sequential(nn.Linear(30, 512), nn.ReLU(), nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(),
                         nn.Linear(512, 512), nn.Tanh(), nn.Linear(512, 2))


def slots(h) -> np.ndarray:
    return np.concatenate([[h.underflow], h.counts, [h.overflow, h.nonfinite]]).astype(np.float64)


def total_variation(a, b) -> float:
    return 0.5 * float(np.abs(slots(a) / a.total - slots(b) / b.total).sum())


def record(path, model, opt, train, valid, seed, bins):
    """One epoch (``train`` batches, then ``valid`` batches in eval mode) recorded by the default and the exact recorder."""
    default = tp.ActivationsHistogram(model, path / "default.tp", seed=seed, bins=bins)
    exact = tp.ActivationsHistogram(model, path / "exact.tp", sample=1.0, bins=bins)
    with default, exact:
        model.train()
        for x, y in train:
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            for x, _ in valid:
                model(x)
        default.end_epoch()
        exact.end_epoch()
    return tp.open_run(path / "default.tp"), tp.open_run(path / "exact.tp")


def digits(path, seed: int, train_steps: int, valid_steps: int | None, bins: int = 100):
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16
    y = torch.tensor(y)
    torch.manual_seed(seed)
    model = digits_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    perm = torch.randperm(TRAIN)
    train = [(x[perm[i:i + BATCH]], y[perm[i:i + BATCH]]) for i in range(0, train_steps * BATCH, BATCH)]
    end = len(x) if valid_steps is None else TRAIN + valid_steps * BATCH
    valid = [(x[i:i + BATCH], y[i:i + BATCH]) for i in range(TRAIN, end, BATCH)]
    return record(path, model, opt, train, valid, seed, bins)


def cancer(path, seed: int, bins: int = 100):
    """Breast cancer: 3 passes over 320 training rows (15 steps of 64), 249 validation rows (4 steps)."""
    x, y = load_breast_cancer(return_X_y=True)
    x = torch.tensor((x - x.mean(0)) / x.std(0), dtype=torch.float32)
    y = torch.tensor(y)
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(x), generator=g)
    x, y = x[order], y[order]
    torch.manual_seed(seed)
    model = cancer_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    train = []
    for _ in range(3):
        perm = torch.randperm(320, generator=g)
        train += [(x[perm[i:i + 64]], y[perm[i:i + 64]]) for i in range(0, 320, 64)]
    valid = [(x[i:i + 64], y[i:i + 64]) for i in range(320, len(x), 64)]
    return record(path, model, opt, train, valid, seed, bins)


#: workload -> (recording, steps per phase, sampled layers)
CASES = {
    "digits-40+17": (lambda p: digits(p, 0, 40, None), {"train": 40, "valid": 17}, 6),
    "digits-16+4": (lambda p: digits(p, 1, 16, 4), {"train": 16, "valid": 4}, 6),
    "cancer-15+4": (lambda p: cancer(p, 2), {"train": 15, "valid": 4}, 7),
    # fewer bins, a smaller sample (4,096 per call at 50 bins); more bins, a larger one (15,824 at 200)
    "digits-16+4-50bins": (lambda p: digits(p, 3, 16, 4, bins=50), {"train": 16, "valid": 4}, 6),
    "cancer-15+4-50bins": (lambda p: cancer(p, 4, bins=50), {"train": 15, "valid": 4}, 7),
    "cancer-15+4-200bins": (lambda p: cancer(p, 5, bins=200), {"train": 15, "valid": 4}, 7),
}


@pytest.fixture(scope="module", params=list(CASES))
def case(request, tmp_path_factory):
    make, steps, sampled = CASES[request.param]
    default, exact = make(tmp_path_factory.mktemp(request.param))
    return request.param, default, exact, steps, sampled


def occupied(h) -> int:
    return int((slots(h) > 0).sum())


@pytest.mark.parametrize("phase", ["train", "valid"])
def test_epoch_histograms_are_within_the_stated_bound(case, phase):
    name, default, exact, steps, want_sampled = case
    sampled = 0
    for layer in exact.layers:
        a = default.histogram(layer.name, phase, epoch=0)
        b = exact.histogram(layer.name, phase, epoch=0)
        assert a.steps == b.steps == steps[phase]
        assert a.seen == b.seen == b.total
        a, b = on_common_grid([a, b])  # automatic grids follow what was binned: compare on one grid (exact)
        np.testing.assert_array_equal(a.edges, b.edges)
        tv = total_variation(a, b)
        bound = tv_bound(occupied(b), a.total)
        print(f"{name} {phase} layer {layer.name}: TV {tv:.4f}, bound {bound:.4f} "
              f"(binned {a.total:,} of {a.seen:,}, {occupied(b)} bins)")
        if a.total == a.seen:
            assert tv == 0
            continue
        sampled += 1
        assert tv <= EPOCH_SLACK * bound, f"{layer.name}: TV {tv:.4f} > {EPOCH_SLACK} x {bound:.4f}"
        if name == "digits-40+17":  # the 0.01 target, reached after 20 steps
            assert tv <= 0.01, f"{layer.name}: TV {tv:.4f} > 0.01 (binned {a.total} of {a.seen})"
    assert sampled == want_sampled  # convs, BN, ReLUs, Flatten / the hidden Linear, BN, ReLU, Tanh were sampled


def step_histograms(run, layer: str, phase: str) -> list[Histogram]:
    c = run.columns(layer, phase)
    assert c.grids is not None and (c.ends - c.starts == 1).all()  # automatic grids, one column per step
    return [Histogram(c.counts[i], c.edges[i], int(c.underflow[i]), int(c.overflow[i]), int(c.nonfinite[i]), 1,
                      int(c.stats[i, SEEN]), c.stats[i], (int(c.grids[i, 0]), int(c.grids[i, 1])))
            for i in range(len(c))]


@pytest.mark.parametrize("phase", ["train", "valid"])
def test_step_columns_are_within_the_stated_bound(case, phase):
    name, default, exact, steps, _ = case
    for layer in exact.layers:
        if layer is exact.layers[-1] or np.prod(layer.out_shape) <= EXACT_BELOW:
            continue
        ratios = []
        for a, b in zip(step_histograms(default, layer.name, phase), step_histograms(exact, layer.name, phase),
                        strict=True):
            if a.total == b.total:  # a short last batch, binned exactly (too few elements to sample)
                assert total_variation(*on_common_grid([a, b])) == 0
                continue
            a, b = on_common_grid([a, b])
            ratios.append(total_variation(a, b) / tv_bound(occupied(b), a.total))
        assert len(ratios) >= steps[phase] - 1
        print(f"{name} {phase} layer {layer.name}: step TV / bound: mean {np.mean(ratios):.2f}, "
              f"max {max(ratios):.2f}")
        assert np.mean(ratios) <= 1, f"{layer.name}: mean step TV {np.mean(ratios):.2f} x the bound"
        assert max(ratios) <= COLUMN_SLACK, f"{layer.name}: a step's TV is {max(ratios):.2f} x the bound"


def test_small_outputs_are_exact_in_default_mode(tmp_path):
    default, exact = digits(tmp_path, 0, 8, 2)
    small = [layer for layer in exact.layers if np.prod(layer.out_shape) <= EXACT_BELOW]
    assert [layer.name for layer in small] == ["6", "7", "8"]
    for layer in small:
        for phase in ("train", "valid"):
            a = default.histogram(layer.name, phase, epoch=0)
            b = exact.histogram(layer.name, phase, epoch=0)
            np.testing.assert_array_equal(slots(a), slots(b))
            assert a.total == a.seen == b.total
            assert (a.min, a.max) == (b.min, b.max)
    last = default.histogram(-1, "train", epoch=0, last_quarter=True)
    np.testing.assert_array_equal(slots(last), slots(exact.histogram(-1, "train", epoch=0, last_quarter=True)))
