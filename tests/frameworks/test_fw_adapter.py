"""What the framework adapters rely on: the recorder's adapter hooks and the missing-extra error."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

import twinpeaks as tp
from twinpeaks._adapter import Recording


class Twice(nn.Module):
    """A step that calls a submodule directly and the model twice: framework steps are batches."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 3)
        self.b = nn.Linear(3, 2)

    def forward(self, x):
        return {"logits": self.b(self.a(x)), "loss": x.sum()}


def test_begin_step_makes_batches_the_steps():
    model = Twice()
    hist = tp.ActivationsHistogram(model, None)
    with hist:
        for _ in range(3):
            hist.begin_step("train")
            model(torch.randn(5, 4))
            model.b(model.a(torch.randn(5, 4)))  # no root forward: still the same step
        hist.end_epoch()
        h = hist.run.histogram("b", "train", epoch=0)
    assert hist.run.n_steps("train") == 3 and h.steps == 3 and h.total == 3 * 2 * 5 * 2


def test_output_records_the_models_output_last(assert_hist_equals):
    model = Twice()
    seen = []
    model.register_forward_hook(lambda m, a, out: seen.append(out["logits"].detach().clone()))
    hist = tp.ActivationsHistogram(model, None, output=lambda out: out["logits"])
    with hist:
        for _ in range(2):
            hist.targets(torch.tensor([0, 1, 1, 0, 1]))
            model(torch.randn(5, 4))
        hist.end_epoch()
    run = hist.run
    assert [layer.name for layer in run.layers] == ["a", "b", "output"]
    assert_hist_equals(run.histogram(-1, "train", epoch=0), torch.cat(seen))
    assert run.histogram(-1, "train", epoch=0, truth="yes").total == 2 * 5


def test_output_must_be_callable():
    with pytest.raises(TypeError, match="output must be a function"):
        tp.ActivationsHistogram(Twice(), None, output="logits")


def test_flush_joins_a_test_pass_to_the_last_epoch(tmp_run):
    model = Twice()
    hist = tp.ActivationsHistogram(model, tmp_run)
    with hist:
        model(torch.randn(5, 4))
        hist.end_epoch()
        model.eval()
        with hist.phase("test"), torch.no_grad():
            model(torch.randn(5, 4))
        hist.flush()
        run = hist.run
        assert run.epochs == 1 and run.phases == ["train", "test"]
        assert run.histogram(-1, "test", epoch=0).steps == 1
        hist.flush()  # nothing pending: nothing changes
        assert hist.run.epochs == 1


def test_unknown_option_fails_when_the_callback_is_made():
    rec = Recording()
    with pytest.raises(TypeError, match="binz"):
        rec._init_recording({"path": None, "binz": 10})
    rec._init_recording({"path": None, "bins": 10})
    with pytest.raises(RuntimeError, match="train first"):
        rec.run  # noqa: B018


ADAPTERS = ("fastai", "lightning", "transformers", "keras")


def test_missing_framework_names_the_extra():
    code = (f"import sys\nfor m in {ADAPTERS!r}: sys.modules[m] = None\n"
            "import twinpeaks\n"
            f"for m in {ADAPTERS!r}:\n"
            "    try:\n        __import__('twinpeaks.' + m)\n    except ImportError as e:\n        print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    lines = out.stdout.splitlines()
    assert len(lines) == len(ADAPTERS), out.stdout + out.stderr
    for adapter, line in zip(ADAPTERS, lines):
        assert line.startswith(f"twinpeaks.{adapter} needs ") and line.endswith(f"pip install 'twinpeaks[{adapter}]'")


def test_import_twinpeaks_imports_no_framework():
    code = ("import sys, twinpeaks, twinpeaks._adapter\n"
            f"print(sorted(m for m in {ADAPTERS + ('jax',)!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "[]", out.stderr
