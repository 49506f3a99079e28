"""A tiny real training run for the chart, live and CLI tests (a few steps, seconds)."""

from __future__ import annotations

import torch
from torch import nn

import twinpeaks as tp

CLASSES = ["a", "b", "c"]


class Net(nn.Module):
    """Three recorded layers and one (``unused``) that is never called."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = nn.Linear(3, 3)
        self.body = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def record_run(path, epochs: int = 3, steps: int = 6, valid: int = 2, test: bool = True, targets: bool = True,
               listeners=(), **options):
    """Train :class:`Net` on a learnable 3-class task with twinpeaks recording; return the closed recorder."""
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    gen = torch.Generator().manual_seed(1)
    opts = {"classes": CLASSES, "per_class": True, "range": (-2.0, 2.0), "bins": 40, "sample": 1.0, **options}
    hist = tp.ActivationsHistogram(model, path, **opts)
    for fn in listeners:
        hist.add_listener(fn)

    def batch(n: int = 16):
        x = torch.randn(n, 6, generator=gen)
        return x, x[:, :3].argmax(1)

    with hist:
        for _ in range(epochs):
            model.train()
            for _ in range(steps):
                x, y = batch()
                if targets:
                    hist.targets(y)
                loss = nn.functional.cross_entropy(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
            model.eval()
            with torch.no_grad():
                for _ in range(valid):
                    x, y = batch()
                    if targets:
                        hist.targets(y)
                    model(x)
            hist.end_epoch()
        if test:
            with hist.phase("test"), torch.no_grad():
                x, y = batch()
                if targets:
                    hist.targets(y)
                model(x)
    return hist
