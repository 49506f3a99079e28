"""Issue #13 end to end: automatic grids never lose a value, fixed ranges bin as numpy does, per-layer ranges.

numpy is the oracle: every per-step column is compared with ``np.histogram`` of the captured
values over the edges the column reports.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import twinpeaks as tp
from twinpeaks import binning, grids
from twinpeaks.run import on_common_grid

DATA = Path(__file__).parent.parent / "data"


@pytest.fixture(params=["kernel", "torch"])
def path(request, monkeypatch):
    """Runs a test on the C kernel and on the torch (device) path."""
    if request.param == "torch":
        monkeypatch.setattr(binning, "KERNEL", False)
    elif not binning.KERNEL:
        pytest.skip("the C kernel is off (not built, or TWINPEAKS_KERNEL=torch)")
    return request.param


def numpy_row(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    v = np.asarray(values, np.float64).ravel()
    ok = np.isfinite(v)
    f = v[ok]
    return np.concatenate([[(f < edges[0]).sum()], np.histogram(f, edges)[0], [(f > edges[-1]).sum(), (~ok).sum()]])


def check_columns(run, layer, phase, per_step: list[np.ndarray]) -> float:
    """Every per-step column equals numpy over its own edges; returns the largest out-of-range share."""
    cols = run.columns(layer, phase)
    assert len(cols) == len(per_step)
    worst = 0.0
    for i, v in enumerate(per_step):
        want = numpy_row(v, cols.edges[i])
        got = np.concatenate([[cols.underflow[i]], cols.counts[i], [cols.overflow[i], cols.nonfinite[i]]])
        np.testing.assert_array_equal(got, want, err_msg=f"{layer} step {i}")
        worst = max(worst, (cols.underflow[i] + cols.overflow[i]) / max(v.size, 1))
    return worst


class Grower(nn.Module):
    """An output that follows a schedule: ``x * scale(step) + shift(step)``."""

    def __init__(self, scale, shift=lambda s: 0.0):
        super().__init__()
        self.scale, self.shift, self.step = scale, shift, 0

    def forward(self, x):
        out = x * self.scale(self.step) + self.shift(self.step)
        self.step += 1
        return out


SCHEDULES = {
    "grow_1.06_per_step": (lambda s: 1.06**s, lambda s: 0.0),
    "grow_10000x": (lambda s: 10 ** (4 * s / 159), lambda s: 0.0),
    "shrink_10000x": (lambda s: 10 ** (-4 * s / 159), lambda s: 0.0),
    "shift_sign": (lambda s: 1.0, lambda s: (s - 80) / 8),
}


@pytest.mark.parametrize("schedule", list(SCHEDULES))
def test_growing_output_never_leaves_its_range(schedule, path, tmp_path, capture):
    """The issue's growing-output case (160 steps), and 10,000x growth, shrinking, a sign shift: 0% out of range."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), Grower(*SCHEDULES[schedule]))
    cap = capture(model[1])
    hist = tp.ActivationsHistogram(model, tmp_path / "g.tp", bins=100)
    with hist, torch.no_grad():
        model.train()
        for step in range(160):
            model(torch.randn(32, 8))
            if step % 40 == 39:
                hist.end_epoch()
    run = tp.open_run(tmp_path / "g.tp")
    values = [v.double().numpy() for v in cap.values["train"]]
    worst = check_columns(run, "1", "train", values)
    shares = []
    for e in range(run.epochs):
        h = run.histogram("1", "train", e)
        shares.append((h.underflow + h.overflow) / h.total)
        np.testing.assert_array_equal(h.counts, numpy_row(np.concatenate(values[40 * e:40 * e + 40]), h.edges)[1:-2])
    print(f"{schedule} ({path}): out-of-range share per epoch {[f'{100 * s:.2f}%' for s in shares]}, "
          f"worst step {100 * worst:.2f}%")
    assert max(shares) <= 0.01 and worst == 0.0
    whole = run.histogram("1", "train")  # combining 160 steps of different grids: exact against numpy
    np.testing.assert_array_equal(whole.counts, numpy_row(np.concatenate(values), whole.edges)[1:-2])
    # the last step's resolution: its values fill a good part of its 100 bins
    cols = run.columns("1", "train")
    occupied = np.flatnonzero(cols.counts[-1])
    assert occupied[-1] - occupied[0] >= 25


