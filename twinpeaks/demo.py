"""The demo: a real training run on data that ships with scikit-learn.

``binary``: digits 3 vs 7 (the original's MNIST_SAMPLE, at 8x8), a small CNN.
``multiclass``: all ten digits, per-class histograms on.
``regression``: scikit-learn's diabetes data, an MLP.

Used by ``twinpeaks demo`` and by tests that need a real run.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .recorder import ActivationsHistogram

TASKS = ("binary", "multiclass", "regression")


@dataclass
class DemoData:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_valid: torch.Tensor
    y_valid: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: list[str] | None


def _sklearn_datasets():  # type: ignore[no-untyped-def]
    try:
        from sklearn import datasets
    except ImportError:
        raise ImportError("the demo needs scikit-learn: pip install 'twinpeaks[demo]'") from None
    return datasets


def load_data(task: str, seed: int = 0) -> DemoData:
    """Train/valid/test tensors for a demo task (60/20/20 split, fixed seed)."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    datasets = _sklearn_datasets()
    if task == "regression":
        d = datasets.load_diabetes()
        x = (d.data - d.data.mean(0)) / d.data.std(0)
        y = (d.target - d.target.mean()) / d.target.std()
        x_t, y_t, classes = torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)[:, None], None
    else:
        d = datasets.load_digits()
        x, y = d.images / 16.0, d.target
        if task == "binary":
            keep = (y == 3) | (y == 7)
            x, y = x[keep], (y[keep] == 7).astype(np.int64)
            classes = ["3", "7"]
        else:
            classes = [str(i) for i in range(10)]
        x_t, y_t = torch.tensor(x, dtype=torch.float32)[:, None], torch.tensor(y, dtype=torch.int64)
    order = torch.randperm(len(x_t), generator=torch.Generator().manual_seed(seed))
    a, b = int(0.6 * len(order)), int(0.8 * len(order))
    tr, va, te = order[:a], order[a:b], order[b:]
    return DemoData(x_t[tr], y_t[tr], x_t[va], y_t[va], x_t[te], y_t[te], classes)


def make_model(task: str) -> nn.Module:
    """A small CNN for the digit tasks, an MLP for regression."""
    if task == "regression":
        return nn.Sequential(
            nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1)
        )
    n_out = 2 if task == "binary" else 10
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(32, n_out),
    )


