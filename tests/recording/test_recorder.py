"""Recording: exact histograms through hooks, phases, output types, selection, bounded memory."""

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import twinpeaks as tp
from twinpeaks import grids
from twinpeaks.recorder import AUTO_SAMPLE, EXACT_BELOW
from twinpeaks.run import on_common_grid


def mlp(inplace=True):
    return nn.Sequential(nn.Linear(6, 32), nn.ReLU(inplace=inplace), nn.Linear(32, 4))


def train_epochs(model, hist, epochs=2, steps=5, valid=2, batch=8):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(epochs):
        model.train()
        for _ in range(steps):
            loss = model(torch.randn(batch, 6)).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            for _ in range(valid):
                model(torch.randn(batch, 6))
        hist.end_epoch()


@pytest.mark.parametrize("sample", [1.0, "auto"])
def test_linear_before_inplace_relu_is_recorded_exactly(assert_hist_equals, capture, tmp_run, sample):
    model = mlp(inplace=True)
    cap = capture(model[0])
    hist = tp.ActivationsHistogram(model, tmp_run, sample=sample)
    with hist:
        model.train()
        for _ in range(4):
            model(torch.randn(16, 6)).sum().backward()
        cap.phase = "valid"
        model.eval()
        with torch.no_grad():
            model(torch.randn(16, 6))
        hist.end_epoch()
    run = tp.open_run(tmp_run)
    h = run.histogram("0", "train", epoch=0)
    assert_hist_equals(h, cap.all("train"))
    assert (cap.all("train") < 0).any() and h.counts[h.centers < 0].sum() > 0  # negatives survive ReLU(inplace)
    assert_hist_equals(run.histogram("0", "valid", epoch=0), cap.all("valid"))
    assert h.steps == 4 and h.seen == h.total == 4 * 16 * 32


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_precision_model_outputs(assert_hist_equals, capture, tmp_run, dtype):
    model = mlp(inplace=False).to(dtype)
    cap = capture(model[2])
    with tp.ActivationsHistogram(model, tmp_run, sample=1.0, range=(-2, 2)) as hist:
        with torch.no_grad():
            for _ in range(3):
                model(torch.randn(64, 6, dtype=dtype) * 8)
        hist.end_epoch()
    run = tp.open_run(tmp_run)
    assert_hist_equals(run.histogram(-1, "train", epoch=0), cap.all("train"))


def test_autocast_no_grad_and_inference_mode_phases(tmp_run):
    model = mlp()
    with tp.ActivationsHistogram(model, tmp_run) as hist:
        model.train()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model(torch.randn(4, 6)).float().sum().backward()
        model.eval()
        with torch.no_grad():
            model(torch.randn(4, 6))
        with torch.inference_mode():
            model(torch.randn(4, 6))
        with hist.phase("test"), torch.inference_mode():
            model(torch.randn(4, 6))
        hist.end_epoch()
    run = tp.open_run(tmp_run)
    assert run.phases == ["train", "valid", "test"]
    assert [run.n_steps(p) for p in run.phases] == [1, 2, 1]
    assert run.histogram(-1, "train", epoch=0).total == 4 * 4
    assert run.histogram(-1, "valid", epoch=0).total == 2 * 4 * 4


class Structured(nn.Module):
    """A model whose layers return every awkward thing."""

    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(5, 7, batch_first=True)
        self.embs = nn.ModuleList()  # empty: never called (fastai tabular without categories)
        self.unused = nn.Dropout()  # never called
        self.head = nn.Linear(7, 3)

    def forward(self, x):
        out, _ = self.lstm(x)
        return self.head(out[:, -1])


class Odd(nn.Module):
    def __init__(self, kind):
        super().__init__()
        self.kind = kind

    def forward(self, x):
        return {
            "none": None, "int": 3, "dict": {"a": x, "b": [x * 2, None]}, "long": x.long(),
            "empty": x[:0], "bool": x > 0, "complex": torch.complex(x, x),
        }[self.kind]


