"""PyTorch Lightning: an MLP on scikit-learn's wine data, recorded by twinpeaks.

Run: python examples/lightning_wine.py [RUN_FILE_OR_FOLDER/]  (default: a new run in runs/lightning/)
"""

import lightning
import torch
from _common import fresh_run, report
from sklearn.datasets import load_wine
from torch import nn

from twinpeaks.lightning import ActivationsHistogram


class WineMLP(lightning.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(13, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 3))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_acc", (self(x).argmax(1) == y).float().mean(), prog_bar=True)

    test_step = validation_step

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=3e-3)


path = fresh_run("lightning")
torch.manual_seed(0)
d = load_wine()
x = torch.tensor((d.data - d.data.mean(0)) / d.data.std(0), dtype=torch.float32)
ds = torch.utils.data.TensorDataset(x, torch.tensor(d.target))
train, valid, test = torch.utils.data.random_split(ds, [108, 35, 35], torch.Generator().manual_seed(0))
loader = lambda s, shuffle=False: torch.utils.data.DataLoader(s, batch_size=16, shuffle=shuffle)  # noqa: E731

# the two lines
cb = ActivationsHistogram(path=path, classes=list(d.target_names))
trainer = lightning.Trainer(max_epochs=5, callbacks=[cb], accelerator="cpu", logger=False, enable_checkpointing=False)

trainer.fit(WineMLP(), loader(train, True), loader(valid))
trainer.test(trainer.lightning_module, loader(test), verbose=False)
report(cb, path)