def test_healthy_mlp_on_digits_keeps_every_value_in_range(tmp_path, capsys, capture):
    """The issue's healthy MLP: digits, Adam 3e-3, batch 32, 8 epochs, default settings: no layer loses values."""
    from sklearn.datasets import load_digits

    torch.manual_seed(0)
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32)
    y = torch.tensor(y)
    perm = torch.randperm(len(x))
    x, y = x[perm], y[perm]
    xt, yt, xv, yv = x[:1400], y[:1400], x[1400:], y[1400:]
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    cap = capture(model[2])
    hist = tp.ActivationsHistogram(model, tmp_path / "mlp.tp")
    with hist:
        for _ in range(8):
            model.train()
            cap.phase = "train"
            for i in range(0, len(xt), 32):
                hist.targets(yt[i:i + 32])
                loss = nn.functional.cross_entropy(model(xt[i:i + 32]), yt[i:i + 32])
                opt.zero_grad()
                loss.backward()
                opt.step()
            model.eval()
            cap.phase = "valid"
            with torch.no_grad():
                for i in range(0, len(xv), 128):
                    hist.targets(yv[i:i + 128])
                    model(xv[i:i + 128])
            hist.end_epoch()
    with torch.no_grad():
        acc = (model(xv).argmax(1) == yv).float().mean().item()
    run = tp.open_run(tmp_path / "mlp.tp")
    worst = {}
    for info in run.layers:
        worst[info.name] = max(
            (h.underflow + h.overflow) / h.total
            for e in range(run.epochs) for p in run.phases for h in [run.histogram(info, p, e)])
    print(f"healthy MLP (valid accuracy {acc:.1%}): worst out-of-range share per layer and epoch: "
          + ", ".join(f"{k} {100 * v:.2f}%" for k, v in worst.items()))
    assert acc > 0.9
    assert max(worst.values()) <= 0.01
    # the second hidden layer per step against numpy (sample="auto" bins outputs this small exactly)
    check_columns(run, "2", "train", [v.double().numpy() for v in cap.values["train"]])
    findings = tp.diagnose(run).findings
    assert not [f for f in findings if f.kind == "out_of_range"]
    # the Twin Peaks YES/NO histograms share the summary grid of their epoch
    yes, no, h = (run.histogram(-1, "valid", -1, truth=t) for t in ("yes", "no", None))
    assert yes.grid == no.grid == h.grid
    np.testing.assert_array_equal(yes.counts + no.counts, h.counts)


