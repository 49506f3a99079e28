"""Diagnosis: every metric against a brute-force oracle, every verdict on real training runs.

The real runs are the cases of ``examples/verdicts.py`` (scikit-learn data, small
models, fixed seeds), trained once per module; a few more tiny real models build
the situations those cases do not (saturation, NaN, a wrong range).
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import twinpeaks as tp
from twinpeaks.cli import main as cli_main
from twinpeaks.diagnosis import SEVERITIES, Thresholds
from twinpeaks.diagnosis import metrics as M

pytest.importorskip("sklearn")  # the demo extra; brings scipy
stats = pytest.importorskip("scipy.stats")

_spec = importlib.util.spec_from_file_location("verdicts", Path(__file__).parents[2] / "examples" / "verdicts.py")
verdicts = importlib.util.module_from_spec(_spec)
sys.modules["verdicts"] = verdicts
_spec.loader.exec_module(verdicts)


# -- metrics against brute force ------------------------------------------------------------------


def _binned(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Counts with underflow and overflow as the outermost bins (what with_outside lays out)."""
    counts, _ = np.histogram(values, edges)
    return np.concatenate([[(values < edges[0]).sum()], counts, [(values > edges[-1]).sum()]])


def _slot(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Index of each value's bin in the _binned layout (0 = underflow)."""
    i = np.searchsorted(edges, values, side="right")
    i[values == edges[-1]] = len(edges) - 1
    return i


def test_metric_docstring_examples_hold():
    import doctest

    result = doctest.testmod(M)
    assert result.attempted >= 10 and result.failed == 0


def test_auc_equals_pairwise_count():
    rng = np.random.default_rng(0)
    edges = np.linspace(-2, 2, 21)
    yes, no = rng.normal(0.8, 1, 300), rng.normal(-0.3, 1.2, 400)
    sy, sn = _slot(yes, edges), _slot(no, edges)
    diff = np.subtract.outer(sy, sn)
    brute = ((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size
    assert M.auc(_binned(yes, edges), _binned(no, edges)) == pytest.approx(brute, abs=1e-12)


@pytest.mark.parametrize("d", [0.0, 1.0, 2.5], ids=lambda d: f"d={d}")
def test_separation_recovers_d_prime_of_two_normals(d):
    rng = np.random.default_rng(1)
    edges = np.linspace(-8, 8, 321)
    yes, no = rng.normal(d, 1.0, 200_000), rng.normal(0, 1.0, 200_000)
    cy, x = M.with_outside(np.histogram(yes, edges)[0], edges)
    cn, _ = M.with_outside(np.histogram(no, edges)[0], edges)
    assert M.auc_separation(cy, cn) == pytest.approx(d, abs=0.03)
    assert M.separation(cy, cn, x) == pytest.approx(d, abs=0.03)
    # scale-free: the same values x 7 on edges x 7
    cy7, _ = M.with_outside(np.histogram(yes * 7, edges * 7)[0], edges * 7)
    cn7, _ = M.with_outside(np.histogram(no * 7, edges * 7)[0], edges * 7)
    assert M.auc_separation(cy7, cn7) == pytest.approx(M.auc_separation(cy, cn), abs=1e-12)


def test_separation_survives_values_beyond_the_range():
    rng = np.random.default_rng(2)
    edges = np.linspace(-0.5, 0.5, 11)  # far too narrow: most values land outside
    yes, no = rng.normal(2, 1, 50_000), rng.normal(-2, 1, 50_000)
    got = M.auc_separation(_binned(yes, edges), _binned(no, edges))
    assert 3.2 < got <= 4.05  # the true d' is 4; only the order of the bins is used (ties inside a bin lower it)
    assert M.auc_separation(_binned(no, edges), _binned(yes, edges)) == pytest.approx(-got)


def test_moments_overlap_wasserstein_bimodality_against_numpy_and_scipy():
    rng = np.random.default_rng(3)
    edges = np.linspace(-4, 6, 51)
    a, b = rng.normal(0, 1, 5000), rng.gamma(2.0, 1.0, 4000) - 1
    ca, x = M.with_outside(np.histogram(a, edges)[0], edges)
    cb, _ = M.with_outside(np.histogram(b, edges)[0], edges)
    ra, rb = np.repeat(x, ca.astype(int)), np.repeat(x, cb.astype(int))  # each value at its bin's position
    assert M.moments(ca, x) == pytest.approx((ra.mean(), ra.std()))
    assert M.wasserstein(ca, cb, x) == pytest.approx(stats.wasserstein_distance(ra, rb))
    pooled = math.sqrt((ra.var() + rb.var()) / 2)
    assert M.spread_distance(ca, cb, x) == pytest.approx(stats.wasserstein_distance(ra, rb) / pooled)
    sarle = (stats.skew(rb) ** 2 + 1) / stats.kurtosis(rb, fisher=False)
    assert M.bimodality(cb, x) == pytest.approx(sarle)
    pa, pb = ca / ca.sum(), cb / cb.sum()
    assert M.overlap(ca, cb) == pytest.approx(sum(min(p, q) for p, q in zip(pa, pb)))
    two = np.concatenate([rng.normal(-2, 0.3, 3000), rng.normal(3, 0.3, 3000)])
    assert M.bimodality(M.with_outside(np.histogram(two, edges)[0], edges)[0], x) > 0.8
    assert M.bimodality(ca, x) < 0.4


def test_step_jumps_formula_and_scale_invariance():
    rng = np.random.default_rng(4)
    mean, std = rng.normal(0, 1, 20), rng.uniform(0.5, 2, 20)
    want = [abs(mean[i] - mean[i - 1]) / math.sqrt((std[i] ** 2 + std[i - 1] ** 2) / 2)
            + abs(math.log(std[i] / std[i - 1])) for i in range(1, 20)]
    np.testing.assert_allclose(M.step_jumps(mean, std), want)
    np.testing.assert_allclose(M.step_jumps(mean * 5 + 3, std * 5), want)


def test_edge_fraction_of_a_stuck_sigmoid_a_relu_and_a_normal_layer():
    rng = np.random.default_rng(5)
    edges = np.linspace(-1, 2, 101)
    stuck = 1 / (1 + np.exp(-rng.normal(0, 30, 10_000)))
    h = np.histogram(stuck, edges)[0]
    i, j = np.searchsorted(edges, [stuck.min(), stuck.max()], side="right") - 1
    inside = [(stuck >= edges[k]) & (stuck < edges[k + 1]) for k in (i, i + 1, j - 1, j)]
    brute = (max(inside[0].sum() - inside[1].sum(), 0) + max(inside[3].sum() - inside[2].sum(), 0)) / stuck.size
    assert M.edge_fraction(h, edges, stuck.min(), stuck.max()) == pytest.approx(brute) and brute > 0.85
    normal = rng.normal(0.5, 0.2, 10_000)
    assert M.edge_fraction(np.histogram(normal, edges)[0], edges, normal.min(), normal.max()) < 0.01
    relu = np.maximum(rng.normal(0, 1, 10_000), 0)  # half zeros, then a density highest next to 0
    h = np.histogram(relu, np.linspace(0, 5, 26))[0]
    assert M.edge_fraction(h, np.linspace(0, 5, 26), 0.0, relu.max(), zeros=(relu == 0).sum()) < 0.03


# -- verdicts on the real runs -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Each verdict case trained once (a few seconds each), with its diagnosis."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the numbers of examples/verdicts.py
    root = tmp_path_factory.mktemp("verdicts")
    out = {}
    try:
        for name, case in verdicts.CASES.items():
            if name == "regression":
                continue  # the demo's own regression is tested below, as the issue asks
            t = verdicts.train_case(case, root / f"{name}.tp")
            out[name] = (t, tp.diagnose(t.path))
    finally:
        torch.set_num_threads(threads)
    return out


def kinds(d, severity=None):
    floor = SEVERITIES.index(severity) if severity else 0
    return {f.kind for f in d.findings if SEVERITIES.index(f.severity) >= floor}


@pytest.mark.parametrize("name", ["binary", "multiclass"])
def test_healthy_classifier_separates_and_nothing_is_wrong(trained, name):
    t, d = trained[name]
    assert d.task == "classification"
    sep = d.metric("separation", "valid")
    assert len(sep) == t.case.epochs and np.isfinite(sep).all()
    assert sep[-1] > sep[0] + 0.5 and sep[-1] > 3  # rises as the model learns
    assert t.valid_accuracy[-1] > 0.9
    assert d.metric("auc", "valid")[-1] > 0.97
    assert d.metric("overlap", "valid")[-1] < d.metric("overlap", "valid")[0]
    (f,) = [f for f in d.findings if f.kind == "separation"]
    assert f.severity == "info" and "rose" in f.message and f.evidence["last"] == pytest.approx(sep[-1])
    assert not kinds(d) & {"overfitting", "unstable", "dead", "saturated", "no_twin_peaks", "out_of_range"}


def test_tiny_training_set_is_overfitting_where_valid_loss_turns_up(trained):
    t, d = trained["overfit"]
    healthy = trained["multiclass"][1]
    (f,) = [f for f in d.findings if f.kind == "overfitting"]
    turn = int(np.argmin(t.valid_loss))  # the epoch after which validation loss rises
    assert t.valid_loss[-1] > t.valid_loss[turn] + 0.2 and t.train_loss[-1] < 0.01
    assert abs(f.epoch - turn) <= 4, (f.epoch, turn)
    assert f.severity in ("warning", "problem") and f.layer == d.layers[-1]
    dist = d.metric("train_valid_distance")
    assert np.nanmean(dist[f.epoch:]) > 1.5 * np.nanmin(dist[1:4])
    assert d.metric("separation_gap")[-1] > 1 > np.nanmax(healthy.metric("separation_gap"))
    assert not kinds(d) & {"unstable", "dead"}


def test_learning_rate_1000x_too_high_is_unstable_from_the_first_epoch(trained):
    _, d = trained["lr_high"]
    (f,) = [f for f in d.findings if f.kind == "unstable"]
    assert f.severity == "problem" and f.epoch == 0
    assert "learning rate" in f.cause and "lower the learning rate ~10x" in f.remedy
    healthy = trained["binary"][1]
    for layer in ("0", "3", "7"):  # the convolutions jump far more than in the healthy run
        assert d.metric("step_jump", layer=layer)[0] > 5 * healthy.metric("step_jump", layer=layer)[0]


def test_broken_init_is_dead_at_the_right_layer(trained):
    _, d = trained["dead_init"]
    dead = [f for f in d.findings if f.kind == "dead"]
    assert dead and dead[0].layer == "2" and dead[0].epoch == 0 and dead[0].severity == "problem"
    assert {f.layer for f in dead} <= {"2", "5", "6", "9", "10", "11"}  # never the layers before it
    np.testing.assert_array_equal(d.metric("zero_fraction", "train", layer="2"), 1.0)
    assert d.metric("zero_fraction", "train", layer="0")[-1] < 0.01
    assert "unstable" not in kinds(d)  # layers fed by a dead one are not judged
    (sep,) = [f for f in d.findings if f.kind == "separation"]
    assert sep.severity == "warning" and "do not separate" in sep.message


def test_regression_has_no_twin_peaks_and_no_separation_claim(tmp_path):
    from twinpeaks.demo import train

    train("regression", tmp_path / "reg.tp", 4)
    d = tp.diagnose(tmp_path / "reg.tp")
    assert d.task == "regression"
    (f,) = [f for f in d.findings if f.kind == "no_twin_peaks"]
    assert f.severity == "info" and f.layer == d.layers[-1]
    assert "separation" not in kinds(d)
    text = str(d)
    assert "YES and NO" not in text and "separation" not in text and "twin peaks do not apply" in text
    assert np.isnan(d.metric("separation", "valid")).all()


@pytest.mark.parametrize("classes", [None, ["neg", "pos"]], ids=["regression-with-targets", "binary-one-logit"])
def test_one_output_is_regression_unless_classes_are_named(tmp_path, classes):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 16), nn.ReLU(), nn.Linear(16, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x = torch.randn(256, 3)
    y = (x[:, :1] > 0).float() if classes else x[:, :1] * 2 + 0.3  # 0/1 labels, or a real-valued target
    loss_fn = nn.BCEWithLogitsLoss() if classes else nn.MSELoss()
    with tp.ActivationsHistogram(model, tmp_path / "r.tp", range=(-10, 10), classes=classes) as hist:
        for _ in range(3):
            for i in range(0, 256, 32):
                hist.targets(y[i : i + 32])  # an adapter passes targets whatever the task
                loss = loss_fn(model(x[i : i + 32]), y[i : i + 32])
                opt.zero_grad()
                loss.backward()
                opt.step()
            hist.end_epoch()
    d = tp.diagnose(tmp_path / "r.tp")
    if classes:
        assert d.task == "classification" and d.has("separation") and not d.has("no_twin_peaks")
        assert d.metric("separation", "train")[-1] > 2
    else:
        assert d.task == "regression" and d.has("no_twin_peaks") and not d.has("separation")
        assert "YES and NO" not in str(d)


def test_logits_outgrowing_a_narrow_range_are_out_of_range(tmp_path):
    from twinpeaks.demo import train

    train("binary", tmp_path / "b.tp", 2, range=(-0.5, 0.5))  # fine for the untrained head only
    d = tp.diagnose(tmp_path / "b.tp")
    (f,) = [f for f in d.findings if f.kind == "out_of_range" and f.layer == d.layers[-1]]
    assert f.severity == "problem" and "grew past" in f.message and f"range={{{f.layer!r}: (" in f.message
    assert f.evidence["share_first_step"] == 0 and f.evidence["share_last"] > 0.2
    assert f.evidence["observed_max"] > f.evidence["range_hi"]
    assert d.has("separation")  # rank-based: still measured with most outputs outside the range


def test_default_automatic_range_keeps_the_demo_logits_in_range(tmp_path):
    from twinpeaks.demo import train

    train("binary", tmp_path / "b.tp", 3)
    d = tp.diagnose(tmp_path / "b.tp")
    assert not [f for f in d.findings if f.kind == "out_of_range" and f.layer == d.layers[-1]]
    h = tp.open_run(tmp_path / "b.tp").histogram(-1, "valid", epoch=-1)
    assert h.underflow + h.overflow == 0


# -- small real models for the other verdicts ------------------------------------------------------------


def _record(tmp_path, model, epochs, step, **options):
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "run.tp"
    with tp.ActivationsHistogram(model, path, **options) as hist:
        for e in range(epochs):
            model.train()
            for i in range(4):
                step(model, e, i)
            hist.end_epoch()
    return tp.diagnose(path)


def test_sigmoid_stuck_at_zero_and_one_is_saturated(tmp_path):
    model = nn.Sequential(nn.Linear(8, 64), nn.Sigmoid(), nn.Linear(64, 2))
    with torch.no_grad():
        model[0].weight.mul_(40)
    d = _record(tmp_path, model, 2, lambda m, e, i: m(torch.randn(32, 8)), range=(-1, 2))
    (f,) = [f for f in d.findings if f.kind == "saturated"]
    assert f.layer == "1" and f.severity == "problem" and f.evidence["edge_fraction"] > 0.6
    assert d.metric("edge_fraction", "train", layer="2")[-1] < 0.3


def test_range_wrong_from_the_start_vs_values_that_explode(tmp_path):
    def grow(m, e, i):
        with torch.no_grad():
            m[0].weight.mul_(2.0)
        m(torch.randn(32, 8))

    d = _record(tmp_path, nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 2)), 3, grow, range=(-3, 3))
    (f,) = [f for f in d.findings if f.kind == "out_of_range" and f.layer == "0"]
    assert "exploded" in f.message and f.evidence["spread_growth"] > 100 and f.evidence["share_first_step"] < 0.05
    assert f.evidence["observed_max"] > 3
    d2 = _record(tmp_path / "b", nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2)), 2,
                   lambda m, e, i: m(torch.randn(32, 8)), range=(-0.01, 0.01))
    wrong = {f.layer: f for f in d2.findings if f.kind == "out_of_range"}
    assert {"0", "2"} <= set(wrong) and "the range is wrong" in wrong["0"].message
    assert wrong["0"].epoch == 0 and wrong["0"].severity == "problem"
    assert d2.metric("out_of_range", "train", layer="0")[0] > 0.9


