"""Chart content, checked against the numbers stored in the run (numpy is the oracle)."""

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch

import twinpeaks as tp
from twinpeaks.charts.colorful import step_to_x
from twinpeaks.charts.twin_peaks import twin_peaks_curves


@pytest.fixture(scope="module")
def run_path(record_run, tmp_path_factory):
    path = tmp_path_factory.mktemp("charts") / "run.tp"
    record_run(path)
    return path


@pytest.fixture
def run(run_path):
    with tp.open_run(run_path) as r:
        yield r


def gid_artists(fig, prefix):
    return [a for ax in fig.axes for a in [*ax.lines, *ax.images] if (a.get_gid() or "").startswith(prefix)]


def lq_oracle(run, layer, phase, epoch):
    """The last-quarter histogram rebuilt from the per-step columns (another path through the file)."""
    cols = run.columns(layer, phase)
    first, end, lq_first = run.epoch_info(epoch).steps[phase]
    keep = (cols.starts >= (lq_first if phase == "train" else first)) & (cols.ends <= end)
    return (cols.counts[keep].sum(0), cols.underflow[keep].sum() + cols.overflow[keep].sum()
            + cols.nonfinite[keep].sum(), int(keep.sum()))


def test_twin_peaks_lines_are_normalised_histograms_summing_to_one(run):
    fig = tp.plot_twin_peaks(run)
    lines = gid_artists(fig, "twinpeaks:")
    assert [line.get_gid().split(":")[1] for line in lines] == ["train", "valid", "test"]
    for line in lines:
        phase = line.get_gid().split(":")[1]
        counts, outside, steps = lq_oracle(run, -1, phase, -1)
        total = counts.sum() + outside
        np.testing.assert_allclose(line.get_ydata(), counts / total)
        assert line.get_ydata().sum() + outside / total == pytest.approx(1.0)
        np.testing.assert_allclose(line.get_xdata(), (run.edges(-1)[:-1] + run.edges(-1)[1:]) / 2)
        assert f"{steps} batch" in line.get_label()
    assert lq_oracle(run, -1, "valid", -1)[1] > 0, "the fixture's logits must leave the range"
    assert "out of range" in " ".join(t.get_text() for t in fig.axes[0].get_legend().get_texts())


