"""Scenarios with a known truth: real small models trained on scikit-learn's data, recorded by twinpeaks.

Each :class:`Scenario` names a data set, a model, an optimiser and schedule, a
defect built in (or none), and the finding kinds that defect must produce
(``truth``; empty = a healthy run, which must get no problem-level finding).
Classifier scenarios run twice: with ``hist.targets(y)`` and without (the
label-free Twin Peaks). :func:`train` trains one scenario with one seed into
a run file and returns the losses per epoch, so a scenario's truth can be
checked against what training measured (valid loss turning up, accuracy).

Used by ``bench/verdicts.py`` (the whole suite, ``make verdicts``) and by
``tests/diagnosis/test_scenarios.py`` (a fast subset).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

import twinpeaks as tp


@dataclass(frozen=True)
class Scenario:
    """One training run with a known truth."""

    name: str
    data: str  #: "digits", "digits37", "cancer", "wine", "iris", "diabetes", "digits_multilabel"
    model: str  #: "mlp", "cnn", "rescnn", "lstm", "transformer", "deep_sigmoid", "tanh_mlp"
    truth: tuple[str, ...] = ()  #: finding kinds the run must get (warning or problem); () = healthy
    also: tuple[str, ...] = ()  #: kinds that are true consequences of the defect: allowed, not required
    epochs: int = 8
    opt: str = "adam"  #: "adam" or "sgd" (momentum 0.9)
    lr: float = 3e-3
    schedule: str = "constant"  #: "constant" or "onecycle"
    batch: int = 32
    train_size: int | None = None  #: keep only the first n training samples
    label_noise: float = 0.0  #: share of training labels replaced by random ones
    imbalance: float = 0.0  #: keep only this share of the samples of every class but the first (0 = all)
    defect: str = ""  #: "dead_bias" (first ReLU's bias at -5), "saturate" (tanh weights x25)
    targets: bool = True  #: record hist.targets(y)
    what: str = ""

    @property
    def task(self) -> str:
        return {"diabetes": "regression", "digits_multilabel": "multilabel"}.get(self.data, "classification")


@dataclass
class Trained:
    """What a scenario's training produced."""

    scenario: Scenario
    seed: int
    path: Path
    train_loss: list[float] = field(default_factory=list)
    valid_loss: list[float] = field(default_factory=list)
    valid_accuracy: list[float] = field(default_factory=list)
    seconds: float = 0.0


# -- data ----------------------------------------------------------------------------------------------


@dataclass
class Data:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_valid: torch.Tensor
    y_valid: torch.Tensor
    outputs: int
    classes: list[str] | None


_MULTILABEL = {  # 0/1 per output, from the digit's class
    "even": lambda d: d % 2 == 0, "big": lambda d: d >= 5, "prime": lambda d: np.isin(d, [2, 3, 5, 7]),
    "round": lambda d: np.isin(d, [0, 6, 8, 9]),
}


def load(s: Scenario, seed: int) -> Data:
    """The scenario's data, split 75/25 (stratified by class) with ``seed``; features standardised on train."""
    from sklearn import datasets
    from sklearn.model_selection import train_test_split

    base = {"digits": "digits", "digits37": "digits", "digits_multilabel": "digits", "cancer": "breast_cancer",
            "wine": "wine", "iris": "iris", "diabetes": "diabetes"}[s.data]
    b = getattr(datasets, f"load_{base}")()
    x, y = b.data.astype(np.float32), b.target
    if s.data == "digits37":
        keep = np.isin(y, [3, 7])
        x, y = x[keep], (y[keep] == 7).astype(np.int64)
    rng = np.random.default_rng(seed)
    if s.imbalance:
        keep = (y == 0) | (rng.random(len(y)) < s.imbalance)
        x, y = x[keep], y[keep]
    strat = y if s.task != "regression" else None
    xt, xv, yt, yv = train_test_split(x, y, test_size=0.25, random_state=seed, stratify=strat)
    if s.data.startswith("digits"):
        xt, xv = xt / 16.0, xv / 16.0
    else:
        mu, sd = xt.mean(0), xt.std(0) + 1e-6
        xt, xv = (xt - mu) / sd, (xv - mu) / sd
    if s.train_size:
        xt, yt = xt[: s.train_size], yt[: s.train_size]
    if s.task == "regression":
        mu, sd = yt.mean(), yt.std()
        yt, yv = ((yt - mu) / sd).astype(np.float32)[:, None], ((yv - mu) / sd).astype(np.float32)[:, None]
        return Data(*(torch.tensor(a) for a in (xt, yt, xv, yv)), 1, None)
    if s.task == "multilabel":
        yt = np.stack([f(yt) for f in _MULTILABEL.values()], 1).astype(np.float32)
        yv = np.stack([f(yv) for f in _MULTILABEL.values()], 1).astype(np.float32)
        return Data(*(torch.tensor(a) for a in (xt, yt, xv, yv)), len(_MULTILABEL), list(_MULTILABEL))
    k = int(y.max()) + 1
    if s.label_noise:
        flip = rng.random(len(yt)) < s.label_noise
        yt = np.where(flip, rng.integers(0, k, len(yt)), yt)
    return Data(torch.tensor(xt), torch.tensor(yt, dtype=torch.int64), torch.tensor(xv),
                torch.tensor(yv, dtype=torch.int64), k, [str(i) for i in range(k)])


