"""Run by tests/recording/test_distributed.py: Lightning strategy="ddp" on 2 CPU processes with the twinpeaks callback.

Lightning's ddp launcher starts rank 1 by running this script again, so it must be a standalone file.
"""

import sys
from pathlib import Path

import lightning
import torch
from sklearn.datasets import load_wine

from twinpeaks.lightning import ActivationsHistogram

sys.path.insert(0, str(Path(__file__).parent))
from test_fw_lightning import Wine  # noqa: E402  (its training_step calls a submodule, not forward)


def main(path: str) -> None:
    torch.manual_seed(0)
    d = load_wine()
    x = torch.tensor((d.data - d.data.mean(0)) / d.data.std(0), dtype=torch.float32)
    y = torch.tensor(d.target)
    ds = torch.utils.data.TensorDataset(x, y)
    train = torch.utils.data.DataLoader(torch.utils.data.Subset(ds, range(128)), batch_size=16, shuffle=True)
    valid = torch.utils.data.DataLoader(torch.utils.data.Subset(ds, range(128, 178)), batch_size=16)
    trainer = lightning.Trainer(
        accelerator="cpu", devices=2, strategy="ddp", max_epochs=2, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[ActivationsHistogram(path=path, range=(-10, 10))],
    )
    trainer.fit(Wine(), train, valid)


if __name__ == "__main__":
    main(sys.argv[1])
