"""Fixtures shared by the framework adapter tests: one oracle per number."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest
import torch

matplotlib.use("Agg")


class Outputs:
    """Every output of one module, with the mode it ran in (the oracle's input)."""

    def __init__(self, module: torch.nn.Module, pick=lambda out: out):
        self.calls: list[tuple[bool, torch.Tensor]] = []
        self.pick = pick
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, module, args, out):
        self.calls.append((module.training, self.pick(out).detach().float().clone()))

    def values(self, training: bool, skip: int = 0) -> torch.Tensor:
        picked = [t for mode, t in self.calls if mode == training][skip:]
        return torch.cat([t.reshape(-1) for t in picked])

    def remove(self) -> None:
        self.handle.remove()


def check_run(run, *, train_steps: int, valid_steps: int | list[int], last_train_total: int,
              last_valid_total: int | list[int], classes: list[str] | None = None, epochs: int = 2) -> None:
    """Epochs, phases, per-epoch step ranges, valid histograms of every epoch, last-layer totals.

    ``valid_steps`` and ``last_valid_total`` are per epoch, or one value for every epoch.
    """
    valid_steps = valid_steps if isinstance(valid_steps, list) else [valid_steps] * epochs
    valid_totals = last_valid_total if isinstance(last_valid_total, list) else [last_valid_total] * epochs
    valid_first = np.concatenate([[0], np.cumsum(valid_steps)])
    assert run.epochs == epochs
    assert run.phases[:2] == ["train", "valid"]
    assert run.n_steps("train") == epochs * train_steps
    assert run.n_steps("valid") == valid_first[-1]
    for e in range(epochs):
        steps = run.epoch_info(e).steps
        assert tuple(steps["train"][:2]) == (e * train_steps, (e + 1) * train_steps)
        assert tuple(steps["valid"][:2]) == (valid_first[e], valid_first[e + 1])
        valid = run.histogram(-1, "valid", epoch=e)
        assert valid.steps == valid_steps[e] and valid.total == valid_totals[e]
        train = run.histogram(-1, "train", epoch=e)
        assert train.steps == train_steps and train.total == last_train_total
    if classes is not None:
        assert run.classes == classes


def check_truth_split(run, phase: str = "valid", epoch: int = -1) -> None:
    """YES + NO of the last layer add up to its histogram (the targets reached the recorder)."""
    h = run.histogram(-1, phase, epoch=epoch)
    yes, no = (run.histogram(-1, phase, epoch=epoch, truth=t) for t in ("yes", "no"))
    assert yes.total > 0 and no.total > 0
    np.testing.assert_array_equal(yes.counts + no.counts, h.counts)


def check_charts(adapter, tmp_path) -> None:
    """The adapter's plot methods draw."""
    import matplotlib.pyplot as plt

    for name in ("plot_colorful_dimension", "plot_twin_peaks", "plot_twin_peaks_history"):
        fig = getattr(adapter, name)()
        out = tmp_path / f"{name}.png"
        fig.savefig(out)
        assert out.stat().st_size > 0
        plt.close(fig)


@pytest.fixture(scope="session", name="outputs")
def outputs_fixture():
    """``outputs(module, pick=...)``: :class:`Outputs` of the module."""
    return Outputs


@pytest.fixture(scope="session", name="check_run")
def check_run_fixture():
    return check_run


@pytest.fixture(scope="session", name="check_truth_split")
def check_truth_split_fixture():
    return check_truth_split


@pytest.fixture(scope="session", name="check_charts")
def check_charts_fixture():
    return check_charts