def test_tuple_outputs_make_the_layer_and_subrecords_and_empty_modules_are_listed(tmp_run):
    model = Structured()
    with tp.ActivationsHistogram(model, tmp_run) as hist:
        model(torch.randn(2, 3, 5)).sum().backward()
        hist.end_epoch()
    run = tp.open_run(tmp_run)
    names = [layer.name for layer in run.layers]
    assert names == ["lstm", "lstm.1.0", "lstm.1.1", "unused", "head"]  # the output sequence is the layer itself
    assert run.layer("lstm").out_shape == (2, 3, 7)
    assert not run.layer("unused").called and run.layer(-1).name == "head"
    assert run.histogram("lstm.1.1", epoch=0).total == 1 * 2 * 7


def test_a_packed_sequence_is_recorded_as_its_values(tmp_run):
    """An LSTM fed packed sequences returns a PackedSequence (a tuple): its values are the layer, its batch sizes
    and sort indices (integer bookkeeping) are not recorded."""
    from torch.nn.utils.rnn import pack_padded_sequence

    lstm = nn.LSTM(5, 7, batch_first=True)
    model = nn.Sequential()
    model.add_module("lstm", lstm)
    lengths = torch.tensor([3, 1, 2])
    seen = []
    with tp.ActivationsHistogram(model, tmp_run, range=(-1, 1)) as hist:
        for _ in range(2):
            out, (h, c) = model(pack_padded_sequence(torch.randn(3, 3, 5), lengths, batch_first=True,
                                                     enforce_sorted=False))
            seen.append(out.data.detach().reshape(-1))
        hist.end_epoch()
    run = tp.open_run(tmp_run)
    assert [layer.name for layer in run.layers] == ["lstm", "lstm.1.0", "lstm.1.1"]
    assert run.layer("lstm").out_shape == (6, 7)  # 3 + 1 + 2 time steps x 7
    values = torch.cat(seen).double().numpy()
    np.testing.assert_array_equal(run.histogram("lstm", epoch=0).counts,
                                  np.histogram(values, run.histogram("lstm", epoch=0).edges)[0])


@pytest.mark.parametrize("kind,expect", [
    ("none", None), ("int", None), ("dict", ["odd.a", "odd.b.0"]), ("long", ["odd"]),
    ("empty", []), ("bool", ["odd"]), ("complex", []),
])
def test_any_output_type_never_crashes(tmp_run, kind, expect):
    model = nn.Sequential()
    model.add_module("odd", Odd(kind))
    hist = tp.ActivationsHistogram(model, tmp_run)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with hist:
            for _ in range(3):
                model(torch.randn(2, 4))
            hist.end_epoch()
    warned = [w for w in caught if issubclass(w.category, tp.TwinpeaksWarning)]
    run = tp.open_run(tmp_run)
    recorded = [layer.name for layer in run.layers if layer.called]
    if expect is None:
        assert recorded == [] and len(warned) == 1  # one warning per module, not per call
    else:
        assert recorded == expect
        assert len(warned) == (1 if kind == "complex" else 0)
    if kind == "long":
        assert run.histogram("odd", "train", epoch=0).total == 3 * 8


def test_modules_selection_by_name_and_index(tmp_run):
    model = mlp()
    with tp.ActivationsHistogram(model, tmp_run, modules=["2", 0]) as hist:
        model(torch.randn(3, 6))
        hist.end_epoch()
    assert [layer.name for layer in tp.open_run(tmp_run).layers] == ["0", "2"]