# -- models --------------------------------------------------------------------------------------------


class Rows(nn.Module):
    """A flat 8x8 image as a sequence of its 8 rows (``[batch, 8, 8]``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(-1, 8, 8)


class LastStep(nn.Module):
    """The LSTM's output sequence -> its last step."""

    def forward(self, x: tuple[torch.Tensor, object]) -> torch.Tensor:
        return x[0][:, -1]


class ResBlock(nn.Module):
    """conv-BN-ReLU-conv-BN plus the input, then ReLU."""

    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(),
                                  nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c))
        self.out = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(x + self.body(x))


class Encoder(nn.Module):
    """Row embedding + learned positions + one transformer encoder layer + mean pool."""

    def __init__(self, d: int = 32):
        super().__init__()
        self.embed = nn.Linear(8, d)
        self.pos = nn.Parameter(torch.randn(1, 8, d) * 0.1)
        self.block = nn.TransformerEncoderLayer(d, 4, 64, dropout=0.0, batch_first=True)
        self.norm = nn.LayerNorm(d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.block(self.embed(x) + self.pos).mean(1))


def make_model(s: Scenario, n_in: int, n_out: int) -> nn.Module:
    """The scenario's model, with its defect built in."""
    if s.model == "mlp":
        m: nn.Module = nn.Sequential(nn.Linear(n_in, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(),
                                     nn.Linear(64, n_out))
    elif s.model == "cnn":
        m = nn.Sequential(nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(512, 64), nn.ReLU(), nn.Linear(64, n_out))
    elif s.model == "rescnn":
        m = nn.Sequential(nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                          ResBlock(16), ResBlock(16), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, n_out))
    elif s.model == "lstm":
        m = nn.Sequential(Rows(), nn.LSTM(8, 64, batch_first=True), LastStep(), nn.Linear(64, n_out))
    elif s.model == "transformer":
        m = nn.Sequential(Rows(), Encoder(), nn.Linear(32, n_out))
    elif s.model == "deep_sigmoid":
        layers: list[nn.Module] = [nn.Linear(n_in, 64), nn.Sigmoid()]
        for _ in range(9):
            layers += [nn.Linear(64, 64), nn.Sigmoid()]
        m = nn.Sequential(*layers, nn.Linear(64, n_out))
    elif s.model == "tanh_mlp":
        m = nn.Sequential(nn.Linear(n_in, 128), nn.Tanh(), nn.Linear(128, 64), nn.Tanh(), nn.Linear(64, n_out))
    else:
        raise ValueError(f"unknown model {s.model!r}")
    with torch.no_grad():
        if s.defect == "dead_bias":
            first = next(mod for mod in m.modules() if isinstance(mod, (nn.Linear, nn.Conv2d)))
            first.bias.fill_(-5.0)
        elif s.defect == "saturate":
            first = next(mod for mod in m.modules() if isinstance(mod, nn.Linear))
            first.weight.mul_(25.0)
    return m


# -- training ------------------------------------------------------------------------------------------


