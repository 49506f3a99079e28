"""The ``plot`` and ``demo`` commands: images written, one-line errors with exit code 2."""

import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.image
import pytest

from twinpeaks import cli
from twinpeaks.rundir import list_runs


@pytest.fixture(scope="module")
def run_path(record_run, tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "run.tp"
    record_run(path, epochs=2, steps=3, valid=1)
    return path


@pytest.mark.parametrize("args", [
    ["--chart", "colorful"],
    ["--chart", "colorful", "--layers", "body.0", "-1", "--shared-scale", "--layer-info"],
    ["--chart", "twinpeaks", "--epoch", "0"],
    ["--chart", "twinpeaks", "--per-class"],
    ["--chart", "twinpeaks", "--by-truth", "--layers", "body.2"],
    ["--chart", "history", "--by-truth"],
], ids=["colorful", "colorful-layers", "twinpeaks", "per-class", "by-truth", "history"])
def test_plot_writes_a_png(run_path, tmp_path, capsys, args):
    out = tmp_path / "chart.png"
    assert cli.main(["plot", str(run_path), *args, "-o", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    img = matplotlib.image.imread(out)
    assert img.shape[0] > 200 and img.shape[1] > 300
    assert img[..., :3].std() > 0.05  # not a blank canvas


def test_plot_default_output_is_beside_the_run(run_path, capsys):
    assert cli.main(["plot", str(run_path), "--chart", "twinpeaks"]) == 0
    out = capsys.readouterr().out.strip()
    assert out == f"{run_path}.twinpeaks.png"
    assert matplotlib.image.imread(out).ndim == 3


@pytest.mark.parametrize("args, message", [
    (["MISSING"], "MISSING"),
    (["NOTARUN"], "not a"),
    (["RUN", "--layers", "nope"], "no layer named 'nope'"),
    (["RUN", "--chart", "twinpeaks", "--epoch", "5"], "epoch 5 is out of range"),
    (["RUN", "--chart", "history", "--layers", "0", "1"], "draws one layer"),
    (["RUN", "--chart", "twinpeaks", "--layers", "unused"], "never called"),
], ids=["missing-file", "not-a-run", "unknown-layer", "epoch-range", "two-layers", "empty-layer"])
def test_plot_errors_are_one_line_exit_2(run_path, tmp_path, capsys, args, message):
    bad = tmp_path / "notes.txt"
    bad.write_text("hello, not a run file\n" * 50)
    paths = {"RUN": str(run_path), "MISSING": str(tmp_path / "missing.tp"), "NOTARUN": str(bad)}
    argv = ["plot", *[paths.get(a, a) for a in args]]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("twinpeaks plot: error: ")
    assert message.lower() in err.lower()
    assert "Traceback" not in err


@pytest.mark.parametrize("command", ["plot", "demo"])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: twinpeaks " + command)
    assert "--out" in out if command == "demo" else "--chart {colorful,twinpeaks,history}" in out


def test_plot_error_through_the_real_entry_point(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "twinpeaks", "plot", str(tmp_path / "no.tp")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_demo_writes_the_run_the_charts_and_says_where(tmp_path, capsys):
    import torch

    out = tmp_path / "demo"
    threads = torch.get_num_threads()
    assert cli.main(["demo", "--task", "regression", "--epochs", "2", "--out", str(out)]) == 0
    assert torch.get_num_threads() == threads
    printed = capsys.readouterr().out
    names = ["regression-colorful.png", "regression-twinpeaks.png", "regression-history.png"]
    for name in names:
        assert str(out / name) in printed
        assert matplotlib.image.imread(out / name).ndim == 3
    (run,) = list_runs(out / "runs")  # a folder of runs, as a user would record
    assert f"{run}.live.png" in printed and Path(f"{run}.live.png").exists()
    assert f"twinpeaks info {run}" in printed and "no twin peaks" in printed
    assert not (out / "regression-truth.png").exists()  # no classes, no YES/NO chart
    assert cli.main(["demo", "--task", "regression", "--epochs", "1", "--out", str(out)]) == 0  # again: a new run
    first, second = list_runs(out / "runs")
    assert first == run and str(second) in capsys.readouterr().out