def test_twin_peaks_rebinning_keeps_the_sum(run):
    curves = twin_peaks_curves(run, 0)
    for c in curves:
        r = c.rebinned(3)
        assert len(r.share) == -(-len(c.share) // 3)
        assert r.share.sum() + r.out_of_range == pytest.approx(1.0)
        np.testing.assert_allclose(r.share[:2], [c.share[:3].sum(), c.share[3:6].sum()])


def test_per_class_legend_labels_are_class_names(chart_classes, run):
    fig = tp.plot_twin_peaks(run, per_class=True)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == chart_classes
    lines = gid_artists(fig, "twinpeaks:")
    assert [line.get_gid() for line in lines] == [f"twinpeaks:valid:{c}" for c in chart_classes]
    for k, line in enumerate(lines):
        h = run.histogram(-1, "valid", -1, column=k)
        np.testing.assert_allclose(line.get_ydata(), h.counts / h.total)


def test_by_truth_draws_yes_and_no_and_their_overlap(run):
    fig = tp.plot_twin_peaks(run, epoch=1, by_truth=True)
    lines = {line.get_gid(): line for line in gid_artists(fig, "twinpeaks:")}
    assert set(lines) == {f"twinpeaks:{p}:{g}" for p in ("train", "valid") for g in ("YES", "NO")}  # no test yet
    for phase in ("train", "valid"):
        for g in ("YES", "NO"):
            h = run.histogram(-1, phase, 1, truth=g.lower(), last_quarter=phase == "train")
            np.testing.assert_allclose(lines[f"twinpeaks:{phase}:{g}"].get_ydata(), h.counts / h.total)
    # YES holds one output per sample (16 per batch), NO the other two
    yes, no = run.histogram(-1, "valid", 1, truth="yes"), run.histogram(-1, "valid", 1, truth="no")
    assert (yes.total, no.total) == (2 * 16, 2 * 16 * 2)
    overlap = np.minimum(yes.counts / yes.total, no.counts / no.total).sum()
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert f"overlap valid: {100 * overlap:.1f}%" in labels


def test_by_truth_without_targets_says_what_to_do(record_run, tmp_path):
    hist = record_run(tmp_path / "nt.tp", epochs=1, steps=2, valid=1, test=False, targets=False)
    with pytest.raises(ValueError, match="hist.targets"):
        tp.plot_twin_peaks(hist.path, by_truth=True)


def test_colorful_image_is_log1p_of_stored_counts(run):
    fig = tp.plot_colorful_dimension(run, layers=["body.0", -1])
    images = gid_artists(fig, "colorful:image")
    assert len(images) == 2
    for im, layer in zip(images, ["body.0", -1]):
        cols = run.columns(layer, "train")
        np.testing.assert_array_equal(np.asarray(im.get_array()), np.log1p(cols.counts).T)
        x0, x1, y0, y1 = im.get_extent()
        assert cols.fixed  # the chart fixture records a fixed range
        assert (x0, x1, y0, y1) == (0, len(cols), cols.edges[0, 0], cols.edges[0, -1])


def test_colorful_lines_sit_on_stored_numbers(chart_classes, run):
    fig = tp.plot_colorful_dimension(run, layers=-1)
    ax = fig.axes[0]
    cols = run.columns(-1, "train")
    # per-step columns: x of step s is s (starts are 0, 1, 2, ...)
    np.testing.assert_array_equal(cols.starts, np.arange(len(cols)))
    epoch_lines = gid_artists(fig, "colorful:epoch:")
    assert [line.get_gid() for line in epoch_lines] == [f"colorful:epoch:{e}" for e in range(1, run.epochs)]
    for e, line in enumerate(epoch_lines, start=1):
        assert line.get_xdata()[0] == run.epoch_info(e).steps["train"][0]
    mean = next(iter(gid_artists(fig, "colorful:mean")))
    lo, hi = cols.edges[0, 0], cols.edges[0, -1]
    expected = np.where((cols.mean >= lo) & (cols.mean <= hi), cols.mean, np.nan)
    np.testing.assert_allclose(mean.get_ydata(), expected)
    over = next(iter(gid_artists(fig, "colorful:over")))
    total = cols.counts.sum(1) + cols.underflow + cols.overflow + cols.nonfinite
    np.testing.assert_allclose(np.asarray(over.get_array())[0], cols.overflow / total)
    assert cols.overflow.sum() > 0  # the fixture's logits leave the range: the strip has something to show
    # per-class profile curves: one per class per epoch, legend = class names
    assert len(gid_artists(fig, "colorful:profile:")) == len(chart_classes) * run.epochs
    assert [t.get_text() for t in ax.get_legend().get_texts()] == chart_classes


def test_never_called_layer_is_listed_not_drawn(run):
    assert not run.layer("unused").called
    fig = tp.plot_colorful_dimension(run)
    assert len(gid_artists(fig, "colorful:image")) == 3
    titles = [ax.get_title(loc="left") for ax in fig.axes]
    assert not any("unused" in t for t in titles)
    assert "0 unused (Linear, never called)" in fig.get_supxlabel()
    with pytest.raises(ValueError, match="never called"):
        tp.plot_twin_peaks(run, layer="unused")


def test_merged_columns_are_drawn_at_their_steps(record_run, tmp_path):
    hist = record_run(tmp_path / "m.tp", epochs=3, steps=5, valid=1, test=False, max_columns=4)
    with tp.open_run(hist.path) as run:
        cols = run.columns(-1, "train")
        width = cols.ends - cols.starts
        assert width.max() > 1 and len(cols) <= 4
        fig = tp.plot_colorful_dimension(run, layers=-1, show_layer_info=True)
        im = next(iter(gid_artists(fig, "colorful:image")))
        np.testing.assert_allclose(np.asarray(im.get_array()), np.log1p(cols.counts / width[:, None]).T)
        for e in range(1, run.epochs):
            first = run.epoch_info(e).steps["train"][0]
            i = np.searchsorted(cols.ends, first, side="right")  # the column holding step `first`
            expected = i + (first - cols.starts[i]) / width[i]
            line = next(iter(gid_artists(fig, f"colorful:epoch:{e}")))
            assert line.get_xdata()[0] == pytest.approx(expected)
        assert step_to_x(cols, cols.starts).tolist() == list(range(len(cols)))


def test_history_has_one_panel_per_epoch(run):
    fig = tp.plot_twin_peaks_history(run, by_truth=True)
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert len(panels) == run.epochs
    assert all(ax.get_title().startswith(f"epoch {e}") for e, ax in enumerate(panels))
    for e, ax in enumerate(panels):
        yes_valid = next(line for line in ax.lines if line.get_gid() == "twinpeaks:valid:YES")
        h = run.histogram(-1, "valid", e, truth="yes")
        np.testing.assert_allclose(yes_valid.get_ydata(), h.counts / h.total)


def test_charts_take_a_path_an_ax_and_a_shared_scale(run_path, run):
    from matplotlib.figure import Figure

    fig = Figure()
    ax = fig.add_subplot()
    assert tp.plot_twin_peaks(str(run_path), ax=ax) is fig
    other = Figure()
    assert tp.plot_colorful_dimension(run_path, layers="body.1", ax=other.add_subplot()) is other
    shared = tp.plot_colorful_dimension(run, shared_scale=True)
    vmax = max(np.log1p(run.columns(i, "train").counts).max() for i in (1, 2, 3))
    assert {im.get_clim() for im in gid_artists(shared, "colorful:image")} == {(0, vmax)}


@pytest.mark.parametrize("call, error", [
    (lambda r: tp.plot_twin_peaks(r, epoch=3), "epoch 3 is out of range"),
    (lambda r: tp.plot_twin_peaks(r, layer="nope"), "no layer named 'nope'"),
    (lambda r: tp.plot_colorful_dimension(r, layers=[7]), "layer index 7 is out of range"),
    (lambda r: tp.plot_colorful_dimension(r, layers="unused"), "nothing to draw"),
    (lambda r: tp.plot_twin_peaks(r, per_class=True, by_truth=True), "not both"),
], ids=["epoch", "layer-name", "layer-index", "only-empty", "two-modes"])
def test_bad_arguments_fail_with_a_message(run, call, error):
    with pytest.raises((ValueError, KeyError, IndexError), match=error):
        call(run)


def test_big_grid_uses_a_fixed_layout_and_keeps_the_footnote(tmp_path):
    from torch import nn

    model = nn.Sequential(*[m for _ in range(9) for m in (nn.Linear(4, 4), nn.ReLU())])
    with tp.ActivationsHistogram(model, tmp_path / "deep.tp") as hist:
        for _ in range(2):
            model(torch.randn(2, 4))
        hist.end_epoch()
    fig = tp.plot_colorful_dimension(tmp_path / "deep.tp", layers=list(range(17)))
    assert fig.get_layout_engine() is None
    assert len(gid_artists(fig, "colorful:image")) == 17
    foot = [t for t in fig.texts if t.get_gid() == "colorful:footnote"]
    assert len(foot) == 1 and "per layer scale" in foot[0].get_text()


def test_out_of_range_labels_stay_inside_the_figure_and_say_under_one_percent(run):
    """Fixed ranges: the strip labels are drawn inside the axes, and a share under 1% reads "<1%", not "0%"."""
    from twinpeaks.charts.colorful import share_label

    assert (share_label(0.0), share_label(0.004), share_label(0.01), share_label(0.256)) == ("0%", "<1%", "1%", "26%")
    fig = tp.plot_colorful_dimension(run, layers=-1)
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig).draw()
    texts = [t for ax in fig.axes for t in ax.texts]
    labels = [t for t in texts if (t.get_gid() or "").endswith(":label")]
    assert labels, "the fixture's logits leave the range: a label must say by how much"
    figure_box = fig.bbox
    renderer = fig.canvas.get_renderer()
    for label in labels:  # inside the axes (so inside the figure, whatever stands right of it)
        box, ax_box = label.get_window_extent(renderer), label.axes.bbox
        assert figure_box.x0 <= box.x0 and box.x1 <= figure_box.x1, label.get_text()
        assert ax_box.x0 <= box.x0 and box.x1 <= ax_box.x1 + 1, label.get_text()
    cols = run.columns(-1, "train")
    total = cols.counts.sum(1) + cols.underflow + cols.overflow + cols.nonfinite
    over = [t for t in labels if t.get_gid() == "colorful:over:label"]
    if over:
        assert over[0].get_text().strip() == f">range max {share_label(float((cols.overflow / total).max()))}"


