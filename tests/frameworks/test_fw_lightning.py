"""PyTorch Lightning adapter: real 2-epoch trainings of a tiny LightningModule on scikit-learn's wine data."""

from __future__ import annotations

import pytest
import torch
from torch import nn

try:
    import lightning
except ImportError:
    pytest.skip("lightning is not installed: pip install 'twinpeaks[lightning]'", allow_module_level=True)
except RuntimeError as exc:  # torchmetrics imports an installed torchvision built for another torch
    pytest.skip(f"lightning does not import here ({exc}): a torchvision that does not load beside this torch "
                "is installed; pip uninstall torchvision", allow_module_level=True)

from twinpeaks.lightning import ActivationsHistogram  # noqa: E402

BS = 32
N_TRAIN, N_VALID = 128, 50  # 4 train batches, 2 valid batches (32 + 18)


class Wine(lightning.LightningModule):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(13, 16), nn.ReLU(), nn.Linear(16, 3))

    def forward(self, x):
        return self.body(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.body(x), y)  # calls a submodule, not self(x)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self(x), y))

    test_step = validation_step

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)


def _loaders():
    from sklearn.datasets import load_wine

    d = load_wine()
    x = torch.tensor((d.data - d.data.mean(0)) / d.data.std(0), dtype=torch.float32)
    y = torch.tensor(d.target)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    ds = torch.utils.data.TensorDataset(x[order], y[order])
    train = torch.utils.data.Subset(ds, range(N_TRAIN))
    valid = torch.utils.data.Subset(ds, range(N_TRAIN, N_TRAIN + N_VALID))
    return (torch.utils.data.DataLoader(train, batch_size=BS, shuffle=True),
            torch.utils.data.DataLoader(valid, batch_size=BS))


def _trainer(cb, **kw):
    options = {"max_epochs": 2, "accelerator": "cpu", "logger": False, "enable_checkpointing": False,
               "enable_progress_bar": False, "enable_model_summary": False, "num_sanity_val_steps": 2, **kw}
    return lightning.Trainer(callbacks=[cb], **options)


@pytest.fixture(scope="module")
def fitted(outputs, tmp_path_factory):
    torch.manual_seed(0)
    cb = ActivationsHistogram(path=tmp_path_factory.mktemp("pl") / "b.tp", classes=["a", "b", "c"], live=True)
    model = Wine()
    last = outputs(model.body[-1])
    trainer = _trainer(cb)
    train_dl, valid_dl = _loaders()
    trainer.fit(model, train_dl, valid_dl)
    trainer.test(model, valid_dl, verbose=False)
    last.remove()
    return cb, trainer, last


def test_fit_two_epochs(check_run, check_truth_split, fitted):
    cb, trainer, last = fitted
    run = cb.run
    check_run(run, train_steps=4, valid_steps=2, last_train_total=N_TRAIN * 3, last_valid_total=N_VALID * 3,
              classes=["a", "b", "c"])
    assert run.n_steps("train") == trainer.global_step == 8
    check_truth_split(run)
    check_truth_split(run, "train")


def test_sanity_check_not_recorded_and_test_joins_last_epoch(assert_hist_equals, fitted):
    cb, trainer, last = fitted
    run = cb.run
    # eval-mode calls: 2 sanity batches, 2 x 2 validation batches, 2 test batches
    assert_hist_equals(run.histogram(-1, "valid"), last.values(training=False, skip=2)[: 2 * N_VALID * 3])
    assert run.phases == ["train", "valid", "test"] and run.epochs == 2
    assert run.epoch_info(1).steps["test"][:2] == (0, 2)
    assert_hist_equals(run.histogram(-1, "test", epoch=1), last.values(training=False)[-N_VALID * 3:])
    assert_hist_equals(run.histogram(-1, "train"), last.values(training=True))


def test_validation_of_epoch_e_belongs_to_epoch_e(assert_hist_equals, outputs, tmp_path):
    """Per-epoch valid histograms equal the outputs of the validation run after that epoch's training."""
    torch.manual_seed(0)
    cb = ActivationsHistogram(path=None, bins=30)
    model = Wine()
    last = outputs(model.body[-1])
    train_dl, valid_dl = _loaders()
    _trainer(cb, num_sanity_val_steps=0).fit(model, train_dl, valid_dl)
    valid = last.values(training=False)
    for e in range(2):
        assert_hist_equals(cb.run.histogram(-1, "valid", epoch=e), valid[e * N_VALID * 3:(e + 1) * N_VALID * 3])


def test_bf16_mixed(assert_hist_equals, outputs, tmp_path):
    torch.manual_seed(0)
    cb = ActivationsHistogram(path=None)
    model = Wine()
    dtypes = []
    model.body[-1].register_forward_hook(lambda m, a, out: dtypes.append(out.dtype))
    last = outputs(model.body[-1])
    trainer = _trainer(cb, precision="bf16-mixed")
    trainer.fit(model, *_loaders())
    assert set(dtypes) == {torch.bfloat16}
    assert cb.run.n_steps("train") == trainer.global_step
    assert_hist_equals(cb.run.histogram(-1, "train"), last.values(training=True))


def test_charts(check_charts, fitted, tmp_path):
    check_charts(fitted[0], tmp_path)


def test_live_option_passes_through(fitted):
    cb = fitted[0]
    assert (cb.run.path.parent / "b.tp.live.png").stat().st_size > 0