def test_nan_values_are_unstable_from_their_epoch(tmp_path):
    def step(m, e, i):
        if e == 2 and i == 1:
            with torch.no_grad():
                m[0].weight[0, 0] = float("nan")
        m(torch.randn(16, 8))

    d = _record(tmp_path / "n", nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2)), 4, step)
    bad = [f for f in d.findings if f.kind == "unstable"]
    assert bad and all(f.epoch == 2 and f.severity == "problem" for f in bad)
    assert {f.layer for f in bad} >= {"0", "2"}
    assert d.metric("nonfinite", "train", layer="0")[1] == 0 and d.metric("nonfinite", "train", layer="0")[3] > 0


def test_nan_in_the_valid_data_only_is_not_training_diverging(tmp_path):
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    with tp.ActivationsHistogram(model, tmp_path / "run.tp") as hist:
        for _ in range(3):
            for _ in range(4):
                model(torch.randn(16, 8))
            with hist.phase("valid"), torch.no_grad():
                x = torch.randn(8, 8)
                x[2, 3] = float("nan")  # one missing value in the validation inputs
                model(x)
            hist.end_epoch()
    d = tp.diagnose(tmp_path / "run.tp")
    bad = [f for f in d.findings if f.kind == "unstable"]
    assert bad and {f.layer for f in bad} >= {"0", "2"}
    for f in bad:
        assert "'valid' only" in f.message and "diverged" not in f.message and f.evidence["train_nonfinite_share"] == 0
        assert "valid" in f.remedy and "learning rate" not in f.remedy
    assert d.metric("nonfinite", "train", layer="0").max() == 0 and d.metric("nonfinite", "valid", layer="0")[0] > 0


