"""Issue #14.2, .4, .7, .10: a full disk, colliding names, invalid arguments and meta tensors never
crash training nor lose or mix recorded data."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import twinpeaks as tp

HERE = Path(__file__).resolve().parent


# -- 2. a full disk ------------------------------------------------------------------------------------
def deep_mlp(n_layers: int = 20) -> nn.Sequential:
    return nn.Sequential(*[nn.Linear(8, 8) for _ in range(n_layers)])


def train(model, hist, epochs: int, steps: int, batch: int = 4) -> None:
    for _ in range(epochs):
        for _ in range(steps):
            model(torch.randn(batch, 8))
        hist.end_epoch()


def check_consistent(path, layers: int | None) -> int:
    """Every epoch the file lists is backed by its columns and summaries; returns the epochs.

    ``layers``: how many layers the file must list (None: any, e.g. none yet when the first write failed).
    """
    with tp.open_run(path) as run:
        assert layers is None or len(run.layers) == layers
        n = run.epochs
        end = run.epoch_info(-1).steps["train"][1] if n else 0
        for info in run.layers:
            cols = run.columns(info, "train")
            if n:
                assert len(cols) and cols.ends[-1] >= end, (info.name, cols.ends[-1:], end)
                np.testing.assert_array_equal(cols.starts[1:], cols.ends[:-1])
                for e in range(n):
                    first, stop, _ = run.epoch_info(e).steps["train"]
                    assert run.histogram(info, "train", e).steps == stop - first
        return n


FULL_DISK = textwrap.dedent("""
    import resource, signal, sys, warnings, os, json
    import torch
    sys.path.insert(0, sys.argv[2])
    import twinpeaks as tp
    from test_robust_recorder import deep_mlp, train, check_consistent

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, not a signal
    path = sys.argv[1]
    torch.manual_seed(0)
    model = deep_mlp(41)
    caught = []
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        hist = tp.ActivationsHistogram(model, path, flush_every=16, range=(-3, 3)).attach()
        train(model, hist, 1, 40)
        size = os.path.getsize(path) + os.path.getsize(path + "-wal")
        resource.setrlimit(resource.RLIMIT_FSIZE, (size + 60_000, resource.RLIM_INFINITY))
        train(model, hist, 3, 40)  # the disk is full for most of these
        during = check_consistent(path, 41)
        resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        train(model, hist, 1, 40)  # space is back
        hist.close()
        caught = [str(x.message) for x in w]
    print(json.dumps({"during": during, "after": check_consistent(path, 41), "warnings": caught}))