@pytest.mark.parametrize("lo,hi,bins", [(-1, 1, 100), (-0.5, 0.5, 50), (-3, 3, 200), (-8, 8, 100), (-0.3, 0.7, 37)])
def test_fixed_range_every_step_equals_numpy_histogram(lo, hi, bins, path, tmp_path, capture):
    """range=(lo, hi), sample=1.0: per-step counts are np.histogram(values, bins, range=(lo, hi)); ReLU zeros too."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 64), nn.ReLU(), nn.Linear(64, 5))
    caps = [capture(model[1]), capture(model[2])]
    hist = tp.ActivationsHistogram(model, tmp_path / "f.tp", bins=bins, range=(lo, hi), sample=1.0)
    with hist, torch.no_grad():
        for step in range(12):
            x = torch.randn(40, 6) * (1 + step)
            x[0] = 0.0
            model(x)
        hist.end_epoch()
    run = tp.open_run(tmp_path / "f.tp")
    for name, cap in zip(("1", "2"), caps):
        np.testing.assert_array_equal(run.edges(name), np.histogram_bin_edges([0.0], bins, range=(lo, hi)))
        cols = run.columns(name, "train")
        assert cols.fixed
        for i, v in enumerate(cap.values["train"]):
            v64 = v.double().numpy().ravel()
            np.testing.assert_array_equal(cols.counts[i], np.histogram(v64, bins, range=(lo, hi))[0])
            assert cols.underflow[i] == (v64 < lo).sum() and cols.overflow[i] == (v64 > hi).sum()
    relu = run.histogram("1", "train", 0)
    zero_bin = int(np.flatnonzero(relu.edges == 0.0)[0]) if (relu.edges == 0.0).any() else None
    if zero_bin is not None:  # exact ReLU zeros sit in the bin that starts at 0, as numpy and torch.histc put them
        zeros = sum(int((v == 0).sum()) for v in caps[0].values["train"])
        assert relu.counts[zero_bin] >= zeros


def test_shared_relu_called_three_times_per_step_is_one_exact_row(path, tmp_path, capture):
    """A shared module called 3 times per step with different ranges: one row, numpy on all its values."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 50)
            self.act = nn.ReLU()

        def forward(self, x):
            return self.act(self.fc(x)) + self.act(self.fc(x) * 40 - 3) + self.act(-self.fc(x) * 0.01)

    torch.manual_seed(0)
    model = Net()
    cap = capture(model.act)
    hist = tp.ActivationsHistogram(model, tmp_path / "s.tp", modules=["act"], sample=1.0)
    with hist, torch.no_grad():
        for _ in range(6):
            model(torch.randn(16, 4))
        hist.end_epoch()
    run = tp.open_run(tmp_path / "s.tp")
    per_step = [torch.cat([v.reshape(-1) for v in cap.values["train"][3 * s:3 * s + 3]]).double().numpy()
                for s in range(6)]
    assert check_columns(run, "act", "train", per_step) == 0.0


def test_per_layer_ranges_dict_and_function(path, tmp_path, capture):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    caps = {n: capture(model[int(n)]) for n in ("0", "1", "2")}
    for rng in ({"2": (-10, 10), "1": None}, lambda name: (-10, 10) if name == "2" else None):
        p = tmp_path / f"r{id(rng)}.tp"
        hist = tp.ActivationsHistogram(model, p, range=rng, sample=1.0)
        for c in caps.values():
            c.values.clear()
        with hist, torch.no_grad():
            for _ in range(3):
                model(torch.randn(8, 6) * 30)
            hist.end_epoch()
        run = tp.open_run(p)
        assert run.is_fixed("2") and not run.is_fixed("0") and not run.is_fixed("1")
        np.testing.assert_array_equal(run.edges("2"), np.linspace(-10, 10, 101))
        out = run.histogram("2", "train", 0)
        v = torch.cat([x.reshape(-1) for x in caps["2"].values["train"]]).double().numpy()
        assert out.overflow + out.underflow == ((v < -10) | (v > 10)).sum() > 0  # a fixed range clips, counted
        for name in ("0", "1"):
            h = run.histogram(name, "train", 0)
            assert h.underflow == h.overflow == 0 and h.grid is not None
        findings = [f for f in tp.diagnose(run).findings if f.kind == "out_of_range"]
        assert all(f.layer == "2" for f in findings)
        assert all("range={'2': (" in f.message for f in findings)


@pytest.mark.parametrize("kwargs,match", [
    ({"range": {"nope": (0, 1)}}, "range: no recorded layer named 'nope'"),
    ({"range": {"0": (1, 0)}}, r"range\['0'\]"),
    ({"range": lambda name: (0, 0)}, "range for layer '0'"),
    ({"range": lambda name: 1 / 0}, "range: the function raised"),
    ({"range": "wide"}, "range must be"),
    ({"bins": 1}, "bins must be >= 2 with automatic ranges"),
])
def test_bad_ranges_fail_early_naming_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tp.ActivationsHistogram(nn.Sequential(nn.Linear(2, 2), nn.ReLU()), None, **kwargs)


def test_bins_one_is_fine_with_a_fixed_range():
    tp.ActivationsHistogram(nn.Sequential(nn.Linear(2, 2)), None, bins=1, range=(0, 1))


