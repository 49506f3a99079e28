"""fastai v2 adapter: real 2-epoch trainings of tiny learners on scikit-learn data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("fastai")
from fastai.callback.core import Callback  # noqa: E402
from fastai.tabular.all import CategoryBlock, Normalize, RandomSplitter, TabularPandas, range_of, tabular_learner  # noqa: E402

from twinpeaks.fastai import ActivationsHistogram  # noqa: E402

BS = 64


@pytest.fixture(scope="module")
def cancer_dls():
    from sklearn.datasets import load_breast_cancer

    d = load_breast_cancer(as_frame=True)
    df = d.frame.copy()
    df["target"] = df["target"].map({0: "malignant", 1: "benign"})
    splits = RandomSplitter(0.25, seed=0)(range_of(df))
    to = TabularPandas(df, procs=[Normalize], cont_names=list(d.feature_names), y_names="target",
                       y_block=CategoryBlock(), splits=splits)
    return to.dataloaders(bs=BS)


def _fit(learn, epochs: int = 2) -> None:
    with learn.no_bar(), learn.no_logging():
        learn.fit(epochs, 1e-2)


@pytest.fixture(scope="module")
def tabular(outputs, cancer_dls, tmp_path_factory):
    """Empty embedding ModuleList and ReLU(inplace=True): the model that broke the original."""
    path = tmp_path_factory.mktemp("fastai") / "a.tp"
    learn = tabular_learner(cancer_dls, layers=[16, 8], cbs=ActivationsHistogram(path=path))
    assert len(learn.model.embeds) == 0
    last = outputs(learn.model.layers[-1][0])
    _fit(learn)
    last.remove()
    return learn, last


def test_tabular_no_categoricals(assert_hist_equals, check_run, check_truth_split, cancer_dls, tabular):
    dls = cancer_dls
    learn, last = tabular
    cb = learn.activations_histogram
    assert isinstance(cb, ActivationsHistogram)
    n_train, n_valid = len(dls.train), len(dls.valid)  # train drops its last partial batch
    n_valid_rows = len(dls.valid.dataset)
    check_run(cb.run, train_steps=n_train, valid_steps=n_valid, last_train_total=n_train * BS * 2,
              last_valid_total=n_valid_rows * 2, classes=["benign", "malignant"])
    assert cb.run.n_steps("train") == learn.train_iter
    assert "embeds" not in [layer.name for layer in cb.run.layers]
    # the in-place ReLU's input (a Linear output) is binned before ReLU overwrites it: min < 0
    assert cb.run.histogram("layers.0.0", "train").min < 0 <= cb.run.histogram("layers.0.1", "train").min
    assert_hist_equals(cb.run.histogram(-1, "valid"), last.values(training=False))
    assert_hist_equals(cb.run.histogram(-1, "train"), last.values(training=True))
    check_truth_split(cb.run)
    # hooks are gone after fit: a plain forward records nothing
    with torch.no_grad():
        learn.model(*dls.one_batch()[:2])
    assert cb.run.n_steps("valid") == 2 * n_valid


def test_charts(check_charts, tabular, tmp_path):
    check_charts(tabular[0].activations_histogram, tmp_path)


def test_get_preds_as_test_and_second_fit(assert_hist_equals, outputs, cancer_dls, tmp_path):
    dls = cancer_dls
    learn = tabular_learner(dls, layers=[8], cbs=ActivationsHistogram(path=tmp_path / "a.tp", bins=20))
    _fit(learn, 1)
    cb = learn.activations_histogram
    with learn.no_bar():
        learn.get_preds()  # not asked: not recorded
        learn.validate()
    assert cb.run.phases == ["train", "valid"]
    last = outputs(learn.model.layers[-1][0])
    with cb.phase("test"), learn.no_bar():
        preds, _ = learn.get_preds(dl=dls.valid)
    last.remove()
    run = cb.run
    assert run.epochs == 1 and run.phases == ["train", "valid", "test"]
    assert run.n_steps("test") == len(dls.valid)
    test = run.histogram(-1, "test", epoch=0)
    assert test.total == preds.numel()
    assert_hist_equals(test, last.values(training=False))
    _fit(learn, 1)  # a second fit goes on with the same run
    assert cb.run.epochs == 2 and cb.run.n_steps("train") == 2 * learn.train_iter == 2 * len(dls.train)
    learn.export(tmp_path / "learner.pkl")  # pickles the callbacks: the recorder stays out
    from fastai.learner import load_learner

    loaded = load_learner(tmp_path / "learner.pkl")
    assert isinstance(loaded.activations_histogram, ActivationsHistogram)
    cb.close()


def test_lr_find_is_not_recorded(cancer_dls, tmp_path):
    learn = tabular_learner(cancer_dls, layers=[8], cbs=ActivationsHistogram(path=None))
    with learn.no_bar(), learn.no_logging():
        learn.lr_find(end_lr=1, num_it=5, show_plot=False)
    with pytest.raises(RuntimeError, match="train first"):
        learn.activations_histogram.recorder  # noqa: B018


class _CPUAutocast(Callback):
    """fastai's MixedPrecision autocasts for 'cuda' only; on this CPU machine make it autocast on the CPU."""

    order = 11

    def before_fit(self):
        self.learn.mixed_precision.autocast = torch.autocast("cpu", dtype=torch.bfloat16)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU autocast check")
