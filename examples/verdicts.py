"""Train real small models on scikit-learn data and check what ``tp.diagnose`` says about them.

Each case is a run with a known defect (or none): the script trains it with
twinpeaks recording every layer and targets, diagnoses the run file, and prints
one row per case: what was expected, what was found, and the numbers behind it.
The validation loss of every epoch is printed too, so that the epoch named by
``overfitting`` can be compared with the epoch where validation loss turns up.

Run::

    python examples/verdicts.py            # all cases, into ./verdicts-runs
    python examples/verdicts.py overfit    # one case

``tests/diagnosis/test_diagnose.py`` trains the same cases (shorter where it can) and
asserts the verdicts. The full suite, with precision and recall per finding
kind over 49 scenarios and 6 seeds, with targets and without, is
``make verdicts`` (``bench/verdicts.py``).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

import twinpeaks as tp
from twinpeaks.demo import load_data, make_model

#: One fixed range for every layer, wide enough for the logits of these runs, so that every run's
#: histograms share one set of bins (automatic ranges would also keep every value: docs/grids.md).
RANGE = (-24.0, 24.0)
BINS = 240


@dataclass(frozen=True)
class Case:
    """One training run with a known verdict."""

    name: str
    task: str  #: demo task: "binary", "multiclass" or "regression"
    expected: tuple[str, ...]  #: finding kinds that must appear (as a problem/warning or info)
    absent: tuple[str, ...]  #: finding kinds that must not appear
    epochs: int = 8
    lr: float = 3e-3
    train_size: int | None = None  #: keep only the first n training samples
    batch_size: int = 32
    broken_init: bool = False  #: BatchNorm bias of the first block at -5: the ReLU after it never fires
    model: str = "demo"  #: "demo" (twinpeaks.demo.make_model) or "mlp" (no BatchNorm: free to overfit)
    what: str = ""


CASES: dict[str, Case] = {c.name: c for c in (
    Case("binary", "binary", ("separation",), ("overfitting", "unstable", "dead", "no_twin_peaks"),
         what="digits 3 vs 7, small CNN, Adam 3e-3"),
    Case("multiclass", "multiclass", ("separation",), ("overfitting", "unstable", "dead", "no_twin_peaks"),
         model="mlp", what="10 digits, MLP, Adam 3e-3"),
    Case("overfit", "multiclass", ("overfitting",), ("unstable", "dead"), model="mlp",
         epochs=40, train_size=50, batch_size=10, what="the same MLP on 50 training images, 40 epochs"),
    Case("lr_high", "binary", ("unstable",), (), lr=3.0, what="digits 3 vs 7, Adam lr 3.0 (1000x)"),
    Case("regression", "regression", ("no_twin_peaks",), ("separation", "overfitting"),
         what="diabetes, MLP, MSE"),
    Case("dead_init", "binary", ("dead",), ("unstable",), broken_init=True,
         what="digits 3 vs 7, BatchNorm bias -5 before the first ReLU"),
)}


@dataclass
class Trained:
    """What a case's training produced: the run file and the losses per epoch."""

    case: Case
    path: Path
    train_loss: list[float] = field(default_factory=list)
    valid_loss: list[float] = field(default_factory=list)
    valid_accuracy: list[float] = field(default_factory=list)
    seconds: float = 0.0


def make_mlp(task: str) -> nn.Module:
    """A two-hidden-layer MLP on the flattened 8x8 digits: no BatchNorm, no dropout."""
    n_out = 2 if task == "binary" else 10
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(),
                         nn.Linear(128, n_out))


