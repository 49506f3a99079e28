"""Every chart's axes hold every curve it draws (regression: the history's shared y axis stopped at
the first panel's peak, clipping later, taller ones)."""

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch
from matplotlib.collections import PolyCollection
from torch import nn

import twinpeaks as tp

EPOCHS = 4
CLASSES = ["a", "b", "c"]


class Sharpening(nn.Module):
    """A real classifier head whose logits narrow each epoch: the last epoch's peaks are the tallest."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(6, 8)
        self.out = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.hidden(x)))


@pytest.fixture(scope="module")
def sharpening_run(tmp_path_factory):
    """Epoch e scales the head by 1 / (1 + 2e): the outputs concentrate, the histogram peaks grow."""
    path = tmp_path_factory.mktemp("limits") / "sharpening.tp"
    torch.manual_seed(0)
    model = Sharpening()
    base = model.out.weight.detach().clone()
    gen = torch.Generator().manual_seed(3)
    hist = tp.ActivationsHistogram(model, path, classes=CLASSES, per_class=True, range=(-3.0, 3.0), bins=60,
                                   sample=1.0)
    with hist, torch.no_grad():
        for e in range(EPOCHS):
            model.out.weight.copy_(base / (1 + 2 * e))
            for phase, n in (("train", 8), ("valid", 3)):
                model.train(phase == "train")
                for _ in range(n):
                    x = torch.randn(32, 6, generator=gen)
                    hist.targets(x[:, :3].argmax(1))
                    model(x)
            hist.end_epoch()
    return path


def curve_tops(ax) -> list[float]:
    """The highest y of every data line and filled area drawn in ``ax`` (axis-fraction lines excluded)."""
    tops = [float(np.nanmax(np.asarray(line.get_ydata(), float))) for line in ax.lines
            if line.get_transform() == ax.transData and len(line.get_ydata())]
    tops += [float(p.vertices[:, 1].max()) for c in ax.collections if isinstance(c, PolyCollection)
             for p in c.get_paths() if len(p.vertices)]
    return tops


def assert_axes_hold_curves(fig) -> int:
    """Every visible axes holds each of its curves (y; x where they are not 0); return how many lines were checked."""
    checked = 0
    for ax in fig.axes:
        if not ax.get_visible():
            continue
        (x0, x1), (y0, y1) = sorted(ax.get_xlim()), sorted(ax.get_ylim())
        for line in ax.lines:
            if line.get_transform() != ax.transData:
                continue
            x = np.asarray(line.get_xdata(), float)
            y = np.asarray(line.get_ydata(), float)
            keep = np.isfinite(x) & np.isfinite(y)
            if keep.any():
                assert y[keep].max() <= y1 and y[keep].min() >= y0, (ax.get_title(), line.get_gid(), y1)
                drawn = keep & (y != 0)  # a twin peaks axis is zoomed to the bins that hold data
                if drawn.any():
                    assert x[drawn].max() <= x1 and x[drawn].min() >= x0, (ax.get_title(), line.get_gid(), x1)
                checked += 1
        for top in curve_tops(ax):
            assert top <= y1, (ax.get_title(), top, y1)
    return checked


def peak_of(run, epoch: int, by_truth: bool) -> float:
    groups = [{"truth": "yes"}, {"truth": "no"}] if by_truth else [{}]
    peaks = []
    for phase in ("train", "valid"):
        for kw in groups:
            h = run.histogram(-1, phase, epoch, last_quarter=phase == "train", **kw)
            peaks.append(h.counts.max() / h.total)
    return max(peaks)


@pytest.mark.parametrize("by_truth", [False, True], ids=["phases", "by-truth"])
def test_history_panels_hold_the_tallest_peak_drawn_last(sharpening_run, by_truth):
    with tp.open_run(sharpening_run) as run:
        peaks = [peak_of(run, e, by_truth) for e in range(EPOCHS)]
        assert np.argmax(peaks) == EPOCHS - 1 and peaks[-1] > 1.5 * peaks[0], peaks  # the case that clipped
        fig = tp.plot_twin_peaks_history(run, by_truth=by_truth)
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert len(panels) == EPOCHS
    tallest = max(max(curve_tops(ax)) for ax in panels)
    assert tallest == pytest.approx(peaks[-1])  # the last epoch's peak is drawn (not rebinned away) ...
    for ax in panels:
        assert ax.get_ylim()[1] >= tallest  # ... and every panel's axis reaches it
        assert ax.get_ylim()[1] <= 1.1 * tallest  # without wasting the panel
    assert assert_axes_hold_curves(fig) >= EPOCHS * 2


def test_history_per_class_panels_hold_every_curve(sharpening_run):
    fig = tp.plot_twin_peaks_history(sharpening_run, per_class=True)
    assert assert_axes_hold_curves(fig) == EPOCHS * len(CLASSES)


@pytest.mark.parametrize("kw", [{}, {"by_truth": True}, {"per_class": True}], ids=["phases", "by-truth", "per-class"])
def test_twin_peaks_holds_every_curve(sharpening_run, kw):
    assert assert_axes_hold_curves(tp.plot_twin_peaks(sharpening_run, **kw)) >= 2


def test_twin_peaks_drawn_twice_into_one_ax_holds_both(sharpening_run):
    """The first epoch drawn first, the taller last epoch over it: the axis grows to hold both."""
    from matplotlib.figure import Figure

    ax = Figure().add_subplot()
    tp.plot_twin_peaks(sharpening_run, epoch=0, ax=ax, phases=["valid"])
    low = ax.get_ylim()[1]
    tp.plot_twin_peaks(sharpening_run, epoch=-1, ax=ax, phases=["valid"])
    assert ax.get_ylim()[1] > low
    assert assert_axes_hold_curves(ax.figure) == 2


def test_colorful_profiles_and_lines_stay_inside_their_axes(sharpening_run):
    fig = tp.plot_colorful_dimension(sharpening_run)
    profiles = [line for ax in fig.axes for line in ax.lines if (line.get_gid() or "").startswith("colorful:profile")]
    assert len(profiles) == EPOCHS * (1 + len(CLASSES))  # hidden: one per epoch; out: one per class
    assert assert_axes_hold_curves(fig) >= len(profiles)