@pytest.mark.parametrize("kwargs,match", [
    ({"modules": ["nope"]}, "modules: no module named 'nope'"),
    ({"modules": [9]}, "modules index 9"),
    ({"bins": 0}, "bins must be"),
    ({"range": (1, 0)}, "range must be"),
    ({"range": "wide"}, "range must be"),
    ({"sample": 2}, "sample must be"),
    ({"margin": -1}, "margin must be"),
])
def test_bad_arguments_fail_early_naming_the_argument(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        tp.ActivationsHistogram(mlp(), None, **kwargs)


def test_existing_run_file_is_never_overwritten(tmp_run):
    tmp_run.write_bytes(b"keep me")
    with pytest.raises(FileExistsError, match="never overwrites"):
        tp.ActivationsHistogram(mlp(), tmp_run).attach()
    assert tmp_run.read_bytes() == b"keep me"


def test_round_trip_columns_epochs_and_whole_run_agree(assert_hist_equals, capture, tmp_run):
    model = mlp()
    cap = capture(model[2])
    hist = tp.ActivationsHistogram(model, tmp_run, flush_every=3, max_columns=4, sample=1.0)
    with hist:
        train_epochs(model, hist, epochs=3, steps=7, valid=0)
    run = tp.open_run(tmp_run)
    cols = run.columns(-1, "train")
    assert len(cols) <= 4 and cols.starts[0] == 0 and cols.ends[-1] == 21
    assert np.all(cols.starts[1:] == cols.ends[:-1])
    whole = run.histogram(-1, "train")
    # automatic ranges: every epoch and column has its own grid; on the whole run's grid they add up exactly
    epochs = on_common_grid([run.histogram(-1, "train", epoch=e) for e in range(3)], onto=whole.grid)
    np.testing.assert_array_equal(whole.counts, sum(h.counts for h in epochs))
    col_rows = np.concatenate([cols.underflow[:, None], cols.counts, cols.overflow[:, None],
                               cols.nonfinite[:, None]], axis=1)
    np.testing.assert_array_equal(grids.combine(list(col_rows), [tuple(g) for g in cols.grids.tolist()])[0][1:-2],
                                  whole.counts)
    assert_hist_equals(whole, cap.all("train"))
    # stats: mean/std/min/max of every value, from the run file
    v = cap.all("train").double().numpy()
    assert whole.mean == pytest.approx(v.mean(), rel=1e-5, abs=1e-6)
    assert whole.std == pytest.approx(v.std(), rel=1e-4)
    assert (whole.min, whole.max) == pytest.approx((v.min(), v.max()))
    # last quarter of each epoch: ceil(7 / 4) = 2 steps
    lq = run.histogram(-1, "train", epoch=1, last_quarter=True)
    assert lq.steps == 2
    ref = torch.cat([t.reshape(-1) for t in cap.values["train"][12:14]])
    assert_hist_equals(lq, ref)


def test_per_class_and_truth_split(assert_hist_equals, capture, tmp_run):
    model = mlp()
    cap = capture(model[2])
    ys = []
    with tp.ActivationsHistogram(model, tmp_run, per_class=True, classes="abcd") as hist:
        for i in range(4):
            y = torch.randint(0, 4, (8,))
            ys.append(y)
            if i % 2:
                hist.targets(y)
                model(torch.randn(8, 6))
            else:  # after the forward works too once the style is set... here: before
                hist.targets(y)
                model(torch.randn(8, 6))
        hist.end_epoch()
    run = tp.open_run(tmp_run)
    assert run.classes == ["a", "b", "c", "d"] and run.layer(-1).columns == 4
    out = torch.cat(cap.values["train"])
    y = torch.cat(ys)
    for k in range(4):
        assert_hist_equals(run.histogram(-1, epoch=0, column=k), out[:, k])
    yes = out[torch.arange(len(y)), y]
    no_mask = torch.ones_like(out, dtype=torch.bool)
    no_mask[torch.arange(len(y)), y] = False
    assert_hist_equals(run.histogram(-1, epoch=0, truth="yes"), yes)
    assert_hist_equals(run.histogram(-1, epoch=0, truth="no"), out[no_mask])


def test_targets_after_the_forward_and_multilabel(assert_hist_equals, capture, tmp_run):
    model = mlp()
    cap = capture(model[2])
    ys = []
    with tp.ActivationsHistogram(model, tmp_run) as hist:
        for _ in range(3):
            model(torch.randn(5, 6))
            y = (torch.rand(5, 4) > 0.5).float()
            ys.append(y)
            hist.targets(y)
        hist.end_epoch()
    out, y = torch.cat(cap.values["train"]), torch.cat(ys).bool()
    run = tp.open_run(tmp_run)
    assert_hist_equals(run.histogram(-1, epoch=0, truth="yes"), out[y])
    assert_hist_equals(run.histogram(-1, epoch=0, truth="no"), out[~y])


def test_sampling_keeps_small_outputs_exact_and_reports_seen(assert_hist_equals, capture, tmp_run):
    big = nn.Sequential(nn.Conv2d(1, 64, 3, padding=1), nn.Flatten(), nn.Linear(64 * 32 * 32, 3))
    cap = capture(big[2])
    big.eval()
    with tp.ActivationsHistogram(big, tmp_run) as hist:
        with torch.no_grad():
            for _ in range(3):
                big(torch.randn(4, 1, 32, 32))
        hist.end_epoch()
    run = tp.open_run(tmp_run)
    conv = run.histogram("0", "valid", epoch=0)
    assert conv.seen == 3 * 4 * 64 * 32 * 32 and 3 * AUTO_SAMPLE // 2 < conv.total <= 3 * AUTO_SAMPLE
    assert_hist_equals(run.histogram(-1, "valid", epoch=0), cap.all("train"))  # last layer exact


@pytest.mark.parametrize("sample", ["auto", 1.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_c_kernel_and_torch_path_record_the_same(tmp_path, monkeypatch, sample, dtype):
    """The recorder's two CPU paths (C kernel, torch operations) draw the same samples and count the same.

    Covers what the kernel adds besides the bins: nonfinite values, element counts, sums, min/max, a
    permuted (dense, non-contiguous) output, and a non-dense one.
    """
    from twinpeaks import binning

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 64, 3, padding=1)  # 4 x 64 x 32 x 32 = 262k elements: sampled in "auto"
            self.perm = nn.Identity()
            self.strided = nn.Identity()
            self.head = nn.Linear(32, 3)

        def forward(self, x):
            h = self.conv(x)
            h[0, 0, 0, :3] = torch.tensor([float("nan"), float("inf"), -float("inf")])
            p = self.perm(h.permute(0, 2, 3, 1))  # dense, not contiguous
            s = self.strided(p[..., ::2])  # not dense: binned from a copy
            return self.head(s.mean(dim=(1, 2))[:, :32])

    runs = {}
    for kernel in (True, False):
        monkeypatch.setattr(binning, "KERNEL", kernel)
        torch.manual_seed(0)
        model = Net().to(dtype)
        path = tmp_path / f"{kernel}.tp"
        with tp.ActivationsHistogram(model, path, sample=sample) as hist, torch.no_grad():
            for _ in range(3):
                model(torch.randn(4, 1, 32, 32, dtype=dtype))
            hist.end_epoch()
        runs[kernel] = tp.open_run(path)
    for layer in runs[True].layers:
        a, b = (runs[k].histogram(layer.name, "train", epoch=0) for k in (True, False))
        np.testing.assert_array_equal(a.counts, b.counts)
        assert (a.underflow, a.overflow, a.nonfinite, a.total, a.seen) == (b.underflow, b.overflow, b.nonfinite,
                                                                          b.total, b.seen)
        if layer.name == "conv":
            assert (a.total < a.seen) == (sample == "auto")
        if layer.name == "perm" and sample == 1.0:
            assert a.nonfinite == 9
        np.testing.assert_allclose([a.mean, a.std], [b.mean, b.std], rtol=1e-5, equal_nan=True)
        assert (a.min, a.max) == (b.min, b.max) or np.isnan([a.min, b.min]).all()


def test_tensor_subclass_outputs_take_the_torch_path(assert_hist_equals, capture, tmp_run):
    """A tensor subclass (a DTensor may hold no local memory) is binned with torch operations, not by address."""
    from twinpeaks import binning

    class Tagged(torch.Tensor):
        pass

    class Emit(nn.Module):
        def forward(self, x):
            return (x * 2).as_subclass(Tagged)

    model = nn.Sequential(nn.Linear(4, 4), Emit(), nn.Linear(4, 2))  # the subclass propagates to the head
    caps = [capture(m) for m in model]
    with tp.ActivationsHistogram(model, tmp_run) as hist:
        for _ in range(3):
            model(torch.randn(5, 4))
        hist.end_epoch()
        kernel = 0 if binning.KERNEL else -1  # float32 through the kernel unless TWINPEAKS_KERNEL=torch
        assert [rec.fast.code for rec in hist._records] == [kernel, -1, -1]
    run = tp.open_run(tmp_run)
    for i, cap in enumerate(caps):
        assert_hist_equals(run.histogram(i, epoch=0), cap.all("train"))


def test_a_large_last_layer_is_still_binned_exactly(assert_hist_equals, capture, tmp_run):
    """Twin Peaks and the diagnosis read the last layer: sample="auto" never samples it, whatever its size."""
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 5000))  # 8 x 5000 = 40k > EXACT_BELOW
    cap = capture(model[2])
    with tp.ActivationsHistogram(model, tmp_run) as hist:
        for _ in range(2):
            model(torch.randn(8, 8))
        hist.end_epoch()
    h = tp.open_run(tmp_run).histogram(-1, epoch=0)
    assert h.seen == h.total == 2 * 8 * 5000 > 2 * EXACT_BELOW
    assert_hist_equals(h, cap.all("train"))