@pytest.mark.parametrize("gap, peaks", [(4.0, True), (0.0, False)], ids=["two-clusters", "one-cluster"])
def test_without_targets_the_label_free_separation_says_whether_twin_peaks_show(tmp_path, gap, peaks):
    model = nn.Linear(4, 2)
    with torch.no_grad():
        model.weight[:, 0] = torch.tensor([2.0, -2.0])  # each output follows the first input

    def step(m, e, i):
        x = torch.randn(64, 4) * 0.3
        x[:, 0] += gap * (torch.arange(64) % 2 - 0.5)  # two groups of inputs, far apart (or not)
        m(x)

    d = _record(tmp_path, model, 2, step, range=(-10, 10))
    sep = d.metric("separation", "train")
    assert d.task == "unlabeled" and np.isfinite(sep).all()
    np.testing.assert_array_equal(sep, d.metric("separation_label_free", "train"))
    assert np.isnan(d.metric("separation_label_aware", "train")).all()
    (f,) = [f for f in d.findings if f.kind in ("separation", "no_twin_peaks")]
    assert f.kind == ("separation" if peaks else "no_twin_peaks") and f.severity == "info"
    assert (sep[-1] > 4) if peaks else (sep[-1] < 1.5)


# -- API and command line ---------------------------------------------------------------------------------


