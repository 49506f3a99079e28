"""Shared fixtures of the whole suite: seeds, run paths, and the oracles' inputs.

Helpers are fixtures here (no helper modules): ``capture`` (exact copies of a module's outputs),
``assert_hist_equals`` (numpy is the oracle of every histogram), ``record_run`` (a tiny real
training run for charts, live and CLI tests) and ``recorded_run`` (a small exact run with copies
of what it binned, for the report, server and export tests).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import twinpeaks as tp


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def tmp_run(tmp_path):
    """A fresh run-file path."""
    return tmp_path / "run.tp"


@pytest.fixture
def no_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


class Capture:
    """Keeps a clone of a module's output for each forward, tagged with the phase given by the test."""

    def __init__(self, module: torch.nn.Module):
        self.phase = "train"
        self.values: dict[str, list[torch.Tensor]] = {}
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, module, args, out):
        self.values.setdefault(self.phase, []).append(out.detach().clone())

    def all(self, phase: str) -> torch.Tensor:
        return torch.cat([v.reshape(-1) for v in self.values[phase]])


def numpy_slots(values: torch.Tensor, edges: np.ndarray) -> tuple[np.ndarray, int, int, int]:
    v = values.float().numpy().astype(np.float64).ravel()
    finite = np.isfinite(v)
    counts, _ = np.histogram(v[finite], bins=edges)
    return counts, int((v[finite] < edges[0]).sum()), int((v[finite] > edges[-1]).sum()), int((~finite).sum())


def assert_hist_equals(h, values: torch.Tensor) -> None:
    counts, under, over, nonfinite = numpy_slots(values, h.edges)
    np.testing.assert_array_equal(h.counts, counts)
    assert (h.underflow, h.overflow, h.nonfinite) == (under, over, nonfinite)
    assert h.total == values.numel()


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


class Recorded:
    """A small real run recorded with exact binning, and copies of what it binned (the oracle's input)."""

    def __init__(self, path: Path, epochs: int = 3, train_steps: int = 8, valid_steps: int = 2, *,
                 bins: int = 40, value_range: tuple[float, float] | None = None, test: bool = True):
        torch.manual_seed(0)
        self.path = path
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
        self.values: dict[str, list[tuple[str, int, Any, Any]]] = {"0": [], "2": []}
        self._phase, self._epoch, self._y = "train", 0, None
        for name in self.values:
            model.get_submodule(name).register_forward_hook(
                lambda m, a, out, name=name: self.values[name].append((self._phase, self._epoch, out.detach().clone(), self._y)))
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        hist = tp.ActivationsHistogram(model, path, bins=bins, range=value_range, per_class=True, sample=1.0,
                                       classes=["cat", "dog", "emu"], flush_every=4)
        with hist:
            for e in range(epochs):
                self._epoch = e
                model.train()
                self._phase = "train"
                for _ in range(train_steps):
                    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
                    self._y = y
                    hist.targets(y)
                    loss = torch.nn.functional.cross_entropy(model(x), y)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                model.eval()
                self._phase = "valid"
                with torch.no_grad():
                    for _ in range(valid_steps):
                        y = torch.randint(0, 3, (16,))
                        self._y = y
                        hist.targets(y)
                        model(torch.randn(16, 4))
                hist.end_epoch()
            if test:
                self._phase = "test"
                with hist.phase("test"), torch.no_grad():
                    y = torch.randint(0, 3, (16,))
                    self._y = y
                    hist.targets(y)
                    model(torch.randn(16, 4))

    def steps(self, layer: str, phase: str) -> list[Any]:
        """Captured outputs of ``layer`` in ``phase``, one tensor per step, in order."""
        return [v for p, _, v, _ in self.values[layer] if p == phase]

    def epoch(self, layer: str, phase: str, epoch: int) -> list[tuple[Any, Any]]:
        return [(v, y) for p, e, v, y in self.values[layer] if p == phase and e == epoch]


@pytest.fixture(scope="session", name="capture")
def capture_fixture():
    """``capture(module)``: a :class:`Capture` of the module's outputs."""
    return Capture


@pytest.fixture(scope="session", name="assert_hist_equals")
def assert_hist_equals_fixture():
    """``assert_hist_equals(h, values)``: a recorded histogram equals numpy's on the captured values."""
    return assert_hist_equals


@pytest.fixture(scope="session", name="record_run")
def record_run_fixture():
    """``record_run(path, ...)``: train :class:`Net` with twinpeaks recording; returns the closed recorder."""
    return record_run


@pytest.fixture(scope="session")
def chart_classes():
    """The class names :func:`record_run` stores."""
    return list(CLASSES)


@pytest.fixture(scope="session", name="recorded_run")
def recorded_run_fixture():
    """``recorded_run(path, ...)``: a :class:`Recorded` run."""
    return Recorded