def test_schema_2_file_still_opens_and_draws(tmp_path):
    """A run file written by twinpeaks before grids (schema 2, float32 edges per layer) reads and draws."""
    p = tmp_path / "old.tp"
    shutil.copy(DATA / "schema2.tp", p)
    run = tp.open_run(p)
    assert run.schema == 2 and run.epochs == 2
    assert all(run.is_fixed(i) for i in range(len(run.layers)))
    h = run.histogram(-1, "valid", 0)
    assert h.grid is None and len(h.edges) == 21 and h.total > 0
    cols = run.columns(0, "train")
    assert cols.fixed and cols.edges.shape == (len(cols), 21)
    fig = tp.plot_colorful_dimension(run)
    fig2 = tp.plot_twin_peaks(run, by_truth=True)
    assert fig is not None and fig2 is not None
    tp.diagnose(run)


def test_combining_epochs_is_exact_and_the_charts_use_each_columns_edges(tmp_path, capture):
    """Twin Peaks and the whole-run histogram regrid exactly; the Colorful Dimension's axis covers every value."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), Grower(lambda s: 1.2**s))
    cap = capture(model[1])
    hist = tp.ActivationsHistogram(model, tmp_path / "c.tp", bins=50)
    with hist, torch.no_grad():
        for _ in range(3):
            model.train()
            for _ in range(10):
                model(torch.randn(16, 8))
            hist.end_epoch()
    run = tp.open_run(tmp_path / "c.tp")
    hs = on_common_grid([run.histogram("1", "train", e) for e in range(3)])
    assert len({h.grid for h in hs}) == 1
    total = sum(h.counts for h in hs)
    all_v = torch.cat([v.reshape(-1) for v in cap.values["train"]]).double().numpy()
    np.testing.assert_array_equal(total, np.histogram(all_v, hs[0].edges)[0])
    cols = run.columns("1", "train")
    lo, hi = cols.value_range()
    assert lo <= all_v.min() and all_v.max() <= hi
    assert hi - lo <= 4 * (all_v.max() - all_v.min())
    fig = tp.plot_colorful_dimension(run, layers="1")
    from matplotlib.image import AxesImage

    ims = [a for a in fig.axes[0].get_children() if isinstance(a, AxesImage)]
    assert len(ims) == 1  # no out-of-range strips for an automatic range
    x0, x1, y0, y1 = ims[0].get_extent()
    assert (y0, y1) == pytest.approx((lo, hi))
    # the image keeps each column's mass: counts per 1/bins of the axis, times the axis rows per bin
    img = np.expm1(np.asarray(ims[0].get_array()))
    per = img.shape[0] / 50
    np.testing.assert_allclose(img.sum(axis=0) / per, cols.counts.sum(axis=1), rtol=1e-9)


def test_torch_path_auto_grid_rows_equal_the_kernel(tmp_path, monkeypatch):
    """The device path (torch operations) and the C kernel give the same run, grid for grid."""
    if not binning.KERNEL:
        pytest.skip("the C kernel is off (not built, or TWINPEAKS_KERNEL=torch)")
    runs = []
    for kernel in (True, False):
        monkeypatch.setattr(binning, "KERNEL", kernel)
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 300), nn.ReLU(), nn.Linear(300, 4))
        p = tmp_path / f"k{kernel}.tp"
        hist = tp.ActivationsHistogram(model, p, per_class=True, sample=1.0)
        with hist, torch.no_grad():
            for s in range(5):
                hist.targets(torch.randint(0, 4, (64,)))
                model(torch.randn(64, 8) * (s + 1))
            hist.end_epoch()
        runs.append(tp.open_run(p))
    for layer in range(3):
        a, b = (r.columns(layer, "train") for r in runs)
        np.testing.assert_array_equal(a.grids, b.grids)
        np.testing.assert_array_equal(a.counts, b.counts)
    for kw in ({"column": 1}, {"truth": "yes"}, {}):
        a, b = (r.histogram(-1, "train", 0, **kw) for r in runs)
        assert a.grid == b.grid
        np.testing.assert_array_equal(a.counts, b.counts)
    assert math.isfinite(runs[0].histogram(-1, "train", 0).mean)


def test_grid_helpers_are_exported_for_readers():
    assert grids.edges_of((-1, -2), 4).tolist() == [-1.0, -0.5, 0.0, 0.5, 1.0]