def test_automatic_ranges_draw_no_strips_and_cover_every_value(record_run, tmp_path):
    hist = record_run(tmp_path / "auto.tp", range=None)
    run = tp.open_run(hist.path)
    fig = tp.plot_colorful_dimension(run, layers=-1)
    assert not gid_artists(fig, "colorful:over") and not gid_artists(fig, "colorful:under")
    (im,) = gid_artists(fig, "colorful:image")
    cols = run.columns(-1, "train")
    assert not cols.fixed
    _, _, y0, y1 = im.get_extent()
    assert y0 <= np.nanmin(cols.min) and np.nanmax(cols.max) <= y1


def test_drawing_into_given_axes_leaves_the_figures_other_texts_alone(run):
    """draw_colorful / draw_twin_peaks make their own axes' texts plain, not the whole figure's: a user's other
    axes keep their mathtext, and a grid of hundreds of layers is not walked once per layer."""
    from twinpeaks.charts.colorful import draw_colorful
    from twinpeaks.charts.common import new_figure
    from twinpeaks.charts.twin_peaks import draw_twin_peaks

    fig = new_figure((8, 3))
    mine, theirs, other = fig.subplots(1, 3)
    label = other.set_title("$\\alpha$ and \a")  # the user's own text, on an axes twinpeaks does not draw
    draw_colorful(mine, run, -1)
    draw_twin_peaks(theirs, run, -1)
    assert label.get_parse_math() and label.get_text() == "$\\alpha$ and \a"
    assert not any(t.get_parse_math() for ax in (mine, theirs) for t in ax.findobj(matplotlib.text.Text))