""")


def test_a_full_disk_warns_once_keeps_training_and_resumes(tmp_path):
    proc = subprocess.run([sys.executable, "-c", FULL_DISK, str(tmp_path / "run.tp"), str(HERE)],
                          capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(HERE.parents[1]), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json

    out = json.loads(proc.stdout.strip().splitlines()[-1])
    disk = [w for w in out["warnings"] if "could not write" in w]
    assert len(disk) == 1, out["warnings"]
    assert 1 <= out["during"] < 4  # the file held what it said while the disk was full
    assert out["after"] == 5  # and everything kept in memory was written when space came back
    with tp.open_run(tmp_path / "run.tp") as run:
        h = run.histogram(0, "train")
        assert h.total == 5 * 40 * 4 * 8 and h.steps == 200


@pytest.fixture
def small_tmpfs(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs needs root")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_a_full_tmpfs_like_the_issue(small_tmpfs):
    """A full tmpfs, 41 layers, flush_every=16 (raised at step 72 before): one warning, then it resumes."""
    path = small_tmpfs / "run.tp"
    model = deep_mlp(41)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        hist = tp.ActivationsHistogram(model, path, flush_every=16, range=(-3, 3)).attach()
        filler = small_tmpfs / "filler"
        free = 2 * 1024 * 1024 - 150_000
        filler.write_bytes(b"\0" * free)
        train(model, hist, 4, 30)
        assert check_consistent(path, None) < 4
        filler.unlink()
        train(model, hist, 1, 30)
        hist.close()
    msgs = [str(x.message) for x in w if "could not write" in str(x.message)]
    assert len(msgs) == 1, [str(x.message) for x in w]
    assert check_consistent(path, 41) == 5


# -- 4. names unique by construction ------------------------------------------------------------------------
class Pair(nn.Module):
    """Returns a tuple, whose second item is sub-record ``1``; has a child module named "1" too."""

    def __init__(self) -> None:
        super().__init__()
        self.add_module("0", nn.Linear(4, 4))
        self.add_module("1", nn.Linear(4, 4))

    def forward(self, x):
        y = self._modules["0"](x)
        self._modules["1"](x)
        return y, y * 2 + 100


class DictOut(nn.Module):
    def forward(self, x):
        return {1: x, "1": x + 100}


def test_a_tuple_subrecord_never_takes_a_module_name(tmp_run):
    """Module ``0`` returns a tuple: its item 1 is ``0.1``, as is the child module ``0.1`` (``modules=["0", "0.1"]``)."""
    model = nn.Sequential(Pair())
    hist = tp.ActivationsHistogram(model, tmp_run, modules=["0", "0.1"], range=(-200, 200), bins=40)
    with hist:
        model(torch.randn(3, 4))
        hist.end_epoch()
    with tp.open_run(tmp_run) as run:
        names = [i.name for i in run.layers]
        assert len(names) == len(set(names)) == 3, names
        assert "0.1" in names
        linear = run.layer("0.1")
        assert linear.type == "Linear" and run.histogram(linear, epoch=0).total == 12
        means = sorted(run.histogram(i, epoch=0).mean for i in run.layers if i.type == "Pair" and i.called)
        assert len(means) == 2 and means[1] > 50  # both tuple items kept: y and y * 2 + 100


def test_dict_keys_1_and_str_1_are_two_layers(tmp_run):
    model = nn.Sequential(nn.Identity(), DictOut())
    hist = tp.ActivationsHistogram(model, tmp_run, range=(-200, 200), bins=40)
    with hist:
        model(torch.randn(3, 4))
        hist.end_epoch()
    with tp.open_run(tmp_run) as run:
        subs = [i for i in run.layers if i.type == "DictOut" and i.called]
        assert len(subs) == 2 and len({i.name for i in subs}) == 2
        assert sorted(round(run.histogram(i, epoch=0).mean) // 50 for i in subs) == [0, 2]


def test_the_output_record_never_takes_a_module_name(tmp_run):
    model = nn.Sequential()
    model.add_module("output", nn.Linear(4, 4))
    hist = tp.ActivationsHistogram(model, tmp_run, output=lambda out: out * 0 + 7, range=(-20, 20))
    with hist:
        model(torch.randn(3, 4))
        hist.end_epoch()
    with tp.open_run(tmp_run) as run:
        names = [i.name for i in run.layers]
        assert len(names) == len(set(names)) == 2
        assert run.histogram(-1, epoch=0).mean == 7 and run.layer("output").type == "Linear"


# -- 7. invalid arguments -------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,match", [
    ({"range": (-1e300, 1e300)}, "range"),
    ({"range": (-3e38, 3e38)}, "range"),
    ({"range": (0, float("inf"))}, "range"),
    ({"range": (float("nan"), 1)}, "range"),
    ({"range": (1, 1)}, "range"),
    ({"margin": float("inf")}, "margin"),
    ({"margin": float("nan")}, "margin"),
    ({"margin": "1"}, "margin"),
    ({"max_columns": 0}, "max_columns"),
    ({"max_columns": 1}, "max_columns"),
    ({"max_columns": -5}, "max_columns"),
    ({"max_columns": "x"}, "max_columns"),
    ({"max_columns": None}, "max_columns"),
    ({"max_columns": True}, "max_columns"),
    ({"max_columns": 2.5}, "max_columns"),
    ({"flush_every": True}, "flush_every"),
    ({"flush_every": 0}, "flush_every"),
    ({"flush_every": 1.0}, "flush_every"),
    ({"bins": 10**6}, "bins"),
    ({"bins": 10_001}, "bins"),
    ({"bins": True}, "bins"),
    ({"modules": []}, "modules"),
    ({"seed": "x"}, "seed"),
], ids=lambda v: repr(v)[:40])
def test_every_argument_is_checked_at_construction(kwargs, match, tmp_run):
    with pytest.raises((ValueError, TypeError), match=match):
        tp.ActivationsHistogram(nn.Linear(2, 2), tmp_run, **kwargs)
    assert not tmp_run.exists()


def test_accepted_edges_of_the_argument_ranges(tmp_run):
    tp.ActivationsHistogram(nn.Linear(2, 2), tmp_run, bins=10_000, max_columns=2, flush_every=1,
                            range=(-1e38, 1e38), margin=0)


def test_a_path_that_cannot_be_written_fails_at_construction_naming_it(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(tp.TwinpeaksError, match="file/run.tp"):
        tp.ActivationsHistogram(nn.Linear(2, 2), tmp_path / "file" / "run.tp")
    with pytest.raises(FileExistsError, match="never overwrites"):
        tp.ActivationsHistogram(nn.Linear(2, 2), tmp_path / "file")


def test_a_read_only_folder_fails_at_construction_naming_the_path(tmp_path):
    mnt = tmp_path / "ro"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs needs root")
    try:
        with pytest.raises(tp.TwinpeaksError, match="ro/sub/run.tp"):
            tp.ActivationsHistogram(nn.Linear(2, 2), mnt / "sub" / "run.tp")
        with pytest.raises(tp.TwinpeaksError, match="ro/run.tp"):
            tp.ActivationsHistogram(nn.Linear(2, 2), mnt / "run.tp")
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


# -- 10. meta tensors -------------------------------------------------------------------------------------------
class Meta(nn.Module):
    def forward(self, x):
        return torch.empty(x.shape, device="meta")


def test_a_meta_tensor_output_is_skipped_with_one_warning(tmp_run):
    model = nn.Sequential(nn.Linear(3, 3), Meta())
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        hist = tp.ActivationsHistogram(model, tmp_run, range=(-5, 5)).attach()
        for _ in range(3):
            model(torch.randn(2, 3))
            hist.end_epoch()
        hist.close()
    msgs = [str(x.message) for x in w if "meta" in str(x.message)]
    assert len(msgs) == 1, [str(x.message) for x in w]
    with tp.open_run(tmp_run) as run:
        assert run.epochs == 3 and run.histogram(0, epoch=2).total == 6
        assert not run.layer("1").called