def train(s: Scenario, seed: int, path: str | Path) -> Trained:
    """Train scenario ``s`` with ``seed``, recording every layer into ``path`` (replaced if there)."""
    path = Path(path)
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    data = load(s, seed)
    model = make_model(s, data.x_train.shape[1], data.outputs)
    loss_fn: nn.Module = {"regression": nn.MSELoss(), "multilabel": nn.BCEWithLogitsLoss()}.get(
        s.task, nn.CrossEntropyLoss())
    if s.opt == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(model.parameters(), lr=s.lr)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=s.lr, momentum=0.9)
    n = len(data.x_train)
    steps = math.ceil(n / s.batch)
    sched = (torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=s.lr, total_steps=steps * s.epochs)
             if s.schedule == "onecycle" else None)
    gen = torch.Generator().manual_seed(seed)
    out = Trained(s, seed, path)
    classes = data.classes if s.task != "regression" else None
    with tp.ActivationsHistogram(model, path, classes=classes) as hist:
        for _ in range(s.epochs):
            model.train()
            order = torch.randperm(n, generator=gen)
            total = 0.0
            for i in range(0, n, s.batch):
                idx = order[i : i + s.batch]
                x, y = data.x_train[idx], data.y_train[idx]
                if s.targets and s.task != "regression":
                    hist.targets(y)
                loss = loss_fn(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                if sched is not None:
                    sched.step()
                total += float(loss.detach()) * len(idx)
            out.train_loss.append(total / n)
            model.eval()
            with torch.no_grad():
                if s.targets and s.task != "regression":
                    hist.targets(data.y_valid)
                pred = model(data.x_valid)
                out.valid_loss.append(float(loss_fn(pred, data.y_valid)))
                if s.task == "classification":
                    out.valid_accuracy.append(float((pred.argmax(1) == data.y_valid).float().mean()))
                elif s.task == "multilabel":
                    out.valid_accuracy.append(float(((pred > 0) == (data.y_valid > 0.5)).float().mean()))
                else:
                    out.valid_accuracy.append(float("nan"))
            hist.end_epoch()
    out.seconds = time.perf_counter() - t0
    return out


# -- the suite -----------------------------------------------------------------------------------------

_BASE: list[Scenario] = [
    # healthy, one per architecture, optimiser and schedule
    Scenario("mlp_digits", "digits", "mlp", what="10 digits, MLP, Adam 3e-3"),
    Scenario("mlp_digits_sgd_onecycle", "digits", "mlp", opt="sgd", lr=0.1, schedule="onecycle",
             what="10 digits, MLP, SGD one-cycle to 0.1"),
    Scenario("cnn_digits", "digits", "cnn", what="10 digits, small CNN, Adam 3e-3"),
    Scenario("cnn_digits_sgd", "digits", "cnn", opt="sgd", lr=0.05, what="10 digits, small CNN, SGD 0.05"),
    Scenario("rescnn_digits", "digits", "rescnn", epochs=6, what="10 digits, residual CNN with BatchNorm, Adam 3e-3"),
    Scenario("lstm_digits", "digits", "lstm", lr=1e-2, epochs=10, what="10 digits as 8 rows, LSTM, Adam 1e-2"),
    Scenario("transformer_digits", "digits", "transformer", lr=3e-3, epochs=10, schedule="onecycle",
             what="10 digits as 8 rows, 1 encoder layer, Adam one-cycle 3e-3"),
    Scenario("mlp_37", "digits37", "mlp", what="digits 3 vs 7, MLP, Adam 3e-3"),
    Scenario("mlp_cancer", "cancer", "mlp", lr=1e-3, epochs=10, what="breast cancer, MLP, Adam 1e-3"),
    Scenario("mlp_wine", "wine", "mlp", lr=1e-3, epochs=15, batch=16, what="wine, MLP, Adam 1e-3"),
    Scenario("mlp_iris", "iris", "mlp", opt="sgd", lr=0.05, epochs=20, batch=16, what="iris, MLP, SGD 0.05"),
    Scenario("imbalanced_digits", "digits", "mlp", imbalance=0.1, epochs=10,
             what="digit 0 kept, others 10%: 10:1 imbalanced"),
    Scenario("label_noise_digits", "digits", "mlp", label_noise=0.3, epochs=6,
             what="10 digits, 30% of training labels random, 6 epochs"),
    Scenario("multilabel_digits", "digits_multilabel", "mlp", what="4 yes/no properties per digit, BCE"),
    Scenario("regression_diabetes", "diabetes", "mlp", epochs=15, batch=16, what="diabetes, MLP, MSE, Adam 3e-3"),
    # broken
    Scenario("overfit_mlp", "digits", "mlp", ("overfitting",), epochs=60, train_size=40, batch=10,
             what="the MLP on 40 training images, 60 epochs"),
    Scenario("overfit_cnn", "digits", "cnn", ("overfitting",), epochs=50, train_size=50, batch=10,
             what="the CNN on 50 training images, 50 epochs"),
    Scenario("overfit_noise", "digits", "mlp", ("overfitting",), label_noise=0.5, epochs=60, train_size=200,
             batch=20, what="200 training images, half the labels random, 60 epochs"),
    # a learning rate far too high blows the spreads up, kills ReLUs or saturates tanh: those findings are true too
    Scenario("lr_high_mlp", "digits", "mlp", ("unstable",), ("dead",), lr=1.0, what="MLP, Adam lr 1.0 (300x)"),
    Scenario("lr_high_cnn_sgd", "digits", "cnn", ("unstable",), ("dead",), opt="sgd", lr=3.0,
             what="CNN, SGD lr 3.0 (60x)"),
    Scenario("lr_high_tanh_sgd", "digits", "tanh_mlp", ("unstable",), ("saturated",), opt="sgd", lr=2.0,
             what="tanh MLP, SGD lr 2.0 (40x)"),
    Scenario("dead_mlp", "digits", "mlp", ("dead",), defect="dead_bias", what="MLP, first ReLU's bias at -5"),
    Scenario("dead_cnn", "digits", "cnn", ("dead",), defect="dead_bias", what="CNN, first conv's bias at -5"),
    Scenario("vanishing_sigmoid", "digits", "deep_sigmoid", ("vanishing",), opt="sgd", lr=0.05,
             what="10 sigmoid layers, SGD 0.05"),
    Scenario("saturated_tanh", "digits", "tanh_mlp", ("saturated",), defect="saturate",
             what="tanh MLP, first weights x25"),
]


def suite() -> list[Scenario]:
    """Every scenario: each classifier case with targets and without (``..._nolabels``)."""
    out = []
    for s in _BASE:
        out.append(s)
        if s.task != "regression":
            out.append(replace(s, name=s.name + "_nolabels", targets=False))
    return out


SCENARIOS: dict[str, Scenario] = {s.name: s for s in suite()}