def test_api_contract(trained):
    import twinpeaks.diagnosis  # noqa: F401  (the submodule must not shadow tp.diagnose)

    assert callable(tp.diagnose) and tp.Finding is twinpeaks.diagnosis.Finding
    t, d = trained["binary"]
    assert {"separation", "train_valid_distance", "overlap", "zero_fraction", "step_jump"} <= set(d.metric_names)
    assert d.metric("train_valid_distance").shape == (t.case.epochs,)
    np.testing.assert_array_equal(d.metric("separation"), d.metric("separation", "valid"))
    np.testing.assert_array_equal(d.metric("zero_fraction", "train"), d.metric("zero_fraction", "train", d.layers[-1]))
    for bad in (lambda: d.metric("nope"), lambda: d.metric("train_valid_distance", "valid"),
                lambda: d.metric("separation", "test-x"), lambda: d.metric("zero_fraction", layer="zz")):
        with pytest.raises(ValueError):
            bad()
    for f in d.findings:
        assert f.kind in tp.diagnosis.KINDS and f.severity in SEVERITIES and f.message.count(". ") == 0
        assert all(isinstance(v, float) for v in f.evidence.values())
    blob = json.loads(d.to_json())
    assert blob["task"] == "classification" and len(blob["metrics"]["separation/valid"]) == t.case.epochs
    strict = tp.diagnose(t.path, thresholds=Thresholds(separation_weak=99))
    assert strict.findings[0].kind == "separation" and strict.findings[0].severity == "warning"


def test_cli_exit_codes_and_json(trained, tmp_path, capsys):
    path = str(trained["dead_init"][0].path)
    assert cli_main(["diagnose", path]) == 0
    out = capsys.readouterr().out
    assert "PROBLEM dead [2]" in out
    assert cli_main(["diagnose", path, "--fail-on", "problem"]) == 1
    assert cli_main(["diagnose", str(trained["binary"][0].path), "--fail-on", "warning"]) == 0
    capsys.readouterr()
    assert cli_main(["diagnose", path, "--json"]) == 0
    blob = json.loads(capsys.readouterr().out)
    assert any(f["kind"] == "dead" and f["layer"] == "2" for f in blob["findings"])
    bad = tmp_path / "not-a-run.tp"
    bad.write_text("hello")
    for p in (str(bad), str(tmp_path / "missing.tp")):
        assert cli_main(["diagnose", p]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("twinpeaks diagnose: error:")


def test_run_without_epochs_is_a_one_line_error(tmp_path):
    model = nn.Linear(3, 2)
    with tp.ActivationsHistogram(model, tmp_path / "r.tp"):
        pass
    with pytest.raises(ValueError, match="nothing to diagnose"):
        tp.diagnose(tmp_path / "r.tp")
