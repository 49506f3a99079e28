"""Verdicts on real runs: a fast subset of the scenario suite (``bench/scenarios.py``), and the label-free separation.

The whole suite (47 scenarios x seeds, precision and recall per kind) is
``make verdicts``; here a few scenarios train for seconds each and must get
their verdict: no problem-level finding on a healthy run, the expected kind
on a broken one, with targets and without.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import twinpeaks as tp
from twinpeaks.diagnosis import metrics as M

pytest.importorskip("sklearn")

_spec = importlib.util.spec_from_file_location("scenarios", Path(__file__).parents[2] / "bench" / "scenarios.py")
S = importlib.util.module_from_spec(_spec)
sys.modules["scenarios"] = S
_spec.loader.exec_module(S)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Train once per module: name -> (Trained, Diagnosis)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("scenarios")
    out = {}
    try:
        for name in ("mlp_digits", "mlp_digits_nolabels", "cnn_digits", "dead_mlp_nolabels", "lr_high_mlp",
                     "vanishing_sigmoid_nolabels", "saturated_tanh", "overfit_mlp", "overfit_mlp_nolabels", "overfit_noise", "overfit_noise_nolabels",
                     "label_noise_digits_nolabels"):
            t = S.train(S.SCENARIOS[name], 0, root / f"{name}.tp")
            out[name] = (t, tp.diagnose(t.path))
    finally:
        torch.set_num_threads(threads)
    return out


def _kinds(d, severities=("warning", "problem")):
    return {f.kind for f in d.findings if f.severity in severities}


@pytest.mark.parametrize("name", ["mlp_digits", "mlp_digits_nolabels", "cnn_digits"])
def test_healthy_run_has_no_problem_and_twin_peaks_show(runs, name):
    t, d = runs[name]
    assert t.valid_accuracy[-1] > 0.9
    assert not _kinds(d, ("problem",)), [f.message for f in d.findings if f.severity == "problem"]
    assert not _kinds(d) & {"overfitting", "unstable", "dead", "saturated", "vanishing"}
    sep = d.metric("separation", "valid")
    assert np.isfinite(sep).all() and sep[-1] > sep[0] + 1 and sep[-1] > 2.5  # rises as the model learns
    (f,) = [f for f in d.findings if f.kind == "separation"]
    assert f.severity == "info"
    assert d.task == ("unlabeled" if name.endswith("_nolabels") else "classification")


@pytest.mark.parametrize("name", ["mlp_digits", "cnn_digits"])
def test_label_free_separation_agrees_with_the_label_aware_one(runs, name):
    _, d = runs[name]
    for phase in ("train", "valid"):
        aware, free = d.metric("separation_label_aware", phase), d.metric("separation_label_free", phase)
        assert np.isfinite(aware).all() and np.isfinite(free).all()
        assert abs(free[-1] - aware[-1]) < 1.0, (phase, free[-1], aware[-1])  # measured: 0.1-0.95
        assert np.corrcoef(aware[1:], free[1:])[0, 1] > 0.7
        assert free[-1] > free[0] + 1  # rises without labels too
    # the same training without targets reads the same label-free numbers
    if name == "mlp_digits":
        np.testing.assert_allclose(runs["mlp_digits_nolabels"][1].metric("separation", "valid"),
                                   d.metric("separation_label_free", "valid"))


@pytest.mark.parametrize("name, kind, layer", [
    ("dead_mlp_nolabels", "dead", "1"),
    ("lr_high_mlp", "unstable", "1"),
    ("vanishing_sigmoid_nolabels", "vanishing", None),
    ("saturated_tanh", "saturated", "1"),
    ("overfit_mlp", "overfitting", "4"),
    ("overfit_mlp_nolabels", "overfitting", "4"),
])
def test_broken_run_gets_its_finding_with_cause_remedy_and_layer(runs, name, kind, layer):
    _, d = runs[name]
    found = [f for f in d.findings if f.kind == kind and f.severity in ("warning", "problem")]
    assert found, [(f.kind, f.severity, f.message) for f in d.findings]
    f = found[0]
    assert f.cause and f.remedy and f.layer is not None
    if layer is not None:
        assert f.layer == layer
    assert f"likely cause: {f.cause}" in str(d)


def test_memorising_noisy_labels_is_overfitting_without_labels_by_the_top_split(runs):
    # half the labels random, no targets: the peaks merge, the label-free separations read ~0 on train and
    # valid alike, but the train outputs' top 1/K keeps standing out further than valid's
    _, d = runs["overfit_noise_nolabels"]
    assert d.task == "unlabeled"
    (f,) = [f for f in d.findings if f.kind == "overfitting"]
    assert f.severity == "warning" and f.layer == "4" and f.cause and f.remedy
    ev = f.evidence
    assert ev["top_split_gap_z"] >= 5 and ev["top_split_gap_mean"] >= ev["top_split_gap_noise"]  # measured: 6.5, 1.6x
    assert f.epoch == ev["valid_top_split_best_epoch"] and d.epochs - f.epoch >= 4
    gap = d.metric("top_split_gap")
    np.testing.assert_allclose(gap, d.metric("top_split_separation", "train") - d.metric("top_split_separation", "valid"))
    assert np.mean(gap[f.epoch:] > 0) > 0.75
    # 30% random labels for 6 epochs is healthy: no overfitting by either reading
    _, healthy = runs["label_noise_digits_nolabels"]
    assert not _kinds(healthy) & {"overfitting"}, [f.message for f in healthy.findings]


@pytest.mark.parametrize("name", ["overfit_noise", "overfit_mlp"])
def test_with_labels_early_stopping_names_the_epoch_valid_separation_peaked(runs, name):
    """The drift is established epochs after valid separation stopped improving: early stopping keeps that epoch
    (the first within 5% of its best), not the drift's onset and not the argmax of a plateau's noise."""
    _, d = runs[name]
    (f,) = [f for f in d.findings if f.kind == "overfitting"]
    vsep = d.metric("separation", "valid")[1:]  # epoch 0: a transient
    stop = 1 + int(np.flatnonzero(vsep >= vsep.max() * 0.95)[0])
    assert f"stop at about epoch {stop} " in f.remedy and f.evidence["stop_epoch"] == stop <= f.epoch, (
        f.remedy, f.epoch, vsep)


def test_top_split_separation_goes_on_where_the_label_free_one_reads_zero():
    rng = np.random.default_rng(1)
    edges = np.linspace(-8, 12, 201)
    one, _ = M.with_outside(np.histogram(rng.normal(0, 1, 50_000), edges)[0], edges)
    # a heavier top tail on one peak (memorised outputs) and a lighter one (a merged, flattened peak)
    heavy, _ = M.with_outside(np.histogram(np.concatenate([rng.normal(0, 1, 47_000), rng.normal(2.2, 0.8, 3_000)]),
                                           edges)[0], edges)
    light, x = M.with_outside(np.histogram(rng.normal(0, 1, 50_000).clip(-9, 1.8), edges)[0], edges)
    raw = {k: M.top_split_separation(c, x, 10) for k, c in (("one", one), ("heavy", heavy), ("light", light))}
    assert raw["light"] < raw["one"] < raw["heavy"]  # it orders them ...
    assert M.label_free_separation(light, x, 10) == 0.0  # ... where the mapped one is clipped at one peak
    # scale-free; a spike reads 0, an empty histogram NaN
    assert M.top_split_separation(heavy, x * 3, 10) == pytest.approx(raw["heavy"])
    stuck = np.zeros(len(x))
    stuck[150], stuck[40:80] = 1000, 9000 / 40
    assert M.top_split_separation(stuck, x, 10) == 0.0
    assert np.isnan(M.top_split_separation(np.zeros(len(x)), x, 10))


def test_label_free_separation_recovers_the_d_of_a_mixture():
    rng = np.random.default_rng(0)
    edges = np.linspace(-6, 12, 181)
    for k in (2, 3, 10):
        for dist in (0.0, 3.0, 4.5):
            n = 60_000
            yes = rng.normal(dist, 1, n)
            no = rng.normal(0, 1, n * (k - 1))
            c, x = M.with_outside(np.histogram(np.concatenate([yes, no]), edges)[0], edges)
            got = M.label_free_separation(c, x, k)
            assert got == pytest.approx(dist, abs=0.35 if dist else 0.6), (k, dist, got)
    # scale-free, and an output stuck at one value (a spike) is no YES peak
    c, x = M.with_outside(np.histogram(np.concatenate([rng.normal(4, 1, 5000), rng.normal(0, 1, 45000)]),
                                       edges)[0], edges)
    assert M.label_free_separation(c, x * 3, 10) == pytest.approx(M.label_free_separation(c, x, 10))
    stuck = np.zeros(len(x))
    stuck[100], stuck[40:80] = 1000, 9000 / 40
    assert M.label_free_separation(stuck, x, 10) == 0.0


def test_scenario_truths_name_known_kinds_and_every_classifier_runs_without_targets():
    kinds = set(tp.diagnosis.KINDS)
    base = [s for s in S.SCENARIOS.values() if not s.name.endswith("_nolabels")]
    assert len(S.SCENARIOS) >= 30
    for s in base:
        assert set(s.truth) | set(s.also) <= kinds
        if s.task != "regression":
            assert S.SCENARIOS[s.name + "_nolabels"] == replace(s, name=s.name + "_nolabels", targets=False)


def test_a_batch_that_never_changes_is_not_a_vanishing_signal(tmp_path):
    """Training on one fixed batch (labels that teach nothing): no layer's output changes from batch to batch,
    the first one included. That is the input, not a signal fading with depth: no ``vanishing`` finding."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[m for _ in range(4) for m in (torch.nn.Linear(16, 16), torch.nn.ReLU())],
                                torch.nn.Linear(16, 4))
    x = torch.randn(64, 16)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(1)
    with tp.ActivationsHistogram(model, tmp_path / "one_batch.tp") as hist:
        for _ in range(4):
            for _ in range(30):
                y = torch.randint(0, 4, (64,), generator=gen)  # random labels: nothing to learn
                hist.targets(y)
                opt.zero_grad()
                torch.nn.functional.cross_entropy(model(x), y).backward()
                opt.step()
            with hist.phase("valid"), torch.no_grad():
                hist.targets(torch.randint(0, 4, (64,), generator=gen))
                model(x)
            hist.end_epoch()
    d = tp.diagnose(tmp_path / "one_batch.tp")
    assert d.metric("separation", "valid")[-1] < 1, d.metric("separation", "valid")  # and it has not learnt
    quiet = d.metric("batch_variation", layer="0")
    assert np.all(quiet < 0.05), quiet  # the first layer itself does not move: the premise of this test
    assert "vanishing" not in _kinds(d), [f.message for f in d.findings]


