"""Plain PyTorch: a 2-layer nn.TransformerEncoder classifier on scikit-learn's digits, recorded with the defaults.

Each 8x8 image is a sequence of its 8 rows (8 pixels each). The default run records every leaf layer and the
attention output of every encoder layer (``encoder.layers.N.self_attn``: nn.MultiheadAttention computes with its
``out_proj`` weights functionally, so no leaf sees it). Prints the layers and writes the Colorful Dimension.

Run: python examples/transformer_digits.py [RUN_FILE_OR_FOLDER/]  (default: a new run in runs/transformer/)
"""

import sys
from pathlib import Path

import torch
from sklearn.datasets import load_digits
from torch import nn

import twinpeaks as tp


class RowTransformer(nn.Module):
    def __init__(self, d: int = 32, heads: int = 4, layers: int = 2, classes: int = 10):
        super().__init__()
        self.embed = nn.Linear(8, d)
        self.position = nn.Parameter(torch.zeros(1, 8, d))
        layer = nn.TransformerEncoderLayer(d, heads, 2 * d, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [batch, 8 rows, 8 pixels]
        return self.head(self.encoder(self.embed(x) + self.position).mean(1))


torch.manual_seed(0)
d = load_digits()
x = torch.tensor(d.data / 16.0, dtype=torch.float32).reshape(-1, 8, 8)
y = torch.tensor(d.target)
perm = torch.randperm(len(x))
train, valid = perm[:1400], perm[1400:]
model = RowTransformer()
opt = torch.optim.Adam(model.parameters(), lr=3e-3)
loss_fn = nn.CrossEntropyLoss()

hist = tp.ActivationsHistogram(model, sys.argv[1] if len(sys.argv) > 1 else "runs/transformer/",
                               classes=[str(k) for k in range(10)])
print(f"recording into {hist.path}")
with hist:
    for epoch in range(6):
        model.train()
        for i in range(0, len(train), 64):
            idx = train[i:i + 64]
            hist.targets(y[idx])
            loss = loss_fn(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            hist.targets(y[valid])
            acc = (model(x[valid]).argmax(1) == y[valid]).float().mean()
        hist.end_epoch()
        print(f"epoch {epoch}: train loss {loss.item():.3f}, valid accuracy {acc:.3f}")

run = tp.open_run(hist.path)
print(f"{len(run.layers)} layers:")
for layer in run.layers:
    shape = "never called" if layer.out_shape is None else "x".join(map(str, layer.out_shape))
    print(f"  {layer.index:>3}  {layer.name:<36} {layer.type:<32} {shape}")
out = Path(f"{hist.path}.colorful.png")
tp.plot_colorful_dimension(run, show_layer_info=True).savefig(out)
print(f"wrote {out}")
