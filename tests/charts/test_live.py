"""Live charts: rewritten atomically after every epoch, skipped when there is nowhere to draw."""

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest

from twinpeaks.charts.twin_peaks import twin_peaks_curves
from twinpeaks.live import LiveChart, in_jupyter, live_path


class Spy(LiveChart):
    """A real LiveChart that also keeps each PNG it wrote, to compare epochs."""

    def __init__(self):
        super().__init__()
        self.snapshots = []

    def __call__(self, hist):
        super().__call__(hist)
        if self.path is not None:
            self.snapshots.append(self.path.read_bytes())


def test_live_png_is_written_next_to_the_run(record_run, tmp_path, no_warnings):
    assert not in_jupyter()
    path = tmp_path / "live.tp"
    hist = record_run(path, epochs=2, steps=3, valid=1, test=False, live=True)
    png = live_path(path)
    assert png == tmp_path / "live.tp.live.png"
    img = matplotlib.image.imread(png)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 300
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(("png", "tmp"))) == ["live.tp.live.png"]
    assert hist.run.epochs == 2  # the recorder still reads its run after the live chart drew it


def test_live_chart_changes_each_epoch_and_shows_the_last_epoch(record_run, tmp_path):
    import twinpeaks as tp

    spy = Spy()
    path = tmp_path / "spy.tp"
    record_run(path, epochs=3, steps=3, valid=1, test=False, listeners=[spy])
    assert len(spy.snapshots) == 3 and len(set(spy.snapshots)) == 3
    with tp.open_run(path) as run:
        fig = spy.figure(run)
        lines = [line for line in fig.axes[0].lines if (line.get_gid() or "").startswith("twinpeaks:")]
        for line, curve in zip(lines, twin_peaks_curves(run, -1)):
            np.testing.assert_allclose(line.get_ydata(), curve.share)
        assert fig.axes[0].get_title().startswith(f"Twin Peaks, epoch {run.epochs - 1}")
    assert spy.last_seconds > 0


def test_in_memory_run_outside_jupyter_writes_nothing(record_run, tmp_path, monkeypatch, no_warnings):
    monkeypatch.chdir(tmp_path)
    spy = Spy()
    record_run(None, epochs=1, steps=2, valid=1, test=False, live=True, listeners=[spy])
    assert spy.path is None and spy.snapshots == []
    assert list(tmp_path.iterdir()) == []


def test_live_draws_an_epoch_without_validation(record_run, tmp_path):
    # an epoch with train steps only still draws (no valid phase); no exception reaches training
    hist = record_run(tmp_path / "t.tp", epochs=1, steps=2, valid=0, test=False, live=True)
    assert live_path(hist.path).exists()


@pytest.mark.parametrize("colorful", [True, False], ids=["with-strip", "twin-peaks-only"])
def test_live_figure_layout(record_run, tmp_path, colorful):
    import twinpeaks as tp

    hist = record_run(tmp_path / "f.tp", epochs=1, steps=2, valid=1, test=False)
    with tp.open_run(hist.path) as run:
        fig = LiveChart(colorful=colorful).figure(run)
    assert len(fig.axes) == (2 if colorful else 1)
    assert fig.axes[0].get_title().startswith("Twin Peaks")
    if colorful:
        assert [im.get_gid() for im in fig.axes[1].images][0] == "colorful:image"


@pytest.fixture
def ipython_shell():
    """A real IPython shell without a kernel (it prints each display's text repr), removed afterwards."""
    pytest.importorskip("IPython")
    import sys

    from IPython.core.interactiveshell import InteractiveShell

    hooks = sys.displayhook, sys.excepthook
    yield InteractiveShell.instance()
    InteractiveShell.clear_instance()
    sys.displayhook, sys.excepthook = hooks


def test_jupyter_updates_one_display(record_run, ipython_shell, capsys):
    hist = record_run(None, epochs=2, steps=2, valid=1, test=False)
    chart = LiveChart()
    chart.jupyter = True
    chart(hist)
    handle = chart._handle
    chart(hist)
    assert handle is not None and chart._handle is handle  # one output, updated in place
    assert capsys.readouterr().out.count("Image object") == 2
    assert chart.path is None