def test_memory_stays_bounded_over_many_steps(tmp_run):
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    hist = tp.ActivationsHistogram(model, tmp_run, flush_every=64, max_columns=100)
    x = torch.randn(2, 4)
    with hist, torch.no_grad():
        model.train()
        for _ in range(4):
            for _ in range(5000):
                model(x)
            hist.end_epoch()
        hosts = [hist._writer.cohort(rec.id, "train") for rec in hist._records]
        sizes = [max(len(f) for _, f in h.files) for h in hosts]
        epoch_sizes = [len(h.epoch) for h in hosts]
    assert max(sizes) <= 200 and max(epoch_sizes) == 0  # merges past 100 may wait for the writer (2x at most)
    run = tp.open_run(tmp_run)
    assert len(run.columns(-1)) <= 100 and run.n_steps("train") == 20_000
    assert run.histogram(-1).total == 20_000 * 4


def test_in_memory_run_and_test_after_last_epoch_joins_it():
    model = mlp()
    hist = tp.ActivationsHistogram(model)
    with hist:
        train_epochs(model, hist, epochs=2, steps=3, valid=1, batch=2)
        with hist.phase("test"), torch.no_grad():
            model(torch.randn(2, 6))
    run = hist.run
    assert run.path is None and run.epochs == 2
    assert run.histogram(-1, "test", epoch=-1).total == 2 * 4
    assert run.epoch_info(-1).steps["test"] == (0, 1, 0)


def test_unclosed_training_becomes_an_epoch_on_exit(tmp_run):
    model = mlp()
    with tp.ActivationsHistogram(model, tmp_run):
        model(torch.randn(2, 6))
    assert tp.open_run(tmp_run).epochs == 1


def test_ddp_style_and_compile_wrappers_are_unwrapped(tmp_run):
    model = mlp()
    compiled = torch.compile(model, backend="eager")
    hist = tp.ActivationsHistogram(compiled, tmp_run)
    assert hist.root is model


def test_asking_for_a_phase_that_was_not_recorded_says_which_exist(tmp_run):
    model = mlp()
    with tp.ActivationsHistogram(model, tmp_run) as hist:
        model(torch.randn(2, 6))
        hist.end_epoch()
    with pytest.raises(ValueError, match=r"phase 'valid' was not recorded; this run has \['train'\]"):
        tp.open_run(tmp_run).histogram(-1, "valid", epoch=0)