def test_to_bf16(assert_hist_equals, outputs, cancer_dls, tmp_path):
    learn = tabular_learner(cancer_dls, layers=[8], cbs=[ActivationsHistogram(path=None), _CPUAutocast()]).to_bf16()
    last = outputs(learn.model.layers[-1][0], pick=lambda out: out)
    dtypes = []
    hook = learn.model.layers[-1][0].register_forward_hook(lambda m, a, out: dtypes.append(out.dtype))
    _fit(learn)
    hook.remove()
    last.remove()
    assert set(dtypes) == {torch.bfloat16}
    run = learn.activations_histogram.run
    assert run.epochs == 2 and run.n_steps("train") == learn.train_iter
    assert_hist_equals(run.histogram(-1, "train"), last.values(training=True))


@pytest.mark.skipif(torch.cuda.is_available(), reason="what fastai does on a machine without CUDA")
@pytest.mark.parametrize("mode", ["to_fp16", "to_bf16"])
def test_fastai_mixed_precision_on_cpu_runs(cancer_dls, mode):
    """fastai disables its 'cuda' autocast on a CPU: training goes on in float32 and is recorded."""
    learn = getattr(tabular_learner(cancer_dls, layers=[8], cbs=ActivationsHistogram(path=None)), mode)()
    with pytest.warns(UserWarning):
        _fit(learn, 1)
    assert learn.activations_histogram.run.n_steps("train") == learn.train_iter


def test_awd_lstm_text_classifier(check_run, check_truth_split, tmp_path):
    text = pytest.importorskip("fastai.text.all")
    from sklearn.datasets import load_digits

    d = load_digits()
    keep = (d.target == 3) | (d.target == 7)
    x = torch.tensor(d.data[keep], dtype=torch.long)  # 64 pixel intensities 0..16 as tokens
    y = torch.tensor((d.target[keep] == 7).astype(np.int64))
    ds = list(zip(x, y))
    dls = text.DataLoaders.from_dsets(ds[:192], ds[192:256], bs=32)
    cfg = {**text.awd_lstm_clas_config, "emb_sz": 16, "n_hid": 32, "n_layers": 2}
    model = text.get_text_classifier(text.AWD_LSTM, 17, 2, seq_len=32, config=cfg)
    learn = text.Learner(dls, model, loss_func=text.CrossEntropyLossFlat(),
                         cbs=[text.RNNCallback(), ActivationsHistogram(path=tmp_path / "t.tp", classes=["3", "7"])])
    _fit(learn)
    run = learn.activations_histogram.run
    check_run(run, train_steps=6, valid_steps=2, last_train_total=6 * 32 * 2, last_valid_total=64 * 2,
              classes=["3", "7"])
    names = {layer.name: layer for layer in run.layers}
    # LSTMs return tuples: the output sequence is the layer, the states sub-records
    assert names["0.module.rnns.0.module"].called and names["0.module.rnns.0.module.1.0"].called
    # the embedding runs functionally inside EmbeddingDropout (F.embedding with its weights): that module is the
    # layer, and the embedding, which never runs as a module, is not listed as never called
    assert names["0.module.encoder_dp"].called and names["0.module.encoder_dp"].out_shape[-1] == 16
    assert "0.module.encoder" not in names
    # only what truly never ran: AWD_LSTM skips the hidden dropout after its last LSTM
    assert [n for n, layer in names.items() if not layer.called] == ["0.module.hidden_dps.1"]
    check_truth_split(run)