def train(
    task: str = "binary",
    path: str | Path | None = None,
    epochs: int = 8,
    *,
    lr: float = 3e-3,
    batch_size: int = 32,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
    started: Callable[[ActivationsHistogram], None] | None = None,
    **record_options: object,
) -> ActivationsHistogram:
    """Train a demo model with twinpeaks recording all layers, valid and test; return the recorder.

    ``path`` is a run file, or a folder of runs (``"runs/"``: a new run name each time,
    ``hist.path``); ``started(hist)`` is called once the recorder is made, before training.

    Example:
        >>> hist = train("binary", "runs/", epochs=3)  # doctest: +SKIP
        >>> print(hist.path, hist.run.epochs)            # doctest: +SKIP
        runs/2026-11-29_231500.tp 3
    """
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive int, got {epochs!r}")
    torch.manual_seed(seed)
    data = load_data(task, seed)
    model = make_model(task)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn: nn.Module = nn.MSELoss() if task == "regression" else nn.CrossEntropyLoss()
    options: dict = {"classes": data.classes, "per_class": task == "multiclass", **record_options}
    hist = ActivationsHistogram(model, path, **options)  # type: ignore[arg-type]
    if started:
        started(hist)
    gen = torch.Generator().manual_seed(seed)
    with hist:
        for epoch in range(epochs):
            model.train()
            order = torch.randperm(len(data.x_train), generator=gen)
            total = 0.0
            for i in range(0, len(order), batch_size):
                idx = order[i : i + batch_size]
                x, y = data.x_train[idx], data.y_train[idx]
                if task != "regression":
                    hist.targets(y)
                loss = loss_fn(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
            msg = f"epoch {epoch + 1}/{epochs}  train loss {total / len(order):.4f}"
            msg += _evaluate(model, hist, data.x_valid, data.y_valid, loss_fn, task, batch_size, "valid")
            hist.end_epoch()
            if progress:
                progress(msg)
        with hist.phase("test"):
            msg = _evaluate(model, hist, data.x_test, data.y_test, loss_fn, task, batch_size, "test")
        if progress:
            progress("final" + msg)
    return hist


def _evaluate(model: nn.Module, hist: ActivationsHistogram, x_all: torch.Tensor, y_all: torch.Tensor,
              loss_fn: nn.Module, task: str, batch_size: int, name: str) -> str:
    model.eval()
    loss = correct = 0.0
    with torch.no_grad():
        for i in range(0, len(x_all), batch_size):
            x, y = x_all[i : i + batch_size], y_all[i : i + batch_size]
            if task != "regression":
                hist.targets(y)
            out = model(x)
            loss += float(loss_fn(out, y)) * len(x)
            if task != "regression":
                correct += float((out.argmax(1) == y).sum())
    msg = f"  {name} loss {loss / len(x_all):.4f}"
    if task != "regression":
        msg += f"  {name} accuracy {correct / len(x_all):.3f}"
    return msg


def print_progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


#: Recording options of ``twinpeaks demo``: the library's defaults, on purpose (automatic ranges:
#: every step's histogram on a grid that holds all its values, docs/grids.md, so layers that grow,
#: like the multiclass run's pooled layers, about 7x, stay whole on the charts).
DEMO_RECORDING: dict[str, dict] = {"binary": {}, "multiclass": {}, "regression": {}}

#: What to look for in each demo chart, by task.
LOOK_AT = {
    "colorful": "every layer over training: colour = log(1 + count) per step, blue lines = epochs, "
                "white = mean +-1 std, curves = each epoch's histogram; every column on its own bins (automatic ranges hold every value)",
    "twinpeaks": {
        "binary": "the last layer's outputs split into a NO peak (left) and a YES peak (right); "
                  "valid (solid) should sit on train (dashed)",
        "multiclass": "one curve per digit: each class's logits form a big NO peak and a small YES hump",
        "regression": "one output, no twin peaks: the shape of the predictions, train vs valid",
    },
    "truth": "YES (true class) vs NO (other classes): the grey overlap is where the mistakes are",
    "history": "YES vs NO for every epoch: the peaks separate as the model learns; train drifting away from "
               "valid means overfitting",
    "history-regression": "the same chart for every epoch: valid should keep the shape of train",
}


def write_charts(run_path: str | Path, out: str | Path, task: str) -> list[tuple[Path, str]]:
    """Draw the demo's charts of a run into ``out``; return ``(png path, what to look at)`` pairs.

    Example:
        >>> write_charts("twinpeaks-demo/runs/", "twinpeaks-demo", "binary")  # doctest: +SKIP
    """
    from .charts import plot_colorful_dimension, plot_twin_peaks, plot_twin_peaks_history
    from .run import open_run

    out = Path(out)
    written = []
    with open_run(run_path) as run:
        charts = [
            ("colorful", lambda: plot_colorful_dimension(run, show_layer_info=True), LOOK_AT["colorful"]),
            ("twinpeaks", lambda: plot_twin_peaks(run, per_class=task == "multiclass"),
             LOOK_AT["twinpeaks"][task]),  # type: ignore[index]
        ]
        if task != "regression":
            charts.append(("truth", lambda: plot_twin_peaks(run, by_truth=True), LOOK_AT["truth"]))
        charts.append(("history", lambda: plot_twin_peaks_history(run, by_truth=task != "regression"),
                       LOOK_AT["history-regression" if task == "regression" else "history"]))
        for name, draw, what in charts:
            path = out / f"{task}-{name}.png"
            draw().savefig(path)  # type: ignore[attr-defined]
            written.append((path, what))
    return written
