"""The parts behind the recorder, each on its own: clock, engine (plans, declared state), epoch writer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from twinpeaks import binning
from twinpeaks.format import BINNED, MAX, MIN, SEEN, SUM, SUMSQ, ZEROS
from twinpeaks.recording.clock import StepClock
from twinpeaks.recording.engine import SUMS, BinningEngine, PhaseBuffers, Record
from twinpeaks.recording.epoch_writer import EpochWriter
from twinpeaks.run import Run
from twinpeaks.runfile import RunWriter


def test_clock_windows_and_epochs():
    c = StepClock(rows=2)
    assert c.phase is None and not c.full("train")
    c.start("train")
    c.start("train")
    assert c.full("train") and c.window("train") == (0, 2) and c.row == 1
    c.close_window()
    c.start("train")
    c.start("valid")
    assert (c.phase, c.row) == ("valid", 0) and c.window("train") == (2, 1)
    assert c.open_phases() == ["train", "valid"]
    c.close_epoch_phase("train")
    assert c.open_phases() == ["valid"]
    c.align({"train": (5, 3), "valid": (1, 0)})
    assert c.window("train") == (5, 0) and c.epoch_first == {"train": 3, "valid": 0}


def test_buffers_declare_how_ranks_combine_them():
    pd = PhaseBuffers(4, binning.n_slots(3), torch.device("cpu"), {"truth": 2}, auto=False)
    assert {k: v[2] for k, v in pd.shapes().items()} == {"counts": "sum", "sums": "sum", "peaks": "max",
                                                          "truth": "sum"}
    assert pd.shapes()["counts"][:2] == [[6], "int64"] and pd.shapes()["truth"][0] == [2, 6]
    # automatic ranges: each row's grid, agreed by ranks before the slot rows counted on it are summed
    pd = PhaseBuffers(4, binning.n_slots(3), torch.device("cpu"), {"truth": 2})
    assert {k: v[2] for k, v in pd.shapes().items()} == {"counts": "sum@grid", "sums": "sum", "peaks": "max",
                                                          "truth": "sum@grid", "grid": "grid"}
    assert pd.shapes()["grid"][:2] == [[2], "int64"]


@pytest.mark.parametrize("kernel", [True, False], ids=["c-kernel", "torch"])
def test_engine_rows_match_numpy_and_reset(kernel, monkeypatch):
    if kernel and binning._cbin is None:
        pytest.skip("the C kernel is not built")
    monkeypatch.setattr(binning, "KERNEL", kernel)
    clock = StepClock(rows=4)
    engine = BinningEngine(clock, bins=4, sample=1.0, per_class=False, rows=4, seed=0, warn=lambda *a: None,
                           range_of=lambda rec: (-1.0, 1.0))
    rec = Record(0, 0, 0, "x", "Linear", last=False)
    values = [torch.tensor([-2.0, -1.0, 0.0, 0.25, 1.0, float("nan")]), torch.tensor([0.5, 3.0])]
    for v in values:
        clock.start("train")
        engine.bin(rec, v)
    assert rec.fast is not None and rec.fast.kernel is kernel and rec.fast.phase == "train"
    pd = rec.phases["train"]
    counts, stats, extra, grid = pd.columns(pd.take(2))
    assert grid is None  # a fixed range: numpy's edges, no grids
    edges = np.linspace(-1, 1, 5)
    for row, st, v in zip(counts, stats, values):
        x = v.numpy().astype(np.float64)
        fin = x[np.isfinite(x)]
        inside = np.histogram(fin[(fin >= -1) & (fin <= 1)], edges)[0]
        assert row.tolist() == [(fin < -1).sum(), *inside, (fin > 1).sum(), (~np.isfinite(x)).sum()]
        assert st[BINNED] == st[SEEN] == len(x)
        assert st[ZEROS] == (x == 0).sum()
        if np.isfinite(x).all():
            assert (st[MIN], st[MAX]) == (x.min(), x.max())
            assert st[SUM] == pytest.approx(x.sum()) and st[SUMSQ] == pytest.approx((x * x).sum())
        else:  # NaN wins the extremes and the sums, as in torch.maximum
            assert np.isnan([st[MIN], st[MAX], st[SUM]]).all()
    assert extra == {}
    again = pd.take(2)  # taken rows are reset to each state's neutral value
    assert not again["counts"].any() and not again["sums"].any() and (again["peaks"] == -np.inf).all()
    assert SUMS.index("binned") == 3


def test_epoch_writer_adds_a_final_pass_into_the_last_epoch_without_reading_back():
    w = EpochWriter(RunWriter(None, {"options": {}}), bins=2, max_columns=10)
    rec = Record(0, 0, 0, "x", "Linear", last=False)
    rec.out_shape = [1]
    w.apply_layers(w.layer_changes([rec]))
    ones = np.ones((1, 5), np.int64)
    stats = np.array([[5, 5, 1.0, 1.0, 0, -1.0, 1.0]])
    w.add_window(rec.id, "train", 0, ones, stats, {})
    w.write_epoch([rec.id], 0, {"train": (0, 1)}, merge=False)
    w.add_window(rec.id, "test", 0, 2 * ones, stats, {})
    w.write_epoch([rec.id], 0, {"test": (0, 1)}, merge=True)
    w.add_window(rec.id, "test", 1, 3 * ones, stats, {})
    w.write_epoch([rec.id], 0, {"test": (1, 2)}, merge=True)
    w.commit()
    run = Run(w.conn, None, owned=False)
    assert run.epochs == 1 and tuple(run.epoch_info(0).steps["test"][:2]) == (0, 2)
    assert run.histogram("x", "test", epoch=0).total == 25 and run.histogram("x", "train", epoch=0).total == 5
