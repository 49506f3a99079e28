"""The default (sampled) mode is faithful to exact mode: same data, same weights, two recorders at once.

``pytest tests/recording/test_faithful.py -s`` prints every layer's distance.

Sampling error shrinks as 1/sqrt(elements binned): an epoch histogram of a
sampled layer is within total variation 0.01 of the exact one once it holds
about 130,000 binned elements (some 16 steps of 8,192 sampled values). Here the
training phase has 40 steps and the validation phase 17, and both are held to
the 0.01 target.
"""


import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

import twinpeaks as tp
from twinpeaks.recorder import EXACT_BELOW
from twinpeaks.run import on_common_grid

BATCH = 32
TRAIN = 1280  # 40 training steps; the other 517 images are 17 validation steps


def digits_net() -> nn.Module:
    # conv outputs are 32 x 16 x 8 x 8 = 32,768 elements per batch: sampled by default
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(16 * 64, 32), nn.ReLU(), nn.Linear(32, 10),
    )


def slots(h) -> np.ndarray:
    return np.concatenate([[h.underflow], h.counts, [h.overflow, h.nonfinite]]).astype(np.float64)


def total_variation(a, b) -> float:
    return 0.5 * float(np.abs(slots(a) / a.total - slots(b) / b.total).sum())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One epoch of real digits (train + valid) recorded by the default and the exact recorder together."""
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16
    y = torch.tensor(y)
    torch.manual_seed(0)
    model = digits_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    d = tmp_path_factory.mktemp("faithful")
    default = tp.ActivationsHistogram(model, d / "default.tp")
    exact = tp.ActivationsHistogram(model, d / "exact.tp", sample=1.0)
    with default, exact:
        model.train()
        perm = torch.randperm(TRAIN)
        for i in range(0, TRAIN, BATCH):
            idx = perm[i:i + BATCH]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            for i in range(TRAIN, len(x), BATCH):
                model(x[i:i + BATCH])
        default.end_epoch()
        exact.end_epoch()
    return tp.open_run(d / "default.tp"), tp.open_run(d / "exact.tp")


@pytest.mark.parametrize("phase", ["train", "valid"])
def test_default_epoch_histograms_are_close_to_exact(runs, phase):
    default, exact = runs
    sampled = 0
    for layer in exact.layers:
        a = default.histogram(layer.name, phase, epoch=0)
        b = exact.histogram(layer.name, phase, epoch=0)
        assert a.seen == b.seen == b.total
        a, b = on_common_grid([a, b])  # automatic grids follow what was binned: compare on one grid (exact)
        np.testing.assert_array_equal(a.edges, b.edges)
        tv = total_variation(a, b)
        print(f"{phase} layer {layer.name}: TV {tv:.4f} (binned {a.total:,} of {a.seen:,})")
        assert tv <= 0.01, f"{layer.name}: TV {tv:.4f} > 0.01 (binned {a.total} of {a.seen})"
        if a.total == a.seen:
            assert tv == 0
        else:
            sampled += 1
    assert sampled == 6  # convs, BN, ReLUs and Flatten really were sampled


def test_small_outputs_are_exact_in_default_mode(runs):
    default, exact = runs
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