def train_case(case: Case, path: str | Path, epochs: int | None = None, seed: int = 0) -> Trained:
    """Train ``case`` with twinpeaks recording every layer (with targets) into ``path``."""
    path = Path(path)
    epochs = epochs or case.epochs
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    data = load_data(case.task, seed)
    x_train, y_train = data.x_train, data.y_train
    if case.train_size:
        x_train, y_train = x_train[: case.train_size], y_train[: case.train_size]
    model = make_model(case.task) if case.model == "demo" else make_mlp(case.task)
    if case.broken_init:
        with torch.no_grad():
            model[1].bias.fill_(-5.0)
    regression = case.task == "regression"
    loss_fn: nn.Module = nn.MSELoss() if regression else nn.CrossEntropyLoss()
    opt = torch.optim.Adam(model.parameters(), lr=case.lr)
    gen = torch.Generator().manual_seed(seed)
    out = Trained(case, path)
    hist = tp.ActivationsHistogram(model, path, bins=BINS, range=RANGE, classes=data.classes,
                                   per_class=case.task == "multiclass")
    with hist:
        for _ in range(epochs):
            model.train()
            order = torch.randperm(len(x_train), generator=gen)
            total = 0.0
            for i in range(0, len(order), case.batch_size):
                idx = order[i : i + case.batch_size]
                x, y = x_train[idx], y_train[idx]
                if not regression:
                    hist.targets(y)
                loss = loss_fn(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
            out.train_loss.append(total / len(order))
            model.eval()
            loss_sum = correct = 0.0
            with torch.no_grad():
                for i in range(0, len(data.x_valid), 64):
                    x, y = data.x_valid[i : i + 64], data.y_valid[i : i + 64]
                    if not regression:
                        hist.targets(y)
                    pred = model(x)
                    loss_sum += float(loss_fn(pred, y)) * len(x)
                    if not regression:
                        correct += float((pred.argmax(1) == y).sum())
            out.valid_loss.append(loss_sum / len(data.x_valid))
            out.valid_accuracy.append(correct / len(data.x_valid) if not regression else float("nan"))
            hist.end_epoch()
    out.seconds = time.perf_counter() - t0
    return out


def key_numbers(d: tp.Diagnosis) -> str:
    """The few metric values that back the verdicts, as text."""
    parts = []
    sep = d.metric("separation", "valid")
    if np.isfinite(sep).any():
        parts.append(f"sep {sep[0]:.2f}->{sep[-1]:.2f}")
    dist = d.metric("train_valid_distance")
    if np.isfinite(dist).any():
        parts.append(f"tv-dist {np.nanmin(dist):.2f}..{np.nanmax(dist):.2f}")
    for f in d.findings:
        if f.kind == "overfitting":
            parts.append(f"overfit from epoch {f.epoch}")
        elif f.kind == "unstable":
            parts.append(f"{f.evidence['layers']:.0f} layers jump, worst {f.layer} {f.evidence['max_jump']:.2f} spreads/step")
        elif f.kind == "dead" and "first dead layer" not in " ".join(parts):
            parts.append(f"first dead layer {f.layer} (zeros {f.evidence['zero_fraction']:.0%})")
    return ", ".join(parts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("cases", nargs="*", default=list(CASES), help=f"cases to run (default: all): {', '.join(CASES)}")
    p.add_argument("--out", default="verdicts-runs", help="folder for the run files")
    p.add_argument("--reports", action="store_true", help="also print each run's full diagnosis")
    args = p.parse_args(argv)
    unknown = [c for c in args.cases if c not in CASES]
    if unknown:
        p.error(f"unknown case(s) {unknown}; cases are {', '.join(CASES)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)  # numbers independent of the core count (lr_high is chaotic)
    rows = []
    for name in args.cases:
        case = CASES[name]
        path = out / f"{name}.tp"
        for suffix in ("", "-wal", "-shm"):
            Path(str(path) + suffix).unlink(missing_ok=True)
        t = train_case(case, path)
        d = tp.diagnose(path)
        found = sorted({f.kind for f in d.findings if f.severity != "info" or f.kind in case.expected})
        kinds = {f.kind for f in d.findings}
        ok = set(case.expected) <= kinds and not (set(case.absent) & kinds)
        losses = " ".join(f"{v:.3f}" for v in t.valid_loss)
        print(f"\n== {name}: {case.what} ({t.seconds:.1f} s)", file=sys.stderr)
        print(f"   valid loss per epoch: {losses}  (lowest at epoch {int(np.argmin(t.valid_loss))})", file=sys.stderr)
        if args.reports:
            print(str(d), file=sys.stderr)
        turn = f"{int(np.argmin(t.valid_loss))} of {len(t.valid_loss)}"
        rows.append((name, ", ".join(case.expected), ", ".join(found) or "-", "yes" if ok else "NO", turn,
                     key_numbers(d)))
    head = ("run", "expected", "found (warnings, problems, expected infos)", "ok", "valid loss lowest at epoch",
            "key numbers")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    print()
    for r in [head, tuple("-" * w for w in widths), *rows]:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")
    return 0 if all(r[3] == "yes" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