def test_a_log_softmax_classifier_still_improving_is_not_told_to_stop(tmp_path):
    """A log-softmax output's top values crowd at 0 as the model grows confident, which moves the top split
    (train's more than valid's): with labels, a valid separation still at its best at the end says no overfitting."""
    from sklearn.datasets import load_digits

    torch.manual_seed(0)
    d = load_digits()
    x, y = torch.tensor(d.data / 16, dtype=torch.float32), torch.tensor(d.target)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10),
                                torch.nn.LogSoftmax(dim=1))
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    with tp.ActivationsHistogram(model, tmp_path / "log_softmax.tp") as hist:
        for _ in range(8):
            perm = torch.randperm(1400)
            for i in range(0, 1400, 64):
                idx = perm[i:i + 64]
                hist.targets(y[idx])
                opt.zero_grad()
                torch.nn.functional.nll_loss(model(x[idx]), y[idx]).backward()
                opt.step()
            with hist.phase("valid"), torch.no_grad():
                for i in range(1400, len(x), 128):
                    hist.targets(y[i:i + 128])
                    model(x[i:i + 128])
            hist.end_epoch()
    diag = tp.diagnose(tmp_path / "log_softmax.tp")
    sep = diag.metric("separation", "valid")
    assert sep[-1] == sep.max() and sep[-1] > sep[1] + 0.3, sep  # the premise: valid still improving
    assert "overfitting" not in _kinds(diag), [f.message for f in diag.findings]
